"""Convert PyTorch ManyDepth / torchvision checkpoints into Flax variables.

Two sources:
  * a ManyDepth checkpoint folder (``encoder.pth``, ``depth.pth``, ``mono_encoder.pth``,
    ``mono_depth.pth``, ``pose_encoder.pth``, ``pose.pth``), read with torch (optional extra), or
    the same state_dicts already loaded as ``{net: {key: numpy array}}`` (no torch needed);
  * a torchvision ResNet-18/50 ImageNet state_dict, to initialise the encoders.

Every expected weight is looked up by its torch name, so a checkpoint that does not fit fails
naming the key (missing, unexpected, or of the wrong shape).

The reference names its networks by checkpoint file (``encoder`` and ``depth`` for the student,
``mono_encoder`` and ``mono_depth`` for the teacher, ``pose_encoder`` and ``pose``); the port
names them teacher, student and pose (``mal_jax.models.manydepth.NETWORK_NAMES``).
:data:`REFERENCE_FILES` is the one table between the two: state_dicts going in and out of this
module are keyed by the reference's file names, Flax variables by the port's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.models.manydepth import NETWORK_NAMES, ManyDepth

# The reference's checkpoint file (without ``.pth``) of each network of the port.
REFERENCE_FILES = {
    "student_encoder": "encoder",
    "student_depth": "depth",
    "teacher_encoder": "mono_encoder",
    "teacher_depth": "mono_depth",
    "pose_encoder": "pose_encoder",
    "pose_decoder": "pose",
}

# Keys a ManyDepth checkpoint holds that carry no weight of ours: pixel grids rebuilt on the fly,
# BatchNorm step counters, the unused ImageNet classifier of torchvision's ResNet, and the
# matching encoder's ``prematching_conv``, which the reference creates but never calls.
_DERIVED_SUFFIXES = ("num_batches_tracked",)
_UNUSED_PREFIXES = ("backprojector.", "projector.", "encoder.fc.", "fc.", "prematching_conv.")
# Metadata entries of encoder.pth (the student's matching encoder), the file that also marks a
# folder as a ManyDepth checkpoint.
METADATA_KEYS = ("height", "width", "min_depth_bin", "max_depth_bin")
METADATA_FILE = f"{REFERENCE_FILES['student_encoder']}.pth"

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the architecture; the message names file and key."""


def _resnet_key(path: tuple[str, ...], matching: bool) -> str:
    """Torch name of a ResNet encoder leaf (torchvision names, ManyDepth's for the student's
    matching encoder)."""
    head, rest = path[0], list(path[1:])
    leaf = rest[-1]
    renamed = []
    for part in rest[:-1]:
        if part == "downsample_conv":
            renamed.append("downsample.0")
        elif part == "downsample_bn":
            renamed.append("downsample.1")
        else:
            renamed.append(part)
    is_bn = renamed and (renamed[-1].startswith("bn") or renamed[-1] == "downsample.1")
    leaf = _BN_NAMES[leaf] if is_bn else {"kernel": "weight", "bias": "bias"}[leaf]
    if head == "stem":
        if matching:
            layer = {"conv1": "layer0.0", "bn1": "layer0.1"}[renamed[0]]
            return f"{layer}.{leaf}"
        return f"encoder.{renamed[0]}.{leaf}"
    if head == "reduce_conv":
        return f"reduce_conv.0.{leaf}"
    if matching and head == "layer1":
        return ".".join(["layer1.1", *renamed, leaf])
    return ".".join(([] if matching else ["encoder"]) + [head, *renamed, leaf])


def _decoder_key(path: tuple[str, ...]) -> str:
    name, leaf = path[0], {"kernel": "weight", "bias": "bias"}[path[-1]]
    kind, *numbers = name.split("_")
    if kind == "upconv":
        level, half = int(numbers[0]), int(numbers[1])
        return f"decoder.{2 * (4 - level) + half}.conv.conv.{leaf}"
    return f"decoder.{10 + int(numbers[0])}.conv.{leaf}"


def _pose_key(path: tuple[str, ...]) -> str:
    index = {"squeeze": 0, "pose_0": 1, "pose_1": 2, "pose_2": 3}[path[0]]
    return f"net.{index}.{ {'kernel': 'weight', 'bias': 'bias'}[path[-1]]}"


def torch_key(net: str, path: tuple[str, ...]) -> str:
    """The state_dict name of the Flax leaf ``path`` (params or batch_stats) of the port's
    network ``net``."""
    if net in ("student_encoder", "teacher_encoder", "pose_encoder"):
        return _resnet_key(path, matching=net == "student_encoder")
    if net in ("student_depth", "teacher_depth"):
        return _decoder_key(path)
    if net == "pose_decoder":
        return _pose_key(path)
    raise KeyError(f"unknown network {net!r}; expected one of {NETWORK_NAMES}")


