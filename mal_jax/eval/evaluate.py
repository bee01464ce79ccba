"""Depth evaluation of a ManyDepth/MAL model: the student (multi-frame network) and the teacher
(single-frame network).

Follows ManyDepth's ``evaluate_depth.py``: the lookup frame is frame -1, its pose comes from
the pose net on (frame -1, frame 0), inverted; the cost volume spans the checkpoint's adaptive
depth bins; disparities are mapped to depth with the preset's range (``presets``), resized to
the GT size, windowed/cropped, median scaled per image, clamped, scored per image and averaged
over images.

One deliberate addition: where frame -1 is missing (an all-black frame from a loader), frame 0
stands in for it and the pose net runs on (frame 0, frame 0), as the reference's
``--static_camera`` option does for every sample. The reference itself would match against the
black frame.

``Evaluator(config)`` is built once (its data source, preset and batch size);
``evaluator.run(inference)`` scores and writes nothing; ``evaluator.write(inference, results,
out_dir)`` writes the JSON/Markdown results and the example PNGs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mal_jax.data import pipeline, registry
from mal_jax.eval import metrics as metrics_lib
from mal_jax.eval import outputs as eval_outputs
from mal_jax.eval.inference import InferenceModelLike, make_batch_predictor, pad_batch
from mal_jax.eval.metrics import METRIC_NAMES, EvalProtocol
from mal_jax.eval.presets import EvalPreset, get_preset
from mal_jax.eval.progress import track

MODELS = ("student", "teacher")


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


def _group_by_shape(batch: dict, gt_shapes) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, gt, moving) per distinct true GT size in the batch, unpadded to that size."""
    count = len(batch["depth_gt"])
    shapes = [_true_shape(batch, row, gt_shapes) for row in range(count)]
    all_gt = np.asarray(batch["depth_gt"], np.float32)
    all_moving = np.asarray(batch.get("moving_mask", np.zeros(all_gt.shape, bool)), bool)
    for shape in dict.fromkeys(shapes):
        rows = np.array([r for r in range(count) if shapes[r] == shape])
        yield rows, all_gt[rows, : shape[0], : shape[1]], all_moving[rows, : shape[0], : shape[1]]


def evaluate_predictions(
    batches: Iterable[dict],
    predictor: Callable[[dict], dict[str, np.ndarray]],
    preset: EvalPreset,
    *,
    batch_size: int,
    gt_shapes: tuple | None = None,
) -> dict:
    """Score every batch's predictions against its ``depth_gt``; return the summary.

    ``gt_shapes[index]`` gives each GT's true size where batches are zero padded (KITTI); the
    images of one size are scored together, padded to ``batch_size`` so each size compiles
    once.
    """
    regions = ("all", "moving") if preset.moving_block else ("all",)
    score = _scorer(preset.protocol)
    acc = _Accumulator(regions)
    seen = fallbacks = 0
    for batch in batches:
        predictions = predictor(batch)
        # A missing frame -1 arrives black; the predictor matched frame 0 against itself.
        fallbacks += int(np.sum(~np.any(np.asarray(batch["frames"])[:, 0] != 0, axis=(1, 2, 3))))
        for rows, gt, moving in _group_by_shape(batch, gt_shapes):
            keep = np.arange(batch_size) < len(rows)
            padded_moving = pad_batch(moving, batch_size) if preset.moving_block else None
            for model in MODELS:
                per_region, ratio = score(pad_batch(gt, batch_size),
                                          pad_batch(predictions[model][rows], batch_size),
                                          padded_moving)
                acc.add(model, per_region, ratio, keep)
        seen += len(batch["depth_gt"])
    if seen == 0:
        raise ValueError("evaluation: the dataset yielded no samples")
    return {
        "num_images": seen,
        "static_fallback_images": fallbacks,
        "regions": list(regions),
        "metrics": acc.summary(preset.protocol.median_scaling),
    }


def flat_scalars(results: dict) -> dict[str, float]:
    """``eval/<model>/<region>/<metric>`` scalars of an evaluation result, for summaries."""
    return {f"eval/{model}/{region}/{name}": float(value)
            for model, regions in results["metrics"].items()
            for region, block in regions.items() if isinstance(block, dict)
            for name, value in block.items() if isinstance(value, (int, float))}


# ------------------------------------------------------------------ the evaluator


def without_lookup_frame(batch: dict) -> dict:
    """``batch`` with frame -1 black: the predictor then runs the student as for a sequence's
    first frame (frame t as its own lookup, zero pose)."""
    frames = np.array(batch["frames"])
    frames[:, 0] = 0.0
    return {**batch, "frames": frames}


def _kept_predictions(predictor: Callable[[dict], dict[str, np.ndarray]]):
    """``predictor`` that also appends each batch's disparities to ``kept[model]``, and
    ``kept``."""
    kept = {model: [] for model in MODELS}

    def predict(batch: dict) -> dict[str, np.ndarray]:
        predictions = predictor(batch)
        for model in MODELS:
            kept[model].append(np.asarray(predictions[model]))
        return predictions

    return predict, kept


