"""Instance matching across the warped previous frame, the warped next frame and frame t.

MAL's temporal hints move objects seen in the warped frames t-1 and t+1. An object of frame t
is used only when it can be found in both warped frames. Following the MAL reference, each
warped frame is matched to frame t independently with a Hungarian assignment over the cost

    class_cost * [class differs] + dice_cost * (1 - (2 <p, m> + 1) / (sum p + sum m + 1))

where ``m`` is the binary mask of the frame-t instance and ``p`` is the binary mask of the
warped instance passed through a sigmoid (the reference applies the sigmoid of a logit-based
dice to masks that are already 0/1, so background pixels count 0.5 and object pixels 0.731;
``dice_on_sigmoid=False`` drops that quirk).

Design differences from the reference, on purpose:
- Masks are precomputed per raw frame (an id map per frame, 0 = background, k = slot k-1)
  and the masks of t-1 / t+1 are warped into frame t with the image sampling grid. The
  reference instead segments the warped images, with Mask2Former's ``logit > 0`` rule; the
  soft warped masks are binarised with the analogous ``value > 0.5``.
- Slots are padded to a static K; empty slots (class < 0) and warped instances that lost
  every pixel (out of view) take no part in the assignment.
- A pair whose classes differ is dropped after the assignment (the reference keeps it).
  Within the assignment the costs are the reference's, so the pairs kept are the same.

Everything is jittable and vmappable: no Python loops over slots or samples.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mal_jax.core import geometry
from mal_jax.core.frames import FRAME_INDEX

# The batch keys of the per-frame instance id maps, classes and scores (mal_jax/data/masks.py).
INSTANCE_KEYS = ("instance_ids", "instance_class", "instance_score")
# The reference's detection threshold for instances of frame t (option ``ins_threshold``).
DEFAULT_SCORE_THRESHOLD = 0.9


class FrameInstances(NamedTuple):
    """Instances of one frame: masks (..., K, H, W) in [0, 1], classes (..., K) int32 (-1 marks
    an empty slot) and scores (..., K) float32 (0 for an empty slot)."""

    masks: jax.Array
    classes: jax.Array
    scores: jax.Array


class InstanceMatch(NamedTuple):
    """Per slot of frame t: the slot of the same object in warped t-1 and in warped t+1, and
    whether the object was found in both (indices are meaningless where ``valid`` is False)."""

    last_index: jax.Array
    next_index: jax.Array
    valid: jax.Array


def instance_masks(instance_ids: jax.Array, num_slots: int) -> jax.Array:
    """Turn an id map (..., H, W) with 0 = none and k = slot k-1 into float masks (..., K, H, W).

    Ids above ``num_slots`` are ignored; the data pipeline is expected to keep them in range.
    """
    slot_ids = jnp.arange(1, num_slots + 1, dtype=instance_ids.dtype)
    ids = instance_ids[..., None, :, :]
    return (ids == slot_ids[:, None, None]).astype(jnp.float32)


def frame_instances(batch: dict, frame_id: int) -> FrameInstances:
    """Instances of one frame of a batch laid out as ``mal_jax.core.frames``: masks (B, K, H, W)
    from ``instance_ids`` (B, F, H, W), classes and scores from (B, F, K)."""
    missing = [key for key in INSTANCE_KEYS if key not in batch]
    if missing:
        raise KeyError(f"batch: temporal hints need {missing} (instance masks; see "
                       "mal_jax/data/masks.py) or mal.temporal=mal.main_temporal=False")
    index = FRAME_INDEX[frame_id]
    num_slots = batch["instance_class"].shape[-1]
    return FrameInstances(instance_masks(batch["instance_ids"][:, index], num_slots),
                          batch["instance_class"][:, index], batch["instance_score"][:, index])


def warp_instances(instances: FrameInstances, pix_coords: jax.Array) -> FrameInstances:
    """A source frame's masks resampled into frame 0 with its image's sampling grid
    (``frames.warp_sources``; bilinear, border padding, so soft values, as the warped image a
    segmenter would see). The grid is a constant here: masks carry no gradient to the pose."""
    masks = jnp.moveaxis(instances.masks, 1, -1)
    warped = geometry.grid_sample(masks, jax.lax.stop_gradient(pix_coords), "border")
    return instances._replace(masks=jnp.moveaxis(warped, -1, 1))


def binarize_warped_masks(masks: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Hard masks from bilinearly warped ones: a pixel belongs to an object when more than half
    of its sampling weight does (the analogue of Mask2Former's ``logit > 0``)."""
    return masks > threshold


