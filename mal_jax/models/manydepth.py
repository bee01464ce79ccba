"""ManyDepth's three networks as one container of pure functions over a variables tree.

Three networks, two modules each: the **teacher** (single-frame network: ResNet encoder and
depth decoder), the **student** (multi-frame network: matching encoder with the cost volume and
depth decoder) and the **pose** network (ResNet encoder and pose decoder). Variables are
``{"params": {net: ...}, "batch_stats": {net: ...}}`` with ``net`` one of
:data:`NETWORK_NAMES`; ``mal_jax.port.convert`` maps them to the reference's checkpoint file
names. Every call takes ``train`` per network so that a frozen teacher and pose network keep
their BatchNorm on running averages while the student trains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mal_jax.models.decoders import DepthDecoder, PoseDecoder
from mal_jax.models.matching import MatchingEncoder
from mal_jax.models.resnet import ResnetEncoder

NETWORK_NAMES = (
    "student_encoder", "student_depth", "teacher_encoder", "teacher_depth", "pose_encoder",
    "pose_decoder",
)


def _net_variables(variables: dict, net: str) -> dict:
    out = {"params": variables["params"][net]}
    stats = variables.get("batch_stats", {}).get(net)
    if stats:
        out["batch_stats"] = stats
    return out


def _cast_floats(tree, dtype):
    """Every floating-point array of ``tree`` in ``dtype`` (integers and bools untouched)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, tree)