class Evaluator:
    """Evaluation of ``config``'s test split, built once: the data source (its split and
    ground truth read here, so a bad file fails now), the preset and the batch size.

    ``height`` x ``width`` is the image size the evaluated models take (default: the config's
    training size); ``run`` refuses a model of another size.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, height: int | None = None,
                 width: int | None = None):
        self.protocol_name = config.evaluation.protocol
        self.preset = get_preset(self.protocol_name)
        self.batch_size = int(config.evaluation.batch_size)
        self.num_images = int(config.evaluation.write_images)
        self.height = int(height or config.data.height)
        self.width = int(width or config.data.width)
        self.source = registry.eval_source(config, self.height, self.width)

    def _predictor(self, inference: InferenceModelLike):
        if (int(inference.height), int(inference.width)) != (self.height, self.width):
            raise ValueError(f"evaluation: the model takes {inference.height}x{inference.width}"
                             f" images, the evaluator was built for {self.height}x{self.width}")
        preset = self.preset
        return make_batch_predictor(inference, preset.min_depth, preset.max_depth,
                                    self.batch_size)

    def _batches(self, without_lookup: bool = False) -> Iterable[dict]:
        batches = pipeline.eval_batches(self.source, batch_size=self.batch_size)
        return map(without_lookup_frame, batches) if without_lookup else batches

    def predictions(self, inference: InferenceModelLike, *,
                    without_lookup: bool = False) -> dict[str, np.ndarray]:
        """``{model: (N, H, W) disparities}`` over the split, in its order (no scoring)."""
        predict, kept = _kept_predictions(self._predictor(inference))
        for batch in self._batches(without_lookup):
            predict(batch)
        return {model: np.concatenate(parts) for model, parts in kept.items()}

    def run(self, inference: InferenceModelLike, *, checkpoint: str = "",
            without_lookup: bool = False, keep_predictions: bool = False) -> dict:
        """Score ``inference`` on the split (progress with ETA on stderr); write nothing.
        ``without_lookup`` scores the student in ManyDepth's single-frame mode: every frame -1
        dropped, so the student matches frame t against itself with a zero pose.
        ``keep_predictions`` adds ``"predictions"``, as :meth:`predictions` gives them, from
        the same pass (all of the split in memory: for studies, not for large splits)."""
        batches = track(self._batches(without_lookup),
                        math.ceil(self.source.num_samples / self.batch_size),
                        f"eval {self.protocol_name}")
        predict, kept = self._predictor(inference), None
        if keep_predictions:  # otherwise nothing is held: a KITTI split's would be ~0.7 GB
            predict, kept = _kept_predictions(predict)
        results = evaluate_predictions(batches, predict, self.preset,
                                       batch_size=self.batch_size,
                                       gt_shapes=self.source.depth_gt_shapes)
        if kept is not None:
            results["predictions"] = {model: np.concatenate(parts)
                                      for model, parts in kept.items()}
        preset = self.preset
        results.update(
            protocol=self.protocol_name,
            checkpoint=checkpoint,
            height=self.height,
            width=self.width,
            min_depth_bin=float(inference.min_depth_bin),
            max_depth_bin=float(inference.max_depth_bin),
            preset={"min_depth": preset.min_depth, "max_depth": preset.max_depth,
                    **dataclasses.asdict(preset.protocol)},
        )
        return results

    def write(self, inference: InferenceModelLike, results: dict, out_dir: str) -> None:
        """``eval_results.json``/``.md`` into ``out_dir``, the example PNGs into
        ``out_dir/eval_images`` (``write_images``), and the Markdown table on stdout."""
        eval_outputs.write_results(results, out_dir)
        self.write_images(inference, os.path.join(out_dir, "eval_images"))
        print(eval_outputs.markdown_report(results))

    def write_images(self, inference: InferenceModelLike, image_dir: str) -> list[str]:
        """Colour PNGs of the first ``config.evaluation.write_images`` samples: the input frame
        t, and each model's disparity and AbsRel error (scaled as scored). Returns the paths."""
        predict, protocol, written = self._predictor(inference), self.preset.protocol, []
        seen = 0
        for batch in self._batches():
            if seen >= self.num_images:
                break
            predictions = predict(batch)
            frames = np.asarray(batch["frames"])[:, 1]
            for rows, gt, _ in _group_by_shape(batch, self.source.depth_gt_shapes):
                for j, row in enumerate(rows):
                    if seen + row < self.num_images:
                        written += self._sample_images(image_dir, seen + row, frames[row],
                                                       {m: predictions[m][row] for m in MODELS},
                                                       gt[j], protocol)
            seen += len(batch["depth_gt"])
        return written

    @staticmethod
    def _sample_images(image_dir: str, number: int, frame: np.ndarray, disparities: dict,
                       gt: np.ndarray, protocol: EvalProtocol) -> list[str]:
        os.makedirs(image_dir, exist_ok=True)
        path = os.path.join(image_dir, f"{number:04d}_input.png")
        eval_outputs.save_png(path, np.clip(frame * 255.0 + 0.5, 0, 255))
        written = [path]
        for model, disp in disparities.items():
            _, ratio = score_depth(jnp.asarray(gt)[None], jnp.asarray(disp)[None], protocol)
            gt_c, pred, valid = scaled_depth_map(gt, disp, protocol, float(ratio[0]))
            written += eval_outputs.write_sample_images(
                image_dir, f"{number:04d}_{model}", disp, gt_c, pred, valid)
        return written
