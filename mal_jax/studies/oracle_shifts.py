"""Shifts MAL cannot know, for the oracle: each warped object moved straight onto frame t.

MAL estimates an object's position at t from warped t-1 and warped t+1 alone (half the box
displacement between them). The oracle can also look at the object's mask in frame t and move
each warped copy so that its box lands on the frame-t box. If even those shifts leave the error
high, the displacement estimate is not what limits the temporal hints: a whole-pixel shift of a
warped copy is (perspective, size change, parts out of view).

Per axis the shift moves the box centre onto the frame-t centre, except where the box touches
the image border in either frame: there the other edge (the one the border does not cut) is
moved onto its frame-t place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mal_jax.mal.instance_matching import FrameInstances
from mal_jax.mal.temporal_hints import (
    TemporalHintConfig,
    matched_object_masks,
    synthesize_with_shifts,
)


def _edges(masks: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """First and last occupied index along ``axis`` (1 rows, 2 columns) of (N, H, W) masks;
    an empty mask gives (size, -1)."""
    size = masks.shape[axis]
    occupied = masks.any(axis=3 - axis)
    index = jnp.arange(size)
    first = jnp.min(jnp.where(occupied, index, size), axis=1)
    last = jnp.max(jnp.where(occupied, index, -1), axis=1)
    return first, last


def shift_onto(source: jax.Array, target: jax.Array, axis: int) -> jax.Array:
    """Whole-pixel shifts (N,) along ``axis`` that put each source box onto its target box."""
    size = source.shape[axis]
    source_first, source_last = _edges(source, axis)
    target_first, target_last = _edges(target, axis)
    cut_first = (source_first <= 0) | (target_first <= 0)
    cut_last = (source_last >= size - 1) | (target_last >= size - 1)
    centre = ((target_first + target_last) - (source_first + source_last)) / 2.0
    shift = jnp.where(cut_first & ~cut_last, target_last - source_last,
                      jnp.where(cut_last & ~cut_first, target_first - source_first, centre))
    present = source.any(axis=(1, 2)) & target.any(axis=(1, 2))
    return jnp.where(present, jnp.round(shift), 0).astype(jnp.int32)


def _one_sample(warped_prev, warped_next, current, prev, next_, config):
    masks_last, masks_next, valid = matched_object_masks(current, prev, next_, config)
    masks_now = (current.masks > 0.5) & valid[:, None, None]
    shift_last = (shift_onto(masks_last, masks_now, 1), shift_onto(masks_last, masks_now, 2))
    shift_next = (shift_onto(masks_next, masks_now, 1), shift_onto(masks_next, masks_now, 2))
    return synthesize_with_shifts(warped_prev, warped_next, masks_last, masks_next, shift_last,
                                  shift_next)


def frame_t_hint_candidates(
    warped_prev: jax.Array,
    warped_next: jax.Array,
    current: FrameInstances,
    prev: FrameInstances,
    next_: FrameInstances,
    config: TemporalHintConfig,
) -> tuple[jax.Array, jax.Array]:
    """Like ``temporal_hint_candidates`` (same matching, synthesis and arguments), but every
    warped object moves by :func:`shift_onto` its frame-t box; returns (syn_prev, syn_next)."""
    per_sample = lambda a, b, c, d, e: _one_sample(a, b, c, d, e, config)
    return jax.vmap(per_sample)(warped_prev, warped_next, current, prev, next_)