@dataclasses.dataclass(frozen=True)
class ManyDepth:
    """Static architecture description plus apply helpers.

    Attributes:
      num_layers: ResNet depth of the student's matching encoder (18 or 50).
      teacher_num_layers: ResNet depth of the teacher encoder (the reference always uses 18).
      num_depth_bins: cost-volume depth hypotheses (paper: 96).
      inverse_depth_bins: bins linear in inverse depth instead of depth (paper: linear).
      scales: disparity scales the decoders output (paper: 0..3).
      compute_dtype: "float32" or "bfloat16": the networks' convolutions and activations run
        in it, from float32 parameters cast on the way in; outputs come back as float32, and
        BatchNorm statistics, the cost volume, losses and the optimizer stay in float32.
    """

    num_layers: int = 18
    teacher_num_layers: int = 18
    num_depth_bins: int = 96
    inverse_depth_bins: bool = False
    scales: tuple[int, ...] = (0, 1, 2, 3)
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ManyDepth.compute_dtype must be 'float32' or 'bfloat16', got "
                             f"{self.compute_dtype!r}")

    @property
    def student_encoder(self) -> MatchingEncoder:
        return MatchingEncoder(self.num_layers, self.num_depth_bins, self.inverse_depth_bins)

    @property
    def student_depth(self) -> DepthDecoder:
        return DepthDecoder(self.scales)

    @property
    def teacher_encoder(self) -> ResnetEncoder:
        return ResnetEncoder(self.teacher_num_layers, 1)

    @property
    def teacher_depth(self) -> DepthDecoder:
        return DepthDecoder(self.scales)

    @property
    def pose_encoder(self) -> ResnetEncoder:
        return ResnetEncoder(18, 2)

    @property
    def pose_decoder(self) -> PoseDecoder:
        return PoseDecoder(2)

    def init(self, rng: jax.Array, height: int, width: int) -> dict:
        """Fresh variables (He-normal convolutions are flax's default lecun; see convert for
        ImageNet initialisation)."""
        if height % 32 or width % 32:
            raise ValueError(f"height and width must be multiples of 32, got {height}x{width}")
        keys = jax.random.split(rng, 6)
        image = jnp.zeros((1, height, width, 3), jnp.float32)
        eye = jnp.eye(4)[None]
        K = jnp.broadcast_to(eye, (1, 4, 4))
        student = self.student_encoder.init(keys[0], image, image[:, None], eye[:, None], K, K,
                                            0.1, 10.0, train=False)
        student_feats = self.student_encoder.apply(student, image, image[:, None], eye[:, None],
                                                   K, K, 0.1, 10.0, train=False)[0]
        teacher = self.teacher_encoder.init(keys[2], image, train=False)
        teacher_feats = self.teacher_encoder.apply(teacher, image, train=False)
        pose_enc = self.pose_encoder.init(keys[4], jnp.concatenate([image, image], -1),
                                          train=False)
        pose_feats = self.pose_encoder.apply(pose_enc, jnp.concatenate([image, image], -1),
                                             train=False)
        trees = {
            "student_encoder": student,
            "student_depth": self.student_depth.init(keys[1], student_feats),
            "teacher_encoder": teacher,
            "teacher_depth": self.teacher_depth.init(keys[3], teacher_feats),
            "pose_encoder": pose_enc,
            "pose_decoder": self.pose_decoder.init(keys[5], pose_feats[-1]),
        }
        return {
            "params": {net: tree["params"] for net, tree in trees.items()},
            "batch_stats": {net: tree.get("batch_stats", {}) for net, tree in trees.items()},
        }

    # Each apply helper returns its outputs and the network's (possibly updated) statistics.

    def _run(self, module, net_variables: dict, *args, float32_args: int = 0, **kwargs):
        """``module.apply`` in ``compute_dtype``: float32 parameters and inputs are cast on
        the way in (their gradients come back in float32), outputs are float32. The last
        ``float32_args`` arguments (geometry: poses, intrinsics, depth range) are not cast."""
        if self.compute_dtype == "float32":
            return module.apply(net_variables, *args, **kwargs)
        dtype = jnp.dtype(self.compute_dtype)
        net_variables = dict(net_variables, params=_cast_floats(net_variables["params"], dtype))
        split = len(args) - float32_args
        args = (*_cast_floats(args[:split], dtype), *args[split:])
        return _cast_floats(module.apply(net_variables, *args, **kwargs), jnp.float32)

    def _apply(self, module, variables, net, train, *args, float32_args: int = 0):
        if train:
            out, updates = self._run(module, _net_variables(variables, net), *args, train=True,
                                     mutable=["batch_stats"], float32_args=float32_args)
            return out, updates["batch_stats"]
        out = self._run(module, _net_variables(variables, net), *args, train=False,
                        float32_args=float32_args)
        return out, variables["batch_stats"][net]

    def pose(self, variables, frame_before, frame_after, train: bool):
        """Pose of the pair (earlier frame, later frame): axis-angle and translation (B, 3)."""
        poses, stats = self.poses(variables, [(frame_before, frame_after)], train)
        return poses[0], stats

    def poses(self, variables, pairs, train: bool, update_order: tuple[int, ...] | None = None):
        """Poses of several (earlier, later) frame pairs from one pass of the pose network.

        The pairs run as one batch, sample-major (larger convolutions run faster per sample
        on CPU: ``python -m mal_jax.studies.bench_layers`` times both), with BatchNorm
        normalising each pair with its own statistics and updating its running averages in
        ``update_order`` (default: each pair once, in order), exactly as separate reference
        calls in that order. Returns ``([(axisangle, translation)] per pair, stats)``.
        """
        groups = len(pairs)
        update_order = tuple(range(groups)) if update_order is None else tuple(update_order)
        if sorted(set(update_order)) != list(range(groups)):
            raise ValueError(f"ManyDepth.poses: update_order {update_order} must name each of "
                             f"the {groups} pairs at least once")
        stacked = jnp.stack([jnp.concatenate(pair, axis=-1) for pair in pairs], axis=1)
        batch = stacked.shape[0]
        encoder = ResnetEncoder(18, 2, update_order)
        feats, stats = self._apply(encoder, variables, "pose_encoder", train,
                                   stacked.reshape((batch * groups,) + stacked.shape[2:]))
        outputs = self._run(
            self.pose_decoder, {"params": variables["params"]["pose_decoder"]}, feats[-1])
        per_pair = [out.reshape((batch, groups) + out.shape[1:]) for out in outputs]
        return [tuple(out[:, group] for out in per_pair) for group in range(groups)], stats

    def teacher(self, variables, image, train: bool):
        """The teacher's (single-frame) disparities ``{scale: (B, h, w, 1)}`` and features."""
        feats, stats = self._apply(self.teacher_encoder, variables, "teacher_encoder", train,
                                   image)
        disps = self._run(self.teacher_depth, {"params": variables["params"]["teacher_depth"]},
                          feats)
        return (disps, feats), stats

    def student(self, variables, image, lookup_images, lookup_poses, K, inv_K,
                min_depth_bin, max_depth_bin, train: bool):
        """The student's (multi-frame) disparities, lowest-cost disparity and confidence mask
        (1/4 res).

        ``K``/``inv_K`` are the intrinsics at scale 2 (the cost volume's resolution).
        """
        (feats, lowest_cost, confidence), stats = self._apply(
            self.student_encoder, variables, "student_encoder", train, image, lookup_images,
            lookup_poses, K, inv_K, min_depth_bin, max_depth_bin, float32_args=5)
        disps = self._run(self.student_depth, {"params": variables["params"]["student_depth"]},
                          feats)
        return (disps, feats, lowest_cost, confidence), stats


def with_batch_stats(variables: dict, net: str, stats) -> dict:
    """``variables`` with one network's statistics replaced (no mutation)."""
    batch_stats = dict(variables["batch_stats"])
    batch_stats[net] = stats
    return {**variables, "batch_stats": batch_stats}


def parameter_count(params) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
