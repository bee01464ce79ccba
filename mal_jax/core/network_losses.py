"""The two networks' self-supervised losses, as the reference composes ``mal_jax.core.losses``.

* :func:`teacher_loss` (the teacher, single-frame network): auto-masked minimum reprojection +
  smoothness.
* :func:`student_loss` (the student, multi-frame network): minimum reprojection where the
  cost volume is trusted, consistency with the detached teacher elsewhere, smoothness; poses
  detached.

Both average over ``LossSettings.scales`` (ManyDepth: 0..3; MAL: 0 only, which the settings
resolve, see :mod:`mal_jax.mal.objective`) and take ``hints``: a function that builds extra
candidate images from the warped sources at each scale, whose reprojection errors join the
per-pixel minimum (MAL's temporal hints; ``None``: ManyDepth's two candidates). Each returns
its full-resolution per-pixel minimum too, the error map MAL's distillation compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mal_jax.core import geometry, losses
from mal_jax.core.frames import SOURCE_FRAMES, frame, warp_sources
from mal_jax.core.resize import downsample_image

# (warped {f: image}, pixel grids {f: (B,H,W,2)}) -> extra candidate images at one scale.
HintFn = Callable[[dict, dict], tuple[jax.Array, ...]]


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Numbers the losses need (see configs/default.py for units and paper defaults)."""

    min_depth: float = 0.1
    max_depth: float = 100.0
    scales: tuple[int, ...] = (0, 1, 2, 3)
    disparity_smoothness: float = 1e-3
    automasking: bool = True
    motion_masking: bool = True
    # Gaussian tie-break noise on identity losses, as the reference; off for parity checks.
    tie_break_noise: bool = True
    # Weight of the velocity loss on the pose translation (0: off, as ManyDepth and MAL).
    velocity_weight: float = 0.0
    # Each decoder scale's reprojection loss at that scale's own resolution (frames
    # box-downsampled, that level's intrinsics) instead of upsampled to the input's (False,
    # as ManyDepth and MAL).
    own_resolution_scales: bool = False


def identity_error(frames: jnp.ndarray) -> jnp.ndarray:
    """Per-pixel minimum of the unwarped sources' reprojection errors (B, H, W, 1)."""
    target = frame(frames, 0)
    errors = [losses.reprojection_error(frame(frames, f), target) for f in SOURCE_FRAMES]
    return losses.per_pixel_minimum(jnp.concatenate(errors, axis=-1))


def reprojection_candidates(warped: dict, target: jnp.ndarray,
                            extra_images: tuple[jnp.ndarray, ...] = ()) -> jnp.ndarray:
    """(B, H, W, N) reprojection errors of the warped sources and any extra candidate images."""
    images = [warped[f] for f in SOURCE_FRAMES] + list(extra_images)
    return jnp.concatenate([losses.reprojection_error(image, target) for image in images], -1)


def min_reprojection(frames: jnp.ndarray, depth: jnp.ndarray, cam_T_cam: dict, K0, inv_K0,
                     hints: HintFn | None = None) -> jnp.ndarray:
    """Per-pixel minimum (B, H, W, 1) of the warped sources' reprojection errors and, with
    ``hints``, of the extra images ``hints`` builds from those warped sources."""
    warped, grids = warp_sources(frames, depth, cam_T_cam, K0, inv_K0)
    extra = tuple(hints(warped, grids)) if hints is not None else ()
    return losses.per_pixel_minimum(reprojection_candidates(warped, frame(frames, 0), extra))


def smoothness_term(disp: jnp.ndarray, frames: jnp.ndarray, scale: int, weight: float):
    """Weighted edge-aware smoothness of one scale's disparity against frame 0 at that scale."""
    color = downsample_image(frame(frames, 0), scale)
    return weight * losses.smoothness_loss(losses.normalise_disparity(disp), color) / (2**scale)


def _average_over_scales(scales: tuple[int, ...], scale_terms
                         ) -> tuple[jax.Array, dict, jax.Array | None]:
    """``scale_terms(scale) -> ({name: value} with "loss", reprojection_min)`` at each scale;
    returns (mean loss over the scales, parts named ``name/scale`` plus ``loss``, scale 0's
    per-pixel minimum or ``None``)."""
    parts, total, scale0_min = {}, 0.0, None
    for scale in scales:
        terms, reprojection = scale_terms(scale)
        parts.update({f"{name}/{scale}": value for name, value in terms.items()})
        total = total + terms["loss"]
        if scale == 0:
            scale0_min = reprojection
    parts["loss"] = total / len(scales)
    return parts["loss"], parts, scale0_min


