"""Tests of MAL's temporal hints: instance matching and linear-motion synthesis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.mal.instance_matching import FrameInstances, instance_masks, match_instances
from mal_jax.mal.temporal_hints import (
    TemporalHintConfig,
    synthesize_linear_motion,
    synthesize_linear_motion_batch,
    temporal_hint_candidates,
)

BATCH, SLOTS, HEIGHT, WIDTH = 2, 3, 24, 32

_synthesize = jax.jit(synthesize_linear_motion, static_argnames="replace")
_match = jax.jit(match_instances)

# Every trace of the batched pipeline appends here, so recompilation is observable.
_pipeline_traces = []


def _counted_pipeline(warped_prev, warped_next, current, prev, next_, config):
    _pipeline_traces.append(None)
    return temporal_hint_candidates(warped_prev, warped_next, current, prev, next_, config)


_pipeline = jax.jit(_counted_pipeline, static_argnames="config")


def _chw(array):
    return np.transpose(array, (1, 2, 0))


@pytest.mark.parametrize("replace", [0, 1])
def test_golden_synthesis_is_pixel_exact(golden, replace):
    syn_last, syn_next = _synthesize(
        _chw(golden["mal/img_last"]),
        _chw(golden["mal/img_next"]),
        golden["mal/mask_last"],
        golden["mal/mask_next"],
        jnp.ones(golden["mal/mask_last"].shape[0], bool),
        replace=bool(replace),
    )
    # Pure copies and sums with zero: bit-for-bit equality is expected, not a tolerance.
    np.testing.assert_array_equal(syn_last, _chw(golden[f"mal/syn_last/replace={replace}"]))
    np.testing.assert_array_equal(syn_next, _chw(golden[f"mal/syn_next/replace={replace}"]))


def _ramp_image(height, width, offset=0.0):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    value = (rows * 10 + cols) / 100.0 + offset
    return np.repeat(value[..., None], 3, axis=-1).astype(np.float32)


def test_overlapping_moved_objects_are_summed():
    img_last, img_next = _ramp_image(6, 8), _ramp_image(6, 8, offset=1.0)
    masks_last = np.zeros((2, 6, 8), bool)
    masks_next = np.zeros((2, 6, 8), bool)
    masks_last[0, 2, 1:4], masks_next[0, 2, 5:8] = True, True  # A: +4 columns, moved by +2
    masks_last[1, 2, 5:8], masks_next[1, 2, 1:4] = True, True  # B: -4 columns, moved by -2
    syn_last, syn_next = _synthesize(img_last, img_next, masks_last, masks_next, jnp.ones(2, bool))
    syn_last, syn_next = np.asarray(syn_last)[..., 0], np.asarray(syn_next)[..., 0]
    # Both objects land on columns 3-5; on 3 and 5 (inside the masks' union) their pixels add.
    assert syn_last[2, 3] == pytest.approx(0.21 + 0.25)
    assert syn_last[2, 5] == pytest.approx(0.23 + 0.27)
    # Old places are refilled from the other frame; column 4 lies outside both objects' masks,
    # so it keeps the warped frame even though moved objects pass over it.
    np.testing.assert_allclose(syn_last[2, [1, 2, 6, 7]], 1.0 + np.array([0.21, 0.22, 0.26, 0.27]))
    assert syn_last[2, 4] == pytest.approx(0.24)
    np.testing.assert_array_equal(np.delete(syn_last, 2, axis=0), np.delete(img_last[..., 0], 2, 0))
    assert syn_next[2, 3] == pytest.approx(1.25 + 1.21)
    np.testing.assert_allclose(syn_next[2, [1, 2, 6, 7]], np.array([0.21, 0.22, 0.26, 0.27]))

    # Gradients reach the warped frame (hence depth and pose) through moved pixels only.
    def total_of_syn_last(image):
        moved, _ = synthesize_linear_motion(
            image, img_next, masks_last, masks_next, jnp.ones(2, bool)
        )
        return moved.sum()

    grad = np.asarray(jax.grad(total_of_syn_last)(jnp.asarray(img_last)))[..., 0]
    np.testing.assert_array_equal(grad[2], [1, 1, 0, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(np.delete(grad, 2, axis=0), 1.0)


def test_row_zero_never_counts_as_a_box_edge():
    img_last, img_next = _ramp_image(8, 6), _ramp_image(8, 6, offset=1.0)
    masks_last = np.zeros((1, 8, 6), bool)
    masks_next = np.zeros((1, 8, 6), bool)
    masks_last[0, 0:3, 2:4] = True
    masks_next[0, 3:5, 2:4] = True
    syn_last, _ = _synthesize(img_last, img_next, masks_last, masks_next, jnp.ones(1, bool))
    syn_last = np.asarray(syn_last)[..., 0]
    # Seen edges: last rows 1..2 (row 0 ignored), next rows 3..4: both edges change by 2
    # (tie -> bottom edge), so the object moves by round(2 / 2) = 1 row, not round(3 / 2) = 2.
    np.testing.assert_array_equal(syn_last[0, 2:4], img_next[0, 2:4, 0])
    np.testing.assert_array_equal(syn_last[1:4, 2:4], img_last[0:3, 2:4, 0])
    np.testing.assert_array_equal(syn_last[4, 2:4], img_last[4, 2:4, 0])


def test_invalid_objects_are_ignored():
    img_last, img_next = _ramp_image(8, 6), _ramp_image(8, 6, offset=1.0)
    masks_last = np.zeros((2, 8, 6), bool)
    masks_next = np.zeros((2, 8, 6), bool)
    masks_last[:, 1:3, 1:3] = True
    masks_next[:, 4:6, 2:5] = True
    syn_last, syn_next = synthesize_linear_motion_batch(
        img_last[None], img_next[None], masks_last[None], masks_next[None], jnp.zeros((1, 2), bool)
    )
    np.testing.assert_array_equal(syn_last[0], img_last)
    np.testing.assert_array_equal(syn_next[0], img_next)


def _frame(ids, classes, scores):
    ids = jnp.asarray(ids, jnp.int32)
    return FrameInstances(
        instance_masks(ids, SLOTS),
        jnp.asarray(classes, jnp.int32),
        jnp.asarray(scores, jnp.float32),
    )


def _ids(*boxes, height=16, width=16):
    """Id map with box k (top, bottom, left, right; inclusive-exclusive) as id k+1."""
    ids = np.zeros((height, width), np.int32)
    for slot, box in enumerate(boxes):
        if box is not None:
            top, bottom, left, right = box
            ids[top:bottom, left:right] = slot + 1
    return ids


CAR, PERSON = 1, 2
CAR_BOX, PERSON_BOX, SMALL_CAR_BOX = (4, 8, 4, 8), (10, 14, 10, 14), (1, 3, 10, 14)


def _current():
    ids = _ids(CAR_BOX, PERSON_BOX, SMALL_CAR_BOX)
    return _frame(ids, [CAR, PERSON, CAR], [0.95, 0.92, 0.5])


def _shifted(box, rows, cols):
    return (box[0] + rows, box[1] + rows, box[2] + cols, box[3] + cols)


def test_matching_follows_objects_across_slot_orders():
    # Warped t-1 lists (person, car, small car); warped t+1 (small car, car, person).
    last = _frame(
        _ids(_shifted(PERSON_BOX, 0, -1), _shifted(CAR_BOX, 0, -1), _shifted(SMALL_CAR_BOX, 0, -1)),
        [PERSON, CAR, CAR],
        [0.99, 0.99, 0.99],
    )
    nxt = _frame(
        _ids(_shifted(SMALL_CAR_BOX, 0, 1), _shifted(CAR_BOX, 0, 1), _shifted(PERSON_BOX, 0, 1)),
        [CAR, CAR, PERSON],
        [0.99, 0.99, 0.99],
    )
    match = _match(_current(), last, nxt)
    # The small car of frame t scores 0.5 <= 0.9: never used.
    np.testing.assert_array_equal(match.valid, [True, True, False])
    np.testing.assert_array_equal(match.last_index[:2], [1, 0])
    np.testing.assert_array_equal(match.next_index[:2], [1, 2])


def test_dice_decides_between_objects_of_one_class():
    cars_far_then_near = _ids(_shifted(CAR_BOX, 6, 6), _shifted(CAR_BOX, 0, 1))
    last = _frame(cars_far_then_near, [CAR, CAR, -1], [0.99, 0.99, 0.0])
    match = _match(_current(), last, last)
    assert bool(match.valid[0])
    assert int(match.last_index[0]) == 1


def test_class_mismatch_is_not_matched():
    # In warped t-1 a person sits exactly where frame t has the car: it is the only candidate,
    # the assignment gives it to the car, and the class check must drop the pair.
    # Frame t's person is below threshold, so nothing else competes for that row.
    current = _current()._replace(scores=jnp.array([0.95, 0.1, 0.5]))
    last = _frame(_ids(CAR_BOX, None, None), [PERSON, -1, -1], [0.99, 0.0, 0.0])
    nxt = _frame(_ids(CAR_BOX, None, None), [CAR, -1, -1], [0.99, 0.0, 0.0])
    assert not np.asarray(_match(current, last, nxt).valid).any()
    same_class = last._replace(classes=nxt.classes)
    np.testing.assert_array_equal(_match(current, same_class, nxt).valid, [True, False, False])


def test_low_score_current_instance_is_not_matched():
    boxes = _ids(CAR_BOX, PERSON_BOX, SMALL_CAR_BOX)
    source = _frame(boxes, [CAR, PERSON, CAR], [0.99, 0.99, 0.99])
    current = _frame(boxes, [CAR, PERSON, CAR], [0.9, 0.91, 0.2])
    match = _match(current, source, source)
    # The threshold is strict, as in the reference: exactly 0.9 is too low.
    np.testing.assert_array_equal(match.valid, [False, True, False])


def test_object_found_in_only_one_warped_frame_is_not_used():
    both = _frame(_ids(CAR_BOX, PERSON_BOX, None), [CAR, PERSON, -1], [0.99, 0.99, 0.0])
    car_only = _frame(_ids(CAR_BOX, None, None), [CAR, -1, -1], [0.99, 0.0, 0.0])
    np.testing.assert_array_equal(_match(_current(), both, car_only).valid, [True, False, False])
    np.testing.assert_array_equal(_match(_current(), car_only, both).valid, [True, False, False])


def test_warped_mask_is_binarised_at_one_half():
    # A bilinear warp that leaves every pixel of the person under half weight (out of view).
    ids = _ids(CAR_BOX, PERSON_BOX, None)
    frame = _frame(ids, [CAR, PERSON, -1], [0.99, 0.99, 0.0])
    faded = frame._replace(masks=frame.masks.at[1].multiply(0.5))
    np.testing.assert_array_equal(_match(_current(), frame, faded).valid, [True, False, False])
    kept = frame._replace(masks=frame.masks.at[1].multiply(0.51))
    np.testing.assert_array_equal(_match(_current(), frame, kept).valid, [True, True, False])


def _textured_triplet(rng, step_rows, step_cols, top, left, size):
    """Frames t-1, t, t+1 over one background, a textured square moving at constant velocity."""
    background = rng.uniform(size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    texture = rng.uniform(size=(size, size, 3)).astype(np.float32)
    frames, ids = [], []
    for step in (-1, 0, 1):
        row, col = top + step * step_rows, left + step * step_cols
        frame = background.copy()
        frame[row : row + size, col : col + size] = texture
        frames.append(frame)
        ids.append(_ids((row, row + size, col, col + size), height=HEIGHT, width=WIDTH))
    return frames, ids


def _batch(frames_per_sample, ids_per_sample, classes, scores):
    """Stack per-sample (t-1, t, t+1) frames and ids into the pipeline's arguments."""
    stack = lambda i, items: jnp.asarray(np.stack([item[i] for item in items]))
    instances = [
        FrameInstances(
            instance_masks(stack(i, ids_per_sample), SLOTS),
            jnp.asarray(classes, jnp.int32),
            jnp.asarray(scores, jnp.float32),
        )
        for i in range(3)
    ]
    return stack(0, frames_per_sample), stack(2, frames_per_sample), instances


