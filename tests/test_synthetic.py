"""Tests of the synthetic driving-scene dataset: format, determinism, geometry, motion, TFDS."""

import numpy as np
import pytest

from mal_jax.data import synthetic
from mal_jax.data.synthetic_render import SKY
from mal_jax.data.synthetic_scene import CAR, PEDESTRIAN

SMALL = dict(height=48, width=160)


def _bilinear(image, u, v):
    """Bilinear sample of (H, W[, C]) at float pixel coordinates (inside the image)."""
    height, width = image.shape[:2]
    u0 = np.clip(np.floor(u).astype(int), 0, width - 2)
    v0 = np.clip(np.floor(v).astype(int), 0, height - 2)
    a, b = u - u0, v - v0
    if image.ndim == 3:
        a, b = a[..., None], b[..., None]
    return (
        (1 - a) * (1 - b) * image[v0, u0]
        + a * (1 - b) * image[v0, u0 + 1]
        + (1 - a) * b * image[v0 + 1, u0]
        + a * b * image[v0 + 1, u0 + 1]
    )


def _warp(sample, source, per_object=False):
    """Target-frame pixels warped into frame ``source`` with GT depth, poses and K.

    Returns the photometric error per target pixel, the in-image mask and the in-image mask
    without occlusion (source depth agrees with the warped depth).  With ``per_object``,
    pixels of each instance move with that instance's ground-truth pose instead of the world.
    """
    target = 1
    _, height, width, _ = sample["frames"].shape
    K = sample["K"][0, :3, :3].astype(np.float64)
    depth = sample["depth_gt"].astype(np.float64)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack(
        [
            (u - K[0, 2]) / K[0, 0] * depth,
            (v - K[1, 2]) / K[1, 1] * depth,
            depth,
            np.ones_like(depth),
        ],
        -1,
    )
    moved = points @ sample["cam_T_cam"][source].astype(np.float64).T
    if per_object:
        ids = sample["instance_ids"][target]
        for slot in range(sample["instance_class"].shape[1]):
            mask = ids == slot + 1
            if mask.any():
                source_T_target = sample["cam_T_object"][source, slot].astype(np.float64) @ (
                    np.linalg.inv(sample["cam_T_object"][target, slot].astype(np.float64))
                )
                moved[mask] = points[mask] @ source_T_target.T
    z = moved[..., 2]
    us = K[0, 0] * moved[..., 0] / np.maximum(z, 1e-6) + K[0, 2]
    vs = K[1, 1] * moved[..., 1] / np.maximum(z, 1e-6) + K[1, 2]
    inside = (
        (depth > 0) & (z > 0.1) & (us >= 0) & (us <= width - 1) & (vs >= 0) & (vs <= height - 1)
    )
    visible = inside & (np.abs(_bilinear(sample["depth"][source], us, vs) - z) < 0.03 * z)
    error = np.abs(_bilinear(sample["frames"][source], us, vs) - sample["frames"][target])
    return error.mean(-1), inside, visible


@pytest.fixture(scope="module")
def rich_samples():
    """Full-resolution training samples with ground-truth extras."""
    return [synthetic.render_sample("train", i, extras=True) for i in (0, 7, 55, 100)]


def test_sample_format_train_and_eval():
    cases = [("train", 3, (-1, 0, 1)), ("validation", 2, (-1, 0)), ("test", 2, (-1, 0))]
    for split, num_frames, offsets in cases:
        sample = synthetic.render_sample(split, 3, max_instances=5, **SMALL)
        assert tuple(sorted(sample)) == tuple(sorted(synthetic.SAMPLE_KEYS))
        signature = synthetic.sample_signature(48, 160, num_frames, 5)
        for key, (shape, dtype) in signature.items():
            value = np.asarray(sample[key])
            assert value.shape == shape and value.dtype == dtype, (split, key, value.shape)
        frames = sample["frames"]
        assert 0.0 <= frames.min() and frames.max() <= 1.0
        np.testing.assert_array_equal(sample["frames_aug"], frames)
        np.testing.assert_array_equal(sample["cam_T_cam"][offsets.index(0)], np.eye(4))
        assert sample["index"] == 3
        # Frames are exact 8-bit levels (lossless uint8 storage).
        np.testing.assert_array_equal(np.round(frames * 255) / np.float32(255), frames)