def dice_cost(source_masks: jax.Array, target_masks: jax.Array, on_sigmoid: bool = True):
    """Dice cost (Ns, Nt) between binary masks (Ns, H, W) and (Nt, H, W).

    ``on_sigmoid`` reproduces the reference, which passes the 0/1 source masks through a
    sigmoid before the dice, as if they were logits.
    """
    source = source_masks.reshape(source_masks.shape[0], -1).astype(jnp.float32)
    target = target_masks.reshape(target_masks.shape[0], -1).astype(jnp.float32)
    if on_sigmoid:
        source = jax.nn.sigmoid(source)
    # Full precision: with the sigmoid quirk the costs of candidates differ by ~1e-4.
    overlap = jnp.einsum("sp,tp->st", source, target, precision=jax.lax.Precision.HIGHEST)
    total = source.sum(-1)[:, None] + target.sum(-1)[None, :]
    return 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)


def _assign_to_targets(
    cost: jax.Array, source_ok: jax.Array, target_ok: jax.Array, forbidden_cost: float
) -> tuple[jax.Array, jax.Array]:
    """For each target column, the source row a minimum-cost assignment gives it, and whether it
    got a real row.

    Rows and columns that must not take part are given ``forbidden_cost`` everywhere. Being
    larger than any real cost, it makes the padded assignment pair as many real rows with real
    columns as possible (any optimum with fewer could swap two padded pairs for a cheaper real
    one), and among those it picks the cheapest: the assignment of the real sub-matrix, as
    scipy's ``linear_sum_assignment`` computes it in the reference.
    """
    usable = source_ok[:, None] & target_ok[None, :]
    padded_cost = jnp.where(usable, cost, forbidden_cost)
    rows, cols = optax.assignment.hungarian_algorithm(padded_cost)
    num_targets = cost.shape[1]
    row_of_target = jnp.zeros((num_targets,), jnp.int32).at[cols].set(rows.astype(jnp.int32))
    assigned = jnp.zeros((num_targets,), bool).at[cols].set(True)
    got_real_row = assigned & target_ok & source_ok[row_of_target]
    return row_of_target, got_real_row


def _match_one_source(
    current: FrameInstances,
    current_ok: jax.Array,
    source: FrameInstances,
    binarize_threshold: float,
    source_score_threshold: float,
    class_cost: float,
    dice_weight: float,
    dice_on_sigmoid: bool,
) -> tuple[jax.Array, jax.Array]:
    """Match one warped frame's instances to frame t's; returns (row per target, matched)."""
    source_masks = binarize_warped_masks(source.masks, binarize_threshold)
    current_masks = current.masks > 0.5
    has_pixels = source_masks.any(axis=(1, 2))
    source_ok = (source.classes >= 0) & (source.scores > source_score_threshold) & has_pixels

    class_differs = source.classes[:, None] != current.classes[None, :]
    cost = class_cost * class_differs.astype(jnp.float32) + dice_weight * dice_cost(
        source_masks, current_masks, dice_on_sigmoid
    )
    forbidden_cost = abs(class_cost) + 2.0 * abs(dice_weight) + 1.0
    row_of_target, matched = _assign_to_targets(cost, source_ok, current_ok, forbidden_cost)
    same_class = source.classes[row_of_target] == current.classes
    return row_of_target, matched & same_class


def match_instances(
    current: FrameInstances,
    warped_last: FrameInstances,
    warped_next: FrameInstances,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    binarize_threshold: float = 0.5,
    source_score_threshold: float = 0.0,
    class_cost: float = 1.0,
    dice_weight: float = 1.0,
    dice_on_sigmoid: bool = True,
) -> InstanceMatch:
    """Match the instances of frame t to those of warped t-1 and warped t+1 (one sample).

    Args:
      current: frame-t instances, masks (K, H, W) binary floats; only slots with
        ``score > score_threshold`` (strict, as the reference) and class >= 0 are candidates.
      warped_last, warped_next: instances of t-1 / t+1 with masks (K', H, W) warped into
        frame t (soft, binarised at ``binarize_threshold``). Slots need class >= 0,
        ``score > source_score_threshold`` (the reference thresholds only frame t) and at least
        one pixel after binarisation.
      class_cost, dice_weight: weights of the reference's cost terms (both 1 there).

    Returns:
      An :class:`InstanceMatch` of shape (K,): per frame-t slot, the matched slot in each warped
      frame, valid when matched in both with the same class.
    """
    current_ok = (current.classes >= 0) & (current.scores > score_threshold)
    settings = (
        binarize_threshold,
        source_score_threshold,
        class_cost,
        dice_weight,
        dice_on_sigmoid,
    )
    last_index, in_last = _match_one_source(current, current_ok, warped_last, *settings)
    next_index, in_next = _match_one_source(current, current_ok, warped_next, *settings)
    return InstanceMatch(last_index, next_index, in_last & in_next & current_ok)