def test_constant_velocity_object_is_put_back_at_frame_t():
    rng = np.random.default_rng(0)
    frames, ids = _textured_triplet(rng, step_rows=0, step_cols=4, top=8, left=12, size=10)
    empty_frames = [rng.uniform(size=(HEIGHT, WIDTH, 3)).astype(np.float32)] * 3
    empty_ids = [np.zeros((HEIGHT, WIDTH), np.int32)] * 3
    classes = [[CAR, -1, -1], [-1, -1, -1]]
    scores = [[0.97, 0.0, 0.0], [0.0, 0.0, 0.0]]
    warped_prev, warped_next, (prev, current, nxt) = _batch(
        [frames, empty_frames], [ids, empty_ids], classes, scores
    )

    syn_prev, syn_next, has_match = _pipeline(
        warped_prev, warped_next, current, prev, nxt, TemporalHintConfig()
    )
    np.testing.assert_array_equal(has_match, [True, False])
    assert not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(syn_prev[0], frames[1])
    np.testing.assert_array_equal(syn_next[0], frames[1])
    # No matched object: the warped frames come back untouched, so as extra min-reprojection
    # candidates they only duplicate the plain ones.
    np.testing.assert_array_equal(syn_prev[1], warped_prev[1])
    np.testing.assert_array_equal(syn_next[1], warped_next[1])


