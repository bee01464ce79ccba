"""MAL temporal hints: synthesize frame t from the warped frames t-1 and t+1 under linear motion.

Rigid warping with the camera pose leaves independently moving objects at their positions of
t-1 and t+1. Assuming constant velocity, an object of frame t sits halfway between the two, so
the reference (MAL, ``generate_dynamic_instance``) moves each matched object of warped t-1
forward by half its displacement and each of warped t+1 back by the same amount. The two
synthesized frames become two extra candidates of the minimum reprojection loss.

Exact behaviour reproduced (rows are the first image axis, columns the second):
- Per object and frame, the box edges are the first/last row (column) holding a mask pixel,
  except that row 0 (column 0) never counts: the reference finds edges through sums of
  ``mask * index`` that vanish there. An object without pixels gets edges 0.
- Per axis the displacement is the change of the bottom (right) edge or of the top (left)
  edge, whichever is larger in magnitude (ties take bottom / right), then ``round(d / 2)``
  with ties to even. ``replace=True`` zeroes an axis whose half-displacement is under 3 px.
- Background: pixels covered by an object in one frame but not by the same object in the
  other are filled from the other frame.
- The shifted objects (clipped at the border) are summed, not layered: where two moved
  objects overlap the pixel holds the sum of both. Summation runs over slots in order.
- Only pixels inside the union of all objects' masks of both frames change; a moved object
  never reaches outside that union.
- With no matched object the warped frames come back unchanged; used as extra candidates of
  the minimum reprojection loss they then duplicate the plain ones, so the loss equals plain
  ManyDepth exactly (this is what the reference does for such samples).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mal_jax.core.network_losses import HintFn
from mal_jax.mal.instance_matching import (
    DEFAULT_SCORE_THRESHOLD,
    FrameInstances,
    binarize_warped_masks,
    frame_instances,
    match_instances,
    warp_instances,
)

# Half-displacements below this many pixels are treated as static with ``replace=True``.
MIN_MOTION_PX = 3


@dataclasses.dataclass(frozen=True)
class TemporalHintConfig:
    """Static settings of the temporal hints (hashable: pass as a static jit argument).

    ``replace`` defaults to False because the reference's training path hard-codes it so.
    """

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    replace: bool = False
    binarize_threshold: float = 0.5
    source_score_threshold: float = 0.0
    class_cost: float = 1.0
    dice_weight: float = 1.0
    dice_on_sigmoid: bool = True

    def match_settings(self) -> dict:
        """The keyword arguments of :func:`match_instances` these settings fix."""
        return dict(score_threshold=self.score_threshold,
                    binarize_threshold=self.binarize_threshold,
                    source_score_threshold=self.source_score_threshold,
                    class_cost=self.class_cost, dice_weight=self.dice_weight,
                    dice_on_sigmoid=self.dice_on_sigmoid)


def _box_edges(masks: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Last and first index along ``axis`` (1 rows, 2 columns) holding a pixel, per object.

    Index 0 is never counted and a missing edge reads 0, both as in the reference.
    """
    other_axis = 3 - axis
    size = masks.shape[axis]
    index = jnp.arange(size)
    occupied = masks.any(axis=other_axis) & (index > 0)
    far_edge = jnp.max(jnp.where(occupied, index, 0), axis=1)
    near_edge = jnp.min(jnp.where(occupied, index, size), axis=1)
    near_edge = jnp.where(occupied.any(axis=1), near_edge, 0)
    return far_edge, near_edge


def _half_displacement(masks_last: jax.Array, masks_next: jax.Array, axis: int) -> jax.Array:
    """Rounded half of the larger-magnitude edge change between the two frames, per object."""
    far_last, near_last = _box_edges(masks_last, axis)
    far_next, near_next = _box_edges(masks_next, axis)
    far_change = far_next - far_last
    near_change = near_next - near_last
    change = jnp.where(jnp.abs(far_change) >= jnp.abs(near_change), far_change, near_change)
    # jnp.round rounds halves to even, like torch.round.
    return jnp.round(change.astype(jnp.float32) / 2.0).astype(jnp.int32)


