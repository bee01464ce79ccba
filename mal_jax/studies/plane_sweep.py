"""Plane sweeps with the true pose on the embedded test scenes: how much depth the frames hold.

No network: ground-truth depth and camera motion from the renderer.

* :func:`parallax`: how far (in pixels of ManyDepth's 1/4-resolution matching grid) a frame-t
  pixel moves in the lookup frame t-1 between two depths.
* :func:`patch_matching`: ManyDepth's plane sweep at the matching grid's resolution on raw
  4x4 pixel blocks: what a cost volume built there could find at best from these frames.
* :func:`pixel_matching`: the same sweep at full resolution on each pixel's 3x3
  neighbourhood: what the frames hold, before the matching grid's 1/4 resolution.

:func:`measure_parallax` scores both over test scenes (median-scaled AbsRel and a1, and a1
per class of parallax); ``mal_jax.studies.cost_volume_use`` reports it beside its runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core import geometry
from mal_jax.core.frames import frame
from mal_jax.eval import evaluate, presets
from mal_jax.models import matching
from mal_jax.studies import oracle
from mal_jax.train import forward

MATCHING_SCALE = 4  # the cost volume is built at 1/4 of the image resolution (ManyDepth)
# Edges (matching pixels per depth doubling) of the parallax classes the sweeps are scored in.
PARALLAX_EDGES = (0.0, 0.5, 1.0, 2.0, float("inf"))


def parallax(depth: jax.Array, cam_T_cam: jax.Array, K: jax.Array, inv_K: jax.Array,
             far_depth: jax.Array) -> jax.Array:
    """(B, H, W) distance, in matching-grid pixels, between where each frame-t pixel lands in
    the lookup frame at ``depth`` and at ``far_depth`` (both (B, H, W)); ``cam_T_cam``
    (B, 4, 4) maps frame t's camera to the lookup frame's, ``K`` at full resolution."""
    _, height, width = depth.shape
    near = geometry.project_points(geometry.backproject_depth(depth, inv_K), K, cam_T_cam)
    far = geometry.project_points(geometry.backproject_depth(far_depth, inv_K), K, cam_T_cam)
    to_pixels = jnp.asarray([width - 1, height - 1], near.dtype) / 2.0
    return jnp.linalg.norm((near - far) * to_pixels, axis=-1) / MATCHING_SCALE


def image_patches(image: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/s, W/s, s*s*C), s = ``MATCHING_SCALE``: every matching-grid cell's
    pixels as one feature vector."""
    batch, height, width, channels = image.shape
    scale = MATCHING_SCALE
    cells = image.reshape(batch, height // scale, scale, width // scale, scale, channels)
    return cells.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, height // scale, width // scale, scale * scale * channels)


def patch_matching(current: jax.Array, lookup: jax.Array, cam_T_cam: jax.Array, K: jax.Array,
                   bins: jax.Array) -> jax.Array:
    """ManyDepth's plane sweep on image patches (:func:`image_patches`) instead of learned
    features, with the given (true) pose: the lowest-cost disparity (B, H/s, W/s). What the
    frames let a cost volume see at this size and motion, whatever the network learns.
    ``current``, ``lookup`` (B, H, W, 3); ``cam_T_cam`` (B, 4, 4) from frame t's camera to the
    lookup frame's; ``K`` (B, 4, 4) at full resolution."""
    rows = jnp.asarray([1.0 / MATCHING_SCALE, 1.0 / MATCHING_SCALE, 1.0, 1.0])[None, :, None]
    grid_K = K * rows
    return matching.cost_volume(image_patches(current), image_patches(lookup)[:, None],
                                cam_T_cam[:, None], grid_K, jnp.linalg.inv(grid_K), bins)[2]


def neighbourhoods(image: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, 9*C): every pixel's 3x3 neighbourhood (edges repeated)."""
    _, height, width, _ = image.shape
    padded = jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return jnp.concatenate([padded[:, row:row + height, col:col + width]
                            for row in range(3) for col in range(3)], axis=-1)


def pixel_matching(current: jax.Array, lookup: jax.Array, cam_T_cam: jax.Array, K: jax.Array,
                   bins: jax.Array) -> jax.Array:
    """:func:`patch_matching` at full resolution, on 3x3 neighbourhoods
    (:func:`neighbourhoods`): the lowest-cost disparity (B, H, W)."""
    return matching.cost_volume(neighbourhoods(current), neighbourhoods(lookup)[:, None],
                                cam_T_cam[:, None], K, jnp.linalg.inv(K), bins)[2]


def within_125_by_parallax(disparity: np.ndarray, depth: np.ndarray, doubling: np.ndarray,
                           bins: tuple[float, float], scale: int = MATCHING_SCALE):
    """Per image, a sweep's arg-min ``disparity`` (B, H/s, W/s; s = ``scale``) repeated to the
    pixel grid and median-scaled to ``depth`` (B, H, W; 0 = none) as the evaluation scales: (count,
    pixels within 1.25x) of the pixels whose true depth lies inside ``bins`` (the sweep's
    nearest and farthest plane: outside, no plane can be right), in each class of ``doubling``
    (B, H, W), the parallax of a depth doubling (classes split at :data:`PARALLAX_EDGES`)."""
    grid = np.repeat(np.repeat(disparity, scale, 1), scale, 2)
    classes = np.digitize(doubling, PARALLAX_EDGES[1:-1])
    counts, hits = np.zeros(len(PARALLAX_EDGES) - 1), np.zeros(len(PARALLAX_EDGES) - 1)
    for predicted, truth, image_classes in zip(1.0 / grid, depth, classes, strict=True):
        valid = truth > 0
        scaled = predicted[valid] * np.median(truth[valid]) / np.median(predicted[valid])
        within = np.maximum(scaled / truth[valid], truth[valid] / scaled) < 1.25
        in_range = (truth[valid] >= bins[0]) & (truth[valid] <= bins[1])
        image_classes = image_classes[valid][in_range]
        counts += np.bincount(image_classes, minlength=len(counts))
        hits += np.bincount(image_classes, weights=within[in_range], minlength=len(counts))
    return counts, hits


def _scores_by_parallax(classes: np.ndarray) -> list[dict]:
    """(2, classes) counts and hits as ``[{doubling_px, share, a1}]`` per parallax class."""
    return [{"doubling_px": [low, high], "share": float(count / classes[0].sum()),
             "a1": float(hit / count) if count else float("nan")}
            for low, high, count, hit in zip(PARALLAX_EDGES[:-1], PARALLAX_EDGES[1:], *classes,
                                             strict=True)]


# The sweeps measure_parallax scores: (function, its output's resolution divisor).
SWEEPS = {"patch_matching": (patch_matching, MATCHING_SCALE), "pixel_matching": (pixel_matching, 1)}


def measure_parallax(size: tuple[int, int], bins: tuple[float, float], num_samples: int,
                     max_instances: int, stride: int = 1, batch_size: int = 8,
                     num_bins: int = 32) -> dict[str, float]:
    """Ground-truth parallax over the test split's pixels with depth, rendered at ``size``
    (H, W) with frames ``stride`` apart: the fractions below one and half a matching pixel
    when depth doubles, its median, and the fraction whose costs are flat (under one pixel)
    across ``bins``; for each of :data:`SWEEPS` over ``num_bins`` bins spanning ``bins``, the
    median-scaled AbsRel and a1 and the a1 in each class of parallax (pixels whose true depth
    lies inside ``bins``)."""
    doubled, across = [], []
    scores = {name: [] for name in SWEEPS}
    classes = {name: np.zeros((2, len(PARALLAX_EDGES) - 1)) for name in SWEEPS}
    sweeps = {name: jax.jit(function) for name, (function, _) in SWEEPS.items()}
    hypotheses = matching.depth_bins(jnp.float32(bins[0]), jnp.float32(bins[1]), num_bins)
    render = dict(height=size[0], width=size[1], max_instances=max_instances, stride=stride)
    for batch, real in oracle.iter_batches("test", num_samples, batch_size, **render):
        depth = jnp.asarray(batch["depth_gt"])
        pose = frame(jnp.asarray(batch["cam_T_cam"]), forward.LOOKUP_FRAMES[0])
        K, inv_K = jnp.asarray(batch["K"]), jnp.asarray(batch["inv_K"])
        valid = np.asarray(depth > 0)[:real]
        safe = jnp.where(depth > 0, depth, 1.0)
        doubling = np.asarray(parallax(safe, pose, K, inv_K, 2.0 * safe))[:real]
        doubled.append(doubling[valid])
        low, high = (jnp.full_like(safe, b) for b in bins)
        across.append(np.asarray(parallax(low, pose, K, inv_K, high))[:real][valid])
        frames = jnp.asarray(batch["frames"])
        for name, sweep in sweeps.items():
            lowest = sweep(frame(frames, 0), frame(frames, forward.LOOKUP_FRAMES[0]), pose, K,
                           hypotheses)
            errors = evaluate.score_depth(depth, lowest, presets.SYNTHETIC)[0]["all"]
            scores[name].append({key: np.asarray(errors[key])[:real] for key in ("abs_rel", "a1")})
            classes[name] += within_125_by_parallax(
                np.asarray(lowest)[:real], np.asarray(depth)[:real], doubling, bins,
                SWEEPS[name][1])
    doubled, across = np.concatenate(doubled), np.concatenate(across)
    result = {"depth_doubling_below_1px": float(np.mean(doubled < 1.0)),
              "depth_doubling_below_half_px": float(np.mean(doubled < 0.5)),
              "depth_doubling_median_px": float(np.median(doubled)),
              "flat_across_bins": float(np.mean(across < 1.0)),
              "bins": [float(b) for b in bins], "num_pixels": int(doubled.size)}
    for name in SWEEPS:
        for key in ("abs_rel", "a1"):
            result[f"{name}_{key}"] = float(np.mean(np.concatenate([s[key] for s in scores[name]])))
        result[f"{name}_a1_by_parallax"] = _scores_by_parallax(classes[name])
    return result
