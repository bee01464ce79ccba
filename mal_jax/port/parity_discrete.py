"""Parity of the cost volume's discrete outputs, checked where they are well-conditioned.

``lowest_cost`` is an arg-min over 96 depth bins, the confidence mask a count of bins that
land inside the lookup frame's border, the consistency mask a comparison of the arg-min's
depth with the teacher's (both depths within a factor of two). Each is recomputed by the
port in float64 together with its deciding quantity, and ``mal_jax.port.conditioning``
requires agreement only where that quantity is clear of its tie:

* ``lowest_cost``: best and second-best cost more than ``COST_TIE_TOLERANCE`` apart;
* ``confidence_mask``: every bin's projected lookup coordinate more than
  ``BORDER_TOLERANCE`` pixels from the 2-pixel border it is tested against;
* ``consistency_mask``: both of the reference's ratios more than ``RATIO_TOLERANCE`` from 1,
  and the pixel's lowest cost and confidence well-conditioned (it follows both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core import geometry
from mal_jax.models import matching
from mal_jax.port import conditioning
from mal_jax.port.checks import Check
from mal_jax.port.context import EVAL_BINS, TRAIN_BINS, as_float64

# Cost gaps up to this are ties (cost: mean |feature difference|, ~0.6-1 on the golden files).
# The reference's own float32 and float64 training-mode arg-mins differ on 1.1% of the
# 128x384 file's pixels, all with best-two gaps under 8e-6 (scratch rerun of the reference
# code, 2026-12-02); about four times that.
COST_TIE_TOLERANCE = 3e-5
# Projected coordinates within this many pixels of the border test are ties (float32
# coordinates of ~100 px carry ~1e-5 px of rounding).
BORDER_TOLERANCE = 1e-3
# Depth ratios within this of the matching mask's threshold 1 are ties (depths carry ~1e-6
# relative float32 rounding through both networks).
RATIO_TOLERANCE = 1e-4


def _layer1_features(ctx, variables, image, lookup, pose, K2, bins, train):
    """The student's matching encoder's layer1 features of the current and lookup images (run
    as the encoder runs them, so BatchNorm sees the same batches)."""
    net = {"params": variables["params"]["student_encoder"],
           "batch_stats": variables["batch_stats"]["student_encoder"]}
    _, state = ctx.model.student_encoder.apply(
        net, image, lookup[:, None], pose[:, None], K2, jnp.linalg.inv(K2), *bins, train=train,
        capture_intermediates=lambda module, method: module.name == "layer1",
        mutable=["intermediates", "batch_stats"])
    current, lookup_feats = state["intermediates"]["layer1"]["__call__"]
    return current, lookup_feats[:, None]


def _margins(ctx, variables, image, lookup, pose, K2, bins, train):
    current, lookup_feats = _layer1_features(ctx, variables, image, lookup, pose, K2, bins,
                                             train)
    depths = matching.depth_bins(bins[0], bins[1], ctx.model.num_depth_bins)
    cost, _, lowest = matching.cost_volume(current, lookup_feats, pose[:, None], K2,
                                           jnp.linalg.inv(K2), depths)
    batch, height, width, num_bins = cost.shape
    planes = jnp.broadcast_to(depths[None, :, None, None], (batch, num_bins, height, width))

    def project(plane, K, T):
        inv = jnp.linalg.inv(K)
        points = geometry.backproject_depth(plane, jnp.broadcast_to(inv, (num_bins, 4, 4)))
        return geometry.project_points(points, jnp.broadcast_to(K, (num_bins, 4, 4)),
                                       jnp.broadcast_to(T, (num_bins, 4, 4)))

    coords = jax.vmap(project)(planes, K2, pose)  # (B, D, h, w, 2)
    x_pix = (coords[..., 0] / 2 + 0.5) * (width - 1)
    y_pix = (coords[..., 1] / 2 + 0.5) * (height - 1)
    return cost, lowest, x_pix, y_pix


def matching_margins(ctx, variables, image, lookup, pose, K2, bins, train):
    """Float64 ``(lowest_cost, cost margin, border margin in pixels)``, each (B, h, w)."""
    with jax.enable_x64(True):
        args = as_float64((variables, image, lookup, pose, K2))
        cost, lowest, x_pix, y_pix = jax.device_get(jax.jit(
            lambda *a: _margins(ctx, *a, bins, train))(*args))
    height, width = cost.shape[1:3]
    cost_margin = conditioning.best_two_margin(np.where(cost == 0, matching.NO_COST, cost))
    # Where no bin was observed every cost is the placeholder: an exact tie that every
    # implementation resolves to the first bin, whatever the rounding.
    cost_margin = np.where(np.all(cost == 0, axis=-1), np.inf, cost_margin)
    border = np.minimum(
        conditioning.threshold_margin(x_pix, [matching.BORDER_MARGIN,
                                              width - matching.BORDER_MARGIN]),
        conditioning.threshold_margin(y_pix, [matching.BORDER_MARGIN,
                                              height - matching.BORDER_MARGIN])).min(axis=1)
    return lowest, cost_margin, border


def matching_conditioning(ctx, variables, image, lookup, pose, K2, bins, train):
    """Float64 ``(lowest_cost, lowest-cost ill mask, confidence ill mask)``, each (B, h, w)."""
    lowest, cost_margin, border = matching_margins(ctx, variables, image, lookup, pose, K2,
                                                   bins, train)
    return lowest, cost_margin <= COST_TIE_TOLERANCE, border <= BORDER_TOLERANCE


def group_eval_cost_volume(ctx) -> list[Check]:
    """Eval-mode lowest cost and confidence (real pose), and confidence with a zero pose."""
    from mal_jax.port.context import eval_student

    g = ctx.golden
    pose = jnp.asarray(g["eval/relative_pose/-1"])
    _, _, lowest_cost, confidence = eval_student(ctx, pose)
    _, _, _, confidence_zero = eval_student(ctx, jnp.zeros_like(pose))
    _, ill_cost, ill_border = matching_conditioning(
        ctx, ctx.variables, ctx.colors[0], ctx.colors[-1], pose, ctx.batch["K"][:, 2],
        EVAL_BINS, train=False)
    return [
        conditioning.compare_conditioned("lowest_cost", lowest_cost, g["eval/lowest_cost"],
                                         ill_cost | ill_border),
        conditioning.compare_conditioned("confidence_mask", confidence,
                                         g["eval/confidence_mask"], ill_border),
        # A zero pose marks the frame missing: the mask is all zero, nothing is near a tie.
        conditioning.compare_conditioned("confidence_mask_zero_pose", confidence_zero,
                                         g["eval/confidence_mask_zero_pose"],
                                         np.zeros(confidence_zero.shape, bool)),
    ]


def train_discrete_checks(ctx) -> list[Check]:
    """Training-mode lowest cost and consistency mask (full resolution) of the port's float32
    pass against the reference's, required where the port's float64 pass is well-conditioned.
    """
    g = ctx.golden
    outputs32 = ctx.train_outputs()[1]
    outputs64 = ctx.train_float64()[2]
    frames = ctx.batch["frames"]
    _, ill_cost, ill_border = matching_conditioning(
        ctx, ctx.variables, frames[:, 1], frames[:, 0], outputs64["lookup_poses"][:, 0],
        ctx.batch["K"][:, 2], TRAIN_BINS, train=True)
    height, width = frames.shape[2:4]
    ill_lowest = conditioning.upsample_nearest(ill_cost | ill_border, height, width)
    ill_confidence = conditioning.upsample_nearest(ill_border, height, width)
    teacher_depth = np.asarray(outputs64["teacher_depth"][0][..., 0], np.float64)
    matching_depth = 1.0 / np.asarray(outputs64["own_lowest_cost"][..., 0], np.float64)
    ratio = np.minimum(
        conditioning.threshold_margin((matching_depth - teacher_depth) / teacher_depth, 1.0),
        conditioning.threshold_margin((teacher_depth - matching_depth) / matching_depth, 1.0))
    ill_consistency = ill_lowest | ill_confidence | (ratio <= RATIO_TOLERANCE)
    return [
        conditioning.compare_conditioned("lowest_cost", outputs32["lowest_cost"][..., 0],
                                         g["train/lowest_cost"], ill_lowest),
        conditioning.compare_conditioned("consistency_mask",
                                         outputs32["consistency_mask"][..., 0],
                                         g["train/consistency_mask"], ill_consistency),
    ]