def _to_flax(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if path[-1] == "kernel":  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)
        return np.transpose(array, (2, 3, 1, 0))
    return array


def _is_ignored(key: str) -> bool:
    return key.endswith(_DERIVED_SUFFIXES) or key.startswith(_UNUSED_PREFIXES) or (
        key in METADATA_KEYS)


def _guess_depth(state_dict: Mapping[str, np.ndarray]) -> int:
    return 50 if any(k.endswith("conv3.weight") for k in state_dict) else 18


def _abstract_variables(model: ManyDepth) -> dict:
    return jax.eval_shape(lambda: model.init(jax.random.key(0), 64, 64))


def convert_network(net: str, state_dict: Mapping[str, np.ndarray], abstract: dict,
                    source: str = "") -> dict:
    """The port's network ``net`` as ``{"params": ..., "batch_stats": ...}`` from its torch
    state_dict (the reference's file ``REFERENCE_FILES[net]``)."""
    source = source or f"{REFERENCE_FILES[net]}.pth"
    if net.endswith("encoder"):
        expected = 50 if "conv3" in abstract["params"][net]["layer1"]["0"] else 18
        found = _guess_depth(state_dict)
        if found != expected:
            marker = ("layer1.1.0.conv3.weight" if net == "student_encoder"
                      else "encoder.layer1.0.conv3.weight")
            raise CheckpointMismatch(
                f"{source}: checkpoint is a ResNet-{found} (key {marker!r} "
                f"{'present' if found == 50 else 'absent'}) but the model is a ResNet-{expected}; "
                "set num_layers accordingly")
    out = {}
    used = set()
    for collection in ("params", "batch_stats"):
        flat = flax.traverse_util.flatten_dict(abstract[collection].get(net, {}))
        filled = {}
        for path, leaf in flat.items():
            key = torch_key(net, path)
            if key not in state_dict:
                hint = ""
                if net.endswith("encoder") and _guess_depth(state_dict) == 50:
                    hint = " (the checkpoint looks like a ResNet-50; is num_layers right?)"
                raise CheckpointMismatch(f"{source}: missing key {key!r}{hint}")
            value = _to_flax(np.asarray(state_dict[key]), path)
            if value.shape != tuple(leaf.shape):
                raise CheckpointMismatch(
                    f"{source}: key {key!r} has shape {np.shape(state_dict[key])}, expected the "
                    f"torch equivalent of {tuple(leaf.shape)}")
            filled[path] = jnp.asarray(value)
            used.add(key)
        out[collection] = flax.traverse_util.unflatten_dict(filled) if filled else {}
    extra = sorted(k for k in state_dict if k not in used and not _is_ignored(k))
    if extra:
        hint = ""
        if net.endswith("encoder") and _guess_depth(state_dict) == 50:
            hint = " (the checkpoint looks like a ResNet-50; is num_layers right?)"
        raise CheckpointMismatch(f"{source}: unexpected key {extra[0]!r}{hint}")
    return out


def _metadata(encoder_state: Mapping[str, np.ndarray]) -> dict:
    meta = {}
    for key in METADATA_KEYS:
        if key in encoder_state:
            value = np.asarray(encoder_state[key]).item()
            meta[key] = int(value) if key in ("height", "width") else float(value)
    return meta


def convert_state_dicts(state_dicts: Mapping[str, Mapping[str, np.ndarray]],
                        model: ManyDepth | None = None, source: str = "") -> tuple[dict, dict]:
    """All six networks from ``{reference file name: state_dict}`` -> (Flax variables keyed by
    the port's names, ``encoder.pth``'s metadata).

    ``model`` defaults to the reference architecture with the student's matching encoder depth
    read from the checkpoint.
    """
    files = list(REFERENCE_FILES.values())
    missing = [file for file in files if file not in state_dicts]
    if missing:
        raise CheckpointMismatch(f"{source or 'checkpoint'}: no state_dict for {missing[0]!r}"
                                 f" (expected {', '.join(files)})")
    student_encoder = state_dicts[REFERENCE_FILES["student_encoder"]]
    if model is None:
        model = ManyDepth(num_layers=_guess_depth(student_encoder))
    abstract = _abstract_variables(model)
    variables = {"params": {}, "batch_stats": {}}
    for net, file in REFERENCE_FILES.items():
        name = os.path.join(source, f"{file}.pth") if source else f"{file}.pth"
        converted = convert_network(net, state_dicts[file], abstract, name)
        variables["params"][net] = converted["params"]
        variables["batch_stats"][net] = converted["batch_stats"]
    return variables, _metadata(student_encoder)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``.pth`` state_dict as numpy arrays (scalars kept as numpy scalars). Needs torch."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the optional extra
        raise ImportError("reading .pth files needs torch: pip install 'mal_jax[torch]'") from error
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in state.items()}


