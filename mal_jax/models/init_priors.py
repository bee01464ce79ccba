"""Starting points for training from random weights: a camera moving forward, a scene at a
plausible depth (``config.model.init_forward_motion``, ``config.model.init_depth``).

The reference initialises the pose decoder's last convolution at random, so a fresh pose network
predicts a small translation in a random direction, the same for every input. From random
encoders (no ImageNet weights) the photometric loss does not turn that direction: its
per-pixel minimum over frames t-1 and t+1 lets a sideways translation, opposite for the two
frames, explain the expansion of a forward-moving view half by half. Measured on the embedded
scenes (README, Default run): every run whose depth went constant, near or far, had a pose
network pointing sideways (cosine -0.11 to 0.64 with the true motion); the runs that learned
had it forward (cosine > 0.99). These priors only move the biases of the output layers, so
every weight stays free to learn; they apply to freshly initialised decoders only.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from mal_jax.models.decoders import POSE_OUTPUT_SCALE

# Entries of each frame's 6-vector (axis-angle, translation) the pose decoder predicts.
POSE_VECTOR_SIZE = 6
TRANSLATION_Z = 5
DEPTH_DECODERS = ("teacher_depth", "student_depth")


def with_forward_motion(variables: dict, metres_per_frame: float) -> dict:
    """``variables`` whose pose network starts at ``metres_per_frame`` of forward motion.

    The pose network sees (earlier, later) frame pairs; a camera driving forward along its
    optical axis sees the later frame's points ``metres_per_frame`` nearer, i.e. the
    later-from-earlier transform translates by -z. The bias of the last convolution is the
    translation before the reference's 0.01 output scale.
    """
    if metres_per_frame == 0:
        return variables
    if metres_per_frame < 0 or not math.isfinite(metres_per_frame):
        raise ValueError(f"config.model.init_forward_motion must be >= 0 metres per frame, got "
                         f"{metres_per_frame}")
    pose_2 = variables["params"]["pose_decoder"]["pose_2"]
    bias = pose_2["bias"].at[TRANSLATION_Z::POSE_VECTOR_SIZE].set(
        -metres_per_frame / POSE_OUTPUT_SCALE)
    return _replace_param(variables, ("pose_decoder", "pose_2", "bias"), bias)


def disparity_logit(depth: float, min_depth: float, max_depth: float) -> float:
    """The sigmoid input whose disparity (``geometry.disp_to_depth``) is ``depth`` metres."""
    if not min_depth < depth < max_depth:
        raise ValueError(f"config.model.init_depth={depth} must lie strictly between "
                         f"model.min_depth={min_depth} and model.max_depth={max_depth}")
    sigmoid = (1.0 / depth - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)
    return math.log(sigmoid / (1.0 - sigmoid))


def with_initial_depth(variables: dict, depth: float, min_depth: float,
                       max_depth: float) -> dict:
    """``variables`` whose depth decoders (teacher and student, every scale) start at about
    ``depth`` metres everywhere (0: unchanged, the reference's sigmoid midpoint, i.e.
    ``2 * min_depth`` for a far ``max_depth``)."""
    if depth == 0:
        return variables
    logit = disparity_logit(depth, min_depth, max_depth)
    for decoder in DEPTH_DECODERS:
        for name, layer in variables["params"][decoder].items():
            if name.startswith("dispconv_"):
                variables = _replace_param(variables, (decoder, name, "conv", "bias"),
                                           jnp.full_like(layer["conv"]["bias"], logit))
    return variables


def _replace_param(variables: dict, path: tuple[str, ...], value) -> dict:
    """A copy of ``variables`` with ``params[path]`` replaced (the other arrays shared)."""

    def replaced(tree: dict, keys: tuple[str, ...]) -> dict:
        head, *rest = keys
        return {**tree, head: replaced(tree[head], tuple(rest)) if rest else value}

    return {**variables, "params": replaced(variables["params"], path)}
