"""Evaluation: hand-computed metrics through the full scoring loop (KITTI-like padding, Eigen
crop, median scaling, clamping, moving pixels), the static-camera fallback and lookup pose of
the predictor, and the Evaluator end to end on the synthetic split: built once, scoring
without writing, then JSON/Markdown/PNGs."""

import dataclasses
import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_variables import random_variables
from PIL import Image

from configs.default import get_config
from mal_jax.core import geometry
from mal_jax.data import pipeline, registry
from mal_jax.data.synthetic import intrinsics_pyramid
from mal_jax.eval import evaluate, metrics, presets
from mal_jax.eval import outputs as eval_outputs
from mal_jax.eval.inference import load_inference, make_batch_predictor
from mal_jax.models.manydepth import ManyDepth
from mal_jax.train import forward

HEIGHT, WIDTH, BATCH = 64, 96, 3
LOG2 = math.log(2.0)


@pytest.fixture(scope="module")
def inference():
    model = ManyDepth(num_depth_bins=8)
    return types.SimpleNamespace(
        model=model,
        variables=random_variables(model, HEIGHT, WIDTH),
        min_depth_bin=0.5,
        max_depth_bin=20.0,
        height=HEIGHT,
        width=WIDTH,
    )


def fake_predictor(disparities):
    return lambda batch: {name: disp[batch["index"]] for name, disp in disparities.items()}