def _shift(padded: jax.Array, row_shift: jax.Array, col_shift: jax.Array, height: int, width: int):
    """Window of an array zero-padded by (height, width) on both sides: output[r, c] equals the
    unpadded input at [r - row_shift, c - col_shift], zero outside it."""
    # Beyond a full image size everything is outside anyway; clipping keeps the slice exact.
    row_shift = jnp.clip(row_shift, -height, height)
    col_shift = jnp.clip(col_shift, -width, width)
    # Every start in the shift's integer type (a literal 0 would be int64 under x64).
    zero = jnp.zeros((), row_shift.dtype)
    starts = (height - row_shift, width - col_shift) + (zero,) * (padded.ndim - 2)
    return jax.lax.dynamic_slice(padded, starts, (height, width) + padded.shape[2:])


def _paste_moved_objects(
    masks: jax.Array,
    row_shift: jax.Array,
    col_shift: jax.Array,
    source: jax.Array,
    background: jax.Array,
) -> jax.Array:
    """Move every object of ``source`` by its shift and write it over ``background``."""
    _, height, width = masks.shape
    padded_source = jnp.pad(source, ((height, height), (width, width), (0, 0)))
    padded_masks = jnp.pad(masks, ((0, 0), (height, height), (width, width)))

    def add_object(carry, per_object):
        total, covered = carry
        padded_mask, d_row, d_col = per_object
        moved_mask = _shift(padded_mask, d_row, d_col, height, width)
        moved_pixels = _shift(padded_source, d_row, d_col, height, width)
        total = total + jnp.where(moved_mask[..., None], moved_pixels, 0.0)
        return (total, covered | moved_mask), None

    start = (jnp.zeros_like(source), jnp.zeros((height, width), bool))
    (total, covered), _ = jax.lax.scan(add_object, start, (padded_masks, row_shift, col_shift))
    return jnp.where(covered[..., None], total, background)


def _any_object(masks: jax.Array) -> jax.Array:
    return masks.any(axis=0)[..., None]


