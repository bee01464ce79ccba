"""Transforms: Pillow-exact colour jitter, flips, intrinsics, eager == tf.data results."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from mal_jax.data import transforms as T


def _pil_hue(image, factor):
    # torchvision's PIL adjust_hue: 8-bit HSV, hue += uint8(factor * 255) with wrap-around.
    h, s, v = image.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        hue += np.array(int(factor * 255)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


PIL_OPS = (
    lambda im, f: ImageEnhance.Brightness(im).enhance(f),
    lambda im, f: ImageEnhance.Contrast(im).enhance(f),
    lambda im, f: ImageEnhance.Color(im).enhance(f),
    _pil_hue,
)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    levels[1] = (levels[1] // 3 + 90).astype(np.uint8)  # a low-contrast frame
    return levels


def test_color_jitter_matches_pillow_reference_chain(images):
    rng = np.random.default_rng(1)
    for _ in range(4):
        factors = [
            rng.uniform(0.8, 1.2),
            rng.uniform(0.8, 1.2),
            rng.uniform(0.8, 1.2),
            rng.uniform(-0.1, 0.1),
        ]
        order = rng.permutation(4)
        expected = []
        for frame in images:
            image = Image.fromarray(frame)
            for op in order:
                image = PIL_OPS[op](image, np.float32(factors[op]))
            expected.append(np.asarray(image))
        params = {"factors": tf.constant(factors, tf.float32), "order": tf.constant(order)}
        out = T.color_jitter(tf.constant(images / 255.0, tf.float32), params).numpy()
        np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), np.stack(expected))


def test_jitter_shared_across_frames_and_black_frame_kept(images):
    frames = np.stack([images[0], images[0], np.zeros_like(images[0])]) / 255.0
    params = T.sample_jitter_params(tf.constant([3, 4], tf.int64))
    out = T.color_jitter(tf.constant(frames, tf.float32), params).numpy()
    np.testing.assert_array_equal(out[0], out[1])
    assert np.abs(out[0] - frames[0]).max() > 0.01
    np.testing.assert_array_equal(out[2], 0.0)


def test_jitter_params_in_reference_ranges():
    for i in range(20):
        params = T.sample_jitter_params(tf.constant([i, 7], tf.int64))
        b, c, s, h = params["factors"].numpy()
        assert 0.8 <= b <= 1.2 and 0.8 <= c <= 1.2 and 0.8 <= s <= 1.2 and -0.1 <= h <= 0.1
        assert sorted(params["order"].numpy().tolist()) == [0, 1, 2, 3]


def test_intrinsics_pyramid_hand_values():
    k_norm = np.array([[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    k, inv_k = T.intrinsics_pyramid(k_norm, 192, 640)
    assert k.dtype == np.float32 and k.shape == (4, 4, 4)
    np.testing.assert_allclose(k[0, 0, [0, 2]], [371.2, 320.0], rtol=1e-6)
    np.testing.assert_allclose(k[0, 1, [1, 2]], [368.64, 96.0], rtol=1e-6)
    np.testing.assert_allclose(k[3, 0, [0, 2]], [0.58 * 80, 40.0], rtol=1e-6)
    np.testing.assert_allclose(k[3, 1, [1, 2]], [1.92 * 24, 12.0], rtol=1e-6)
    np.testing.assert_allclose(inv_k @ k, np.broadcast_to(np.eye(4), (4, 4, 4)), atol=1e-5)
    # Integer division per scale, as the reference: 100 // 8 = 12, not 12.5.
    k_odd, _ = T.intrinsics_pyramid(k_norm, 100, 100)
    assert k_odd[3, 0, 2] == pytest.approx(6.0)


def _sample(seed=0, frames=3, h=8, w=12):
    rng = np.random.default_rng(seed)
    k, inv_k = T.intrinsics_pyramid(
        np.array([[0.58, 0, 0.4, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), h, w
    )
    return {
        "frames": tf.constant(rng.random((frames, h, w, 3)), tf.float32),
        "instance_ids": tf.constant(rng.integers(0, 4, (frames, h, w)), tf.int32),
        "instance_class": tf.fill([frames, 16], -1),
        "instance_score": tf.zeros([frames, 16]),
        "K": tf.constant(k),
        "inv_K": tf.constant(inv_k),
        "index": tf.constant(5, tf.int64),
    }


def test_flip_moves_frames_and_masks_together_and_keeps_k_by_default():
    sample = _sample()
    flipped = T.flip_sample(sample)
    np.testing.assert_array_equal(flipped["frames"].numpy(), sample["frames"].numpy()[:, :, ::-1])
    np.testing.assert_array_equal(
        flipped["instance_ids"].numpy(), sample["instance_ids"].numpy()[:, :, ::-1]
    )
    np.testing.assert_array_equal(flipped["K"].numpy(), sample["K"].numpy())


def test_flip_mirrors_the_true_poses():
    yaw, t = 0.3, (0.2, -0.1, 1.5)
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3] = [[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]]
    pose[:3, 3] = t
    sample = dict(_sample(), cam_T_cam=tf.constant(np.stack([pose, np.eye(4), pose]),
                                                   tf.float32))
    flipped = T.flip_sample(sample)["cam_T_cam"].numpy()
    mirrored = np.eye(4, dtype=np.float32)
    mirrored[:3, :3] = [[np.cos(-yaw), 0, np.sin(-yaw)], [0, 1, 0],
                        [-np.sin(-yaw), 0, np.cos(-yaw)]]
    mirrored[:3, 3] = (-0.2, -0.1, 1.5)
    np.testing.assert_allclose(flipped[0], mirrored, atol=1e-7)
    np.testing.assert_array_equal(flipped[1], np.eye(4))
    # A mirrored point moves to the mirror image of where the point moves.
    point = np.array([1.0, 0.5, 7.0, 1.0], np.float32)
    flip_x = np.array([-1.0, 1, 1, 1], np.float32)
    np.testing.assert_allclose(flipped[0] @ (point * flip_x), (pose @ point) * flip_x, atol=1e-6)
    np.testing.assert_array_equal(
        T.flip_sample(T.flip_sample(sample))["cam_T_cam"].numpy(), sample["cam_T_cam"].numpy())


def test_flip_intrinsics_mirrors_principal_point():
    sample = _sample(w=12)
    flipped = T.flip_sample(sample, flip_intrinsics=True)
    k, k_flip = sample["K"].numpy(), flipped["K"].numpy()
    widths = np.array([12, 6, 3, 1], np.float32)
    np.testing.assert_allclose(k_flip[:, 0, 2], widths - 1 - k[:, 0, 2], rtol=1e-6)
    np.testing.assert_allclose(k_flip[:, 0, 0], k[:, 0, 0])
    np.testing.assert_allclose(
        flipped["inv_K"].numpy() @ k_flip, np.broadcast_to(np.eye(4), (4, 4, 4)), atol=1e-5
    )


def test_augment_eager_equals_tf_data_and_is_keyed():
    sample = T.fill_neutral_keys(_sample(), 16)
    keys = [T.sample_key(3, 0, i) for i in range(12)]
    eager = [T.augment_train_sample(sample, key) for key in keys]
    ds = tf.data.Dataset.range(12).map(
        lambda i: T.augment_train_sample(sample, T.sample_key(3, 0, i)),
        num_parallel_calls=2,
        deterministic=True,
    )
    for expected, got in zip(eager, ds.as_numpy_iterator(), strict=True):
        for name in expected:
            np.testing.assert_array_equal(expected[name].numpy(), got[name])
    flipped = [bool(np.any(e["frames"].numpy() != sample["frames"].numpy())) for e in eager]
    jittered = [bool(np.any(e["frames_aug"].numpy() != e["frames"].numpy())) for e in eager]
    assert 0 < sum(flipped) < 12 and 0 < sum(jittered) < 12
    again = T.augment_train_sample(sample, T.sample_key(3, 0, 4))
    np.testing.assert_array_equal(again["frames_aug"].numpy(), eager[4]["frames_aug"].numpy())


def test_flip_and_jitter_probabilities_near_half():
    sample = T.fill_neutral_keys(_sample(frames=1, h=2, w=3), 16)
    flips = jitters = 0
    for i in range(200):
        out = T.augment_train_sample(sample, T.sample_key(0, 1, i))
        flips += bool(np.any(out["instance_ids"].numpy() != sample["instance_ids"].numpy()))
        jitters += bool(np.any(out["frames_aug"].numpy() != out["frames"].numpy()))
    assert 70 < flips < 130 and 70 < jitters < 130


def test_fill_neutral_keys_shapes_and_values():
    sample = {"frames": tf.zeros([2, 4, 6, 3]), "index": tf.constant(1)}
    out = T.fill_neutral_keys(sample, 5)
    assert out["instance_ids"].shape == (2, 4, 6) and out["instance_class"].shape == (2, 5)
    np.testing.assert_array_equal(out["instance_class"].numpy(), -1)
    np.testing.assert_array_equal(out["cam_T_cam"].numpy(), np.broadcast_to(np.eye(4), (2, 4, 4)))
    assert out["depth_gt"].shape == (4, 6) and out["moving_mask"].dtype == tf.bool
    assert out["index"].dtype == tf.int64
