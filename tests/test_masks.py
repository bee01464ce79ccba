"""Instance-mask format: selection, resize, required/optional handling, validator command."""

import os

import numpy as np
import pytest

from mal_jax.data import kitti, masks_cli
from mal_jax.data import masks as M
from mal_jax.studies.kitti_tree import write_kitti_like_tree


def test_select_keeps_top_scores_present_and_renumbers():
    ids = np.array([[0, 1, 2], [3, 3, 4], [4, 0, 0]], np.uint8)
    classes = np.array([10, 11, 12, 13, 14], np.int32)  # id 5 (class 14) has no pixels
    scores = np.array([0.2, 0.9, 0.5, 0.7, 0.99], np.float32)
    out_ids, out_cls, out_scores = M.select_instances(ids, classes, scores, max_instances=3)
    # present ids 1..4 ranked by score: 2 (0.9), 4 (0.7), 3 (0.5); id 1 (0.2) dropped
    np.testing.assert_array_equal(out_ids, [[0, 0, 1], [3, 3, 2], [2, 0, 0]])
    np.testing.assert_array_equal(out_cls, [11, 13, 12])
    np.testing.assert_allclose(out_scores, [0.9, 0.7, 0.5])
    _, padded_cls, padded_scores = M.select_instances(ids, classes, scores, max_instances=6)
    np.testing.assert_array_equal(padded_cls, [11, 13, 12, 10, -1, -1])
    np.testing.assert_allclose(padded_scores, [0.9, 0.7, 0.5, 0.2, 0, 0])


def test_resize_nearest_pixel_centres():
    ids = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(
        M.resize_nearest(ids, 6, 2), [[1, 3], [1, 3], [5, 7], [5, 7], [9, 11], [9, 11]]
    )
    np.testing.assert_array_equal(M.resize_nearest(ids, 3, 4), ids)


def test_modes_missing_and_bad_files(tmp_path):
    path = str(tmp_path / "a.npz")
    with pytest.raises(M.MaskFileError, match=r"a\.npz: mask file missing.*line 7"):
        M.load_frame_masks(
            path, height=4, width=4, max_instances=2, mode="required", context=" (split line 7)"
        )
    ids, cls, scores = M.load_frame_masks(path, height=4, width=4, max_instances=2, mode="optional")
    assert ids.shape == (4, 4) and not ids.any() and list(cls) == [-1, -1]
    np.savez(path, ids=np.full((2, 2), 3, np.uint8), classes=np.array([1]), scores=np.ones(1))
    with pytest.raises(M.MaskFileError, match=r"a\.npz: ids reach 3 but only 1"):
        M.load_frame_masks(path, height=4, width=4, max_instances=2, mode="required")
    M.write_mask_file(path, np.array([[0, 1], [2, 2]]), [4, 6], [0.5, 0.8])
    ids, cls, scores = M.load_frame_masks(
        path, height=4, width=4, max_instances=2, mode="required", cols=slice(1, 2)
    )
    np.testing.assert_array_equal(ids, [[2] * 4] * 2 + [[1] * 4] * 2)
    np.testing.assert_array_equal(cls, [6, 4])


def test_validate_command_reports_each_problem(tmp_path, capsys):
    root = str(tmp_path)
    split = write_kitti_like_tree(root, frames_per_drive=4, image_size=(20, 30))
    images = kitti.split_image_paths(root, split)
    masks_root = M.default_masks_root(root)
    for image in sorted(set(images)):
        M.write_mask_file(
            M.mask_path_for(image, root, masks_root), np.ones((20, 30), np.uint8), [1], [0.5]
        )
    assert masks_cli.main(["validate", "--root", root, "--split_file", split]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mask_problems 0"

    drive = "2011_09_26/2011_09_26_drive_0001_sync/image_02/data"
    bad = {f: os.path.join(masks_root, drive, f"{f:010d}.npz") for f in range(4)}
    np.savez(
        bad[0],
        ids=np.ones((10, 30), np.uint8),
        classes=np.array([1], np.int32),
        scores=np.ones(1, np.float32),
    )
    np.savez(
        bad[1],
        ids=np.full((20, 30), 2, np.uint8),
        classes=np.array([1], np.int32),
        scores=np.ones(1, np.float32),
    )
    np.savez(
        bad[2],
        ids=np.ones((20, 30), np.uint8),
        classes=np.array([1, 2], np.int32),
        scores=np.ones(1, np.float32),
    )
    os.remove(bad[3])
    assert masks_cli.main(["validate", "--root", root, "--split_file", split]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "mask_problems 4"
    assert any(
        line.startswith(bad[0]) and "differs from image size (20, 30)" in line for line in lines
    )
    assert any(line.startswith(bad[1]) and "ids reach 2" in line for line in lines)
    assert any(
        line.startswith(bad[2]) and "classes has 2 entries but scores has 1" in line
        for line in lines
    )
    assert any(line.startswith(bad[3]) and "mask file missing" in line for line in lines)
    # Evaluation pairs (frames -1, 0 of split frames 1 and 2) never need frame 3's mask.
    args = ["validate", "--root", root, "--split_file", split, "--split", "eval"]
    assert masks_cli.main(args) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "mask_problems 3" and not any(bad[3] in line for line in lines)
    with pytest.raises(SystemExit, match="invalid choice|2"):
        masks_cli.main(["validate", "--root", root, "--split_file", split, "--dataset", "x"])