def synthesize_linear_motion(
    img_last: jax.Array,
    img_next: jax.Array,
    masks_last: jax.Array,
    masks_next: jax.Array,
    valid: jax.Array,
    replace: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Move matched objects of the warped frames t-1 and t+1 to their linear-motion place at t.

    Args:
      img_last, img_next: warped frames t-1 and t+1, (H, W, 3).
      masks_last, masks_next: (N, H, W) masks (bool, or floats where > 0.5 is inside); index i
        of both is the same object.
      valid: (N,) bool, objects to use; the others are ignored entirely.
      replace: leave an axis unmoved where its half-displacement is under 3 px.

    Returns:
      (syn_last, syn_next), each (H, W, 3).
    """
    if masks_last.dtype != jnp.bool_:
        masks_last = masks_last > 0.5
    if masks_next.dtype != jnp.bool_:
        masks_next = masks_next > 0.5
    keep = valid.astype(bool)[:, None, None]
    masks_last = masks_last & keep
    masks_next = masks_next & keep

    row_shift = _half_displacement(masks_last, masks_next, axis=1)
    col_shift = _half_displacement(masks_last, masks_next, axis=2)
    if replace:
        row_shift = jnp.where(jnp.abs(row_shift) < MIN_MOTION_PX, 0, row_shift)
        col_shift = jnp.where(jnp.abs(col_shift) < MIN_MOTION_PX, 0, col_shift)
    return synthesize_with_shifts(img_last, img_next, masks_last, masks_next,
                                  (row_shift, col_shift), (-row_shift, -col_shift))


def synthesize_with_shifts(
    img_last: jax.Array,
    img_next: jax.Array,
    masks_last: jax.Array,
    masks_next: jax.Array,
    shift_last: tuple[jax.Array, jax.Array],
    shift_next: tuple[jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """The synthesis step of :func:`synthesize_linear_motion` with given whole-pixel shifts.

    ``masks_*`` are (N, H, W) bool with unused objects already cleared; ``shift_last`` and
    ``shift_next`` are (rows, columns) int32 (N,) shifts of the objects of each warped frame
    (MAL: plus and minus half the displacement). The oracle also feeds other shifts here.
    """
    # Per object, not per union: an object's old place is refilled even if another object
    # covers that pixel in the other frame.
    background_last = jnp.where(_any_object(masks_last & ~masks_next), img_next, img_last)
    background_next = jnp.where(_any_object(masks_next & ~masks_last), img_last, img_next)

    moved_last = _paste_moved_objects(masks_last, *shift_last, img_last, background_last)
    moved_next = _paste_moved_objects(masks_next, *shift_next, img_next, background_next)

    touched = _any_object(masks_last | masks_next)
    return jnp.where(touched, moved_last, img_last), jnp.where(touched, moved_next, img_next)


def synthesize_linear_motion_batch(
    img_last: jax.Array,
    img_next: jax.Array,
    masks_last: jax.Array,
    masks_next: jax.Array,
    valid: jax.Array,
    replace: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """:func:`synthesize_linear_motion` over a leading batch axis (B, ...)."""
    per_sample = lambda a, b, c, d, e: synthesize_linear_motion(a, b, c, d, e, replace)
    return jax.vmap(per_sample)(img_last, img_next, masks_last, masks_next, valid)


def _gather_slots(masks: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take(masks, index, axis=0)


def matched_object_masks(current: FrameInstances, prev: FrameInstances,
                         next_: FrameInstances, config: TemporalHintConfig):
    """One sample's matched objects: binary masks (K, H, W) of each frame-t slot's object in
    warped t-1 and in warped t+1 (cleared where unmatched) and the (K,) matched flags."""
    match = match_instances(current, prev, next_, **config.match_settings())
    keep = match.valid[:, None, None]
    masks_last = _gather_slots(
        binarize_warped_masks(prev.masks, config.binarize_threshold), match.last_index
    )
    masks_next = _gather_slots(
        binarize_warped_masks(next_.masks, config.binarize_threshold), match.next_index
    )
    return masks_last & keep, masks_next & keep, match.valid


def _hints_one_sample(warped_prev, warped_next, current, prev, next_, config):
    masks_last, masks_next, valid = matched_object_masks(current, prev, next_, config)
    syn_prev, syn_next = synthesize_linear_motion(
        warped_prev, warped_next, masks_last, masks_next, valid, config.replace
    )
    return syn_prev, syn_next, valid.any()


def temporal_hint_candidates(
    warped_prev: jax.Array,
    warped_next: jax.Array,
    current: FrameInstances,
    prev: FrameInstances,
    next_: FrameInstances,
    config: TemporalHintConfig = TemporalHintConfig(),
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Synthesized candidates for a batch (jit with ``config`` static).

    Args:
      warped_prev, warped_next: (B, H, W, 3) frames t-1 and t+1 warped into frame t.
      current: frame-t instances, masks (B, K, H, W) (e.g. from ``instance_masks``).
      prev, next_: instances of t-1 / t+1 with masks (B, K, H, W) warped into frame t with the
        same sampling grid as the images.
      config: static :class:`TemporalHintConfig`.

    Returns:
      ``(syn_prev, syn_next, has_match)``: (B, H, W, 3) each and (B,) bool. Samples without a
      matched object return the warped frames unchanged, so adding both synthesized frames as
      extra candidates of the minimum reprojection loss (teacher with MAL's ``temporal``,
      student with ``main_temporal``) leaves those samples' loss exactly as in ManyDepth.
    """
    per_sample = lambda a, b, c, d, e: _hints_one_sample(a, b, c, d, e, config)
    return jax.vmap(per_sample)(warped_prev, warped_next, current, prev, next_)


def instance_hints(batch: dict, config: TemporalHintConfig) -> HintFn:
    """The two temporal-hint frames as a ``HintFn`` of either network's warped sources, from
    the batch's instance masks (``instance_ids``/``instance_class``/``instance_score``)."""
    current = frame_instances(batch, 0)
    sources = {f: frame_instances(batch, f) for f in (-1, 1)}

    def hints(warped: dict, grids: dict) -> tuple[jax.Array, jax.Array]:
        prev, next_ = (warp_instances(sources[f], grids[f]) for f in (-1, 1))
        syn_prev, syn_next, _ = temporal_hint_candidates(
            warped[-1], warped[1], current, prev, next_, config)
        return syn_prev, syn_next

    return hints
