"""Depth metrics and evaluation protocols against hand-computed values and a boolean-indexing
numpy re-statement of the reference evaluator's steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.eval import metrics


def _numpy_errors(gt, pred):
    """The seven metrics over already-selected pixels (1-D arrays)."""
    thresh = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": np.mean(np.abs(gt - pred) / gt),
        "sq_rel": np.mean((gt - pred) ** 2 / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "a1": np.mean(thresh < 1.25),
        "a2": np.mean(thresh < 1.25**2),
        "a3": np.mean(thresh < 1.25**3),
    }


def test_depth_errors_hand_case():
    gt = jnp.array([[1.0, 2.0, 4.0, 10.0]])
    pred = jnp.array([[1.0, 3.0, 2.0, 10.0]])
    errors = metrics.compute_depth_errors(gt, pred)
    assert set(errors) == set(metrics.METRIC_NAMES)
    # abs_rel = (0 + 1/2 + 2/4 + 0) / 4; sq_rel = (0 + 1/2 + 4/4 + 0) / 4; rmse = sqrt(5 / 4)
    np.testing.assert_allclose(errors["abs_rel"], [0.25], rtol=1e-6)
    np.testing.assert_allclose(errors["sq_rel"], [0.375], rtol=1e-6)
    np.testing.assert_allclose(errors["rmse"], [np.sqrt(1.25)], rtol=1e-6)
    np.testing.assert_allclose(
        errors["rmse_log"], [np.sqrt((np.log(1.5) ** 2 + np.log(2) ** 2) / 4)], rtol=1e-6
    )
    # ratios 1, 1.5, 2, 1: a1 counts < 1.25, a2 < 1.5625, a3 < 1.953
    np.testing.assert_allclose(errors["a1"], [0.5])
    np.testing.assert_allclose(errors["a2"], [0.75])
    np.testing.assert_allclose(errors["a3"], [0.75])


def test_depth_errors_mask_ignores_garbage_per_image():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 80, size=(2, 6, 7)).astype(np.float32)
    pred = rng.uniform(1, 80, size=(2, 6, 7)).astype(np.float32)
    mask = rng.uniform(size=(2, 6, 7)) > 0.4
    gt_dirty = np.where(mask, gt, 0.0)  # zeros and negatives would poison log / division
    pred_dirty = np.where(mask, pred, -5.0)
    errors = jax.jit(metrics.compute_depth_errors)(gt_dirty, pred_dirty, mask)
    for name, value in errors.items():
        assert value.shape == (2,)
        expected = [_numpy_errors(gt[i][mask[i]], pred[i][mask[i]])[name] for i in range(2)]
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("count", [1, 4, 7])
def test_masked_median_matches_numpy(count):
    rng = np.random.default_rng(count)
    values = rng.uniform(size=(2, 3, 4)).astype(np.float32)
    mask = np.zeros((2, 3, 4), bool)
    mask.reshape(2, -1)[:, rng.permutation(12)[:count]] = True
    median = metrics.masked_median(jnp.asarray(values), jnp.asarray(mask))
    np.testing.assert_allclose(median, [np.median(values[i][mask[i]]) for i in range(2)], rtol=1e-6)


def test_masked_median_even_count_is_numpy_mean_of_middle_pair_and_empty_is_nan():
    values = jnp.array([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    mask = jnp.array([[True, True, True, True], [False, False, False, False]])
    median = metrics.masked_median(values, mask)
    assert float(median[0]) == 2.5 and np.isnan(median[1])


def test_median_scaling_ratio():
    gt = jnp.array([[2.0, 4.0, 6.0, 100.0]])
    pred = jnp.array([[1.0, 2.0, 3.0, 0.0]])
    mask = jnp.array([[True, True, True, False]])
    scaled, ratio = metrics.median_scale(gt, pred, mask)
    np.testing.assert_allclose(ratio, [2.0])
    np.testing.assert_allclose(scaled[0, :3], [2.0, 4.0, 6.0])


def test_eigen_crop_for_kitti_size():
    mask = metrics.eigen_crop_mask(375, 1242)
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    # The same window the reference trainer hard-codes as [153:371, 44:1197].
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (153, 371, 44, 1197)
    assert mask.sum() == (371 - 153) * (1197 - 44)


def test_cityscapes_crop_sizes():
    gt = jnp.zeros((1, 1024, 2048))
    kept = metrics.keep_top_rows(gt, metrics.CITYSCAPES.keep_top_fraction)
    assert kept.shape == (1, 768, 2048)
    assert metrics.apply_window(kept, metrics.CITYSCAPES.window).shape == (1, 512, 1664)


def test_resize_disparity_is_half_pixel_bilinear():
    disp = jnp.array([[[1.0, 3.0]]])
    np.testing.assert_allclose(metrics.resize_disparity(disp, 1, 4), [[[1.0, 1.5, 2.5, 3.0]]])


def _numpy_protocol(gt, pred_depth, crop):
    """Reference steps with boolean indexing for one image whose pred is already GT-sized."""
    mask = (gt > 1e-3) & (gt < 80) & crop
    g, p = gt[mask], pred_depth[mask]
    p = p * (np.median(g) / np.median(p))
    return _numpy_errors(g, np.clip(p, 1e-3, 80))


def test_kitti_protocol_matches_numpy_statement():
    rng = np.random.default_rng(5)
    height, width = 30, 40
    gt = rng.uniform(0.5, 90, size=(2, height, width)).astype(np.float32)
    gt[rng.uniform(size=gt.shape) < 0.3] = 0.0  # sparse LiDAR: missing points
    pred_disp = rng.uniform(0.02, 2.0, size=(2, height, width)).astype(np.float32)
    evaluate = jax.jit(metrics.evaluate_batch, static_argnames="protocol")
    errors, ratio = evaluate(gt, pred_disp, protocol=metrics.KITTI_EIGEN)
    crop = metrics.eigen_crop_mask(height, width)
    for i in range(2):
        expected = _numpy_protocol(gt[i], 1.0 / pred_disp[i], crop)
        for name in metrics.METRIC_NAMES:
            np.testing.assert_allclose(errors[name][i], expected[name], rtol=1e-5, err_msg=name)
    assert ratio.shape == (2,) and np.all(np.asarray(ratio) > 0)


def test_kitti_protocol_scale_invariance():
    # A prediction equal to GT up to a global scale is perfect after median scaling.
    rng = np.random.default_rng(6)
    gt = rng.uniform(1, 70, size=(1, 20, 30)).astype(np.float32)
    errors, ratio = metrics.evaluate_batch(
        jnp.asarray(gt), jnp.asarray(0.1 / gt), metrics.KITTI_EIGEN
    )
    np.testing.assert_allclose(ratio, [0.1], rtol=1e-5)
    np.testing.assert_allclose(errors["abs_rel"], [0.0], atol=1e-6)
    np.testing.assert_allclose(errors["a1"], [1.0])


def test_cityscapes_protocol_crops_before_scoring():
    height, width = 1024, 2048
    gt = np.full((1, height, width), 10.0, np.float32)
    # Everything outside the evaluated window (bottom quarter, top 256 rows, side strips) is
    # wrong by a factor of 4; inside it the prediction is exact up to scale 2.
    pred_depth = np.full((1, 768, width), 40.0, np.float32)
    pred_depth[:, 256:, 192:1856] = 20.0
    errors, ratio = metrics.evaluate_batch(
        jnp.asarray(gt), jnp.asarray(1.0 / pred_depth), metrics.CITYSCAPES
    )
    np.testing.assert_allclose(ratio, [0.5], rtol=1e-6)
    np.testing.assert_allclose(errors["abs_rel"], [0.0], atol=1e-6)


def test_protocol_is_hashable_data():
    assert metrics.KITTI_EIGEN.crop_fractions == metrics.EIGEN_CROP_FRACTIONS
    assert hash(metrics.KITTI_EIGEN) != hash(metrics.CITYSCAPES)
    stereo = metrics.EvalProtocol(
        crop_fractions=metrics.EIGEN_CROP_FRACTIONS, median_scaling=False, pred_scale=5.4
    )
    gt = jnp.full((1, 10, 10), 5.4)
    errors, ratio = metrics.evaluate_batch(gt, jnp.ones((1, 10, 10)), stereo)
    np.testing.assert_allclose(ratio, [1.0])
    np.testing.assert_allclose(errors["abs_rel"], [0.0], atol=1e-6)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="compute_depth_errors"):
        metrics.compute_depth_errors(jnp.ones((1, 3)), jnp.ones((1, 4)))
