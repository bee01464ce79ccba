"""ManyDepth's training forward pass and its multi-scale loss, as pure functions.

``train_forward`` runs the networks in the reference's order (pose pairs, lookup pose, teacher,
matching encoder) so BatchNorm statistics advance exactly as in the reference step.
``single_frame_loss`` and ``multi_frame_loss`` compose the pieces of ``mal_jax.core.losses`` the
way the reference trainer does; both take optional extra reprojection candidates, which is
where MAL's temporal hints plug in.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mal_jax.core import geometry, losses
from mal_jax.models.manydepth import ManyDepth, with_batch_stats

# Position of each frame id on the ``frames`` axis of a training batch.
FRAME_INDEX = {-1: 0, 0: 1, 1: 2}
SOURCE_FRAMES = (-1, 1)
# The matching (lookup) frames ManyDepth uses by default: the previous frame only.
LOOKUP_FRAMES = (-1,)
# Matching augmentation probabilities (reference: 25% static camera, 25% zero pose).
STATIC_CAMERA_PROB = 0.25
ZERO_POSE_PROB = 0.25


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Numbers the loss needs (see configs/default.py for units and paper defaults)."""

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


def frame(batch_frames: jnp.ndarray, frame_id: int) -> jnp.ndarray:
    """(B, H, W, 3) image of ``frame_id`` from a (B, F, H, W, 3) training batch."""
    return batch_frames[:, FRAME_INDEX[frame_id]]


def downsample_image(image: jnp.ndarray, scale: int) -> jnp.ndarray:
    """Image at 1/2^scale resolution by 2^s x 2^s box averaging (the smoothness term's colour)."""
    if scale == 0:
        return image
    factor = 2**scale
    batch, height, width, channels = image.shape
    blocks = image.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(2, 4))


