"""Depth-evaluation metrics and the KITTI / Cityscapes protocols of ManyDepth's evaluator.

Everything is per image and jittable: instead of boolean indexing, a validity mask weights the
pixels, and the median used for median scaling is a masked sort. The numbers match
``evaluate_depth.py`` (numpy ``np.median``, i.e. the mean of the two middle values for an even
count). Protocol presets are plain data (``EvalProtocol``); ``evaluate_batch`` composes the steps:
resize the predicted disparity to the (cropped) GT size, invert, window, mask, scale, clamp,
score.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """Numbers of one evaluation protocol.

    Attributes:
      gt_min, gt_max: GT pixels count only if ``gt_min < gt < gt_max``.
      clamp_min, clamp_max: scaled predictions are clamped into this range.
      crop_fractions: (top, bottom, left, right) fractions of the GT height/width of the
        Garg/Eigen crop (truncated to int as the reference does); ``None`` for no crop mask.
      keep_top_fraction: keep only the top ``round(fraction * H)`` GT rows before anything
        else (Cityscapes drops the ego car); the prediction is resized to the kept size.
      window: (row_start, row_stop, col_start, col_stop) slice, in pixels of the kept GT, that
        both GT and prediction are cut to (``None`` entries mean the array end).
      median_scaling: rescale each prediction by median(gt) / median(pred) over valid pixels.
      pred_scale: fixed factor applied before median scaling (5.4 for stereo models).
    """

    gt_min: float = 1e-3
    gt_max: float = 80.0
    clamp_min: float = 1e-3
    clamp_max: float = 80.0
    crop_fractions: tuple[float, float, float, float] | None = None
    keep_top_fraction: float | None = None
    window: tuple[int | None, int | None, int | None, int | None] | None = None
    median_scaling: bool = True
    pred_scale: float = 1.0


EIGEN_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)

KITTI_EIGEN = EvalProtocol(crop_fractions=EIGEN_CROP_FRACTIONS)
"""KITTI Eigen split, monocular: Garg crop, GT in (1e-3, 80), median scaling."""

CITYSCAPES = EvalProtocol(keep_top_fraction=0.75, window=(256, None, 192, 1856))
"""ManyDepth's Cityscapes test: top 75% of GT, then rows 256: and columns 192:1856."""


def eigen_crop_mask(
    height: int, width: int, fractions: tuple[float, float, float, float] = EIGEN_CROP_FRACTIONS
) -> np.ndarray:
    """Static (H, W) bool mask of the Garg/Eigen crop for a GT of this size.

    Bounds are ``int32(fraction * size)`` (truncation), rows ``[top, bottom)``, columns
    ``[left, right)``; e.g. 375 x 1242 gives rows 153:371 and columns 44:1197.
    """
    top, bottom, left, right = np.array(
        [fractions[0] * height, fractions[1] * height, fractions[2] * width, fractions[3] * width]
    ).astype(np.int32)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def range_mask(gt: jax.Array, min_depth: float, max_depth: float) -> jax.Array:
    """Bool mask of GT pixels with ``min_depth < gt < max_depth`` (strict, as the reference)."""
    return (gt > min_depth) & (gt < max_depth)


