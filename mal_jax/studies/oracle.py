"""MAL oracle: how much do temporal hints help when depth and camera motion are perfect?

On the embedded synthetic scenes, frames t-1 and t+1 are warped into frame t with the
ground-truth depth of frame t and the ground-truth camera poses (no network), exactly as the
training loss warps them (bilinear, border padding). Static scenery then lines up, so what is
left of the photometric error is mostly independently moving objects (and disocclusions).
The instance masks of t-1 / t+1 are warped with the same sampling grid, MAL's temporal hints
synthesize two extra candidates, and the per-pixel minimum reprojection error (0.85 SSIM +
0.15 L1) is compared without hints (2 candidates) and with them (4 candidates).

Means are pooled over pixels of all samples (not averages of per-sample means). Pixels
without depth (sky) are warped as if 10 km away (pure rotation) and left out of every mean.

    python -m mal_jax.studies.oracle [--split test] [--num_samples N] [--height 96 --width 320]
                             [--seed 0] [--batch_size 8] [--replace] [--frame_t_shifts]
                             [--json PATH]

Last line: ``moving_reproj baseline=<x> mal=<y> reduction=<percent>``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core import losses
from mal_jax.core.frames import FRAME_IDS, SOURCE_FRAMES, frame, warp_sources
from mal_jax.core.network_losses import reprojection_candidates
from mal_jax.data import synthetic
from mal_jax.eval.progress import track
from mal_jax.mal.instance_matching import frame_instances, match_instances, warp_instances
from mal_jax.mal.temporal_hints import TemporalHintConfig, temporal_hint_candidates
from mal_jax.studies import oracle_shifts

# Frame order of the triplets rendered here: the training batch's layout.
OFFSETS = FRAME_IDS
# Depth given to sky pixels (depth_gt == 0) so they warp by the camera rotation only.
SKY_DEPTH = 1.0e4
# MAL's defaults, as the training loss uses them.
DEFAULT_HINTS = TemporalHintConfig()
# A synthesized frame counts as chosen only when it wins by more than float noise (the same
# image's error can differ by an ulp when XLA fuses the candidates differently).
HINT_MARGIN = 1e-4
# Per-sample sums returned by :func:`oracle_sums`, in the order they are pooled.
SUM_KEYS = (
    "moving_pixels",
    "moving_baseline",
    "moving_mal",
    "static_pixels",
    "static_baseline",
    "static_mal",
    "covered_pixels",
    "covered_baseline",
    "covered_mal",
    "uncovered_baseline",
    "uncovered_mal",
    "clipped_pixels",
    "clipped_baseline",
    "clipped_mal",
    "hint_chosen_pixels",
    "matched_objects",
    "matched_moving_objects",
    "moving_objects",
)


def load_triplets(
    split: str,
    indices,
    *,
    height: int,
    width: int,
    seed: int = 0,
    max_instances: int = 16,
    stride: int = 1,
) -> dict:
    """Samples ``indices`` of ``split`` rendered as (-1, 0, +1) triplets (frames ``stride``
    apart), stacked on axis 0.

    Keys: frames (B, 3, H, W, 3), depth_gt, moving_mask (B, H, W), cam_T_cam (B, 3, 4, 4),
    K, inv_K (B, 4, 4) at full resolution, instance_ids (B, 3, H, W), instance_class,
    instance_score (B, 3, K), instance_moving (B, K).
    """
    samples = [
        synthetic.render_sample(
            split,
            int(i),
            height=height,
            width=width,
            seed=seed,
            max_instances=max_instances,
            offsets=OFFSETS,
            extras=True,
            stride=stride,
        )
        for i in indices
    ]
    keys = (
        "frames",
        "depth_gt",
        "moving_mask",
        "cam_T_cam",
        "instance_ids",
        "instance_class",
        "instance_score",
        "instance_moving",
    )
    batch = {key: np.stack([s[key] for s in samples]) for key in keys}
    batch["K"] = np.stack([s["K"][0] for s in samples])
    batch["inv_K"] = np.stack([s["inv_K"][0] for s in samples])
    return batch


def oracle_maps(batch: dict, config: TemporalHintConfig = DEFAULT_HINTS,
                frame_t_shifts: bool = False) -> dict:
    """Per-pixel errors and matches of one batch from :func:`load_triplets` (jit, config static).

    ``frame_t_shifts`` replaces MAL's displacement estimate by shifts that move each warped
    object onto its frame-t box (``mal_jax.studies.oracle_shifts``), knowledge MAL does not have.

    Returns a dict with ``baseline`` and ``mal`` (B, H, W) minimum reprojection errors over
    (warped t-1, warped t+1) and over those plus the two synthesized frames, ``hint_chosen``
    (B, H, W) where a synthesized frame wins by more than ``HINT_MARGIN``, ``matched`` (B, K)
    frame-t slots matched in both warped frames and ``matched_cover`` (B, H, W) frame-t pixels
    of those slots.
    """
    frames = batch["frames"]
    target = frame(frames, 0)
    depth = jnp.where(batch["depth_gt"] > 0, batch["depth_gt"], SKY_DEPTH)
    cam_T_cam = {f: frame(batch["cam_T_cam"], f) for f in SOURCE_FRAMES}
    warped, grids = warp_sources(frames, depth, cam_T_cam, batch["K"], batch["inv_K"])
    current = frame_instances(batch, 0)
    prev = warp_instances(frame_instances(batch, -1), grids[-1])
    next_ = warp_instances(frame_instances(batch, 1), grids[1])
    hint_candidates = (oracle_shifts.frame_t_hint_candidates if frame_t_shifts
                       else temporal_hint_candidates)
    syn_prev, syn_next = hint_candidates(
        warped[-1], warped[1], current, prev, next_, config
    )[:2]

    errors = reprojection_candidates(warped, target, (syn_prev, syn_next))
    baseline = losses.per_pixel_minimum(errors[..., :2])[..., 0]
    mal = losses.per_pixel_minimum(errors)[..., 0]

    matched = jax.vmap(functools.partial(match_instances, **config.match_settings()))(
        current, prev, next_).valid
    matched_cover = jnp.any((current.masks > 0.5) & matched[:, :, None, None], axis=1)
    return {
        "baseline": baseline,
        "mal": mal,
        "hint_chosen": mal < baseline - HINT_MARGIN,
        "matched": matched,
        "matched_cover": matched_cover,
    }


def cut_by_border(instance_ids: jax.Array, num_slots: int) -> jax.Array:
    """Frame-t pixels (B, H, W) of objects that touch the image border in any frame.

    ``instance_ids`` (B, F, H, W) with 0 = none and k = slot k-1 (one object keeps its slot in
    every frame). Such objects are partly out of view in some frame, so a shifted copy of a
    warped frame lacks part of them: the case where temporal hints help least.
    """
    ids = jnp.clip(instance_ids, 0, num_slots)
    edge_ids = jnp.concatenate(
        [ids[..., 0, :], ids[..., -1, :], ids[..., :, 0], ids[..., :, -1]], axis=-1
    ).reshape(ids.shape[0], -1)  # (B, F * (2W + 2H))
    slot_at_edge = jax.vmap(
        lambda edges: jnp.zeros(num_slots + 1, bool).at[edges].set(True))(edge_ids)
    current = frame(ids, 0)
    flat = current.reshape(current.shape[0], -1)
    touched = jnp.take_along_axis(slot_at_edge, flat, axis=1).reshape(current.shape)
    return touched & (current > 0)


def oracle_sums(batch: dict, config: TemporalHintConfig = DEFAULT_HINTS,
                frame_t_shifts: bool = False) -> dict:
    """Per-sample sums (B,) named by :data:`SUM_KEYS` (pixel counts and summed errors)."""
    maps = oracle_maps(batch, config, frame_t_shifts)
    valid = batch["depth_gt"] > 0
    moving = batch["moving_mask"] & valid
    static = ~batch["moving_mask"] & valid
    covered = moving & maps["matched_cover"]
    uncovered = moving & ~maps["matched_cover"]
    clipped = moving & cut_by_border(batch["instance_ids"],
                                      batch["instance_class"].shape[-1])

    def total(values, where):
        return jnp.sum(jnp.where(where, values, 0), axis=(1, 2)).astype(jnp.float32)

    visible = frame(batch["instance_score"], 0) > 0
    moving_slots = batch["instance_moving"] & visible
    return {
        "moving_pixels": total(1, moving),
        "moving_baseline": total(maps["baseline"], moving),
        "moving_mal": total(maps["mal"], moving),
        "static_pixels": total(1, static),
        "static_baseline": total(maps["baseline"], static),
        "static_mal": total(maps["mal"], static),
        "covered_pixels": total(1, covered),
        "covered_baseline": total(maps["baseline"], covered),
        "covered_mal": total(maps["mal"], covered),
        "uncovered_baseline": total(maps["baseline"], uncovered),
        "uncovered_mal": total(maps["mal"], uncovered),
        "clipped_pixels": total(1, clipped),
        "clipped_baseline": total(maps["baseline"], clipped),
        "clipped_mal": total(maps["mal"], clipped),
        "hint_chosen_pixels": total(1, moving & maps["hint_chosen"]),
        "matched_objects": maps["matched"].sum(-1).astype(jnp.float32),
        "matched_moving_objects": (maps["matched"] & moving_slots).sum(-1).astype(jnp.float32),
        "moving_objects": moving_slots.sum(-1).astype(jnp.float32),
    }


_oracle_sums_jit = jax.jit(oracle_sums, static_argnames=("config", "frame_t_shifts"))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def summarize(totals: dict, num_samples: int) -> dict:
    """Pooled means and counts from summed :data:`SUM_KEYS` totals."""
    baseline = _ratio(totals["moving_baseline"], totals["moving_pixels"])
    mal = _ratio(totals["moving_mal"], totals["moving_pixels"])
    uncovered_pixels = totals["moving_pixels"] - totals["covered_pixels"]
    inside = {key: totals[f"moving_{key}"] - totals[f"clipped_{key}"]
              for key in ("pixels", "baseline", "mal")}
    return {
        "num_samples": num_samples,
        "moving_pixels": int(totals["moving_pixels"]),
        "static_pixels": int(totals["static_pixels"]),
        "moving_objects": int(totals["moving_objects"]),
        "matched_objects": int(totals["matched_objects"]),
        "matched_moving_objects": int(totals["matched_moving_objects"]),
        "moving_baseline": baseline,
        "moving_mal": mal,
        "reduction_percent": 100.0 * _ratio(baseline - mal, baseline),
        "static_baseline": _ratio(totals["static_baseline"], totals["static_pixels"]),
        "static_mal": _ratio(totals["static_mal"], totals["static_pixels"]),
        "moving_covered_fraction": _ratio(totals["covered_pixels"], totals["moving_pixels"]),
        "covered_baseline": _ratio(totals["covered_baseline"], totals["covered_pixels"]),
        "covered_mal": _ratio(totals["covered_mal"], totals["covered_pixels"]),
        "uncovered_baseline": _ratio(totals["uncovered_baseline"], uncovered_pixels),
        "uncovered_mal": _ratio(totals["uncovered_mal"], uncovered_pixels),
        "hint_chosen_fraction": _ratio(totals["hint_chosen_pixels"], totals["moving_pixels"]),
        "clipped_fraction": _ratio(totals["clipped_pixels"], totals["moving_pixels"]),
        "clipped_reduction_percent": 100.0 * _ratio(
            totals["clipped_baseline"] - totals["clipped_mal"], totals["clipped_baseline"]),
        "inside_reduction_percent": 100.0 * _ratio(
            inside["baseline"] - inside["mal"], inside["baseline"]),
    }


def iter_batches(split: str, count: int, batch_size: int, **render):
    """Batches of :func:`load_triplets` over the first ``count`` samples, with the number of
    real samples in each. Every batch has ``batch_size`` samples so that one compilation serves
    them all: the last one is padded with repeats of its first sample (drop their results)."""
    if count <= 0 or batch_size <= 0:
        raise ValueError(
            f"oracle: num_samples and batch_size must be positive, got {count} and {batch_size}")
    for start in range(0, count, batch_size):
        indices = list(range(start, min(start + batch_size, count)))
        real = len(indices)
        indices += [indices[0]] * (batch_size - real)
        yield load_triplets(split, indices, **render), real


def run_oracle(
    split: str = "test",
    num_samples: int | None = None,
    *,
    height: int = 96,
    width: int = 320,
    seed: int = 0,
    batch_size: int = 8,
    max_instances: int = 16,
    config: TemporalHintConfig = DEFAULT_HINTS,
    frame_t_shifts: bool = False,
) -> dict:
    """Run the oracle over the first ``num_samples`` samples of ``split`` (default: all)."""
    split = synthetic.canonical_split(split)
    count = synthetic.DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
    totals = dict.fromkeys(SUM_KEYS, 0.0)
    for batch, real in track(iter_batches(split, count, batch_size, height=height, width=width,
                                          seed=seed, max_instances=max_instances),
                             math.ceil(count / batch_size), "oracle"):
        sums = jax.device_get(_oracle_sums_jit(batch, config, frame_t_shifts))
        for key in SUM_KEYS:
            totals[key] += float(np.sum(np.asarray(sums[key], np.float64)[:real]))
    return summarize(totals, count)


def format_report(summary: dict) -> list[str]:
    """Human-readable lines; the last is ``moving_reproj baseline=.. mal=.. reduction=..``."""
    s = summary
    return [
        f"samples={s['num_samples']} moving_pixels={s['moving_pixels']} "
        f"static_pixels={s['static_pixels']}",
        f"objects: moving={s['moving_objects']} matched={s['matched_objects']} "
        f"matched_moving={s['matched_moving_objects']}",
        f"moving pixels on matched objects: {100 * s['moving_covered_fraction']:.1f}% "
        f"(baseline={s['covered_baseline']:.5f} mal={s['covered_mal']:.5f}); elsewhere "
        f"baseline={s['uncovered_baseline']:.5f} mal={s['uncovered_mal']:.5f}",
        f"moving pixels where a hint wins: {100 * s['hint_chosen_fraction']:.1f}%",
        f"moving pixels of objects cut by the image border in some frame: "
        f"{100 * s['clipped_fraction']:.1f}% (reduction {s['clipped_reduction_percent']:.1f}%); "
        f"of objects in view in all frames: reduction {s['inside_reduction_percent']:.1f}%",
        f"static_reproj baseline={s['static_baseline']:.5f} mal={s['static_mal']:.5f}",
        f"moving_reproj baseline={s['moving_baseline']:.5f} mal={s['moving_mal']:.5f} "
        f"reduction={s['reduction_percent']:.1f}",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="first N samples of the split (default: the whole split)")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_instances", type=int, default=16)
    parser.add_argument("--replace", action="store_true",
                        help="temporal hints with replace=True (half-motions < 3 px ignored)")
    parser.add_argument("--frame_t_shifts", action="store_true",
                        help="move each warped object onto its frame-t box instead of MAL's "
                             "estimate")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    config = TemporalHintConfig(replace=args.replace)
    summary = run_oracle(
        args.split,
        args.num_samples,
        height=args.height,
        width=args.width,
        seed=args.seed,
        batch_size=args.batch_size,
        max_instances=args.max_instances,
        config=config,
        frame_t_shifts=args.frame_t_shifts,
    )
    summary.update(
        split=synthetic.canonical_split(args.split),
        height=args.height,
        width=args.width,
        seed=args.seed,
        replace=args.replace,
        frame_t_shifts=args.frame_t_shifts,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(
        f"oracle split={summary['split']} size={args.height}x{args.width} seed={args.seed} "
        f"replace={args.replace} frame_t_shifts={args.frame_t_shifts}"
    )
    for line in format_report(summary):
        print(line)


if __name__ == "__main__":
    main()
