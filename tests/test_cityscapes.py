"""Cityscapes loaders on tiny generated trees: triplets, eval pairs, crops, intrinsics."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mal_jax.data import cityscapes, pipeline

H, W = 16, 32


def _samples(source):
    return list(pipeline.numpy_batches(source, pipeline.source_dataset(source)))


def test_triplet_split_order_and_intrinsics(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "ulm"))
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    strip = np.concatenate([np.full((24, 64, 3), c, np.uint8) for c in colours], axis=1)
    Image.fromarray(strip).save(os.path.join(root, "ulm", "ulm_000064_000012.png"))
    os.rename(
        os.path.join(root, "ulm", "ulm_000064_000012.png"),
        os.path.join(root, "ulm", "ulm_000064_000012.jpg"),
    )  # lossless content, jpg name
    with open(os.path.join(root, "ulm", "ulm_000064_000012_cam.txt"), "w") as handle:
        handle.write("40.0,0.0,30.0,0.0,44.0,12.0,0.0,0.0,1.0\n")
    split = tmp_path / "train_files.txt"
    split.write_text("ulm ulm_000064_000012\n")
    sample = _samples(
        cityscapes.cityscapes_source(root, str(split), height=H, width=W, train=False)
    )[0]
    means = np.round(sample["frames"].mean(axis=(1, 2)) * 255)
    np.testing.assert_allclose(means, colours, atol=1)  # (-1, 0, +1) = left, middle, right
    k = sample["K"][0]  # normalised by the 64 x 24 frame, scaled to 32 x 16
    np.testing.assert_allclose(
        [k[0, 0], k[0, 2], k[1, 1], k[1, 2]],
        [40 / 64 * W, 30 / 64 * W, 44 / 24 * H, 12 / 24 * H],
        rtol=1e-6,
    )
    np.testing.assert_allclose(sample["K"][2, 0, 0], 40 / 64 * (W // 4), rtol=1e-6)


def _eval_tree(root, with_previous=True):
    city, name, prev = "bonn", "bonn_000001_000019", "bonn_000001_000017"
    target_dir = os.path.join(root, "leftImg8bit", "test", city)
    seq_dir = os.path.join(root, "leftImg8bit_sequence", "test", city)
    cam_dir = os.path.join(root, "camera_trainvaltest", "camera", "test", city)
    for folder in (target_dir, seq_dir, cam_dir, os.path.join(root, "gt")):
        os.makedirs(folder, exist_ok=True)
    target = np.zeros((40, 64, 3), np.uint8)
    target[:30] = 120  # the kept top three quarters
    target[30:] = 250  # the ego-car rows the crop removes
    Image.fromarray(target).save(os.path.join(target_dir, f"{name}_leftImg8bit.png"))
    if with_previous:
        Image.fromarray(np.full((40, 64, 3), 60, np.uint8)).save(
            os.path.join(seq_dir, f"{prev}_leftImg8bit.png")
        )
    with open(os.path.join(cam_dir, f"{name}_camera.json"), "w") as handle:
        json.dump({"intrinsic": {"fx": 64.0, "fy": 60.0, "u0": 32.0, "v0": 15.0}}, handle)
    depth = np.arange(40 * 64, dtype=np.float32).reshape(40, 64)
    np.save(os.path.join(root, "gt", "000_depth.npy"), depth)
    split = os.path.join(root, "test_files.txt")
    with open(split, "w") as handle:
        handle.write(f"{city} {name}\n")
    return split, depth


def test_eval_pair_crop_intrinsics_and_gt(tmp_path):
    root = str(tmp_path)
    split, depth = _eval_tree(root)
    source = cityscapes.cityscapes_eval_source(
        root, split, os.path.join(root, "gt"), height=H, width=W, gt_size=(40, 64)
    )
    sample = _samples(source)[0]
    assert sample["frames"].shape == (2, H, W, 3)
    np.testing.assert_allclose(sample["frames"][0], 60 / 255, atol=1e-6)  # frame -1 (17)
    np.testing.assert_allclose(sample["frames"][1], 120 / 255, atol=1e-6)  # ego rows gone
    k = sample["K"][0]  # normalised by 64 x (40 * 3 // 4 = 30)
    np.testing.assert_allclose(
        [k[0, 0], k[0, 2], k[1, 1], k[1, 2]], [W, W / 2, 60 / 30 * H, 15 / 30 * H], rtol=1e-6
    )
    np.testing.assert_array_equal(sample["depth_gt"], depth[:30])


def test_eval_missing_previous_frame_is_an_error_by_default(tmp_path):
    root = str(tmp_path)
    split, _ = _eval_tree(root, with_previous=False)
    gt_dir = os.path.join(root, "gt")
    with pytest.raises(
        FileNotFoundError,
        match=r"bonn_000001_000017_leftImg8bit\.png: neighbour image missing.*split line 1",
    ) as error:
        _samples(
            cityscapes.cityscapes_eval_source(
                root, split, gt_dir, height=H, width=W, gt_size=(40, 64)
            )
        )
    assert "\n" not in str(error.value)
    black = _samples(
        cityscapes.cityscapes_eval_source(
            root, split, gt_dir, height=H, width=W, gt_size=(40, 64), missing_neighbour="black"
        )
    )
    np.testing.assert_array_equal(black[0]["frames"][0], 0.0)
    np.testing.assert_allclose(black[0]["frames"][1], 120 / 255, atol=1e-6)


def test_corrupt_triplet_file_is_one_line(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "ulm"))
    with open(os.path.join(root, "ulm", "ulm_000064_000012.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 truncated")
    split = tmp_path / "train_files.txt"
    split.write_text("ulm ulm_000064_000012\n")
    source = cityscapes.cityscapes_source(root, str(split), height=H, width=W)
    with pytest.raises(
        ValueError, match=r"ulm_000064_000012\.jpg: cannot decode image .*split line 1"
    ) as error:
        list(pipeline.train_batches(source, batch_size=1, num_epochs=1))
    assert "\n" not in str(error.value)


def test_previous_frame_name():
    assert cityscapes.previous_frame_name("mainz_000001_000120") == "mainz_000001_000118"
    assert cityscapes.previous_frame_name("bonn_000000_000019") == "bonn_000000_000017"
