"""Weight conversion: golden round trip, torchvision initialisation, clear mismatch errors.

State_dicts are keyed by the reference's checkpoint file names (``encoder``, ``mono_depth``,
...), Flax variables by the port's (``student_encoder``, ``teacher_depth``, ...): the
converter's ``REFERENCE_FILES`` maps one to the other."""

import jax
import numpy as np
import pytest

from mal_jax.models.manydepth import NETWORK_NAMES, ManyDepth
from mal_jax.port.convert import (
    REFERENCE_FILES,
    CheckpointMismatch,
    convert_state_dicts,
    init_from_torchvision,
    to_state_dict,
)


@pytest.fixture(scope="module")
def state_dicts(golden):
    return golden.state_dicts()


def test_reference_file_table_covers_every_network_once():
    assert tuple(REFERENCE_FILES) == NETWORK_NAMES
    assert sorted(REFERENCE_FILES.values()) == sorted(
        ["encoder", "depth", "mono_encoder", "mono_depth", "pose_encoder", "pose"])
    assert REFERENCE_FILES["student_encoder"] == "encoder"
    assert REFERENCE_FILES["teacher_depth"] == "mono_depth"
    assert REFERENCE_FILES["pose_decoder"] == "pose"


def test_golden_round_trip(state_dicts):
    variables, metadata = convert_state_dicts(state_dicts)
    assert metadata == {}
    assert set(variables["params"]) == set(NETWORK_NAMES)
    for net in NETWORK_NAMES:
        back = to_state_dict(net, variables)
        reference = state_dicts[REFERENCE_FILES[net]]
        unused = {k for k in reference if k.startswith(("encoder.fc.", "prematching"))}
        assert set(back) == set(reference) - unused, net
        for key, value in back.items():
            np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_metadata_and_derived_keys_accepted(state_dicts):
    encoder = dict(state_dicts["encoder"])
    encoder.update(height=np.int64(192), width=np.int64(640), min_depth_bin=np.float64(0.2),
                   max_depth_bin=np.float64(30.5))
    encoder["layer0.1.num_batches_tracked"] = np.int64(10)
    encoder["backprojector.pix_coords"] = np.zeros((1, 3, 8))
    _, metadata = convert_state_dicts({**state_dicts, "encoder": encoder})
    assert metadata == {"height": 192, "width": 640, "min_depth_bin": 0.2, "max_depth_bin": 30.5}


def _expect_error(state_dicts, net, edit, match):
    broken = dict(state_dicts[net])
    edit(broken)
    with pytest.raises(CheckpointMismatch, match=match):
        convert_state_dicts({**state_dicts, net: broken})


def test_missing_key_named(state_dicts):
    _expect_error(state_dicts, "depth", lambda d: d.pop("decoder.12.conv.weight"),
                  r"depth\.pth: missing key 'decoder\.12\.conv\.weight'")


def test_extra_key_named(state_dicts):
    _expect_error(state_dicts, "pose", lambda d: d.__setitem__("net.4.weight", np.zeros(3)),
                  r"pose\.pth: unexpected key 'net\.4\.weight'")


def test_wrong_shape_named(state_dicts):
    _expect_error(state_dicts, "mono_encoder",
                  lambda d: d.__setitem__("encoder.conv1.weight", np.zeros((64, 6, 7, 7))),
                  r"mono_encoder\.pth: key 'encoder\.conv1\.weight' has shape \(64, 6, 7, 7\)")


def test_missing_network_named(state_dicts):
    partial = {k: v for k, v in state_dicts.items() if k != "pose"}
    with pytest.raises(CheckpointMismatch, match="no state_dict for 'pose'"):
        convert_state_dicts(partial)


def test_resnet50_checkpoint_into_resnet18_model_named(state_dicts):
    model50 = ManyDepth(num_layers=50)
    variables = jax.jit(lambda: model50.init(jax.random.key(0), 64, 64))()
    encoder50 = to_state_dict("student_encoder", variables)
    with pytest.raises(CheckpointMismatch, match=r"encoder\.pth: .*ResNet-50"):
        convert_state_dicts({**state_dicts, "encoder": encoder50}, ManyDepth(num_layers=18))


def test_torchvision_initialisation(state_dicts):
    model = ManyDepth()
    fresh = jax.jit(lambda: model.init(jax.random.key(3), 64, 64))()
    # A torchvision-shaped ResNet-18 state_dict: the teacher's weights without the prefix.
    torchvision = {k[len("encoder."):]: v for k, v in state_dicts["mono_encoder"].items()}
    loaded = init_from_torchvision(fresh, torchvision, model)
    for net in ("student_encoder", "teacher_encoder"):
        np.testing.assert_array_equal(
            loaded["params"][net]["layer3"]["1"]["conv2"]["kernel"],
            np.transpose(torchvision["layer3.1.conv2.weight"], (2, 3, 1, 0)))
        np.testing.assert_array_equal(loaded["batch_stats"][net]["stem"]["bn1"]["var"],
                                      torchvision["bn1.running_var"])
    # The pose encoder's 6-channel first convolution: the RGB kernel twice, halved.
    pose_kernel = np.asarray(loaded["params"]["pose_encoder"]["stem"]["conv1"]["kernel"])
    rgb = np.transpose(torchvision["conv1.weight"], (2, 3, 1, 0))
    np.testing.assert_allclose(pose_kernel, np.concatenate([rgb, rgb], axis=2) / 2)
    # Layers torchvision lacks keep their fresh values; decoders are untouched.
    for net, layer in (("student_encoder", "reduce_conv"), ("student_depth", "dispconv_0"),
                       ("teacher_depth", "dispconv_0"), ("pose_decoder", "squeeze")):
        for ours, theirs in zip(jax.tree.leaves(loaded["params"][net][layer]),
                                jax.tree.leaves(fresh["params"][net][layer]), strict=True):
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{net}/{layer}")


def test_torchvision_missing_key_named(state_dicts):
    model = ManyDepth()
    fresh = jax.jit(lambda: model.init(jax.random.key(3), 64, 64))()
    torchvision = {k[len("encoder."):]: v for k, v in state_dicts["mono_encoder"].items()
                   if k != "encoder.layer2.0.downsample.1.weight"}
    with pytest.raises(CheckpointMismatch, match=r"missing key 'layer2\.0\.downsample\.1\.weight'"):
        init_from_torchvision(fresh, torchvision, model, source="resnet18.pth")