def masked_median(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-image median of ``values`` (B, ...) over ``mask``; numpy convention, NaN if empty.

    For an even count this is the mean of the two middle values (``np.median``), not the
    lower one (``torch.median``).
    """
    batch = values.shape[0]
    flat = values.reshape(batch, -1)
    valid = mask.reshape(batch, -1)
    ordered = jnp.sort(jnp.where(valid, flat, jnp.inf), axis=-1)
    count = jnp.sum(valid, axis=-1)
    lower = jnp.clip((count - 1) // 2, 0, flat.shape[1] - 1)
    upper = jnp.clip(count // 2, 0, flat.shape[1] - 1)
    pick = lambda idx: jnp.take_along_axis(ordered, idx[:, None], axis=-1)[:, 0]
    median = 0.5 * (pick(lower) + pick(upper))
    return jnp.where(count > 0, median, jnp.nan)


def median_scale(gt: jax.Array, pred: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scale each prediction by ``median(gt) / median(pred)`` over ``mask``.

    Returns ``(scaled pred, ratio (B,))``.
    """
    ratio = masked_median(gt, mask) / masked_median(pred, mask)
    return pred * ratio.reshape((-1,) + (1,) * (pred.ndim - 1)), ratio


def compute_depth_errors(
    gt: jax.Array, pred: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """The seven standard depth metrics per image, over the pixels where ``mask`` is true.

    ``gt``, ``pred`` and ``mask`` share a shape (B, ...); each metric comes back as (B,).
    Masked-out pixels may hold anything (zeros included): they are replaced before any log or
    division. Images with no valid pixel give NaN.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"compute_depth_errors: gt {gt.shape} and pred {pred.shape} differ")
    if mask is None:
        mask = jnp.ones(gt.shape, bool)
    if mask.shape != gt.shape:
        raise ValueError(f"compute_depth_errors: mask {mask.shape} and gt {gt.shape} differ")
    axes = tuple(range(1, gt.ndim))
    weight = mask.astype(gt.dtype)
    count = jnp.sum(weight, axis=axes)
    gt = jnp.where(mask, gt, 1.0)
    pred = jnp.where(mask, pred, 1.0)
    mean = lambda x: jnp.sum(x * weight, axis=axes) / count

    thresh = jnp.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        "abs_rel": mean(jnp.abs(diff) / gt),
        "sq_rel": mean(diff**2 / gt),
        "rmse": jnp.sqrt(mean(diff**2)),
        "rmse_log": jnp.sqrt(mean((jnp.log(gt) - jnp.log(pred)) ** 2)),
        "a1": mean((thresh < 1.25).astype(gt.dtype)),
        "a2": mean((thresh < 1.25**2).astype(gt.dtype)),
        "a3": mean((thresh < 1.25**3).astype(gt.dtype)),
    }


def keep_top_rows(gt: jax.Array, fraction: float) -> jax.Array:
    """Keep the top ``round(fraction * H)`` rows of (B, H, W) GT (Python's round, as the
    reference)."""
    return gt[:, : int(round(gt.shape[1] * fraction))]


def apply_window(
    depth: jax.Array, window: tuple[int | None, int | None, int | None, int | None]
) -> jax.Array:
    """Cut (B, H, W) maps to ``[row_start:row_stop, col_start:col_stop]``."""
    row_start, row_stop, col_start, col_stop = window
    return depth[:, row_start:row_stop, col_start:col_stop]


def resize_disparity(disp: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear (half-pixel centres, no antialiasing) resize of (B, h, w) disparities to the GT
    size, like ``cv2.resize`` with its default linear interpolation."""
    return jax.image.resize(disp, (disp.shape[0], height, width), method="linear", antialias=False)


def evaluate_batch(
    gt: jax.Array, pred_disp: jax.Array, protocol: EvalProtocol, valid: jax.Array | None = None
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Score predicted disparities (B, h, w) against GT depths (B, H, W) under ``protocol``.

    ``pred_disp`` is the scaled disparity (``disp_to_depth(...)[0]``) at network resolution.
    ``valid`` (same shape as ``gt``) optionally excludes further GT pixels. The crop, the
    resize and the window are computed from the batch's GT size, so batch only GTs of one
    size together (KITTI's Eigen test set has a few sizes: group by size). Returns per-image
    metrics (B,) and median-scaling ratios (B,) (ones when ``protocol.median_scaling`` is off).
    Jittable with ``protocol`` static.
    """
    if protocol.keep_top_fraction is not None:
        gt = keep_top_rows(gt, protocol.keep_top_fraction)
        if valid is not None:
            valid = keep_top_rows(valid, protocol.keep_top_fraction)
    _, height, width = gt.shape
    pred = 1.0 / resize_disparity(pred_disp, height, width)
    if protocol.window is not None:
        gt = apply_window(gt, protocol.window)
        pred = apply_window(pred, protocol.window)
        if valid is not None:
            valid = apply_window(valid, protocol.window)
        height, width = gt.shape[1:]

    mask = range_mask(gt, protocol.gt_min, protocol.gt_max)
    if protocol.crop_fractions is not None:
        mask = mask & jnp.asarray(eigen_crop_mask(height, width, protocol.crop_fractions))
    if valid is not None:
        mask = mask & valid

    pred = pred * protocol.pred_scale
    if protocol.median_scaling:
        pred, ratio = median_scale(gt, pred, mask)
    else:
        ratio = jnp.ones(gt.shape[:1], pred.dtype)
    pred = jnp.clip(pred, protocol.clamp_min, protocol.clamp_max)
    return compute_depth_errors(gt, pred, mask), ratio