def test_diagonal_motion_is_restored_only_inside_the_masks_union():
    rng = np.random.default_rng(2)
    frames, ids = _textured_triplet(rng, step_rows=2, step_cols=4, top=8, left=12, size=10)
    masks = [np.asarray(instance_masks(jnp.asarray(i), 1)) > 0.5 for i in ids]
    syn_last, syn_next = _synthesize(frames[0], frames[2], masks[0], masks[2], jnp.ones(1, bool))
    union = (masks[0] | masks[2])[0]
    # The corners of the frame-t square that neither warped mask covers stay as warped: a
    # reference limitation, kept for parity.
    gap = masks[1][0] & ~union
    assert gap.sum() == 2 * 2 * 4
    np.testing.assert_array_equal(np.asarray(syn_last)[~gap], frames[1][~gap])
    np.testing.assert_array_equal(np.asarray(syn_last)[gap], frames[0][gap])
    np.testing.assert_array_equal(np.asarray(syn_next)[~gap], frames[1][~gap])
    np.testing.assert_array_equal(np.asarray(syn_next)[gap], frames[2][gap])


def test_pipeline_compiles_once_for_any_number_of_instances():
    rng = np.random.default_rng(1)
    frames, ids = _textured_triplet(rng, step_rows=0, step_cols=4, top=4, left=10, size=8)
    second, second_ids = _textured_triplet(rng, step_rows=2, step_cols=0, top=12, left=2, size=6)
    two_objects = [np.where(b > 0, b + 1, a) for a, b in zip(ids, second_ids, strict=True)]
    none = [np.zeros((HEIGHT, WIDTH), np.int32)] * 3
    cases = [
        ([ids, none], [[CAR, -1, -1], [-1, -1, -1]], [[0.97, 0, 0], [0, 0, 0]]),
        ([none, none], [[-1, -1, -1], [-1, -1, -1]], [[0, 0, 0], [0, 0, 0]]),
        ([two_objects, ids], [[CAR, PERSON, -1], [CAR, -1, -1]], [[0.97, 0.95, 0], [0.97, 0, 0]]),
    ]
    counts = []
    config = TemporalHintConfig()
    for ids_per_sample, classes, scores in cases:
        warped_prev, warped_next, (prev, current, nxt) = _batch(
            [frames, second], ids_per_sample, classes, scores
        )
        _, _, has_match = _pipeline(warped_prev, warped_next, current, prev, nxt, config)
        counts.append(np.asarray(has_match).tolist())
    assert counts == [[True, False], [False, False], [True, True]]
    # One trace and one executable in this module (the previous test uses the same shapes).
    assert len(_pipeline_traces) == 1
    assert _pipeline._cache_size() == 1


def test_instance_masks_from_ids():
    ids = jnp.array([[0, 1, 3], [2, 2, 0]], jnp.int32)
    masks = instance_masks(ids, 3)
    assert masks.shape == (3, 2, 3) and masks.dtype == jnp.float32
    np.testing.assert_array_equal(masks[0], [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(masks[1], [[0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(masks[2], [[0, 0, 1], [0, 0, 0]])
