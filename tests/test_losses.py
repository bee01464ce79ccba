"""Photometric and ManyDepth loss pieces: golden parity (SSIM, smoothness, one full training
loss evaluation recomposed from the pieces) and hand-computed cases."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.core import geometry, losses
from mal_jax.port.golden import nchw_to_nhwc

MIN_DEPTH, MAX_DEPTH = 0.1, 100.0  # the golden training run's options


# ---------------------------------------------------------------- golden parity


def test_golden_ssim_map(golden):
    warped = jnp.asarray(nchw_to_nhwc(golden["geo/warped"]))
    target = jnp.asarray(nchw_to_nhwc(golden["in/color/0"]))
    ssim = jax.jit(losses.ssim_dissimilarity)(warped, target)
    chex.assert_shape(ssim, (2, 96, 320, 3))
    chex.assert_type(ssim, jnp.float32)
    expected = nchw_to_nhwc(golden["photo/ssim"])
    # Per pixel only float32 agreement is possible: E[x^2] - E[x]^2 cancels, and the reference
    # is itself 1.1e-4 away from a float64 evaluation on this fixture.
    np.testing.assert_allclose(ssim, expected, atol=3e-4, rtol=0)
    assert float(jnp.mean(jnp.abs(ssim - expected))) < 1e-5
    np.testing.assert_allclose(jnp.mean(ssim), expected.mean(), rtol=1e-5)


def test_golden_smoothness_uses_target_image_and_raw_input(golden):
    disp = jnp.asarray(nchw_to_nhwc(golden["geo/depth"]))
    target = jnp.asarray(nchw_to_nhwc(golden["in/color/0"]))
    value = losses.smoothness_loss(disp, target)
    chex.assert_shape(value, ())
    np.testing.assert_allclose(value, golden["photo/smooth_loss"], rtol=1e-4)


@functools.partial(jax.jit, static_argnames="automasked")
def _scale_terms(disp_full, colors, cam_T_cam, K, inv_K, automasked):
    """Per-pixel min reprojection and its mask for one full-resolution disparity."""
    _, depth = geometry.disp_to_depth(disp_full, MIN_DEPTH, MAX_DEPTH)
    target = colors[0]
    warped = [geometry.warp_frame(colors[f], depth, cam_T_cam[f], K, inv_K)[0] for f in (-1, 1)]
    reprojection = losses.per_pixel_minimum(
        jnp.concatenate([losses.reprojection_error(w, target) for w in warped], -1)
    )
    identity = losses.per_pixel_minimum(
        jnp.concatenate([losses.reprojection_error(colors[f], target) for f in (-1, 1)], -1)
    )
    mask = losses.automask(reprojection, identity, noise=None) if automasked else None
    return depth, reprojection, mask


def test_golden_training_losses_recomposed(golden):
    """The reference's per-scale losses, rebuilt from the pieces with the fixture's network
    outputs (disparities, poses, cost-volume mask) as inputs."""
    colors = {f: jnp.asarray(nchw_to_nhwc(golden[f"in/color/{f}"])) for f in (-1, 0, 1)}
    cam_T_cam = {f: jnp.asarray(golden[f"train/cam_T_cam/{f}"]) for f in (-1, 1)}
    K = jnp.asarray(golden["in/K/0"])
    inv_K = jnp.asarray(np.linalg.pinv(golden["in/K/0"]))
    batch, height, width, _ = colors[0].shape
    consistency_mask = jnp.asarray(golden["train/consistency_mask"])[..., None]

    # The stored consistency mask is the cost-volume confidence times the matching mask.
    teacher_depth_0 = geometry.disp_to_depth(
        jnp.asarray(nchw_to_nhwc(golden["train/mono_disp/0"])), MIN_DEPTH, MAX_DEPTH
    )[1]
    matching = losses.compute_matching_mask(
        teacher_depth_0, jnp.asarray(golden["train/lowest_cost"])[..., None]
    )
    assert np.all(np.asarray(consistency_mask) <= np.asarray(matching))
    assert 0.5 < float(matching.mean()) < 0.95  # a non-trivial mask in this fixture

    for scale in range(4):
        terms = {}
        # The file's keys: ``disp`` is the student's, ``mono_disp`` the teacher's.
        for net, key in (("student", "disp"), ("teacher", "mono_disp")):
            disp = jnp.asarray(nchw_to_nhwc(golden[f"train/{key}/{scale}"]))
            # Reference: bilinear upsampling with align_corners=False, i.e. half-pixel centres.
            full = jax.image.resize(disp, (batch, height, width, 1), "bilinear")
            terms[net] = (disp,) + _scale_terms(
                full, colors, cam_T_cam, K, inv_K, automasked=net == "teacher"
            )
        reprojection_mask, consistency_weight = losses.student_masks(consistency_mask)
        student_reprojection = losses.masked_mean(terms["student"][2], reprojection_mask)
        teacher_reprojection = losses.masked_mean(terms["teacher"][2], terms["teacher"][3])
        consistency = losses.consistency_loss(
            terms["student"][1], terms["teacher"][1], consistency_weight
        )
        # The reference adds N(0, 1e-5) noise to identity losses; we add none, so the teacher
        # auto-mask may differ on a handful of near-tie pixels.
        np.testing.assert_allclose(
            student_reprojection + teacher_reprojection,
            golden[f"train/losses/reproj_loss/{scale}"],
            rtol=5e-5,
        )
        np.testing.assert_allclose(
            consistency, golden[f"train/losses/consistency_loss/{scale}"], rtol=1e-5
        )
        if scale == 0:
            # Images at the other scales come from the data loader's PIL resize (not stored).
            smooth = sum(
                losses.smoothness_loss(losses.normalise_disparity(terms[n][0]), colors[0])
                for n in ("student", "teacher")
            )
            total = student_reprojection + teacher_reprojection + consistency + 1e-3 * smooth
            np.testing.assert_allclose(total, golden["train/losses/loss/0"], rtol=5e-5)


# ---------------------------------------------------------------- SSIM and photometric error


def test_ssim_of_image_with_itself_is_zero():
    image = jax.random.uniform(jax.random.key(0), (2, 7, 9, 3))
    np.testing.assert_allclose(losses.ssim_dissimilarity(image, image), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.reprojection_error(image, image), 0.0, atol=1e-6)


def test_ssim_constant_images_hand_case():
    a, b = 0.25, 0.75  # exact in binary, so the zero variances come out exactly zero
    x = jnp.full((1, 4, 5, 3), a)
    y = jnp.full((1, 4, 5, 3), b)
    # Zero variances: SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    ssim = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    expected = (1 - ssim) / 2
    np.testing.assert_allclose(losses.ssim_dissimilarity(x, y), expected, rtol=1e-5)
    error = losses.reprojection_error(x, y)
    chex.assert_shape(error, (1, 4, 5, 1))
    np.testing.assert_allclose(error, 0.85 * expected + 0.15 * (b - a), rtol=1e-5)
    np.testing.assert_allclose(losses.reprojection_error(x, y, use_ssim=False), b - a, rtol=1e-6)


def test_ssim_reflection_padding_and_symmetry():
    key1, key2 = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(key1, (1, 5, 6, 2))
    y = jax.random.uniform(key2, (1, 5, 6, 2))
    out = losses.ssim_dissimilarity(x, y)
    np.testing.assert_allclose(out, losses.ssim_dissimilarity(y, x), atol=1e-6)
    # Corner pixel (0, 0): reflection padding (edge not repeated) makes its 3x3 window the
    # pixels at rows/cols (1, 0, 1) -- compute SSIM for that window by hand.
    rows = cols = np.array([1, 0, 1])
    xw = np.asarray(x)[0][np.ix_(rows, cols)]
    yw = np.asarray(y)[0][np.ix_(rows, cols)]
    mx, my = xw.mean((0, 1)), yw.mean((0, 1))
    sx = (xw**2).mean((0, 1)) - mx**2
    sy = (yw**2).mean((0, 1)) - my**2
    sxy = (xw * yw).mean((0, 1)) - mx * my
    ssim = ((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (sx + sy + 9e-4))
    np.testing.assert_allclose(out[0, 0, 0], np.clip((1 - ssim) / 2, 0, 1), rtol=1e-4)


def test_reprojection_error_is_differentiable():
    key1, key2 = jax.random.split(jax.random.key(2))
    x = jax.random.uniform(key1, (1, 6, 6, 3))
    y = jax.random.uniform(key2, (1, 6, 6, 3))
    grad = jax.grad(lambda p: jnp.sum(losses.reprojection_error(p, y)))(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


# ---------------------------------------------------------------- smoothness


def test_smoothness_hand_case():
    disp = jnp.asarray(np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])[None, ..., None], jnp.float32)
    flat = jnp.zeros((1, 2, 3, 3))
    # |dx| = [1, 2] per row, |dy| = 0; flat image: weights exp(0) = 1.
    np.testing.assert_allclose(losses.smoothness_loss(disp, flat), 1.5, rtol=1e-6)
    # An image edge of 1 between columns 1 and 2 (all channels) down-weights that step by e^-1.
    edge = flat.at[:, :, 2, :].set(1.0)
    np.testing.assert_allclose(
        losses.smoothness_loss(disp, edge), (1 + 2 * np.exp(-1)) / 2, rtol=1e-6
    )


def test_normalise_disparity_per_image():
    disp = jnp.stack([jnp.full((3, 4, 1), 2.0), jnp.arange(12.0).reshape(3, 4, 1)])
    out = losses.normalise_disparity(disp)
    np.testing.assert_allclose(out[0], 2.0 / (2.0 + 1e-7))
    np.testing.assert_allclose(jnp.mean(out, axis=(1, 2, 3)), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- masks and loss pieces


def test_per_pixel_minimum_and_average():
    candidates = jnp.array([[[[0.3, 0.1, 0.2]]]])
    np.testing.assert_allclose(losses.per_pixel_minimum(candidates), [[[[0.1]]]])
    np.testing.assert_allclose(
        losses.per_pixel_minimum(candidates, average=True), [[[[0.2]]]], rtol=1e-6
    )


def test_automask_ties_and_noise():
    reprojection = jnp.array([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 4, 1)
    identity = jnp.array([0.2, 0.2, 0.1, 0.4 + 5e-6]).reshape(1, 1, 4, 1)
    mask = losses.automask(reprojection, identity)
    chex.assert_type(mask, jnp.float32)
    np.testing.assert_array_equal(mask.ravel(), [1, 1, 0, 1])  # ties keep the warped loss
    noise = jnp.array([0.0, -1e-5, 0.0, -1e-5]).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(
        losses.automask(reprojection, identity, noise).ravel(), [1, 0, 0, 0]
    )
    drawn = losses.tie_break_noise(jax.random.key(0), (4, 64, 64, 1))
    assert drawn.shape == (4, 64, 64, 1) and abs(float(jnp.std(drawn)) - 1e-5) < 3e-7


def test_masked_mean_hand_case():
    loss = jnp.array([1.0, 2.0, 3.0, 4.0])
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(losses.masked_mean(loss, mask), 4.0 / (2 + 1e-7), rtol=1e-6)
    assert float(losses.masked_mean(loss, jnp.zeros(4))) == 0.0


def test_matching_mask_thresholds():
    teacher = jnp.full((1, 1, 5, 1), 2.0)
    cost_volume_depth = jnp.array([3.0, 4.5, 0.9, 4.0, 1.0]).reshape(1, 1, 5, 1)
    mask = losses.compute_matching_mask(teacher, 1.0 / cost_volume_depth)
    # 3: within 2x -> 1; 4.5 and 0.9: beyond 2x -> 0; exactly 2x either way -> 0 (strict <).
    np.testing.assert_array_equal(mask.ravel(), [1, 0, 0, 0, 0])


def test_student_masks_and_augmentation():
    confidence = jnp.array([1.0, 0.0, 1.0, 1.0]).reshape(2, 1, 2, 1)
    augmentation = jnp.array([0.0, 1.0]).reshape(2, 1, 1, 1)
    reprojection_mask, consistency_weight = losses.student_masks(confidence, augmentation)
    np.testing.assert_array_equal(reprojection_mask.ravel(), [1, 0, 0, 0])
    np.testing.assert_array_equal(consistency_weight.ravel(), [0, 1, 1, 1])
    plain, complement = losses.student_masks(confidence)
    np.testing.assert_array_equal(plain.ravel(), [1, 0, 1, 1])
    np.testing.assert_array_equal(complement.ravel(), [0, 1, 0, 0])


def test_consistency_loss_value_and_detached_teacher():
    student = jnp.array([1.0, 2.0, 4.0, 8.0]).reshape(1, 2, 2, 1)
    teacher = jnp.array([2.0, 2.0, 1.0, 1.0]).reshape(1, 2, 2, 1)
    mask = jnp.array([1.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
    # Mean over all four pixels, not over the mask: (1 + 0 + 3) / 4.
    np.testing.assert_allclose(losses.consistency_loss(student, teacher, mask), 1.0)
    d_student, d_teacher = jax.grad(losses.consistency_loss, argnums=(0, 1))(student, teacher,
                                                                             mask)
    # At an exact tie the gradient is 0, like torch's sign(x) (jnp.abs would give 1).
    np.testing.assert_allclose(d_student.ravel(), [-0.25, 0.0, 0.25, 0.0])
    np.testing.assert_array_equal(d_teacher, 0.0)


def test_masks_carry_no_gradient():
    teacher = jnp.full((1, 1, 2, 1), 2.0)
    cost = jnp.full((1, 1, 2, 1), 0.4)
    grads = jax.grad(lambda m, c: jnp.sum(losses.compute_matching_mask(m, c)), argnums=(0, 1))(
        teacher, cost
    )
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_array_equal(grads[1], 0.0)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="ssim_dissimilarity"):
        losses.ssim_dissimilarity(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5, 3)))
    with pytest.raises(ValueError, match="smoothness_loss"):
        losses.smoothness_loss(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 8, 8, 3)))


def test_velocity_loss_hand_case():
    from mal_jax.mal import objective

    def pose(tx, ty, tz):
        transform = np.eye(4, dtype=np.float32)
        transform[:3, 3] = (tx, ty, tz)
        return transform

    predicted = {-1: jnp.asarray(np.stack([pose(0, 0, 3), pose(0, 0, 0)])),
                 1: jnp.asarray(np.stack([pose(0, 0, -1), pose(0.6, 0, 0.8)]))}
    # Known poses (B, F, 4, 4) in frame order (-1, 0, +1); frame 0 is the identity.
    known = jnp.asarray(np.stack([np.stack([pose(0, 0, 1), pose(0, 0, 0), pose(2, 0, 0)]),
                                  np.stack([pose(0, 0.5, 0), pose(0, 0, 0), pose(0, 0, 1)])]))
    # | |t| - |t_true| | = |3 - 1|, |0 - 0.5|, |1 - 2|, |1 - 1| -> mean 0.875.
    np.testing.assert_allclose(objective.velocity_loss(predicted, known), 0.875, rtol=1e-6)
    # The rotation part plays no role.
    rotated = {f: p.at[:, :3, :3].set(jnp.asarray([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]))
               for f, p in predicted.items()}
    np.testing.assert_allclose(objective.velocity_loss(rotated, known), 0.875, rtol=1e-6)
    # The logged direction diagnostic: cosines 1, 0 (a zero translation), 0 and 0.8.
    np.testing.assert_allclose(objective.translation_cosines(predicted, known),
                               [[1.0, 0.0], [0.0, 0.8]], rtol=1e-6, atol=1e-7)


def test_velocity_loss_needs_true_poses():
    from configs import test as test_config
    from mal_jax.train import step as train_step

    config = test_config.get_config()
    config.loss.velocity_weight = 0.5
    assert train_step.step_settings(config, 4).loss.velocity_weight == 0.5
    config.data.dataset = "kitti"
    with pytest.raises(ValueError, match=r"velocity_weight=0.5 .*dataset='kitti'"):
        train_step.step_settings(config, 4)