def upsample_bilinear(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """torch ``interpolate(mode='bilinear', align_corners=False)`` for integer upscaling."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear",
                            antialias=False)


def upsample_nearest_to(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """torch ``interpolate(mode='nearest')`` for an integer factor, on (B, h, w) maps."""
    factor_y, factor_x = height // x.shape[1], width // x.shape[2]
    return jnp.repeat(jnp.repeat(x, factor_y, axis=1), factor_x, axis=2)


def predict_poses(model: ManyDepth, variables: dict, frames_aug: jnp.ndarray, train: bool):
    """Poses for the loss and the lookup pose for matching, with BatchNorm updated as the
    reference does: pose encoder on (-1, 0), (0, 1), then (-1, 0) again without gradient.

    Returns ``(cam_T_cam {f: (B,4,4)}, pose params {f: (axisangle, translation)},
    lookup_poses (B, N, 4, 4), variables)``.
    """
    cam_T_cam, raw = {}, {}
    for frame_id in SOURCE_FRAMES:
        pair = ((frame(frames_aug, frame_id), frame(frames_aug, 0)) if frame_id < 0
                else (frame(frames_aug, 0), frame(frames_aug, frame_id)))
        (axisangle, translation), stats = model.pose(variables, *pair, train=train)
        variables = with_batch_stats(variables, "pose_encoder", stats)
        raw[frame_id] = (axisangle, translation)
        cam_T_cam[frame_id] = geometry.transformation_from_parameters(
            axisangle[:, 0, 0], translation[:, 0, 0], invert=frame_id < 0)
    lookup = []
    for frame_id in LOOKUP_FRAMES:
        (axisangle, translation), stats = model.pose(
            variables, frame(frames_aug, frame_id), frame(frames_aug, frame_id + 1), train=train)
        variables = with_batch_stats(variables, "pose_encoder", stats)
        pose = jax.lax.stop_gradient(geometry.transformation_from_parameters(
            axisangle[:, 0, 0], translation[:, 0, 0], invert=True))
        # A missing (all-black) lookup frame gets the zero pose, which the cost volume skips.
        present = jnp.sum(frame(frames_aug, frame_id), axis=(1, 2, 3)) != 0
        lookup.append(pose * present[:, None, None])
    return cam_T_cam, raw, jnp.stack(lookup, axis=1), variables


def matching_augmentation(rng: jax.Array, batch_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-sample draws of the reference's matching augmentation: (static_camera, zero_pose)."""
    draw = jax.random.uniform(rng, (batch_size,))
    static = draw < STATIC_CAMERA_PROB
    zero_pose = (draw >= STATIC_CAMERA_PROB) & (draw < STATIC_CAMERA_PROB + ZERO_POSE_PROB)
    return static, zero_pose


def train_forward(model: ManyDepth, variables: dict, batch: dict, min_depth_bin, max_depth_bin,
                  *, settings: LossSettings, train_teacher_and_pose: bool = True,
                  augmentation_rng: jax.Array | None = None) -> tuple[dict, dict]:
    """All network outputs of one training step; returns ``(outputs, variables)`` with the
    BatchNorm statistics advanced. ``augmentation_rng=None`` turns matching augmentation off.

    With the teacher and pose frozen, their outputs carry no gradient and their BatchNorm runs
    on running averages.
    """
    frames, frames_aug = batch["frames"], batch["frames_aug"]
    batch_size, _, height, width, _ = frames.shape
    teacher_train = train_teacher_and_pose

    cam_T_cam, raw_poses, lookup_poses, variables = predict_poses(
        model, variables, frames_aug, train=teacher_train)
    lookup_images = jnp.stack([frame(frames_aug, f) for f in LOOKUP_FRAMES], axis=1)
    augmentation_mask = jnp.zeros((batch_size,), jnp.float32)
    if augmentation_rng is not None:
        static, zero_pose = matching_augmentation(augmentation_rng, batch_size)
        current = jnp.broadcast_to(frame(frames, 0)[:, None], lookup_images.shape)
        lookup_images = jnp.where(static[:, None, None, None, None], current, lookup_images)
        lookup_poses = jnp.where(zero_pose[:, None, None, None], 0.0, lookup_poses)
        augmentation_mask = (static | zero_pose).astype(jnp.float32)

    (mono_disps, _), stats = model.teacher(variables, frame(frames_aug, 0), train=teacher_train)
    variables = with_batch_stats(variables, "mono_encoder", stats)
    if not train_teacher_and_pose:
        mono_disps = jax.lax.stop_gradient(mono_disps)
        cam_T_cam = jax.lax.stop_gradient(cam_T_cam)

    K2, inv_K2 = batch["K"][:, 2], batch["inv_K"][:, 2]
    (disps, _, lowest_cost, confidence), stats = model.multi_frame(
        variables, frame(frames_aug, 0), lookup_images, lookup_poses, K2, inv_K2,
        min_depth_bin, max_depth_bin, train=True)
    variables = with_batch_stats(variables, "encoder", stats)

    to_depth = lambda d: geometry.disp_to_depth(  # noqa: E731
        upsample_bilinear(d, height, width), settings.min_depth, settings.max_depth)[1]
    mono_depths = {s: to_depth(mono_disps[s]) for s in settings.scales}
    depths = {s: to_depth(disps[s]) for s in settings.scales}
    lowest_cost = upsample_nearest_to(lowest_cost, height, width)[..., None]
    consistency_mask = upsample_nearest_to(confidence, height, width)[..., None]
    if settings.motion_masking:
        consistency_mask = consistency_mask * losses.compute_matching_mask(
            mono_depths[0], lowest_cost)
    outputs = {
        "cam_T_cam": cam_T_cam, "pose_params": raw_poses, "lookup_poses": lookup_poses,
        "mono_disp": mono_disps, "mono_depth": mono_depths, "disp": disps, "depth": depths,
        "lowest_cost": lowest_cost, "confidence": confidence,
        "consistency_mask": jax.lax.stop_gradient(consistency_mask),
        "augmentation_mask": augmentation_mask,
    }
    return outputs, variables


def warped_candidates(frames: jnp.ndarray, depth: jnp.ndarray, cam_T_cam: dict, K0, inv_K0
                      ) -> dict[int, jnp.ndarray]:
    """Each source frame warped into frame 0 with ``depth`` (full resolution, border padding)."""
    return {f: geometry.warp_frame(frame(frames, f), depth, cam_T_cam[f], K0, inv_K0)[0]
            for f in SOURCE_FRAMES}


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


def smoothness_term(disp: jnp.ndarray, frames: jnp.ndarray, scale: int, weight: float):
    """Weighted edge-aware smoothness of one scale's disparity against frame 0 at that scale."""
    color = downsample_image(frame(frames, 0), scale)
    return weight * losses.smoothness_loss(losses.normalise_disparity(disp), color) / (2**scale)


def single_frame_loss(outputs: dict, batch: dict, settings: LossSettings,
                      noise_rng: jax.Array | None = None,
                      extra_candidates: dict[int, tuple[jnp.ndarray, ...]] | None = None
                      ) -> tuple[jnp.ndarray, dict]:
    """The teacher's loss: auto-masked min reprojection + smoothness, averaged over scales.

    ``extra_candidates[scale]`` are extra images (e.g. MAL's synthesized frames) whose
    reprojection errors join the per-pixel minimum at that scale.
    """
    frames = batch["frames"]
    target = frame(frames, 0)
    K0, inv_K0 = batch["K"][:, 0], batch["inv_K"][:, 0]
    identity = identity_error(frames) if settings.automasking else None
    parts, total = {}, 0.0
    for scale in settings.scales:
        warped = warped_candidates(frames, outputs["mono_depth"][scale], outputs["cam_T_cam"],
                                   K0, inv_K0)
        extra = (extra_candidates or {}).get(scale, ())
        reprojection = losses.per_pixel_minimum(reprojection_candidates(warped, target, extra))
        if identity is not None:
            noise = None
            if settings.tie_break_noise and noise_rng is not None:
                noise = losses.tie_break_noise(jax.random.fold_in(noise_rng, scale),
                                               identity.shape)
            mask = losses.automask(reprojection, identity, noise)
        else:
            mask = jnp.ones_like(reprojection)
        reproj_loss = losses.masked_mean(reprojection, mask)
        loss = reproj_loss + smoothness_term(outputs["mono_disp"][scale], frames, scale,
                                         settings.disparity_smoothness)
        parts[f"reproj_loss/{scale}"] = reproj_loss
        parts[f"loss/{scale}"] = loss
        total = total + loss
    parts["loss"] = total / len(settings.scales)
    return parts["loss"], parts


def multi_frame_loss(outputs: dict, batch: dict, settings: LossSettings,
                     extra_candidates: dict[int, tuple[jnp.ndarray, ...]] | None = None
                     ) -> tuple[jnp.ndarray, dict]:
    """The multi-frame network's loss: min reprojection where the cost volume is trusted,
    consistency with the (detached) teacher elsewhere, smoothness; averaged over scales.

    Poses are detached: the multi-frame loss does not train the pose network.
    """
    frames = batch["frames"]
    target = frame(frames, 0)
    K0, inv_K0 = batch["K"][:, 0], batch["inv_K"][:, 0]
    cam_T_cam = jax.lax.stop_gradient(outputs["cam_T_cam"])
    reproj_mask, consistency_mask = losses.multi_frame_masks(
        outputs["consistency_mask"] if settings.motion_masking
        else jnp.ones_like(outputs["consistency_mask"]),
        outputs["augmentation_mask"][:, None, None, None])
    parts, total = {}, 0.0
    for scale in settings.scales:
        warped = warped_candidates(frames, outputs["depth"][scale], cam_T_cam, K0, inv_K0)
        extra = (extra_candidates or {}).get(scale, ())
        reprojection = losses.per_pixel_minimum(reprojection_candidates(warped, target, extra))
        reproj_loss = losses.masked_mean(reprojection, reproj_mask)
        consistency = losses.consistency_loss(outputs["depth"][scale],
                                              outputs["mono_depth"][scale], consistency_mask)
        loss = reproj_loss + consistency + smoothness_term(outputs["disp"][scale], frames, scale,
                                                       settings.disparity_smoothness)
        parts[f"reproj_loss/{scale}"] = reproj_loss
        parts[f"consistency_loss/{scale}"] = consistency
        parts[f"loss/{scale}"] = loss
        total = total + loss
    parts["loss"] = total / len(settings.scales)
    return parts["loss"], parts


def velocity_loss(cam_T_cam: dict, true_cam_T_cam: jnp.ndarray) -> jnp.ndarray:
    """PackNet-SfM's weak velocity supervision: mean over samples and source frames of
    ``| |t| - |t_true| |``, the predicted and known camera translation lengths in metres.

    The photometric loss only sees translation over depth, so from random weights the scale of
    both drifts freely until the depth range saturates; knowing the distance driven (a car's
    odometer) pins it. ``true_cam_T_cam`` is the batch's (B, F, 4, 4) frame-0-to-frame-f
    poses; flips and inversion keep translation lengths, so no convention matters here.
    """
    errors = []
    for frame_id in SOURCE_FRAMES:
        predicted = jnp.linalg.norm(cam_T_cam[frame_id][:, :3, 3], axis=-1)
        known = jnp.linalg.norm(true_cam_T_cam[:, FRAME_INDEX[frame_id], :3, 3], axis=-1)
        errors.append(jnp.abs(predicted - known))
    return jnp.mean(jnp.stack(errors))


def combine_losses(multi_parts: dict, teacher_parts: dict | None) -> dict:
    """The reference adds each teacher loss entry to the multi-frame entry of the same name
    (while the teacher trains); consistency terms exist only for the multi-frame network."""
    if teacher_parts is None:
        return dict(multi_parts)
    return {key: value + teacher_parts.get(key, 0.0) for key, value in multi_parts.items()}


def adaptive_bins_update(mono_depth0: jnp.ndarray, min_bin, max_bin, min_depth: float):
    """The reference's exponential average of the teacher's depth range (momentum 0.99).

    Takes the batch mean of per-image min and max depth, widens them by 10% and averages.
    Under a data-parallel mesh the means are over the global batch.
    """
    depth = jax.lax.stop_gradient(mono_depth0)
    batch_min = jnp.mean(jnp.min(depth, axis=(1, 2, 3)))
    batch_max = jnp.mean(jnp.max(depth, axis=(1, 2, 3)))
    batch_min = jnp.maximum(min_depth, batch_min * 0.9)
    batch_max = batch_max * 1.1
    return min_bin * 0.99 + batch_min * 0.01, max_bin * 0.99 + batch_max * 0.01
