"""KITTI loaders on a tiny generated tree (missing neighbours under both policies, truncated
and corrupt images as one-line errors through the pipeline), and the velodyne GT export."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mal_jax.data import kitti, kitti_gt, pipeline
from mal_jax.data import masks as masks_lib
from mal_jax.studies.kitti_tree import write_kitti_like_tree

H, W = 32, 96
RAW = (60, 200)
DRIVE = "2011_09_26/2011_09_26_drive_0001_sync"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti"))
    split = write_kitti_like_tree(
        root, frames_per_drive=5, image_size=RAW, with_velodyne=True
    )
    return root, split


def _write_split(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _image(root, frame, camera=2):
    return os.path.join(root, DRIVE, f"image_0{camera}", "data", f"{frame:010d}.jpg")


def _samples(source, epoch=0):
    return list(pipeline.numpy_batches(source, pipeline.source_dataset(source, epoch)))


def test_shapes_intrinsics_and_pil_resize(tree):
    root, split = tree
    source = kitti.kitti_source(root, split, height=H, width=W, train=False)
    samples = _samples(source)
    assert len(samples) == 3  # frames 1..3 of 0..4
    sample = samples[0]
    assert sample["frames"].shape == (3, H, W, 3) and sample["frames"].dtype == np.float32
    assert sample["instance_ids"].shape == (3, H, W)
    np.testing.assert_array_equal(sample["frames_aug"], sample["frames"])
    for offset, frame in zip((-1, 0, 1), sample["frames"], strict=True):
        expected = (
            Image.open(_image(root, 1 + offset))
            .convert("RGB")
            .resize((W, H), Image.Resampling.LANCZOS)
        )
        np.testing.assert_array_equal(np.round(frame * 255).astype(np.uint8), np.asarray(expected))
    for scale in range(4):
        w_s, h_s = W // 2**scale, H // 2**scale
        np.testing.assert_allclose(
            sample["K"][scale, 0, [0, 2]], [0.58 * w_s, 0.5 * w_s], rtol=1e-6
        )
        np.testing.assert_allclose(
            sample["K"][scale, 1, [1, 2]], [1.92 * h_s, 0.5 * h_s], rtol=1e-6
        )
    np.testing.assert_allclose(
        sample["inv_K"] @ sample["K"], np.broadcast_to(np.eye(4), (4, 4, 4)), atol=1e-5
    )
    assert [s["index"] for s in samples] == [0, 1, 2]


def test_flip_consistency_frames_masks_k(tree, tmp_path):
    root, split = tree
    masks_root = str(tmp_path / "masks")
    rng = np.random.default_rng(0)
    for frame in range(5):  # left half instance 1, random blob instance 2
        ids = np.zeros(RAW, np.uint8)
        ids[:, : RAW[1] // 2] = 1
        ids[rng.integers(0, RAW[0]), :] = 2
        masks_lib.write_mask_file(
            masks_lib.mask_path_for(_image(root, frame), root, masks_root), ids, [3, 5], [0.9, 0.4]
        )
    plain = _samples(
        kitti.kitti_source(
            root, split, height=H, width=W, train=False, masks="required", masks_root=masks_root
        )
    )
    flips = 0
    for seed in range(3):
        augmented = _samples(
            kitti.kitti_source(
                root,
                split,
                height=H,
                width=W,
                train=True,
                seed=seed,
                masks="required",
                masks_root=masks_root,
            )
        )
        for ref, aug in zip(plain, augmented, strict=True):
            flipped = not np.array_equal(aug["frames"], ref["frames"])
            flips += flipped
            ref_frames, ref_ids = ref["frames"], ref["instance_ids"]
            if flipped:
                ref_frames, ref_ids = ref_frames[:, :, ::-1], ref_ids[:, :, ::-1]
            np.testing.assert_array_equal(aug["frames"], ref_frames)
            np.testing.assert_array_equal(aug["instance_ids"], ref_ids)
            np.testing.assert_array_equal(aug["K"], ref["K"])  # the reference keeps K
            np.testing.assert_array_equal(aug["instance_class"][:, :2], [[3, 5]] * 3)
    assert 0 < flips < 9


def test_augmentation_identical_across_frames(tmp_path):
    root = str(tmp_path)
    write_kitti_like_tree(root, frames_per_drive=3, image_size=RAW)
    for frame in (0, 2):  # make all three frames the same picture
        shutil.copyfile(_image(root, 1), _image(root, frame))
    split = _write_split(tmp_path / "s.txt", [f"{DRIVE} 1 l"])
    jittered = 0
    for seed in range(8):
        sample = _samples(kitti.kitti_source(root, split, height=H, width=W, seed=seed))[0]
        aug = sample["frames_aug"]
        np.testing.assert_array_equal(aug[0], aug[1])
        np.testing.assert_array_equal(aug[2], aug[1])
        jittered += not np.array_equal(aug, sample["frames"])
    assert 0 < jittered < 8


def _one_line(error_info) -> str:
    message = str(error_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_neighbour_black_and_error_policies(tree, tmp_path):
    root, _ = tree
    split = _write_split(tmp_path / "edge.txt", [f"{DRIVE} 0 l", f"{DRIVE} 4 l"])
    black = _samples(kitti.kitti_source(root, split, height=H, width=W, train=True))
    np.testing.assert_array_equal(black[0]["frames"][0], 0.0)  # frame -1 of frame 0
    np.testing.assert_array_equal(black[0]["frames_aug"][0], 0.0)
    np.testing.assert_array_equal(black[0]["instance_class"][0], -1)  # empty masks
    np.testing.assert_array_equal(black[1]["frames"][2], 0.0)  # frame +1 of the last frame
    assert black[0]["frames"][1].max() > 0 and black[1]["frames"][1].max() > 0
    assert black[0]["frames"][2].max() > 0  # the neighbour that exists is read
    refused = kitti.kitti_source(root, split, height=H, width=W, missing_neighbour="error")
    # tf.data reads samples in parallel: whichever missing neighbour is read first is named.
    with pytest.raises(
        FileNotFoundError,
        match=r"(-000000001|0000000005)\.jpg: neighbour image missing "
              r"\(data\.missing_neighbour='error'\) \(split line [12] of .*edge\.txt",
    ) as error:
        list(pipeline.train_batches(refused, batch_size=1, num_epochs=1))
    _one_line(error)
    with pytest.raises(ValueError, match="missing_neighbour must be one of"):
        kitti.kitti_source(root, split, height=H, width=W, missing_neighbour="static")


def test_missing_target_and_corrupt_file_errors_name_file_and_line(tree, tmp_path):
    root, _ = tree
    split = _write_split(tmp_path / "bad.txt", [f"{DRIVE} 2 l", f"{DRIVE} 9 l"])
    with pytest.raises(
        FileNotFoundError,
        match=r"0000000009\.jpg: target image missing.*split line 2 .*drive_0001_sync 9 l",
    ) as error:
        _samples(kitti.kitti_source(root, split, height=H, width=W))
    _one_line(error)
    with pytest.raises(ValueError, match=r"c2\.txt:1: expected"):
        kitti.read_split_file(_write_split(tmp_path / "c2.txt", [f"{DRIVE} 1"]))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg_is_one_line_through_the_training_pipeline(tmp_path, damage):
    root = str(tmp_path / "tree")
    split = write_kitti_like_tree(root, frames_per_drive=4, image_size=RAW)  # lines 1, 2
    data = open(_image(root, 3), "rb").read()
    with open(_image(root, 3), "wb") as handle:  # frame +1 of split line 2
        handle.write(data[: len(data) // 3] if damage == "truncated" else b"not a jpeg" * 50)
    source = kitti.kitti_source(root, split, height=H, width=W)
    with pytest.raises(
        ValueError, match=r"0000000003\.jpg: cannot decode image .*split line 2 of .*train_files"
    ) as error:
        list(pipeline.train_batches(source, batch_size=2, num_epochs=1))
    _one_line(error)
    target_split = _write_split(tmp_path / "s3.txt", [f"{DRIVE} 3 l"])  # frame 3 as frame 0
    evaluation = kitti.kitti_eval_source(
        root, target_split, _gt_file(tmp_path, 1), height=H, width=W
    )
    with pytest.raises(
        ValueError, match=r"0000000003\.jpg: cannot decode image .*split line 1 of .*s3\.txt"
    ) as error:
        list(pipeline.eval_batches(evaluation, batch_size=1))
    _one_line(error)


def _gt_file(tmp_path, count: int) -> str:
    path = str(tmp_path / f"gt{count}.npz")
    maps = np.empty(count, object)
    maps[:] = [np.ones(RAW, np.float32) for _ in range(count)]
    np.savez(path, data=maps)
    return path


def test_eval_pairs_with_gt_and_fallback(tree, tmp_path):
    root, _ = tree
    split = _write_split(tmp_path / "test.txt", [f"{DRIVE} 0 l", f"{DRIVE} 3 l"])
    gt_file = str(tmp_path / "gt.npz")
    kitti_gt.export_gt(root, split, gt_file)
    source = kitti.kitti_eval_source(root, split, gt_file, height=H, width=W)
    samples = _samples(source)
    data = np.load(gt_file, allow_pickle=True)["data"]
    assert samples[1]["frames"].shape == (2, H, W, 3)
    np.testing.assert_array_equal(samples[0]["frames"][0], 0.0)  # frame -1 of frame 0: black
    expected_prev = (
        Image.open(_image(root, 2)).convert("RGB").resize((W, H), Image.Resampling.LANCZOS)
    )
    np.testing.assert_array_equal(np.round(samples[1]["frames"][0] * 255), expected_prev)
    np.testing.assert_array_equal(samples[1]["depth_gt"], data[1])
    assert samples[1]["depth_gt"].shape == RAW and source.depth_gt_shapes == (RAW, RAW)
    batches = list(pipeline.eval_batches(source, batch_size=2))
    assert batches[0]["depth_gt"].shape == (2, *RAW)


def _write_calib(calib_dir, projection, size_hw):
    os.makedirs(calib_dir, exist_ok=True)
    with open(os.path.join(calib_dir, "calib_cam_to_cam.txt"), "w") as handle:
        handle.write("calib_time: 09-Jan-2012 13:57:47\n")
        handle.write(f"S_rect_02: {size_hw[1]:e} {size_hw[0]:e}\n")
        handle.write("R_rect_00: 1 0 0 0 1 0 0 0 1\n")
        handle.write("P_rect_02: " + " ".join(str(v) for v in projection.ravel()) + "\n")
    with open(os.path.join(calib_dir, "calib_velo_to_cam.txt"), "w") as handle:
        handle.write("R: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n")


def test_gt_projection_hand_computed(tmp_path):
    # camera = (-y, -z, x) of velodyne; P = [[10, 0, 5, 0], [0, 10, 4, 0], [0, 0, 1, 0]]:
    # pixel u = 10 * (-y) / x + 5, v = 10 * (-z) / x + 4, stored at (round(v) - 1, round(u) - 1).
    root = str(tmp_path)
    projection = np.array([[10.0, 0, 5, 0], [0, 10, 4, 0], [0, 0, 1, 0]])
    _write_calib(os.path.join(root, "2011_09_26"), projection, (8, 10))
    points = np.array(
        [
            [2.0, 0.0, 0.0, 0.3],  # u=5, v=4 -> (row 3, col 4), depth 2
            [5.0, -0.5, -0.25, 0.1],  # u=6, v=4.5 -> numpy rounds half to even: 4 -> (3, 5), 5
            [5.0, 0.0, 0.0, 0.0],  # same pixel as the first, farther: the minimum 2 stays
            [3.0, -1.2, 0.0, 0.0],  # u=9 -> (3, 8), depth 3
            [1.0, -0.5, -0.5, 0.0],  # v=9 -> row 8, outside H=8: dropped
            [-1.0, 0.0, 0.0, 0.0],  # behind the sensor: dropped
            [6.0, 3.0, 0.0, 0.0],  # u=0 -> col -1: dropped
            [2.0, -1.0, 0.0, 0.0],  # u=10 -> (3, 9), depth 2
            [7.0, 0.7, -0.7, 0.0],  # u=4, v=5 -> (4, 3), depth 7
        ],
        np.float32,
    )
    velo_dir = os.path.join(root, DRIVE, "velodyne_points", "data")
    os.makedirs(velo_dir)
    points.tofile(os.path.join(velo_dir, f"{0:010d}.bin"))
    split = _write_split(tmp_path / "s.txt", [f"{DRIVE} 0 l"])
    out = str(tmp_path / "gt.npz")
    assert kitti_gt.main(["--root", root, "--split_file", split, "--out", out]) == 0
    data = np.load(out, allow_pickle=True)["data"]
    assert data.dtype == object and data[0].dtype == np.float32 and data[0].shape == (8, 10)
    expected = np.zeros((8, 10), np.float32)
    expected[3, 4], expected[3, 5], expected[3, 8], expected[3, 9], expected[4, 3] = 2, 5, 3, 2, 7
    np.testing.assert_array_equal(data[0], expected)


def test_gt_duplicate_key_quirk():
    # Key row * (W - 1) + col - 1 makes (r, W-1) and (r+1, 0) one group: the group's minimum
    # lands on the pixel of its first point; the other pixel keeps its own last write.
    width, height = 6, 4
    projection = np.eye(4)[:3]  # points given directly as (u * z, v * z, z)
    pixels = [(2, 5, 9.0), (3, 0, 4.0), (1, 1, 6.0), (1, 1, 5.0)]  # (row, col, depth)
    points = np.array([[(c + 1) * d, (r + 1) * d, d, 1.0] for r, c, d in pixels])
    depth = kitti_gt.project_depth(points, projection, (height, width), velodyne_depth=True)
    # velodyne depth = x = (col + 1) * depth here
    assert depth[2, 5] == min(6 * 9.0, 1 * 4.0)  # first point's pixel gets the group min
    assert depth[3, 0] == 1 * 4.0
    assert depth[1, 1] == 2 * 5.0  # ordinary duplicate: minimum
    assert np.count_nonzero(depth) == 3


def test_gt_errors_name_line(tmp_path):
    root = str(tmp_path)
    _write_calib(os.path.join(root, "2011_09_26"), np.eye(4)[:3], (4, 4))
    split = _write_split(tmp_path / "s.txt", [f"{DRIVE} 7 l"])
    with pytest.raises(FileNotFoundError, match=r"0000000007\.bin: velodyne scan missing.*line 1"):
        kitti_gt.export_gt(root, split, str(tmp_path / "o.npz"))