def load_manydepth_folder(folder: str, model: ManyDepth | None = None) -> tuple[dict, dict]:
    """Flax variables and metadata from a ManyDepth checkpoint folder of six ``.pth`` files."""
    state_dicts = {file: read_torch_state_dict(os.path.join(folder, f"{file}.pth"))
                   for file in REFERENCE_FILES.values()}
    return convert_state_dicts(state_dicts, model, source=folder)


def resnet_encoder_from_torchvision(state_dict: Mapping[str, np.ndarray], abstract_net: dict,
                                    matching: bool, num_input_images: int = 1,
                                    source: str = "torchvision state_dict") -> dict:
    """Initialise one encoder from a torchvision ResNet ImageNet state_dict.

    Layers the torchvision model lacks (the student's matching encoder's ``reduce_conv``) are
    left out of the result: merge it over fresh variables. The multi-image pose encoder gets the
    first convolution repeated per image and divided by the image count, as the reference does.
    """
    out = {"params": {}, "batch_stats": {}}
    for collection in ("params", "batch_stats"):
        flat = flax.traverse_util.flatten_dict(abstract_net[collection])
        filled = {}
        for path, leaf in flat.items():
            if path[0] == "reduce_conv":
                continue
            key = _resnet_key(path, matching=False)[len("encoder."):]
            if key not in state_dict:
                hint = ""
                if _guess_depth(state_dict) == 50:
                    hint = " (this looks like a ResNet-50 state_dict)"
                raise CheckpointMismatch(f"{source}: missing key {key!r}{hint}")
            value = np.asarray(state_dict[key], dtype=np.float32)
            if key == "conv1.weight" and num_input_images > 1:
                value = np.concatenate([value] * num_input_images, axis=1) / num_input_images
            value = _to_flax(value, path)
            if value.shape != tuple(leaf.shape):
                raise CheckpointMismatch(
                    f"{source}: key {key!r} has shape {np.shape(state_dict[key])}, which does not "
                    f"fit {tuple(leaf.shape)}")
            filled[path] = jnp.asarray(value)
        out[collection] = flax.traverse_util.unflatten_dict(filled) if filled else {}
    return out


def init_from_torchvision(variables: dict, state_dict: Mapping[str, np.ndarray],
                          model: ManyDepth, source: str = "torchvision state_dict") -> dict:
    """``variables`` with the three encoders replaced by ImageNet weights (decoders untouched)."""
    abstract = _abstract_variables(model)
    depth = _guess_depth(state_dict)
    new = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
    for net, layers, images in (("student_encoder", model.num_layers, 1),
                                ("teacher_encoder", model.teacher_num_layers, 1),
                                ("pose_encoder", 18, 2)):
        if layers != depth:
            continue
        net_abstract = {c: abstract[c][net] for c in ("params", "batch_stats")}
        loaded = resnet_encoder_from_torchvision(state_dict, net_abstract,
                                                 net == "student_encoder", images, source)
        merged_params = flax.traverse_util.flatten_dict(variables["params"][net])
        merged_params.update(flax.traverse_util.flatten_dict(loaded["params"]))
        new["params"][net] = flax.traverse_util.unflatten_dict(merged_params)
        new["batch_stats"][net] = loaded["batch_stats"]
    if all(layers != depth for layers in (model.num_layers, model.teacher_num_layers, 18)):
        raise CheckpointMismatch(f"{source}: a ResNet-{depth} state_dict fits none of the encoders")
    return new


def to_state_dict(net: str, variables: dict) -> dict[str, np.ndarray]:
    """The torch state_dict (numpy arrays) of the port's network ``net`` (the content of the
    reference's ``REFERENCE_FILES[net]`` file): the converter's inverse."""
    out = {}
    for collection in ("params", "batch_stats"):
        tree = variables[collection].get(net, {})
        for path, value in flax.traverse_util.flatten_dict(tree).items():
            value = np.asarray(value)
            if path[-1] == "kernel":
                value = np.transpose(value, (3, 2, 0, 1))
            out[torch_key(net, path)] = value
    return out
