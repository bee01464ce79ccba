"""The cost-volume study: ground-truth parallax against hand-computed shifts, the trust
fractions on hand-made outputs, and the bin-sensitivity check telling a student that reads its
cost volume from one whose cost-volume weights are zero."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_variables import random_variables

from configs.default import get_config
from mal_jax.eval import evaluate, presets
from mal_jax.models.manydepth import ManyDepth
from mal_jax.studies import cost_volume_use, plane_sweep
from mal_jax.train.checkpointing import InferenceModel

HEIGHT, WIDTH = 64, 96


def intrinsics(fx: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    K = np.array([[fx, 0, WIDTH / 2, 0], [0, fx, HEIGHT / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                 np.float32)
    return jnp.asarray(K[None]), jnp.asarray(np.linalg.inv(K)[None])


def test_parallax_of_a_sideways_move_is_fx_t_over_2d_in_matching_pixels():
    # Camera moved t along x: a pixel at depth Z shifts by fx t / Z (full resolution), so
    # doubling Z changes the shift by fx t / (2 Z), a quarter of that on the matching grid.
    fx, t, depth = 80.0, 0.5, 4.0
    K, inv_K = intrinsics(fx)
    pose = jnp.eye(4)[None].at[0, 0, 3].set(t)
    depth_map = jnp.full((1, HEIGHT, WIDTH), depth)
    shift = plane_sweep.parallax(depth_map, pose, K, inv_K, 2 * depth_map)
    np.testing.assert_allclose(np.asarray(shift), fx * t / (2 * depth) / 4, rtol=1e-5)
    still = plane_sweep.parallax(depth_map, jnp.eye(4)[None], K, inv_K, 2 * depth_map)
    np.testing.assert_allclose(np.asarray(still), 0.0, atol=1e-5)  # no motion, no parallax


def test_trust_fractions_hand_computed():
    teacher = jnp.full((1, 2, 2, 1), 10.0)
    # Cost-volume arg-min depths 10, 25 (> 2x), 15, 4 (< 1/2x), given as disparities.
    lowest_cost = 1.0 / jnp.asarray([10.0, 25.0, 15.0, 4.0]).reshape(1, 2, 2, 1)
    outputs = {"teacher_depth": {0: teacher}, "lowest_cost": lowest_cost,
               "confidence": jnp.asarray([[[1.0, 1.0], [1.0, 0.0]]]),
               "consistency_mask": jnp.asarray([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)}
    fractions = cost_volume_use.trust_fractions(outputs)
    assert fractions == pytest.approx({"confidence": 0.75, "agreement": 0.5, "trusted": 0.25})


def test_depth_accuracy_is_median_scaled_against_the_ground_truth():
    depth_gt = jnp.full((1, 2, 4), 10.0)
    # The teacher is the ground truth x3 (median scaling removes it); the student is right on
    # 6 of 8 pixels and 2x too far on 2 (median 10 m: no rescaling), AbsRel 2/8, a1 6/8;
    # the arg-min is 1.2x too near on every pixel before scaling, exact after.
    student = jnp.asarray([10.0, 10.0, 20.0, 10.0, 10.0, 20.0, 10.0, 10.0]).reshape(1, 2, 4, 1)
    outputs = {"teacher_depth": {0: 3.0 * depth_gt[..., None]},
               "student_depth": {0: student},
               "lowest_cost": 1.0 / (depth_gt[..., None] / 1.2)}
    scores = cost_volume_use.depth_accuracy(outputs, depth_gt, presets.SYNTHETIC)
    assert scores == pytest.approx({"matching_abs_rel": 0.0, "matching_a1": 1.0,
                                    "teacher_abs_rel": 0.0, "teacher_a1": 1.0,
                                    "student_abs_rel": 0.25, "student_a1": 0.75}, abs=1e-6)


def test_patch_matching_finds_a_plane_from_a_sideways_move():
    # A textured plane at 5 m; the camera moves 1 m sideways, so with fx = 40 px the lookup
    # frame is the current one shifted right by fx * t / d = 8 px (2 matching pixels).
    height, width, depth = HEIGHT, WIDTH, 5.0
    texture = np.random.default_rng(0).uniform(size=(1, height, width, 3)).astype(np.float32)
    lookup = np.roll(texture, 8, axis=2) + 1e-3  # no exact zero cost (it reads as "missing")
    K, _ = intrinsics(40.0)
    pose = jnp.eye(4)[None].at[0, 0, 3].set(1.0)
    bins = jnp.linspace(1.0, 20.0, 20)  # 1, 2, ..., 20 m
    disparity = plane_sweep.patch_matching(jnp.asarray(texture), jnp.asarray(lookup), pose, K,
                                           bins)
    assert disparity.shape == (1, height // 4, width // 4)
    # Away from the ignored border (matching.BORDER_MARGIN) and the edge np.roll wrapped.
    inside = np.asarray(disparity)[0, 3:-2, 2:-3]
    np.testing.assert_allclose(1.0 / inside, depth, rtol=1e-5)


def test_pixel_matching_finds_a_plane_from_a_sideways_move():
    # As above at full resolution: the textured plane at 5 m, 1 m sideways, fx = 40 px:
    # an 8-pixel shift; every pixel's 3x3 neighbourhood finds the 5 m plane.
    depth = 5.0
    texture = np.random.default_rng(1).uniform(size=(1, HEIGHT, WIDTH, 3)).astype(np.float32)
    lookup = np.roll(texture, 8, axis=2) + 1e-3
    K, _ = intrinsics(40.0)
    pose = jnp.eye(4)[None].at[0, 0, 3].set(1.0)
    bins = jnp.linspace(1.0, 20.0, 20)
    disparity = plane_sweep.pixel_matching(jnp.asarray(texture), jnp.asarray(lookup), pose, K,
                                           bins)
    assert disparity.shape == (1, HEIGHT, WIDTH)
    inside = np.asarray(disparity)[0, 12:-8, 12:-16]  # off the border margin and the wrap
    np.testing.assert_allclose(1.0 / inside, depth, rtol=1e-5)
    # One pixel's neighbourhood: its 3x3 window, row-major, channels last.
    features = np.asarray(plane_sweep.neighbourhoods(jnp.asarray(texture)))
    np.testing.assert_array_equal(features[0, 5, 7].reshape(9, 3),
                                  texture[0, 4:7, 6:9].reshape(9, 3))


def test_patch_sweep_scored_per_parallax_class_hand_computed():
    """One 4x8 image = two matching cells, both swept to 2 m; the truth is 2 m on the left
    (first row without truth) and 5 m on the right, whose parallax classes are 0.3 and 1.5 px
    per depth doubling; only pixels with their truth inside the bins are scored."""
    disparity = np.array([[[0.5, 0.5]]], np.float32)  # (1, 1, 2): 2 m in both cells
    depth = np.zeros((1, 4, 8), np.float32)
    depth[0, :, :4], depth[0, :, 4:] = 2.0, 5.0
    depth[0, 0, :4] = 0.0  # no ground truth on the first row's left half
    doubling = np.where(np.arange(8) < 4, 0.3, 1.5)[None, None].repeat(4, 1)
    counts, hits = plane_sweep.within_125_by_parallax(disparity, depth, doubling, (1.0, 9.0))
    # 12 valid left pixels at 2 m, 16 right at 5 m: median 5 m -> scale 2.5, every pixel
    # predicted 5 m: left 2.5x off, right exact.
    np.testing.assert_array_equal(counts, [12, 0, 16, 0])
    np.testing.assert_array_equal(hits, [0, 0, 16, 0])
    # Bins from 3 m: the left pixels' 2 m lies outside, so they are not scored (the scale is
    # still taken over every pixel, as the evaluation's).
    counts, hits = plane_sweep.within_125_by_parallax(disparity, depth, doubling, (3.0, 9.0))
    np.testing.assert_array_equal(counts, [0, 0, 16, 0])
    np.testing.assert_array_equal(hits, [0, 0, 16, 0])


def test_variants_divide_and_multiply_the_range_or_drop_the_lookup_frame():
    assert cost_volume_use.variants(2.0, 40.0) == {
        "/4": (0.5, 10.0, False), "x4": (8.0, 160.0, False), "no lookup": (2.0, 40.0, True)}


def test_log_change_is_the_mean_absolute_log_ratio():
    reference = np.ones((1, 2, 2))
    varied = np.asarray([[[1.0, np.e], [1.0, 1.0 / np.e]]])
    assert cost_volume_use.log_change(varied, reference) == pytest.approx(0.5)


def test_parse_runs_names_a_bad_item():
    assert cost_volume_use.parse_runs(["a=/x", "b=/y=z"]) == {"a": "/x", "b": "/y=z"}
    with pytest.raises(ValueError, match=r"--runs item '/runs/a': expected name=workdir"):
        cost_volume_use.parse_runs(["/runs/a"])


def test_parallax_names_say_the_stride_when_frames_are_not_consecutive():
    assert cost_volume_use.parallax_name((64, 192), 1) == "64x192"
    assert cost_volume_use.parallax_name((64, 192), 3) == "64x192, frame stride 3"


def test_parse_size_names_a_bad_item():
    assert cost_volume_use.parse_size("96x320") == (96, 320)
    with pytest.raises(ValueError, match=r"--parallax_sizes item '96-320': expected HEIGHTxWIDTH"):
        cost_volume_use.parse_size("96-320")


def cost_volume_gain(variables: dict, gain: float, image_channels: int = 64) -> dict:
    """The student's reduce_conv with its cost-volume input weights multiplied by ``gain``."""
    def scale(path, leaf):
        names = [getattr(key, "key", "") for key in path]
        if "reduce_conv" in names and names[-1] == "kernel":
            return np.concatenate([leaf[:, :, :image_channels],
                                   gain * leaf[:, :, image_channels:]], axis=2)
        return leaf
    return jax.tree_util.tree_map_with_path(scale, variables)