def test_intrinsics_pyramid_matches_manydepth_convention():
    K, inv_K = synthetic.intrinsics_pyramid(96, 320)
    np.testing.assert_allclose(
        K[0, :3, :3], [[0.58 * 320, 0, 160], [0, 1.92 * 96, 48], [0, 0, 1]], rtol=1e-6
    )
    # Odd sizes use integer division per scale, as the reference does.
    K_odd, _ = synthetic.intrinsics_pyramid(100, 330)
    np.testing.assert_allclose(K_odd[3, 0, 0], 0.58 * (330 // 8), rtol=1e-6)
    np.testing.assert_allclose(K_odd[3, 1, 2], 0.5 * (100 // 8), rtol=1e-6)
    for scale in range(4):
        np.testing.assert_allclose(K[scale] @ inv_K[scale], np.eye(4), atol=1e-4)


def test_determinism_and_disjoint_splits():
    first = synthetic.render_sample("train", 30, extras=True, **SMALL)
    synthetic.render_sample("train", 31, **SMALL)  # touches the caches in between
    synthetic.scene_for.cache_clear()
    again = synthetic.render_sample("train", 30, extras=True, **SMALL)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    others = [
        synthetic.render_sample(s, 30, offsets=(-1, 0, 1), **SMALL) for s in ("validation", "test")
    ] + [synthetic.render_sample("train", 30, seed=1, **SMALL)]
    for other in others:
        assert np.abs(other["frames"] - first["frames"]).mean() > 0.02
        assert not np.array_equal(other["depth_gt"], first["depth_gt"])


def test_sky_has_zero_depth_and_only_sky_does():
    sky_pixels = 0
    for index in (0, 22, 44):
        sample = synthetic.render_sample("train", index, extras=True, **SMALL)
        sky = sample["surface"][1] == SKY
        sky_pixels += sky.sum()
        np.testing.assert_array_equal(sample["depth_gt"] == 0, sky)
        np.testing.assert_array_equal(sample["depth"][1], sample["depth_gt"])
        assert sample["depth_gt"][~sky].min() > 1.0
        assert sample["depth_gt"].max() < 130.0
        # A plain vertical gradient: the sky colour depends on the image row only.
        for row in np.flatnonzero(sky.any(1)):
            colours = sample["frames"][1, row][sky[row]]
            assert np.ptp(colours, axis=0).max() <= 1.0 / 255 + 1e-6
    assert sky_pixels > 0


def test_instance_slots_are_consistent(rich_samples):
    for sample in rich_samples:
        ids, classes, scores = (
            sample[k] for k in ("instance_ids", "instance_class", "instance_score")
        )
        slot_object = sample["instance_object"]
        used = slot_object >= 0
        assert used.any()
        # Slots are filled from the front; empty slots have no class, score or pixels.
        assert np.all(used[: used.sum()])
        for frame in range(ids.shape[0]):
            for slot in range(len(slot_object)):
                mask = ids[frame] == slot + 1
                if not used[slot]:
                    assert not mask.any() and classes[frame, slot] == -1
                    continue
                np.testing.assert_array_equal(
                    mask, sample["object_map"][frame] == slot_object[slot]
                )
                present = mask.any()
                assert (classes[frame, slot] >= 0) == present
                assert scores[frame, slot] == (1.0 if present else 0.0)
                assert classes[frame, slot] in ((CAR, PEDESTRIAN) if present else (-1,))
        # Every object with enough pixels got a slot (there are fewer than 16 here).
        counts = np.bincount(sample["object_map"][sample["object_map"] >= 0].ravel())
        big = np.flatnonzero(counts >= synthetic.MIN_INSTANCE_PIXELS)
        if len(big) < 16:
            assert set(big) == set(slot_object[used])
    few = synthetic.render_sample("train", 7, max_instances=2, **SMALL)
    assert few["instance_class"].shape == (3, 2) and few["instance_ids"].max() <= 2


def test_moving_objects_move_and_flags_agree(rich_samples):
    seen_moving = seen_static = 0
    for sample in rich_samples:
        world_T_object = sample["world_T_cam"][:, None] @ sample["cam_T_object"]
        step = np.linalg.norm(world_T_object[1, :, :3, 3] - world_T_object[0, :, :3, 3], axis=-1)
        used = sample["instance_object"] >= 0
        moving = sample["instance_moving"]
        assert np.all(step[used & moving] > 0.05)
        assert np.all(step[used & ~moving] < 1e-3)
        seen_moving += (used & moving).sum()
        seen_static += (used & ~moving).sum()
        # moving_mask is exactly the target pixels of moving objects.
        ids = sample["instance_ids"][1]
        for slot in np.flatnonzero(used):
            on_slot = ids == slot + 1
            assert np.all(sample["moving_mask"][on_slot] == moving[slot])
        assert not np.any(sample["moving_mask"] & (sample["object_map"][1] < 0))
    assert seen_moving > 0 and seen_static > 0


def test_warp_with_gt_depth_and_pose_reproduces_static_pixels(rich_samples):
    static_errors, moving_errors = [], []
    for sample in rich_samples:
        for source in (0, 2):
            error, inside, visible = _warp(sample, source)
            static = visible & ~sample["moving_mask"]
            moving = inside & sample["moving_mask"]
            assert static.mean() > 0.5
            static_errors.append(error[static].mean())
            moving_errors.append(error[moving])
    static_error = float(np.mean(static_errors))
    moving_error = float(np.concatenate(moving_errors).mean())
    assert max(static_errors) < 0.05
    assert moving_error > 4 * static_error, (static_error, moving_error)


def test_object_poses_explain_moving_pixels(rich_samples):
    errors = []
    for sample in rich_samples:
        error, _, visible = _warp(sample, 0, per_object=True)
        moving = visible & sample["moving_mask"]
        errors.append(error[moving])
    assert float(np.concatenate(errors).mean()) < 0.05


def test_tf_dataset_is_index_addressed():
    tf = pytest.importorskip("tensorflow")
    ds = synthetic.synthetic_dataset("train", num_samples=4, max_instances=4, **SMALL)
    assert ds.cardinality().numpy() == 4
    assert ds.element_spec["frames"].shape == (3, 48, 160, 3)
    assert ds.element_spec["moving_mask"].dtype == tf.bool
    element = next(iter(ds.skip(2).take(1)))
    reference = synthetic.render_sample("train", 2, max_instances=4, **SMALL)
    for key in synthetic.SAMPLE_KEYS:
        np.testing.assert_array_equal(element[key].numpy(), reference[key], err_msg=key)
    shard = next(iter(ds.shard(2, 1)))  # elements 1 and 3
    assert int(shard["index"]) == 1
    evaluation = synthetic.synthetic_dataset("test", num_samples=1, **SMALL)
    assert evaluation.element_spec["frames"].shape == (2, 48, 160, 3)


def test_tfds_builder_round_trip(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from mal_jax.data.synthetic_tfds import (
        MalSyntheticScenes,
        SyntheticScenesConfig,
        load_synthetic_tfds,
    )

    config = SyntheticScenesConfig(
        name="tiny", height=24, width=64, num_train=3, num_validation=1, num_test=2, max_instances=4
    )
    builder = MalSyntheticScenes(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["test"].num_examples == 2
    for split, count in (("train", 3), ("test", 2)):
        records = list(
            tfds.as_numpy(load_synthetic_tfds(split, data_dir=str(tmp_path), config=config))
        )
        assert len(records) == count
        for index, record in enumerate(records):
            reference = synthetic.render_sample(split, index, height=24, width=64, max_instances=4)
            assert set(record) == set(reference)
            for key, value in reference.items():
                assert record[key].dtype == value.dtype, key
                np.testing.assert_array_equal(record[key], value, err_msg=f"{split} {key}")


def test_locate_keeps_the_consecutive_frames_layout_and_fits_every_stride():
    # Stride 1 is the layout every run so far used: 22 targets per training sequence, 1..22.
    assert [synthetic.locate("train", i) for i in (0, 1, 21, 22)] == [(0, 1), (0, 2), (0, 22),
                                                                      (1, 1)]
    assert [synthetic.locate("test", i) for i in range(5)] == [(0, 1), (0, 8), (0, 15), (0, 22),
                                                               (1, 1)]
    for stride in range(1, synthetic.MAX_STRIDE + 1):
        per_sequence = synthetic.targets_per_sequence("train", stride)
        targets = [synthetic.locate("train", i, stride)[1] for i in range(per_sequence)]
        assert targets == list(range(stride, synthetic.SEQUENCE_LENGTH - stride))
        for i in range(8):
            frame = synthetic.locate("test", i, stride)[1]
            assert stride <= frame < synthetic.SEQUENCE_LENGTH - stride


def test_frame_stride_renders_frames_stride_apart():
    stride = 3
    sample = synthetic.render_sample("train", 5, stride=stride, **SMALL)
    sequence, target = synthetic.locate("train", 5, stride)
    for row, offset in enumerate((-1, 0, 1)):
        view = synthetic.render_frame("train", sequence, target + offset * stride, **SMALL)
        np.testing.assert_array_equal(sample["frames"][row], view["rgb"])
    scene = synthetic.scene_for("train", sequence)
    expected = np.linalg.inv(scene.world_T_cam(target - stride)) @ scene.world_T_cam(target)
    np.testing.assert_allclose(sample["cam_T_cam"][0], expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"frame_stride must be an integer in \[1, 4\], got 5"):
        synthetic.render_sample("train", 0, stride=5, **SMALL)
    with pytest.raises(ValueError, match=r"frame_stride must be an integer in \[1, 4\], got 0"):
        synthetic.render_sample("test", 0, stride=0, **SMALL)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown split 'training'"):
        synthetic.render_sample("training", 0)
    with pytest.raises(ValueError, match="index must be >= 0"):
        synthetic.render_sample("train", -1)
    with pytest.raises(ValueError, match="offsets"):
        synthetic.render_sample("train", 0, offsets=(-2, 0), **SMALL)
    with pytest.raises(ValueError, match="height and width"):
        synthetic.render_sample("train", 0, height=4, width=160)


def test_render_bench_command_prints_rates(capsys):
    from mal_jax.studies import bench_synthetic

    bench_synthetic.main(["--height", "32", "--width", "64", "--frames", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rendered 3 frames at 32x64")
    for line, name in zip(lines[-2:], ("wall_clock_fps", "synthetic_fps"), strict=True):
        key, value = line.split()
        assert key == name and float(value) > 0
