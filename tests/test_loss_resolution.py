"""``loss.own_resolution_scales``: each decoder scale's reprojection loss at its own resolution.

Hand cases with a static camera (identity poses), where warping returns each source frame
itself, so the per-scale loss is the photometric error of the box-downsampled frames; and the
default (every scale at the input resolution, as ManyDepth) left unchanged.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.core import losses, network_losses
from mal_jax.core.resize import downsample_image
from mal_jax.data.synthetic import intrinsics_pyramid

HEIGHT, WIDTH, SCALES = 16, 32, (0, 1, 2, 3)


def _static_camera_case(seed=0):
    """A batch of three random frames, identity poses, and per-scale disparities/depths."""
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.uniform(size=(2, 3, HEIGHT, WIDTH, 3)), jnp.float32)
    K, inv_K = intrinsics_pyramid(HEIGHT, WIDTH)
    batch = {"frames": frames, "K": jnp.broadcast_to(K, (2, *K.shape)),
             "inv_K": jnp.broadcast_to(inv_K, (2, *inv_K.shape))}
    disps = {s: jnp.asarray(rng.uniform(0.05, 0.5, size=(2, HEIGHT >> s, WIDTH >> s, 1)),
                            jnp.float32) for s in SCALES}
    depths = {s: jnp.full((2, HEIGHT, WIDTH, 1), 5.0) for s in SCALES}
    outputs = {"cam_T_cam": {-1: jnp.broadcast_to(jnp.eye(4), (2, 4, 4)),
                             1: jnp.broadcast_to(jnp.eye(4), (2, 4, 4))},
               "teacher_disp": disps, "teacher_depth": depths,
               "student_disp": disps, "student_depth": depths}
    return batch, outputs


def _photometric_minimum(frames, level):
    """Per-pixel minimum over the sources of the error against frame 0 at ``level``."""
    down = [downsample_image(frames[:, index], level) for index in range(3)]
    errors = [losses.reprojection_error(down[index], down[1]) for index in (0, 2)]
    return losses.per_pixel_minimum(jnp.concatenate(errors, -1))


@pytest.mark.parametrize("own_resolution", [False, True])
def test_teacher_scale_losses_static_camera_hand_case(own_resolution):
    """reproj_loss/s is the mean photometric error of the frames at level s (own resolution)
    or at level 0 for every s (the default)."""
    batch, outputs = _static_camera_case()
    settings = network_losses.LossSettings(scales=SCALES, automasking=False,
                                           disparity_smoothness=0.0,
                                           own_resolution_scales=own_resolution)
    _, parts, reprojection_min = network_losses.teacher_loss(outputs, batch, settings)
    for scale in SCALES:
        level = scale if own_resolution else 0
        expected = jnp.mean(_photometric_minimum(batch["frames"], level))
        np.testing.assert_allclose(parts[f"reproj_loss/{scale}"], expected, rtol=1e-4)
    # Scale 0's full-resolution minimum (MAL's parts read it) is the same either way.
    np.testing.assert_allclose(reprojection_min, _photometric_minimum(batch["frames"], 0),
                               rtol=1e-4, atol=1e-6)
    coarse = [float(parts[f"reproj_loss/{s}"]) for s in SCALES]
    assert (len(set(np.round(coarse, 6))) == len(SCALES)) == own_resolution


def test_student_own_resolution_uses_subsampled_trust_mask():
    """The student's reprojection loss at level s is masked by every 2^s-th pixel of the
    full-resolution trust mask (the cost volume's 1/4-resolution mask, repeated)."""
    batch, outputs = _static_camera_case(seed=2)
    rng = np.random.default_rng(3)
    coarse_mask = rng.uniform(size=(2, HEIGHT // 4, WIDTH // 4, 1)) > 0.5
    outputs["consistency_mask"] = jnp.asarray(
        np.repeat(np.repeat(coarse_mask, 4, 1), 4, 2), jnp.float32)
    outputs["augmentation_mask"] = jnp.zeros((2,), jnp.float32)
    settings = network_losses.LossSettings(scales=SCALES, disparity_smoothness=0.0,
                                           own_resolution_scales=True)
    trusted, _ = network_losses.student_masks(outputs, settings)
    _, parts, _ = network_losses.student_loss(outputs, batch, settings)
    for scale in SCALES:
        step = 2**scale
        expected = losses.masked_mean(_photometric_minimum(batch["frames"], scale),
                                      trusted[:, ::step, ::step])
        np.testing.assert_allclose(parts[f"reproj_loss/{scale}"], expected, rtol=1e-4)


def test_own_resolution_refused_with_mal_multi_scale():
    from configs import test as test_config
    from mal_jax.train import step as train_step

    config = test_config.get_config()
    config.loss.own_resolution_scales = True
    assert train_step.step_settings(config, 4).loss.own_resolution_scales
    config.mal.multi_scale = True
    with pytest.raises(ValueError, match="own_resolution_scales=True .*multi_scale=True"):
        train_step.step_settings(config, 4)
