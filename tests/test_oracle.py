"""Tests of the MAL oracle: hand-built planar scenes with known outcomes, and the CLI."""

import json
import re

import jax
import numpy as np
import pytest

from mal_jax.data.synthetic import intrinsics_pyramid
from mal_jax.mal.temporal_hints import TemporalHintConfig
from mal_jax.studies import oracle, oracle_depth

HEIGHT, WIDTH, SLOTS = 24, 64, 4
WALL_DEPTH = 10.0
CAMERA_STEP_PX = 2  # image motion of the wall per frame
OBJECT_ROWS, OBJECT_COLS = slice(6, 18), slice(26, 38)

# Eager on purpose: under jit, XLA CPU (jax 0.10.2) miscomputes values of this exactly-aligned
# planar warp when the gathered image has several consumers (reported to the integrator;
# reproducer in the report). The jitted path is covered on real samples below.
_maps = oracle.oracle_maps


def _texture(rng, height, width):
    """Smooth random texture (box-blurred noise) so SSIM and L1 both see structure."""
    noise = rng.uniform(size=(height + 2, width + 2, 3))
    blurred = sum(noise[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return (blurred / 9.0).astype(np.float32)


def _planar_scene(object_step_px: int, seed: int = 0) -> dict:
    """A textured wall facing the camera, which slides sideways by CAMERA_STEP_PX per frame,
    and a square object on the wall that moves by ``object_step_px`` per frame in the world
    (in pixels of frame 0). Every shift is a whole pixel, so warping is exact away from the
    border. Batch layout of :func:`oracle.load_triplets` with B = 1."""
    rng = np.random.default_rng(seed)
    margin = 2 * (CAMERA_STEP_PX + abs(object_step_px)) + 2
    wall = _texture(rng, HEIGHT, WIDTH + 2 * margin)
    sticker = 1.0 - _texture(rng, HEIGHT, WIDTH)
    K, inv_K = intrinsics_pyramid(HEIGHT, WIDTH, 1)
    fx = K[0, 0, 0]
    columns = np.arange(WIDTH)

    frames = np.zeros((3, HEIGHT, WIDTH, 3), np.float32)
    ids = np.zeros((3, HEIGHT, WIDTH), np.int32)
    cam_T_cam = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    for row, offset in enumerate(oracle.OFFSETS):
        # The camera moves right: frame f shows the wall point of frame-0 column u + f*step.
        frames[row] = wall[:, margin + columns + offset * CAMERA_STEP_PX]
        cam_T_cam[row, 0, 3] = -offset * CAMERA_STEP_PX * WALL_DEPTH / fx
        shift = offset * (object_step_px - CAMERA_STEP_PX)
        rows, cols = np.mgrid[OBJECT_ROWS, OBJECT_COLS]
        frames[row, rows, cols + shift] = sticker[rows, cols]
        ids[row, rows, cols + shift] = 1

    classes = np.full((3, SLOTS), -1, np.int32)
    classes[:, 0] = 0
    scores = np.zeros((3, SLOTS), np.float32)
    scores[:, 0] = 1.0
    moving = object_step_px != 0
    batch = {
        "frames": frames,
        "depth_gt": np.full((HEIGHT, WIDTH), WALL_DEPTH, np.float32),
        "moving_mask": (ids[1] == 1) & moving,
        "cam_T_cam": cam_T_cam,
        "K": K[0],
        "inv_K": inv_K[0],
        "instance_ids": ids,
        "instance_class": classes,
        "instance_score": scores,
        "instance_moving": np.array([moving] + [False] * (SLOTS - 1)),
    }
    return {key: value[None] for key, value in batch.items()}


def test_static_scene_hints_change_nothing():
    batch = _planar_scene(object_step_px=0)
    maps = jax.device_get(_maps(batch))
    # The object is found in both warped frames, so the hints really ran ...
    assert maps["matched"][0].tolist() == [True, False, False, False]
    # ... but it did not move: the synthesized frames are the warped ones, bit for bit.
    np.testing.assert_array_equal(maps["mal"], maps["baseline"])
    assert not maps["hint_chosen"].any()
    sums = jax.device_get(oracle.oracle_sums(batch))
    assert sums["moving_pixels"][0] == 0
    assert sums["static_mal"][0] == sums["static_baseline"][0]


def test_static_scene_warps_exactly():
    """The ground-truth warp aligns the wall: only the out-of-view strip can disagree."""
    maps = jax.device_get(_maps(_planar_scene(object_step_px=0)))
    # Frame +1 sees columns u + 2, so u >= W - 2 is out of view there but seen by frame -1.
    assert float(maps["baseline"][0, 1:-1, 1:-1].max()) < 1e-4


@pytest.mark.parametrize("object_step_px", [4, -6])
def test_constant_velocity_object_is_fixed_by_the_hints(object_step_px):
    batch = _planar_scene(object_step_px)
    maps = jax.device_get(_maps(batch))
    on_object = batch["moving_mask"][0]
    assert on_object.sum() == 144
    baseline = maps["baseline"][0][on_object].mean()
    mal = maps["mal"][0][on_object].mean()
    assert baseline > 0.05  # the rigid warp leaves the object displaced in both frames
    assert mal < 0.2 * baseline  # linear motion is exact here: only its outline (SSIM) errs
    interior = np.zeros_like(on_object)
    interior[
        OBJECT_ROWS.start + 1 : OBJECT_ROWS.stop - 1, OBJECT_COLS.start + 1 : OBJECT_COLS.stop - 1
    ] = True
    assert maps["mal"][0][interior].max() < 1e-4
    # Hints only touch pixels inside the objects' masks: the wall away from them is unchanged.
    far_away = np.ones_like(on_object)
    far_away[:, OBJECT_COLS.start - 12 : OBJECT_COLS.stop + 12] = False
    np.testing.assert_array_equal(maps["mal"][0][far_away], maps["baseline"][0][far_away])

    sums = jax.device_get(oracle.oracle_sums(batch))
    summary = oracle.summarize({key: float(value.sum()) for key, value in sums.items()}, 1)
    assert summary["moving_pixels"] == 144
    assert summary["matched_moving_objects"] == summary["moving_objects"] == 1
    assert summary["moving_covered_fraction"] == 1.0
    np.testing.assert_allclose(summary["moving_baseline"], baseline, rtol=1e-5)
    np.testing.assert_allclose(summary["moving_mal"], mal, rtol=1e-5)
    assert summary["reduction_percent"] > 80.0
    # The object stays in view in all three frames: none of it counts as cut by the border.
    assert summary["clipped_fraction"] == 0.0
    np.testing.assert_allclose(summary["inside_reduction_percent"], summary["reduction_percent"])


def test_cut_by_border_marks_objects_touching_the_border_in_any_frame():
    ids = np.zeros((1, 3, 6, 8), np.int32)  # border: rows 0 and 5, columns 0 and 7
    ids[0, :, 2:4, 3:5] = 1  # slot 0: inside in every frame
    ids[0, 1, 1:3, 6:8] = 2  # slot 1: touches the right border in frame t
    ids[0, 1, 3:5, 1:3] = 3  # slot 2: inside in frame t ...
    ids[0, 2, 0, 0] = 3  # ... but in the corner of frame t+1
    cut = np.asarray(oracle.cut_by_border(ids, num_slots=3))
    np.testing.assert_array_equal(cut[0], np.isin(ids[0, 1], [2, 3]))
    assert cut[0].sum() == 8


def test_shift_onto_moves_boxes_onto_the_target():
    from mal_jax.studies.oracle_shifts import shift_onto

    source = np.zeros((3, 10, 12), bool)
    target = np.zeros((3, 10, 12), bool)
    source[0, 2:5, 3:6], target[0, 4:8, 6:8] = True, True  # inside: centres (3, 4) -> (5.5, 6.5)
    source[1, 3:6, 0:4], target[1, 3:6, 0:7] = True, True  # cut by the left border: right edge
    source[2, 1:3, 1:3] = True  # no target pixels: not moved
    rows, cols = (np.asarray(shift_onto(source, target, axis)) for axis in (1, 2))
    assert rows.tolist() == [2, 0, 0]  # round(2.5) = 2 (half to even)
    assert cols.tolist() == [2, 3, 0]


@pytest.mark.parametrize("object_step_px", [4, -6])
def test_frame_t_shifts_agree_with_mal_where_motion_is_linear(object_step_px):
    """On a constant-velocity object MAL's half-displacement is the exact shift, so moving the
    warped copies straight onto frame t changes nothing."""
    batch = _planar_scene(object_step_px)
    ours = jax.device_get(_maps(batch, frame_t_shifts=True))
    np.testing.assert_array_equal(ours["mal"], jax.device_get(_maps(batch))["mal"])


def test_unmatched_object_gets_no_hint():
    """With the score below MAL's detection threshold the object is not used: no change."""
    batch = _planar_scene(object_step_px=4)
    batch["instance_score"][:, 1, 0] = 0.5
    maps = jax.device_get(_maps(batch, TemporalHintConfig()))
    assert not maps["matched"].any()
    np.testing.assert_array_equal(maps["mal"], maps["baseline"])


LAST_LINE = re.compile(r"^moving_reproj baseline=(\d+\.\d+) mal=(\d+\.\d+) reduction=(-?\d+\.\d)$")


def test_cli_tiny_run(tmp_path, capsys):
    json_path = tmp_path / "oracle.json"
    oracle.main(
        [
            "--num_samples",
            "3",
            "--batch_size",
            "2",
            "--height",
            "32",
            "--width",
            "96",
            "--json",
            str(json_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    baseline, mal, reduction = (float(v) for v in match.groups())
    assert baseline > 0 and mal <= baseline
    numbers = json.loads(json_path.read_text())
    assert numbers["num_samples"] == 3 and numbers["split"] == "test"
    assert numbers["moving_pixels"] > 0
    assert f"{numbers['moving_baseline']:.5f}" == match.group(1)
    assert f"{numbers['moving_mal']:.5f}" == match.group(2)
    assert numbers["frame_t_shifts"] is False and 0 <= numbers["clipped_fraction"] <= 1
    exact = 100 * (numbers["moving_baseline"] - numbers["moving_mal"]) / numbers["moving_baseline"]
    assert abs(reduction - exact) <= 0.05 + 1e-9

    # The padded last batch must not count: three samples in one padded batch of 4 agree.
    again = oracle.run_oracle("test", 3, height=32, width=96, batch_size=4)
    for key in ("moving_pixels", "static_pixels", "matched_objects"):
        assert again[key] == numbers[key], key
    np.testing.assert_allclose(again["moving_mal"], numbers["moving_mal"], rtol=1e-5)


def test_bad_sample_count_is_rejected():
    with pytest.raises(ValueError, match="num_samples"):
        oracle.run_oracle("test", 0)


def test_jitted_sums_match_eager_on_rendered_samples():
    batch = oracle.load_triplets("test", [0, 2], height=32, width=96)
    eager = jax.device_get(oracle.oracle_sums(batch))
    jitted = jax.device_get(oracle._oracle_sums_jit(batch, TemporalHintConfig()))
    assert eager["moving_pixels"].sum() > 0 and eager["matched_moving_objects"].sum() > 0
    for key in oracle.SUM_KEYS:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-3, atol=1e-3, err_msg=key)


@pytest.mark.parametrize("object_step_px", [0, 4])
def test_a_wrong_object_depth_misaligns_it(object_step_px):
    """Half or twice the wall depth on the object's frame-t pixels samples its warped copies
    4 or 1 px away instead of 2: its inside no longer lines up (a depth signal), and with the
    hints (a superset of candidates) the minimum can only be lower."""
    batch = _planar_scene(object_step_px)
    region = "moving_objects" if object_step_px else "static_objects"
    where = oracle_depth.region_mask(batch, region)
    assert where.sum() == 144 and not where[:, :, : OBJECT_COLS.start].any()
    interior = np.zeros_like(where)
    interior[:, OBJECT_ROWS.start + 2 : OBJECT_ROWS.stop - 2,
             OBJECT_COLS.start + 2 : OBJECT_COLS.stop - 2] = True
    exact = jax.device_get(_maps(batch))
    for scale in (0.5, 2.0):
        maps = jax.device_get(_maps(oracle_depth.scale_depth(batch, where, scale)))
        assert maps["baseline"][interior].mean() > 0.05, scale
        assert (maps["mal"] <= maps["baseline"] + 1e-6).all(), scale
        # Pixels outside the object keep their depth, so far from it nothing changes.
        np.testing.assert_array_equal(maps["baseline"][:, :, :10], exact["baseline"][:, :, :10])
    if object_step_px == 0:  # static: the true depth aligns it exactly
        assert exact["baseline"][interior].max() < 1e-4


def test_depth_signal_is_the_mean_rise_over_factor_one():
    assert oracle_depth.depth_signal([0.3, 0.1, 0.2], [0.5, 1, 2]) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="hold 1"):
        oracle_depth.depth_sweep([0.5, 2.0], num_samples=1)
    with pytest.raises(ValueError, match="unknown region 'sky'"):
        oracle_depth.region_mask(_planar_scene(0), "sky")


def test_depth_sweep_at_factor_one_is_the_oracle(tmp_path, capsys):
    json_path = tmp_path / "sweep.json"
    oracle_depth.main(["--num_samples", "2", "--height", "32", "--width", "96",
                       "--scales", "0.5,1,2", "--json", str(json_path)])
    sweep = json.loads(json_path.read_text())
    plain = oracle.run_oracle("test", 2, height=32, width=96)
    moving = sweep["moving_objects"]
    assert moving["pixels"] == plain["moving_pixels"] > 0
    np.testing.assert_allclose(moving["baseline"][1], plain["moving_baseline"], rtol=1e-4)
    np.testing.assert_allclose(moving["mal"][1], plain["moving_mal"], rtol=1e-4)
    assert sweep["static_objects"]["pixels"] > 0
    # A static object at the wrong depth is misaligned, so its error rises without hints.
    assert sweep["static_objects"]["depth_signal_baseline"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"static_objects depth_signal baseline="
                    f"{sweep['static_objects']['depth_signal_baseline']:.5f} "
                    f"mal={sweep['static_objects']['depth_signal_mal']:.5f}")
