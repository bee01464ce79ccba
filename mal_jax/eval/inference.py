"""Network passes shared by evaluation and prediction: lookup pose, the student's (multi-frame
network) and the teacher's (single-frame network) disparities, and a jitted batch predictor for
evaluation batches.

The student's pass follows ManyDepth's ``evaluate_depth.py``: the lookup frame's pose comes
from the pose net on (lookup, current) and is inverted (current -> lookup camera); the cost
volume spans the checkpoint's adaptive depth bins. A zeroed pose is the reference's signal for
"no lookup frame" (the cost volume stays empty, as in ``test_simple --mode mono``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core import geometry
from mal_jax.models.manydepth import ManyDepth


class InferenceModelLike(Protocol):
    """What evaluation needs of ``mal_jax.train.checkpointing.InferenceModel``."""

    model: ManyDepth
    variables: dict
    min_depth_bin: float
    max_depth_bin: float
    height: int
    width: int


def load_inference(path: str) -> InferenceModelLike:
    """Load a training workdir or a ManyDepth .pth folder; a missing path is one clear error."""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"{path or '(empty path)'}: checkpoint or weights folder missing")
    from mal_jax.train import checkpointing

    return checkpointing.load_inference(path)


# ------------------------------------------------------------------ network passes


def student_disparity(
    model: ManyDepth,
    variables: dict,
    current: jax.Array,
    lookup: jax.Array,
    zero_pose: jax.Array,
    K2: jax.Array,
    inv_K2: jax.Array,
    min_depth_bin,
    max_depth_bin,
    min_depth: float,
    max_depth: float,
) -> jax.Array:
    """Scaled disparity (B, H, W) of the student with one lookup frame.

    The lookup pose is the pose net on (lookup, current), inverted; where ``zero_pose`` (B,)
    is set it is zeroed, which the cost volume reads as "no lookup frame" (``test_simple``'s
    mono mode).
    """
    (axisangle, translation), _ = model.pose(variables, lookup, current, train=False)
    pose = geometry.transformation_from_parameters(
        axisangle[:, 0, 0], translation[:, 0, 0], invert=True
    )
    pose = jnp.where(zero_pose[:, None, None], 0.0, pose)
    (disps, *_), _ = model.student(
        variables,
        current,
        lookup[:, None],
        pose[:, None],
        K2,
        inv_K2,
        min_depth_bin,
        max_depth_bin,
        train=False,
    )
    return geometry.disp_to_depth(disps[0][..., 0], min_depth, max_depth)[0]


def teacher_disparity(
    model: ManyDepth, variables: dict, current: jax.Array, min_depth: float, max_depth: float
) -> jax.Array:
    """Scaled disparity (B, H, W) of the teacher."""
    (disps, _), _ = model.teacher(variables, current, train=False)
    return geometry.disp_to_depth(disps[0][..., 0], min_depth, max_depth)[0]


def pad_batch(array: np.ndarray, size: int) -> np.ndarray:
    """Pad the batch axis to ``size`` by repeating the last element (one static shape)."""
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)], axis=0)


@functools.lru_cache(maxsize=8)
def _eval_forward(model: ManyDepth, min_depth: float, max_depth: float):
    """One jitted forward per architecture and range: repeated evaluations (e.g. during
    training) reuse the compiled program."""

    def forward(variables, frames, K2, inv_K2, min_bin, max_bin):
        previous, current = frames[:, 0], frames[:, 1]
        present = jnp.any(previous != 0, axis=(1, 2, 3))
        lookup = jnp.where(present[:, None, None, None], previous, current)
        never_zero = jnp.zeros(present.shape, bool)
        student = student_disparity(
            model,
            variables,
            current,
            lookup,
            never_zero,
            K2,
            inv_K2,
            min_bin,
            max_bin,
            min_depth,
            max_depth,
        )
        return student, teacher_disparity(model, variables, current, min_depth, max_depth)

    return jax.jit(forward)


def make_batch_predictor(
    inference: InferenceModelLike, min_depth: float, max_depth: float, batch_size: int
) -> Callable[[dict], dict[str, np.ndarray]]:
    """Predictor: eval batch with frames (-1, 0) -> scaled disparities per model (B, H, W).

    A missing (all-black) frame -1 is replaced by frame 0, whose pose the pose net then
    predicts against itself: the reference's ``--static_camera`` mode for that sample. Batches
    are padded to ``batch_size`` so one program serves the whole split.
    """
    forward = _eval_forward(inference.model, float(min_depth), float(max_depth))
    min_bin = jnp.float32(inference.min_depth_bin)
    max_bin = jnp.float32(inference.max_depth_bin)

    def predict(batch: dict) -> dict[str, np.ndarray]:
        frames = np.asarray(batch["frames"], np.float32)
        if frames.ndim != 5 or frames.shape[1] != 2:
            raise ValueError(f"eval batch 'frames' {frames.shape}: expected (B, 2, H, W, 3)")
        count = frames.shape[0]
        student, teacher = forward(
            inference.variables,
            pad_batch(frames, batch_size),
            pad_batch(np.asarray(batch["K"])[:, 2], batch_size),
            pad_batch(np.asarray(batch["inv_K"])[:, 2], batch_size),
            min_bin,
            max_bin,
        )
        return {"student": np.asarray(student)[:count], "teacher": np.asarray(teacher)[:count]}

    return predict
