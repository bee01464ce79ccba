"""ManyDepth's training forward pass: poses, matching augmentation and the network passes.

``train_forward`` runs the networks in the reference's order (pose pairs, lookup pose, teacher,
student: the single-frame, then the multi-frame network) so BatchNorm statistics advance exactly
as in the reference step, and returns every output the losses
(:mod:`mal_jax.core.network_losses`) and MAL's parts need.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mal_jax.core import geometry, losses
from mal_jax.core.frames import SOURCE_FRAMES, frame
from mal_jax.core.network_losses import LossSettings
from mal_jax.core.resize import upsample_bilinear, upsample_nearest_to
from mal_jax.models.manydepth import ManyDepth, with_batch_stats

# The matching (lookup) frames ManyDepth uses by default: the previous frame only.
LOOKUP_FRAMES = (-1,)
# Matching augmentation probabilities (reference: 25% static camera, 25% zero pose).
STATIC_CAMERA_PROB = 0.25
ZERO_POSE_PROB = 0.25


def predict_poses(model: ManyDepth, variables: dict, frames_aug: jnp.ndarray, train: bool):
    """Poses for the loss and the lookup pose for matching, with BatchNorm updated as the
    reference does: pose encoder on (-1, 0), (0, 1), then (-1, 0) again without gradient (one
    batched pass of the distinct pairs, :meth:`ManyDepth.poses`).

    Returns ``(cam_T_cam {f: (B,4,4)}, pose params {f: (axisangle, translation)},
    lookup_poses (B, N, 4, 4), variables)``.
    """
    cam_T_cam, raw = {}, {}
    # The reference's pose-network calls, in its order: each source frame's pair with frame 0,
    # then each lookup frame's pair with its successor (the same pair as source frame -1's for
    # the default lookup frame: computed once, its statistics applied twice, as in the
    # reference's repeated call).
    calls = [(frame_id, 0) if frame_id < 0 else (0, frame_id) for frame_id in SOURCE_FRAMES]
    calls += [(frame_id, frame_id + 1) for frame_id in LOOKUP_FRAMES]
    pairs = list(dict.fromkeys(calls))
    poses, stats = model.poses(
        variables, [(frame(frames_aug, a), frame(frames_aug, b)) for a, b in pairs], train,
        update_order=tuple(pairs.index(call) for call in calls))
    variables = with_batch_stats(variables, "pose_encoder", stats)
    for frame_id, call in zip(SOURCE_FRAMES, calls[:len(SOURCE_FRAMES)], strict=True):
        axisangle, translation = raw[frame_id] = poses[pairs.index(call)]
        cam_T_cam[frame_id] = geometry.transformation_from_parameters(
            axisangle[:, 0, 0], translation[:, 0, 0], invert=frame_id < 0)
    lookup = []
    for frame_id, call in zip(LOOKUP_FRAMES, calls[len(SOURCE_FRAMES):], strict=True):
        axisangle, translation = poses[pairs.index(call)]
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

    Depths are produced at ``settings.scales`` (full resolution each). With the teacher and
    pose frozen, their outputs carry no gradient and their BatchNorm runs on running averages.
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

    (teacher_disps, _), stats = model.teacher(variables, frame(frames_aug, 0),
                                              train=teacher_train)
    variables = with_batch_stats(variables, "teacher_encoder", stats)
    if not train_teacher_and_pose:
        teacher_disps = jax.lax.stop_gradient(teacher_disps)
        cam_T_cam = jax.lax.stop_gradient(cam_T_cam)

    K2, inv_K2 = batch["K"][:, 2], batch["inv_K"][:, 2]
    (student_disps, _, lowest_cost, confidence), stats = model.student(
        variables, frame(frames_aug, 0), lookup_images, lookup_poses, K2, inv_K2,
        min_depth_bin, max_depth_bin, train=True)
    variables = with_batch_stats(variables, "student_encoder", stats)

    to_depth = lambda d: geometry.disp_to_depth(  # noqa: E731
        upsample_bilinear(d, height, width), settings.min_depth, settings.max_depth)[1]
    # Scale 0 always: the depth-bin update and MAL's parts read it whatever the loss scales.
    depth_scales = sorted({0, *settings.scales})
    teacher_depths = {s: to_depth(teacher_disps[s]) for s in depth_scales}
    student_depths = {s: to_depth(student_disps[s]) for s in depth_scales}
    lowest_cost = upsample_nearest_to(lowest_cost, height, width)[..., None]
    consistency_mask = upsample_nearest_to(confidence, height, width)[..., None]
    if settings.motion_masking:
        consistency_mask = consistency_mask * losses.compute_matching_mask(
            teacher_depths[0], lowest_cost)
    outputs = {
        "cam_T_cam": cam_T_cam, "pose_params": raw_poses, "lookup_poses": lookup_poses,
        "teacher_disp": teacher_disps, "teacher_depth": teacher_depths,
        "student_disp": student_disps, "student_depth": student_depths,
        "lowest_cost": lowest_cost, "confidence": confidence,
        "consistency_mask": jax.lax.stop_gradient(consistency_mask),
        "augmentation_mask": augmentation_mask,
    }
    return outputs, variables
