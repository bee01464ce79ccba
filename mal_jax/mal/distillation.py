"""MAL distillation hints: per pixel, distil the student (multi-frame network) towards whichever
reprojects best among the teacher's, an ensemble of both, and the student's own.

Behaviour reproduced from the MAL reference (ManyDepth setting, full resolution only):

* Candidates, in this order: teacher depth, ensemble depth, student depth (``ensemble=False``
  drops the middle one). Each is judged by a per-pixel minimum reprojection error:
  - teacher: the teacher loss's minimum over its warped sources (and its temporal-hint
    candidates when those are on), before auto-masking;
  - ensemble: the warped sources only (never temporal hints), warped with the depth of the
    *mean sigmoid disparity* of teacher and student (both detached) and detached poses;
  - student: the student loss's minimum over its warped sources (and its own temporal-hint
    candidates when those are on).
* The target takes the first candidate with the lowest error (ties go to the earlier one).
  As *target depth* the ensemble is the mean of the two *depths* (not the depth of the mean
  disparity used for its error). The teacher depth is detached; the student depth is not,
  so where the ensemble wins the loss ``|(t + s) / 2 - s|`` passes half the usual gradient to
  the student, and where the student wins the term is zero.
* ``distil_loss = mean(|target - student_depth| * trusted)`` over all pixels, where
  ``trusted`` is the student's reprojection mask (cost-volume consistency mask times
  ``1 - augmentation``): the complement of where the consistency loss applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mal_jax.core import geometry
from mal_jax.core.network_losses import min_reprojection
from mal_jax.core.resize import upsample_bilinear

# Candidate order of the distillation target (index returned by ``select_target``).
TEACHER, ENSEMBLE, STUDENT = 0, 1, 2


def ensemble_disparity(teacher_disp: jax.Array, student_disp: jax.Array) -> jax.Array:
    """Mean of the two networks' sigmoid disparities (B, h, w, 1), detached."""
    return jax.lax.stop_gradient((teacher_disp + student_disp) / 2.0)


def ensemble_reprojection(
    frames: jax.Array,
    ensemble_disp: jax.Array,
    cam_T_cam: dict,
    K0: jax.Array,
    inv_K0: jax.Array,
    min_depth: float,
    max_depth: float,
) -> jax.Array:
    """Minimum reprojection error (B, H, W, 1) of the source frames warped with the ensemble.

    ``ensemble_disp`` is upsampled to the frames' resolution like the networks' outputs; the
    poses are detached. No identity or temporal-hint candidates take part.
    """
    _, _, height, width, _ = frames.shape
    disp = upsample_bilinear(ensemble_disp, height, width)
    _, depth = geometry.disp_to_depth(disp, min_depth, max_depth)
    error = min_reprojection(frames, depth, jax.lax.stop_gradient(cam_T_cam), K0, inv_K0)
    return jax.lax.stop_gradient(error)


def candidate_depths(
    teacher_depth: jax.Array, student_depth: jax.Array, ensemble: bool = True
) -> tuple[jax.Array, ...]:
    """(teacher, [ensemble,] student) target depths with the reference's detaches."""
    teacher_depth = jax.lax.stop_gradient(teacher_depth)
    if not ensemble:
        return teacher_depth, student_depth
    return teacher_depth, (teacher_depth + student_depth) / 2.0, student_depth


def select_target(
    candidate_errors: Sequence[jax.Array], depths: Sequence[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Per pixel, the depth of the candidate with the lowest error.

    Args:
      candidate_errors: one (B, H, W, 1) reprojection error map per candidate.
      depths: the matching (B, H, W, 1) depths, same order.

    Returns:
      ``(target (B, H, W, 1), choice (B, H, W, 1) int32)``; ties pick the earliest candidate.
      The choice carries no gradient; the chosen depth keeps its own.
    """
    if len(candidate_errors) != len(depths) or not depths:
        raise ValueError(
            f"select_target: {len(candidate_errors)} error maps for {len(depths)} depths"
        )
    errors = jax.lax.stop_gradient(jnp.concatenate(list(candidate_errors), axis=-1))
    choice = jnp.argmin(errors, axis=-1, keepdims=True).astype(jnp.int32)
    stacked = jnp.concatenate(list(depths), axis=-1)
    return jnp.take_along_axis(stacked, choice, axis=-1), choice


def distillation_loss(target: jax.Array, student_depth: jax.Array, trusted: jax.Array) -> jax.Array:
    """``mean(|target - student_depth| * trusted)`` over every pixel of the batch."""
    return jnp.mean(jnp.abs(target - student_depth) * jax.lax.stop_gradient(trusted))


def distillation_hint(
    teacher_error: jax.Array,
    student_error: jax.Array,
    teacher_depth: jax.Array,
    student_depth: jax.Array,
    trusted: jax.Array,
    ensemble_error: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The distillation loss from the candidates' error maps; ``ensemble_error=None`` leaves
    the ensemble candidate out. Returns ``(distil_loss, choice)``."""
    use_ensemble = ensemble_error is not None
    depths = candidate_depths(teacher_depth, student_depth, use_ensemble)
    errors = (
        (teacher_error, ensemble_error, student_error)
        if use_ensemble
        else (teacher_error, student_error)
    )
    target, choice = select_target(errors, depths)
    if not use_ensemble:
        # Keep the candidate numbering fixed: 0 teacher, 1 ensemble, 2 student.
        choice = jnp.where(choice == 1, STUDENT, TEACHER)
    return distillation_loss(target, student_depth, trusted), choice
