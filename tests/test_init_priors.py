"""Starting motion and depth of fresh decoders: the sign convention against the embedded
scenes' true poses, the disparity logit by hand, and where the priors apply."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ablation as ablation_config
from configs import kitti_manydepth
from configs import test as test_config
from mal_jax.core import geometry
from mal_jax.core.frames import FRAME_INDEX, SOURCE_FRAMES
from mal_jax.data import synthetic
from mal_jax.models import init_priors
from mal_jax.models.manydepth import ManyDepth
from mal_jax.train import fine_tune
from mal_jax.train.forward import predict_poses

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def fresh():
    model = ManyDepth(num_depth_bins=8)
    return model, model.init(jax.random.PRNGKey(3), HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def samples():
    return [synthetic.render_sample("train", index, height=HEIGHT, width=WIDTH)
            for index in (0, 150, 300)]


def test_forward_motion_points_along_the_true_motion_of_the_embedded_scenes(fresh, samples):
    model, variables = fresh
    frames = jnp.asarray(np.stack([s["frames"] for s in samples]))
    true = np.stack([s["cam_T_cam"] for s in samples])
    primed = init_priors.with_forward_motion(variables, 1.0)
    cam_T_cam, _, _, _ = predict_poses(model, primed, frames, train=False)
    random_cam_T_cam, _, _, _ = predict_poses(model, variables, frames, train=False)
    for frame_id in SOURCE_FRAMES:
        predicted = np.asarray(cam_T_cam[frame_id])[:, :3, 3]
        known = true[:, FRAME_INDEX[frame_id], :3, 3]
        cosine = np.sum(predicted * known, -1) / (
            np.linalg.norm(predicted, axis=-1) * np.linalg.norm(known, axis=-1))
        assert np.all(cosine > 0.99), (frame_id, cosine)
        np.testing.assert_allclose(np.linalg.norm(predicted, axis=-1), 1.0, atol=0.1)
        # The reference's init: a translation of centimetres, not a metre forward.
        assert np.all(np.linalg.norm(np.asarray(random_cam_T_cam[frame_id])[:, :3, 3], axis=-1)
                      < 0.2)


def test_forward_motion_moves_only_the_translation_z_biases(fresh):
    _, variables = fresh
    primed = init_priors.with_forward_motion(variables, 0.5)
    bias = np.asarray(primed["params"]["pose_decoder"]["pose_2"]["bias"])
    before = np.asarray(variables["params"]["pose_decoder"]["pose_2"]["bias"])
    assert bias.shape == (12,)  # two frames x (axis-angle, translation)
    np.testing.assert_array_equal(bias[[5, 11]], [-50.0, -50.0])  # -0.5 m / 0.01
    np.testing.assert_array_equal(np.delete(bias, [5, 11]), np.delete(before, [5, 11]))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), primed, variables)
    assert sum(jax.tree.leaves(changed)) == 1
    assert init_priors.with_forward_motion(variables, 0.0) is variables


def test_disparity_logit_by_hand():
    # depth 10 m in [0.1, 100]: sigmoid = (0.1 - 0.01) / (10 - 0.01) = 0.0090090...
    expected = math.log(0.09 / 9.99 / (1 - 0.09 / 9.99))
    assert init_priors.disparity_logit(10.0, 0.1, 100.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-4.70, abs=0.01)
    for depth in (0.5, 10.0, 60.0):
        sigmoid = 1.0 / (1.0 + math.exp(-init_priors.disparity_logit(depth, 0.1, 100.0)))
        assert 1.0 / (0.01 + (10.0 - 0.01) * sigmoid) == pytest.approx(depth, rel=1e-12)


def test_initial_depth_sets_every_scale_of_both_decoders(fresh, samples):
    model, variables = fresh
    primed = init_priors.with_initial_depth(variables, 10.0, 0.1, 100.0)
    image = jnp.asarray(np.stack([s["frames"][FRAME_INDEX[0]] for s in samples]))
    (disps, _), _ = model.teacher(primed, image, train=False)
    (random_disps, _), _ = model.teacher(variables, image, train=False)
    for scale in (0, 1, 2, 3):
        depth = geometry.disp_to_depth(disps[scale], 0.1, 100.0)[1]
        # The random weights add logits of about +-1 around the prior: depth 10 m x e^(+-1).
        assert 10 / math.e < float(jnp.median(depth)) < 10 * math.e, scale
        random_depth = geometry.disp_to_depth(random_disps[scale], 0.1, 100.0)[1]
        assert float(jnp.median(random_depth)) < 0.3  # reference init: ~2 * min_depth
        for decoder in init_priors.DEPTH_DECODERS:
            bias = primed["params"][decoder][f"dispconv_{scale}"]["conv"]["bias"]
            np.testing.assert_allclose(bias, init_priors.disparity_logit(10.0, 0.1, 100.0),
                                       rtol=1e-6)
    assert init_priors.with_initial_depth(variables, 0.0, 0.1, 100.0) is variables


@pytest.mark.parametrize("field,value,message", [
    ("init_depth", 200.0, r"init_depth=200.0 must lie strictly between model.min_depth=0.1 "
                          r"and model.max_depth=100.0"),
    ("init_depth", 0.05, r"init_depth=0.05"),
    ("init_forward_motion", -1.0, r"init_forward_motion must be >= 0 .* got -1.0"),
])
def test_bad_priors_name_the_field(fresh, field, value, message):
    config = test_config.get_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=message):
        fine_tune.fresh_decoder_priors(config, fresh[1])


def test_fresh_runs_get_the_config_priors():
    config = test_config.get_config()
    config.model.init_forward_motion = 0.8
    config.model.init_depth = 5.0
    model = ManyDepth(num_depth_bins=config.model.num_depth_bins)
    variables, _, _ = fine_tune.initial_variables(config, model, jax.random.PRNGKey(0))
    params = variables["params"]
    np.testing.assert_allclose(np.asarray(params["pose_decoder"]["pose_2"]["bias"])[[5, 11]],
                               [-80, -80])
    np.testing.assert_allclose(params["student_depth"]["dispconv_0"]["conv"]["bias"],
                               init_priors.disparity_logit(5.0, 0.1, 100.0), rtol=1e-6)


def test_priors_on_for_the_embedded_scenes_off_for_kitti():
    embedded = ablation_config.get_config().model
    assert (embedded.init_forward_motion, embedded.init_depth) == (1.0, 10.0)
    kitti = kitti_manydepth.get_config().model
    assert (kitti.init_forward_motion, kitti.init_depth) == (0.0, 0.0)  # paper: random init


def test_pose_direction_report_by_hand():
    from mal_jax.studies.pose_direction import translation_report

    def poses(*translations):
        out = np.tile(np.eye(4), (len(translations), 1, 1))
        out[:, :3, 3] = translations
        return out

    true = np.stack([poses((0, 0, 1), (0, 0, 0), (0, 0, -1)),
                     poses((0, 0, 2), (0, 0, 0), (0, 0, -2))])
    # Frame -1: along the motion at half the length, then sideways; frame +1: 60 degrees off.
    predicted = {-1: poses((0, 0, 0.5), (3, 0, 0)),
                 1: poses((0, math.sqrt(3), -1), (0, math.sqrt(3), -1))}
    report = translation_report(predicted, true)
    assert report[-1]["cosine_min"] == pytest.approx(0.0, abs=1e-12)
    assert report[-1]["cosine_max"] == pytest.approx(1.0)
    assert report[-1]["length_ratio"] == pytest.approx((0.5 + 1.5) / 2)
    assert report[-1]["mean_direction"] == [0.5, 0.0, 0.5]
    assert report[1]["cosine_median"] == pytest.approx(0.5)
    assert report[1]["length_ratio"] == pytest.approx(1.5)  # lengths 2 / 1 and 2 / 2
