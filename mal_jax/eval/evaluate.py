"""Depth evaluation of a ManyDepth/MAL checkpoint: multi-frame model and single-frame teacher.

Follows ManyDepth's ``evaluate_depth.py``: the lookup frame is frame -1, its pose comes from
the pose net on (frame -1, frame 0), inverted; the cost volume spans the checkpoint's adaptive
depth bins; disparities are mapped to depth with the preset's range, resized to the GT size,
windowed/cropped, median scaled per image, clamped, scored per image and averaged over images.

One deliberate addition: where frame -1 is missing (an all-black frame from a loader), frame 0
stands in for it and the pose net runs on (frame 0, frame 0), as the reference's
``--static_camera`` option does for every sample. The reference itself would match against the
black frame.

Presets bundle an ``EvalProtocol`` with the disparity-to-depth range, since the two papers
differ there: ManyDepth converts with (0.1, 100) m, MAL's evaluator with (1e-3, 80) m.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.eval import metrics as metrics_lib
from mal_jax.eval import outputs as eval_outputs
from mal_jax.eval.inference import InferenceModelLike, make_batch_predictor, pad_batch
from mal_jax.eval.metrics import METRIC_NAMES, EvalProtocol

MODELS = ("multi_frame", "teacher")


@dataclasses.dataclass(frozen=True)
class EvalPreset:
    """An evaluation protocol plus the disparity-to-depth range its paper evaluates with.

    ``moving_block``: also report metrics over moving-object pixels (needs ``moving_mask``).
    """

    protocol: EvalProtocol
    min_depth: float = 0.1
    max_depth: float = 100.0
    moving_block: bool = False


# The embedded dataset: dense metric GT (0 on sky), no crop, ManyDepth's GT range and scaling.
SYNTHETIC = EvalProtocol()

PRESETS = {
    "kitti_eigen": EvalPreset(metrics_lib.KITTI_EIGEN),
    "kitti_eigen_mal": EvalPreset(metrics_lib.KITTI_EIGEN, min_depth=1e-3, max_depth=80.0),
    "cityscapes": EvalPreset(metrics_lib.CITYSCAPES),
    "cityscapes_mal": EvalPreset(metrics_lib.CITYSCAPES, min_depth=1e-3, max_depth=80.0),
    "synthetic": EvalPreset(SYNTHETIC, moving_block=True),
}


def get_preset(name: str) -> EvalPreset:
    if name not in PRESETS:
        raise ValueError(f"config.evaluation.protocol={name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]


# ------------------------------------------------------------------ scoring


def _depth_at_gt(gt, pred_disp, protocol: EvalProtocol, extra):
    """GT, predicted depth and extra masks after keep-top, resize and window."""
    if protocol.keep_top_fraction is not None:
        gt = metrics_lib.keep_top_rows(gt, protocol.keep_top_fraction)
        extra = metrics_lib.keep_top_rows(extra, protocol.keep_top_fraction)
    _, height, width = gt.shape
    pred = 1.0 / metrics_lib.resize_disparity(pred_disp, height, width)
    if protocol.window is not None:
        gt, pred, extra = (metrics_lib.apply_window(x, protocol.window) for x in (gt, pred, extra))
    return gt, pred, extra


def score_depth(
    gt: jax.Array, pred_disp: jax.Array, protocol: EvalProtocol, moving: jax.Array | None = None
) -> tuple[dict[str, dict[str, jax.Array]], jax.Array]:
    """Per-image metrics over all valid pixels and over moving-object pixels.

    Same steps as ``metrics.evaluate_batch``; the moving block reuses each image's all-pixel
    median-scaling ratio, so it measures the error on objects of the prediction actually
    evaluated (scaling on the objects alone would hide a scale error there). Returns
    ``({"all": {metric: (B,)}, "moving": ...}, ratio (B,))``; "moving" only when given.
    Jittable with ``protocol`` static.
    """
    extra = jnp.zeros(gt.shape, bool) if moving is None else moving
    gt, pred, extra = _depth_at_gt(gt, pred_disp, protocol, extra)
    mask = metrics_lib.range_mask(gt, protocol.gt_min, protocol.gt_max)
    if protocol.crop_fractions is not None:
        crop = metrics_lib.eigen_crop_mask(gt.shape[1], gt.shape[2], protocol.crop_fractions)
        mask = mask & jnp.asarray(crop)
    pred = pred * protocol.pred_scale
    if protocol.median_scaling:
        pred, ratio = metrics_lib.median_scale(gt, pred, mask)
    else:
        ratio = jnp.ones(gt.shape[:1], pred.dtype)
    pred = jnp.clip(pred, protocol.clamp_min, protocol.clamp_max)
    regions = {"all": metrics_lib.compute_depth_errors(gt, pred, mask)}
    if moving is not None:
        regions["moving"] = metrics_lib.compute_depth_errors(gt, pred, mask & extra)
    return regions, ratio


@functools.lru_cache(maxsize=8)
def _scorer(protocol: EvalProtocol):
    return jax.jit(lambda gt, disp, moving: score_depth(gt, disp, protocol, moving))


def scaled_depth_map(gt: np.ndarray, pred_disp: np.ndarray, protocol: EvalProtocol, ratio: float):
    """(gt, scaled clamped depth, valid) of one image at GT size, for error images."""
    gt_b, pred, _ = _depth_at_gt(
        jnp.asarray(gt)[None], jnp.asarray(pred_disp)[None], protocol, jnp.zeros((1,) + gt.shape)
    )
    pred = jnp.clip(pred * protocol.pred_scale * ratio, protocol.clamp_min, protocol.clamp_max)
    valid = metrics_lib.range_mask(gt_b, protocol.gt_min, protocol.gt_max)
    return np.asarray(gt_b[0]), np.asarray(pred[0]), np.asarray(valid[0])


# ------------------------------------------------------------------ the evaluation loop


class _Accumulator:
    """Per-image metrics and ratios, per model and region, gathered on the host."""

    def __init__(self, regions: tuple[str, ...]):
        self.values = {m: {r: {k: [] for k in METRIC_NAMES} for r in regions} for m in MODELS}
        self.ratios = {m: [] for m in MODELS}

    def add(self, model: str, regions: dict, ratio: np.ndarray, keep: np.ndarray) -> None:
        for region, per_metric in regions.items():
            for name, value in per_metric.items():
                self.values[model][region][name].append(np.asarray(value)[keep])
        self.ratios[model].append(np.asarray(ratio)[keep])

    def summary(self, median_scaling: bool) -> dict:
        out = {}
        for model, per_region in self.values.items():
            out[model] = {}
            for region, per_metric in per_region.items():
                stacked = {k: np.concatenate(v) for k, v in per_metric.items()}
                # Images without a valid pixel in this region score NaN: left out, and counted.
                scored = np.isfinite(stacked["abs_rel"])
                block = {
                    k: float(np.mean(v[scored])) if scored.any() else float("nan")
                    for k, v in stacked.items()
                }
                block["num_images"] = int(scored.sum())
                out[model][region] = block
            ratios = np.concatenate(self.ratios[model])
            ratios = ratios[np.isfinite(ratios)]
            if median_scaling and ratios.size:
                median = float(np.median(ratios))
                out[model]["all"]["ratio_median"] = median
                out[model]["all"]["ratio_std"] = float(np.std(ratios / median))
        return out


def _true_shape(batch: dict, row: int, gt_shapes) -> tuple[int, int]:
    if gt_shapes is None:
        return tuple(np.shape(batch["depth_gt"])[1:3])
    return tuple(gt_shapes[int(batch["index"][row])])


def evaluate_predictions(
    batches: Iterable[dict],
    predictor: Callable[[dict], dict[str, np.ndarray]],
    preset: EvalPreset,
    *,
    batch_size: int,
    gt_shapes: list[tuple[int, int]] | None = None,
    image_dir: str | None = None,
    num_images: int = 0,
) -> dict:
    """Score every batch's predictions against its ``depth_gt``; return the summary.

    ``gt_shapes[index]`` gives each GT's true size where batches are zero padded (KITTI); the
    images of one size are scored together, padded to ``batch_size`` so each size compiles
    once. With ``image_dir``, the first ``num_images`` samples get colour PNGs: the input
    frame t and each model's disparity and error.
    """
    regions = ("all", "moving") if preset.moving_block else ("all",)
    protocol = preset.protocol
    score = _scorer(protocol)
    acc = _Accumulator(regions)
    seen = fallbacks = 0
    for batch in batches:
        predictions = predictor(batch)
        count = len(batch["depth_gt"])
        previous, current = np.asarray(batch["frames"])[:, 0], np.asarray(batch["frames"])[:, 1]
        # Missing frame -1: black from a "zeros" loader, or already frame 0 from a "static" one.
        static = ~np.any(previous != 0, axis=(1, 2, 3)) | np.all(previous == current, (1, 2, 3))
        fallbacks += int(np.sum(static))
        shapes = [_true_shape(batch, row, gt_shapes) for row in range(count)]
        all_gt = np.asarray(batch["depth_gt"], np.float32)
        all_moving = np.asarray(batch.get("moving_mask", np.zeros(all_gt.shape, bool)), bool)
        for shape in dict.fromkeys(shapes):
            rows = np.array([r for r in range(count) if shapes[r] == shape])
            gt = all_gt[rows, : shape[0], : shape[1]]
            moving = all_moving[rows, : shape[0], : shape[1]]
            keep = np.arange(batch_size) < len(rows)
            for j in np.flatnonzero(seen + rows < num_images) if image_dir else ():
                os.makedirs(image_dir, exist_ok=True)
                eval_outputs.save_png(os.path.join(image_dir, f"{seen + rows[j]:04d}_input.png"),
                                      np.clip(current[rows[j]] * 255.0 + 0.5, 0, 255))
            for model in MODELS:
                disp = predictions[model][rows]
                padded_moving = pad_batch(moving, batch_size) if preset.moving_block else None
                per_region, ratio = score(
                    pad_batch(gt, batch_size), pad_batch(disp, batch_size), padded_moving
                )
                acc.add(model, per_region, ratio, keep)
                for j in np.flatnonzero(seen + rows < num_images) if image_dir else ():
                    gt_c, pred, valid = scaled_depth_map(gt[j], disp[j], protocol, float(ratio[j]))
                    eval_outputs.write_sample_images(
                        image_dir, f"{seen + rows[j]:04d}_{model}", disp[j], gt_c, pred, valid
                    )
        seen += count
    if seen == 0:
        raise ValueError("evaluation: the dataset yielded no samples")
    return {
        "num_images": seen,
        "static_fallback_images": fallbacks,
        "regions": list(regions),
        "metrics": acc.summary(protocol.median_scaling),
    }


def eval_data(config, height: int, width: int):
    """(unbatched data for ``pipeline.eval_batches``, GT shapes or None) for ``config.data``.

    A missing frame -1 falls back to frame 0 (static camera) rather than a black frame.
    """
    from mal_jax.data import kitti, sources

    source = sources.eval_source(config, height=height, width=width,
                                 missing_neighbour="static")
    gt_shapes = kitti.gt_shapes(config.data.gt_depth_file) if (
        config.data.dataset == "kitti") else None
    return source, gt_shapes


def flat_scalars(results: dict) -> dict[str, float]:
    """``eval/<model>/<region>/<metric>`` scalars of an ``evaluate`` result, for summaries."""
    return {f"eval/{model}/{region}/{name}": float(value)
            for model, regions in results["metrics"].items()
            for region, block in regions.items() if isinstance(block, dict)
            for name, value in block.items() if isinstance(value, (int, float))}


# ------------------------------------------------------------------ the driver


def evaluate(inference: InferenceModelLike, config, out_dir: str, *, checkpoint: str = "") -> dict:
    """Evaluate ``inference`` on ``config``'s eval split; write and print the results."""
    from mal_jax.data import pipeline

    preset_name = config.evaluation.protocol
    preset = get_preset(preset_name)
    batch_size = int(config.evaluation.batch_size)
    data, gt_shapes = eval_data(config, inference.height, inference.width)
    results = evaluate_predictions(
        pipeline.eval_batches(data, batch_size=batch_size),
        make_batch_predictor(inference, preset.min_depth, preset.max_depth, batch_size),
        preset,
        batch_size=batch_size,
        gt_shapes=gt_shapes,
        image_dir=os.path.join(out_dir, "eval_images"),
        num_images=int(config.evaluation.write_images),
    )
    results.update(
        protocol=preset_name,
        checkpoint=checkpoint,
        height=int(inference.height),
        width=int(inference.width),
        min_depth_bin=float(inference.min_depth_bin),
        max_depth_bin=float(inference.max_depth_bin),
        preset={
            "min_depth": preset.min_depth,
            "max_depth": preset.max_depth,
            **dataclasses.asdict(preset.protocol),
        },
    )
    eval_outputs.write_results(results, out_dir)
    print(eval_outputs.markdown_report(results))
    return results