def assert_block(block, expected, num_images):
    assert block["num_images"] == num_images
    for name in metrics.METRIC_NAMES:
        np.testing.assert_allclose(block[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def mean_of(*blocks):
    return {k: float(np.mean([b[k] for b in blocks])) for k in metrics.METRIC_NAMES}


PERFECT = dict(abs_rel=0.0, sq_rel=0.0, rmse=0.0, rmse_log=0.0, a1=1.0, a2=1.0, a3=1.0)


def test_kitti_eigen_hand_computed_through_the_loop():
    # Three images, GT sizes 10x20, 12x24, 10x20, zero padded to 12x24 as eval_batches does.
    # Eigen crop of 10x20: rows 4:9, columns 0:19 (int truncation of the fractions).
    gt_a = np.full((10, 20), 3.0, np.float32)
    gt_a[:4], gt_a[4], gt_a[9], gt_a[:, 19] = 50.0, 6.0, 7.0, 20.0  # only row 4 = 6 in crop
    gt_b = np.full((12, 24), 5.0, np.float32)
    gt_c = np.full((10, 20), 40.0, np.float32)
    gt_c[:, 10:] = 60.0
    gt_c[4, 10:] = 0.0  # LiDAR holes inside the crop: not counted
    depth_gt = np.zeros((3, 12, 24), np.float32)
    depth_gt[0, :10, :20], depth_gt[1], depth_gt[2, :10, :20] = gt_a, gt_b, gt_c

    student = np.empty((3, 10, 20), np.float32)
    student[0] = 0.5  # depth 2, scaled by median 3 / 2 -> 3 everywhere
    student[1] = 0.25  # constant: exact after any scaling
    student[2, :, :10], student[2, :, 10:] = 1.0, 0.01  # ratio 40: 40 (exact) and 4000 -> clamp 80
    teacher = np.stack([1.0 / (2.0 * gt_a), np.ones((10, 20)), 1.0 / np.maximum(gt_c, 1.0)])
    frames = np.full((3, 2, 4, 4, 3), 0.5, np.float32)
    frames[:, 1] = 0.25
    frames[1:, 0] = 0.0  # frame -1 missing: black (data.missing_neighbour="black")
    batch = {"depth_gt": depth_gt, "frames": frames, "index": np.arange(3)}

    results = evaluate.evaluate_predictions(
        [batch],
        fake_predictor({"student": student, "teacher": teacher.astype(np.float32)}),
        presets.get_preset("kitti_eigen"),
        batch_size=4,
        gt_shapes=[(10, 20), (12, 24), (10, 20)],
    )
    # Image A: 95 crop pixels, 19 at GT 6 against 3 (ratio 2), 76 exact.
    a = dict(
        abs_rel=0.2 * 0.5,
        sq_rel=0.2 * 9 / 6,
        rmse=math.sqrt(0.2 * 9),
        rmse_log=LOG2 * math.sqrt(0.2),
        a1=0.8,
        a2=0.8,
        a3=0.8,
    )
    # Image C: 86 valid pixels, 36 at GT 60 against the clamped 80.
    f = 36 / 86
    c = dict(
        abs_rel=f / 3,
        sq_rel=f * 400 / 60,
        rmse=math.sqrt(f * 400),
        rmse_log=math.sqrt(f) * math.log(4 / 3),
        a1=50 / 86,
        a2=1.0,
        a3=1.0,
    )
    assert results["num_images"] == 3 and results["static_fallback_images"] == 2
    assert results["regions"] == ["all"]
    assert_block(results["metrics"]["student"]["all"], mean_of(a, PERFECT, c), 3)
    assert_block(results["metrics"]["teacher"]["all"], PERFECT, 3)
    ratios = np.array([1.5, 1.25, 40.0])
    assert results["metrics"]["student"]["all"]["ratio_median"] == pytest.approx(1.5)
    assert results["metrics"]["student"]["all"]["ratio_std"] == pytest.approx(
        np.std(ratios / 1.5), rel=1e-5
    )


def test_moving_pixels_use_the_all_pixel_scaling():
    gt = np.full((2, 8, 8), 4.0, np.float32)
    gt[0, 2:4, 2:4] = 8.0
    gt[1, 0] = 0.0  # sky: no GT
    moving = np.zeros((2, 8, 8), bool)
    moving[0, 2:4, 2:4] = True  # the second image has no moving object
    disp = np.stack([np.full((8, 8), 1.0), np.full((8, 8), 0.5)]).astype(np.float32)
    batch = {
        "depth_gt": gt,
        "moving_mask": moving,
        "index": np.arange(2),
        "frames": np.ones((2, 2, 4, 4, 3), np.float32),
    }

    results = evaluate.evaluate_predictions(
        [batch],
        fake_predictor({"student": disp, "teacher": disp}),
        presets.get_preset("synthetic"),
        batch_size=2,
    )
    # Image 1: ratio median(gt) = 4, so the object (GT 8) is predicted at 4.
    q = 4 / 64
    first = dict(
        abs_rel=q / 2,
        sq_rel=q * 2,
        rmse=math.sqrt(q * 16),
        rmse_log=math.sqrt(q) * LOG2,
        a1=1 - q,
        a2=1 - q,
        a3=1 - q,
    )
    on_object = dict(abs_rel=0.5, sq_rel=2.0, rmse=4.0, rmse_log=LOG2, a1=0.0, a2=0.0, a3=0.0)
    for model in evaluate.MODELS:
        assert_block(results["metrics"][model]["all"], mean_of(first, PERFECT), 2)
        assert_block(results["metrics"][model]["moving"], on_object, 1)


@pytest.mark.parametrize(
    "protocol",
    [
        metrics.KITTI_EIGEN,
        # Cityscapes' steps on a small GT: keep the top 3/4, then a window.
        metrics.EvalProtocol(keep_top_fraction=0.75, window=(3, None, 2, 21)),
        metrics.EvalProtocol(median_scaling=False, pred_scale=5.4, clamp_max=20.0),
    ],
)
def test_score_depth_matches_metrics_evaluate_batch(protocol):
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.5, 90.0, (2, 16, 24)).astype(np.float32) * (rng.random((2, 16, 24)) > 0.3)
    disp = rng.uniform(0.02, 2.0, (2, 8, 12)).astype(np.float32)
    ours, ratio = evaluate.score_depth(jnp.asarray(gt), jnp.asarray(disp), protocol)
    theirs, their_ratio = metrics.evaluate_batch(jnp.asarray(gt), jnp.asarray(disp), protocol)
    np.testing.assert_allclose(ratio, their_ratio, rtol=1e-6)
    for name in metrics.METRIC_NAMES:
        np.testing.assert_allclose(ours["all"][name], theirs[name], rtol=1e-6, err_msg=name)


def test_presets_carry_each_papers_depth_range():
    many = presets.get_preset("kitti_eigen")
    assert (many.min_depth, many.max_depth, many.protocol) == (0.1, 100.0, metrics.KITTI_EIGEN)
    mal = presets.get_preset("kitti_eigen_mal")
    assert (mal.min_depth, mal.max_depth, mal.protocol) == (1e-3, 80.0, metrics.KITTI_EIGEN)
    assert presets.get_preset("cityscapes").protocol == metrics.CITYSCAPES
    assert presets.get_preset("synthetic").moving_block
    with pytest.raises(ValueError, match="'kitti'"):
        presets.get_preset("kitti")


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(FileNotFoundError, match="no_such_run: checkpoint or weights folder"):
        load_inference(missing)


def test_predictor_lookup_pose_and_static_camera_fallback(inference):
    rng = np.random.default_rng(2)
    current = rng.random((2, HEIGHT, WIDTH, 3), np.float32)
    previous = rng.random((2, HEIGHT, WIDTH, 3), np.float32)
    K, inv_K = intrinsics_pyramid(HEIGHT, WIDTH)
    batch = {"K": np.stack([K, K]), "inv_K": np.stack([inv_K, inv_K])}
    predict = make_batch_predictor(inference, 0.1, 100.0, BATCH)
    with_previous = predict({**batch, "frames": np.stack([previous, current], axis=1)})
    black = previous.copy()
    black[0] = 0.0
    fallback = predict({**batch, "frames": np.stack([black, current], axis=1)})
    static = np.stack([np.stack([current[0], previous[1]]), current], axis=1)
    static = predict({**batch, "frames": static})

    for name in evaluate.MODELS:
        assert with_previous[name].shape == (2, HEIGHT, WIDTH)
        np.testing.assert_array_equal(fallback[name], static[name])
        np.testing.assert_array_equal(fallback[name][1], with_previous[name][1])
    assert np.abs(fallback["student"][0] - with_previous["student"][0]).max() > 1e-6
    np.testing.assert_array_equal(fallback["teacher"], with_previous["teacher"])

    # The student's pass equals the training code's lookup pose fed to the matching net.
    @jax.jit
    def training_convention(variables, prev, cur):
        frames = jnp.stack([prev, cur, cur], axis=1)
        *_, lookup_poses, _ = forward.predict_poses(inference.model, variables, frames, False)
        (disps, *_), _ = inference.model.student(
            variables,
            cur,
            prev[:, None],
            lookup_poses,
            batch["K"][:, 2],
            batch["inv_K"][:, 2],
            inference.min_depth_bin,
            inference.max_depth_bin,
            train=False,
        )
        return geometry.disp_to_depth(disps[0][..., 0], 0.1, 100.0)[0]

    expected = training_convention(inference.variables, previous, current)
    np.testing.assert_allclose(with_previous["student"], expected, rtol=1e-5, atol=1e-6)


def test_evaluator_built_once_scores_without_writing_then_writes(
    inference, tmp_path, monkeypatch
):
    config = get_config()
    config.data.num_eval_samples = 4  # batches of 3 and 1 (padded)
    config.data.max_instances = 4
    config.evaluation.batch_size = BATCH
    config.evaluation.write_images = 2
    builds = []
    spec = registry.DATASETS["synthetic"]

    def counted(*args):
        builds.append(args[1:])
        return spec.eval_source(*args)

    monkeypatch.setitem(
        registry.DATASETS, "synthetic", dataclasses.replace(spec, eval_source=counted)
    )
    evaluator = evaluate.Evaluator(config, height=HEIGHT, width=WIDTH)
    results = evaluator.run(inference, checkpoint="fresh-init")
    again = evaluator.run(inference, checkpoint="fresh-init")
    assert builds == [(HEIGHT, WIDTH)]  # one data source for both runs
    assert again["metrics"] == results["metrics"]
    assert os.listdir(tmp_path) == []  # scoring writes nothing
    evaluator.write(inference, results, str(tmp_path))

    with open(tmp_path / "eval_results.json") as handle:
        saved = json.load(handle)
    assert saved["num_images"] == 4 and saved["protocol"] == "synthetic"
    assert saved["height"] == HEIGHT and saved["width"] == WIDTH
    assert saved["preset"]["min_depth"] == 0.1 and saved["preset"]["median_scaling"] is True
    for model in evaluate.MODELS:
        for region in ("all", "moving"):
            block = saved["metrics"][model][region]
            assert set(metrics.METRIC_NAMES) <= set(block)
            assert 0 < block["num_images"] <= 4
            assert all(np.isfinite(block[name]) for name in metrics.METRIC_NAMES)
            assert 0.0 <= block["a1"] <= block["a2"] <= block["a3"] <= 1.0
        assert saved["metrics"][model]["all"]["num_images"] == 4
    assert saved["metrics"] == json.loads(json.dumps(results["metrics"]))

    markdown = (tmp_path / "eval_results.md").read_text()
    assert "## All valid pixels" in markdown and "## Moving-object pixels" in markdown
    assert markdown.count("| student (multi-frame) | ") == 2 and markdown.count("| teacher ") == 2
    images = sorted(os.listdir(tmp_path / "eval_images"))
    assert len(images) == 2 * (1 + 2 * 2)  # samples x (input + models x (disparity, error))
    assert "0001_teacher_abs_rel_error.png" in images
    # The input PNG is frame t of that sample, in 8-bit.
    first = next(iter(pipeline.eval_batches(evaluator.source, batch_size=BATCH)))
    written = np.asarray(Image.open(tmp_path / "eval_images" / "0001_input.png"))
    np.testing.assert_allclose(written, np.asarray(first["frames"])[1, 1] * 255.0, atol=0.51)
    wrong_size = types.SimpleNamespace(**{**vars(inference), "height": 2 * HEIGHT})
    with pytest.raises(ValueError, match=r"takes 128x96 images, the evaluator was built for 64x96"):
        evaluator.run(wrong_size)


def test_predictor_reproduces_reference_eval_disparities(golden):
    """The whole eval forward (frame order, inverted lookup pose, bins, disparity scaling)
    against the PyTorch reference's eval-mode outputs."""
    from mal_jax.port.convert import convert_state_dicts
    from mal_jax.port.golden import EVAL_DISPARITIES, nchw_to_nhwc

    variables, _ = convert_state_dicts(golden.state_dicts())
    height, width = golden.image_size
    # The golden cost volume used bins linear in [0.5, 15] with frame -1 as the lookup frame.
    reference_model = types.SimpleNamespace(
        model=ManyDepth(),
        variables=variables,
        min_depth_bin=0.5,
        max_depth_bin=15.0,
        height=height,
        width=width,
    )
    frames = np.stack([nchw_to_nhwc(golden[f"in/color/{f}"]) for f in (-1, 0)], axis=1)
    K = np.stack([golden[f"in/K/{s}"] for s in range(4)], axis=1)  # (B, scale, 4, 4)
    batch = {"frames": frames, "K": K, "inv_K": np.linalg.pinv(K).astype(np.float32)}
    ours = make_batch_predictor(reference_model, 0.1, 100.0, golden.batch_size)(batch)
    for model in ("student", "teacher"):
        expected = geometry.disp_to_depth(golden[f"{EVAL_DISPARITIES[model]}/0"][:, 0], 0.1,
                                          100.0)[0]
        np.testing.assert_allclose(ours[model], expected, rtol=1e-5, atol=1e-5, err_msg=model)


def test_outputs_colour_maps_and_empty_blocks(tmp_path):
    import matplotlib

    values = np.array([[0.0, 0.5], [1.0, 7.0]])
    valid = np.array([[True, True], [True, False]])
    rgb = eval_outputs.colorize(values, "plasma", 0.0, 1.0, valid=valid)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    expected = np.round(np.asarray(matplotlib.colormaps["plasma"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(rgb[1, 0], expected)
    np.testing.assert_array_equal(rgb[1, 1], 0)  # no GT: black

    nan_block = {name: float("nan") for name in metrics.METRIC_NAMES} | {"num_images": 0}
    good_block = {name: 0.25 for name in metrics.METRIC_NAMES} | {"num_images": 2}
    results = {
        "protocol": "synthetic",
        "checkpoint": "",
        "num_images": 2,
        "height": 64,
        "width": 96,
        "min_depth_bin": 0.5,
        "max_depth_bin": 20.0,
        "static_fallback_images": 0,
        "regions": ["all", "moving"],
        "preset": {"min_depth": 0.1, "max_depth": 100.0, **dataclasses.asdict(presets.SYNTHETIC)},
        "metrics": {m: {"all": good_block, "moving": nan_block} for m in evaluate.MODELS},
    }
    json_path, md_path = eval_outputs.write_results(results, str(tmp_path))
    with open(json_path) as handle:
        saved = json.load(handle)
    assert saved["metrics"]["teacher"]["moving"]["abs_rel"] is None  # NaN is not JSON
    markdown = open(md_path).read()
    assert "| teacher (frame 0 only) | 0 | n/a |" in markdown
    assert "| student (multi-frame) | 2 | 0.250 | 0.250 |" in markdown