def test_sensitivity_tells_a_student_that_reads_its_cost_volume_from_one_that_does_not():
    config = get_config()
    config.data.num_eval_samples = 3
    config.data.max_instances = 4
    config.evaluation.batch_size = 3
    evaluator = evaluate.Evaluator(config, height=HEIGHT, width=WIDTH)
    model = ManyDepth(num_depth_bins=8)
    # Fan-in-scaled random weights make the cost volume a small part of the decoder's input;
    # x100 makes it count, x0 cuts it off.
    weights = random_variables(model, HEIGHT, WIDTH)
    reads = InferenceModel(model=model, variables=cost_volume_gain(weights, 100.0),
                           min_depth_bin=0.5, max_depth_bin=20.0, height=HEIGHT, width=WIDTH)
    ignores = dataclasses.replace(reads, variables=cost_volume_gain(weights, 0.0))
    reading = cost_volume_use.cost_volume_sensitivity(reads, evaluator)
    ignoring = cost_volume_use.cost_volume_sensitivity(ignores, evaluator)
    scored = evaluator.run(reads)["metrics"]["student"]
    assert reading["own"]["student_all_abs_rel"] == pytest.approx(scored["all"]["abs_rel"])
    assert reading["x4"]["bins"] == [2.0, 80.0]
    for name in ("/4", "x4", "no lookup"):
        assert reading[name]["change"] > 5e-4, name
        assert ignoring[name]["change"] == 0.0, name  # nothing reaches the decoder
    # Without a lookup frame the evaluator scores every sample in single-frame mode.
    single = evaluator.run(reads, without_lookup=True)
    assert single["static_fallback_images"] == 3
    assert single["metrics"]["student"]["all"]["abs_rel"] == pytest.approx(
        reading["no lookup"]["student_all_abs_rel"])
    # The study scores and compares one pass's predictions: the same as a separate pass.
    assert "predictions" not in single
    kept = evaluator.run(reads, without_lookup=True, keep_predictions=True)
    assert kept["metrics"] == single["metrics"]
    separate = evaluator.predictions(reads, without_lookup=True)
    for name in evaluate.MODELS:
        np.testing.assert_array_equal(kept["predictions"][name], separate[name])
        assert kept["predictions"][name].shape == (3, HEIGHT, WIDTH)
