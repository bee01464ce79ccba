"""``python -m mal_jax.eval.predict``: per-frame outputs, the rolling previous-frame buffer, the
first frame's empty cost volume, teacher mode, and one-line errors for missing inputs."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_variables import random_variables
from PIL import Image

from mal_jax.core import geometry
from mal_jax.eval import predict
from mal_jax.models.manydepth import ManyDepth

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def inference():
    model = ManyDepth(num_depth_bins=8)
    return types.SimpleNamespace(
        model=model,
        variables=random_variables(model, HEIGHT, WIDTH, seed=3),
        min_depth_bin=0.5,
        max_depth_bin=20.0,
        height=HEIGHT,
        width=WIDTH,
    )


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory):
    """Three 50x70 frames (not the model size: they get resized), named out of listing order."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    for t, name in enumerate(["f_000.png", "f_001.png", "f_002.png"]):
        Image.fromarray(base[:, 5 * t : 5 * t + 70]).save(folder / name)  # camera panning
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def student_outputs(inference, frame_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    assert (
        predict.main(
            ["--checkpoint", "unused", "--frames", str(frame_dir), "--out", str(out)],
            inference=inference,
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def reference_depth(inference):
    """``depth(current, lookup, pose)``: the student called directly (jitted once)."""
    K, inv_K = predict.intrinsics_at_quarter(predict.KITTI_NORMALISED_K, HEIGHT, WIDTH)

    @jax.jit
    def run(variables, current, lookup, pose):
        (disps, *_), _ = inference.model.student(
            variables,
            current[None],
            lookup[None, None],
            pose[None, None],
            K,
            inv_K,
            inference.min_depth_bin,
            inference.max_depth_bin,
            train=False,
        )
        return 1.0 / geometry.disp_to_depth(disps[0][0, ..., 0], 0.1, 100.0)[0]

    return lambda *args: np.asarray(run(inference.variables, *args))


def test_writes_one_npy_and_png_per_frame(student_outputs):
    names = sorted(os.listdir(student_outputs))
    assert names == [f"f_00{i}_depth.{ext}" for i in range(3) for ext in ("npy", "png")]
    for i in range(3):
        depth = np.load(student_outputs / f"f_00{i}_depth.npy")
        assert depth.shape == (HEIGHT, WIDTH) and depth.dtype == np.float32
        assert np.all((depth >= 0.1 - 1e-4) & (depth <= 100.0 + 1e-2))
        with Image.open(student_outputs / f"f_00{i}_depth.png") as image:
            assert image.size == (WIDTH, HEIGHT) and image.mode == "RGB"


def test_first_frame_is_static_mode_and_later_frames_use_the_previous(
    inference, frame_dir, student_outputs, reference_depth
):
    frames = [predict.load_frame(str(frame_dir / f"f_00{i}.png"), HEIGHT, WIDTH) for i in range(3)]
    zero = jnp.zeros((4, 4))
    first = np.load(student_outputs / "f_000_depth.npy")
    # Zero pose: the cost volume is empty, so the lookup frame's content cannot matter.
    np.testing.assert_allclose(first, reference_depth(frames[0], frames[0], zero), rtol=1e-5)
    np.testing.assert_allclose(first, reference_depth(frames[0], 0 * frames[0], zero), rtol=1e-5)

    (axisangle, translation), _ = jax.jit(inference.model.pose, static_argnames="train")(
        inference.variables, frames[1][None], frames[2][None], train=False
    )
    pose = geometry.transformation_from_parameters(axisangle[0, 0], translation[0, 0], invert=True)
    third = np.load(student_outputs / "f_002_depth.npy")
    np.testing.assert_allclose(third, reference_depth(frames[2], frames[1], pose), rtol=1e-4)
    static_third = reference_depth(frames[2], frames[2], zero)
    assert np.abs(third - static_third).max() > 1e-4  # the cost volume was used


def test_teacher_mode_and_explicit_file_list(inference, frame_dir, tmp_path):
    files = [str(frame_dir / "f_002.png"), str(frame_dir / "f_000.png")]
    written = predict.predict_sequence(inference, files, str(tmp_path), mode="teacher")
    assert [os.path.basename(p) for p in written] == ["f_002_depth.npy", "f_000_depth.npy"]
    image = predict.load_frame(files[0], HEIGHT, WIDTH)[None]
    teacher = jax.jit(inference.model.teacher, static_argnames="train")
    (disps, _), _ = teacher(inference.variables, image, train=False)
    expected = 1.0 / geometry.disp_to_depth(disps[0][0, ..., 0], 0.1, 100.0)[0]
    np.testing.assert_allclose(np.load(written[0]), expected, rtol=1e-5)


def test_frame_listing_and_intrinsics(frame_dir, tmp_path):
    listed = predict.list_frames([str(frame_dir)])
    assert [os.path.basename(p) for p in listed] == ["f_000.png", "f_001.png", "f_002.png"]
    K, inv_K = predict.intrinsics_at_quarter(predict.KITTI_NORMALISED_K, 192, 640)
    np.testing.assert_allclose(K[0, :2, :3], [[0.58 * 160, 0, 80], [0, 1.92 * 48, 24]], rtol=1e-6)
    np.testing.assert_allclose(K[0] @ inv_K[0], np.eye(4), atol=1e-5)
    path = tmp_path / "K.json"
    path.write_text(json.dumps([[0.5, 0, 0.5], [0, 1.5, 0.5], [0, 0, 1]]))
    assert predict.read_intrinsics(str(path))[1, 1] == 1.5


def test_missing_inputs_are_one_line_errors(inference, frame_dir, tmp_path):
    out = str(tmp_path / "out")
    missing_frame = str(frame_dir / "f_009.png")
    with pytest.raises(SystemExit, match=r"f_009\.png: frame file missing"):
        predict.main(
            ["--checkpoint", "x", "--frames", missing_frame, "--out", out], inference=inference
        )
    missing_run = str(tmp_path / "no_run")
    with pytest.raises(SystemExit, match="no_run: checkpoint or weights folder missing"):
        predict.main(["--checkpoint", missing_run, "--frames", str(frame_dir), "--out", out])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="empty: no image files"):
        predict.main(
            ["--checkpoint", "x", "--frames", str(empty), "--out", out], inference=inference
        )
    with pytest.raises(SystemExit, match="multiples of 32"):
        predict.main(
            ["--checkpoint", "x", "--frames", str(frame_dir), "--out", out, "--height", "50"],
            inference=inference,
        )