def _loss_resolution(batch: dict, scale: int, settings: LossSettings):
    """``(frames, K, inv_K, level)`` the reprojection loss of decoder ``scale`` warps: the
    input's resolution (level 0, ManyDepth), or with ``own_resolution_scales`` the scale's own
    (Monodepth's first version), so that the coarse scales compare coarse images and a depth
    whose flow is several pixels off at full resolution still sits in their SSIM's basin."""
    level = scale if settings.own_resolution_scales else 0
    frames = batch["frames"]
    if level:
        frames = jnp.stack([downsample_image(frames[:, index], level)
                            for index in range(frames.shape[1])], axis=1)
    return frames, batch["K"][:, level], batch["inv_K"][:, level], level


def _loss_depth(disps: dict, depths: dict, scale: int, level: int, settings: LossSettings):
    """Depth of decoder ``scale`` at loss resolution ``level`` (0: the upsampled one)."""
    if level == 0:
        return depths[scale]
    return geometry.disp_to_depth(disps[scale], settings.min_depth, settings.max_depth)[1]


def teacher_loss(outputs: dict, batch: dict, settings: LossSettings,
                 hints: HintFn | None = None, noise_rng: jax.Array | None = None
                 ) -> tuple[jax.Array, dict, jax.Array | None]:
    """The teacher's loss; returns ``(loss, parts, reprojection_min)``.

    ``reprojection_min`` (B, H, W, 1) is the full-resolution per-pixel minimum over all
    candidates before auto-masking (``None`` if scale 0 is not a loss scale). The hint images
    join the reprojection candidates, not the identity ones.
    """
    identities = {}

    def scale_terms(scale):
        frames, K, inv_K, level = _loss_resolution(batch, scale, settings)
        depth = _loss_depth(outputs["teacher_disp"], outputs["teacher_depth"], scale, level,
                            settings)
        reprojection = min_reprojection(frames, depth, outputs["cam_T_cam"], K, inv_K, hints)
        if settings.automasking:
            if level not in identities:
                identities[level] = identity_error(frames)
            noise = None
            if settings.tie_break_noise and noise_rng is not None:
                noise = losses.tie_break_noise(jax.random.fold_in(noise_rng, scale),
                                               identities[level].shape)
            mask = losses.automask(reprojection, identities[level], noise)
        else:
            mask = jnp.ones_like(reprojection)
        reproj_loss = losses.masked_mean(reprojection, mask)
        loss = reproj_loss + smoothness_term(outputs["teacher_disp"][scale], batch["frames"],
                                             scale, settings.disparity_smoothness)
        return {"reproj_loss": reproj_loss, "loss": loss}, reprojection

    return _average_over_scales(settings.scales, scale_terms)


def student_masks(outputs: dict, settings: LossSettings) -> tuple[jax.Array, jax.Array]:
    """(trusted, consistency weight) (B, H, W, 1): where the student's reprojection loss
    applies (cost volume trusted, sample not augmented) and where its consistency loss does."""
    consistency = outputs["consistency_mask"]
    if not settings.motion_masking:
        consistency = jnp.ones_like(consistency)
    return losses.student_masks(consistency, outputs["augmentation_mask"][:, None, None, None])


def student_loss(outputs: dict, batch: dict, settings: LossSettings,
                 hints: HintFn | None = None) -> tuple[jax.Array, dict, jax.Array | None]:
    """The student's loss; returns ``(loss, parts, reprojection_min)`` like
    :func:`teacher_loss`. Poses are detached: this loss does not train the pose network."""
    cam_T_cam = jax.lax.stop_gradient(outputs["cam_T_cam"])
    trusted, consistency_weight = student_masks(outputs, settings)

    def scale_terms(scale):
        frames, K, inv_K, level = _loss_resolution(batch, scale, settings)
        depth = _loss_depth(outputs["student_disp"], outputs["student_depth"], scale, level,
                            settings)
        reprojection = min_reprojection(frames, depth, cam_T_cam, K, inv_K, hints)
        # The trust mask comes from the 1/4-resolution cost volume, upsampled by repetition:
        # every 2^level-th pixel is that mask at the loss resolution.
        step = 2**level
        reproj_loss = losses.masked_mean(reprojection, trusted[:, ::step, ::step])
        consistency = losses.consistency_loss(outputs["student_depth"][scale],
                                              outputs["teacher_depth"][scale],
                                              consistency_weight)
        loss = reproj_loss + consistency + smoothness_term(
            outputs["student_disp"][scale], batch["frames"], scale,
            settings.disparity_smoothness)
        return ({"reproj_loss": reproj_loss, "consistency_loss": consistency, "loss": loss},
                reprojection)

    return _average_over_scales(settings.scales, scale_terms)


def combine_losses(student_parts: dict, teacher_parts: dict | None) -> dict:
    """The reference adds each teacher loss entry to the student entry of the same name (while
    the teacher trains); consistency terms exist only for the student."""
    if teacher_parts is None:
        return dict(student_parts)
    return {key: value + teacher_parts.get(key, 0.0) for key, value in student_parts.items()}
