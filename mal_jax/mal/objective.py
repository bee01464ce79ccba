"""MAL's training loss on top of ManyDepth's training forward pass (``objective.train_forward``).

Composition reproduced from the MAL reference, per part (each has a switch in
:class:`MalSettings`):

* teacher (single-frame) loss: auto-masked minimum reprojection + smoothness at full
  resolution only (scale 0). ``temporal`` adds the two temporal-hint frames synthesized from
  the teacher's warped frames as extra minimum candidates (not to the identity candidates).
* student (multi-frame) loss: minimum reprojection on the pixels where the cost volume is
  trusted, consistency with the teacher elsewhere, smoothness; scale 0 only. Auto-masking is
  computed by the reference but then replaced by the trusted mask, so it is left out here.
  ``main_temporal`` adds temporal-hint frames synthesized from the student's own warped
  frames (poses detached).
* ``distil``: the distillation hint of :mod:`mal_jax.mal.distillation`, with the ensemble
  candidate when ``ensemble`` is on; it joins the student's loss with weight 1.
* the teacher's entries are added to the student's entries of the same name (``loss``,
  ``loss/0``, ``reproj_loss/0``) while the teacher trains, as in ManyDepth.
* ``loss_balance``: instead, ``loss = factor * (w_0 * original + w_1 * distil)`` where
  ``original`` is the student's loss without distillation plus the teacher's loss and the
  weights come from :mod:`mal_jax.mal.loss_balance` (they are updated after the step from
  :func:`balance_observation`). The reference adds the weighted sum once per batch element,
  i.e. ``factor`` = batch size; ``balance_batch_factor`` switches that factor on.

``multi_scale=True`` instead averages the teacher and student losses over
``LossSettings.scales`` like ManyDepth (temporal hints synthesized at every scale from that
scale's warped frames); distillation stays at full resolution and is added to the average.
With no matched object the temporal-hint frames equal the warped frames, so every sample
without one gets exactly the ManyDepth loss.

The reference hard-codes smoothness 1e-3 at scale 0 in its MAL path; here it is
``LossSettings.disparity_smoothness`` (1e-3 by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mal_jax.core import geometry, losses, objective
from mal_jax.mal import distillation, loss_balance
from mal_jax.mal.instance_matching import FrameInstances, instance_masks
from mal_jax.mal.temporal_hints import TemporalHintConfig, temporal_hint_candidates

# (warped {f: image}, pixel grids {f: (B,H,W,2)}) -> (syn_prev, syn_next) at one scale.
HintFn = Callable[[dict, dict], tuple[jax.Array, jax.Array]]
INSTANCE_KEYS = ("instance_ids", "instance_class", "instance_score")


@dataclasses.dataclass(frozen=True)
class MalSettings:
    """Which MAL parts are on (hashable: pass as a static jit argument).

    The defaults are the full MAL preset: every part on, full resolution only.
    """

    temporal: bool = True
    main_temporal: bool = True
    distil: bool = True
    ensemble: bool = True
    loss_balance: bool = True
    multi_scale: bool = False
    balance_batch_factor: bool = False
    hints: TemporalHintConfig = TemporalHintConfig()

    def __post_init__(self):
        if self.loss_balance and not self.distil:
            raise ValueError(
                "MalSettings: loss_balance=True needs distil=True (it balances "
                "the original loss against the distillation loss)"
            )


MAL_PRESET = MalSettings()
# ManyDepth itself: no MAL part, losses over ManyDepth's scales.
MANYDEPTH_PRESET = MalSettings(
    temporal=False,
    main_temporal=False,
    distil=False,
    ensemble=False,
    loss_balance=False,
    multi_scale=True,
)


def frame_instances(batch: dict, frame_id: int) -> FrameInstances:
    """Instances of one frame from the batch's id maps: masks (B, K, H, W)."""
    missing = [key for key in INSTANCE_KEYS if key not in batch]
    if missing:
        raise KeyError(
            f"batch: temporal hints need {missing} (instance masks; see "
            "mal_jax/data/masks.py) or temporal=main_temporal=False"
        )
    index = objective.FRAME_INDEX[frame_id]
    num_slots = batch["instance_class"].shape[-1]
    return FrameInstances(
        instance_masks(batch["instance_ids"][:, index], num_slots),
        batch["instance_class"][:, index],
        batch["instance_score"][:, index],
    )


def warp_instances(instances: FrameInstances, pix_coords: jax.Array) -> FrameInstances:
    """Resample a source frame's masks into the target view with the images' sampling grid
    (bilinear, border padding, like the warped image a segmenter would see)."""
    masks = jnp.moveaxis(instances.masks, 1, -1)
    warped = geometry.grid_sample(masks, jax.lax.stop_gradient(pix_coords), "border")
    return instances._replace(masks=jnp.moveaxis(warped, -1, 1))


def instance_hints(batch: dict, config: TemporalHintConfig) -> HintFn:
    """Temporal hints from the batch's instance masks, for any network's warped frames."""
    current = frame_instances(batch, 0)
    sources = {f: frame_instances(batch, f) for f in objective.SOURCE_FRAMES}

    def hints(warped: dict, pix_coords: dict):
        prev, next_ = (warp_instances(sources[f], pix_coords[f]) for f in (-1, 1))
        syn_prev, syn_next, _ = temporal_hint_candidates(
            warped[-1], warped[1], current, prev, next_, config
        )
        return syn_prev, syn_next

    return hints


def _warp_sources(frames, depth, cam_T_cam, K0, inv_K0) -> tuple[dict, dict]:
    warped, coords = {}, {}
    for f in objective.SOURCE_FRAMES:
        warped[f], coords[f] = geometry.warp_frame(
            objective.frame(frames, f), depth, cam_T_cam[f], K0, inv_K0
        )
    return warped, coords


def min_reprojection(
    frames: jax.Array,
    depth: jax.Array,
    cam_T_cam: dict,
    K0: jax.Array,
    inv_K0: jax.Array,
    hints: HintFn | None = None,
) -> jax.Array:
    """Per-pixel minimum (B, H, W, 1) of the warped sources' reprojection errors and, with
    ``hints``, of the two temporal-hint frames built from those warped sources."""
    warped, coords = _warp_sources(frames, depth, cam_T_cam, K0, inv_K0)
    extra = hints(warped, coords) if hints is not None else ()
    errors = objective.reprojection_candidates(warped, objective.frame(frames, 0), tuple(extra))
    return losses.per_pixel_minimum(errors)


def teacher_loss(
    outputs: dict,
    batch: dict,
    loss_settings: objective.LossSettings,
    scales: tuple[int, ...] = (0,),
    hints: HintFn | None = None,
    noise_rng: jax.Array | None = None,
) -> tuple[jax.Array, dict, jax.Array]:
    """The single-frame teacher's loss; returns ``(loss, parts, reprojection_min)``.

    ``reprojection_min`` (B, H, W, 1) is the full-resolution per-pixel minimum over all
    candidates before auto-masking: the teacher's error for the distillation hint.
    """
    frames = batch["frames"]
    K0, inv_K0 = batch["K"][:, 0], batch["inv_K"][:, 0]
    identity = objective.identity_error(frames)
    parts, total, scale0_min = {}, 0.0, None
    for scale in scales:
        reprojection = min_reprojection(
            frames, outputs["mono_depth"][scale], outputs["cam_T_cam"], K0, inv_K0, hints
        )
        noise = None
        if loss_settings.tie_break_noise and noise_rng is not None:
            noise = losses.tie_break_noise(jax.random.fold_in(noise_rng, scale), identity.shape)
        mask = (
            losses.automask(reprojection, identity, noise)
            if loss_settings.automasking
            else jnp.ones_like(reprojection)
        )
        reproj_loss = losses.masked_mean(reprojection, mask)
        loss = reproj_loss + objective.smoothness_term(
            outputs["mono_disp"][scale], frames, scale, loss_settings.disparity_smoothness
        )
        parts[f"reproj_loss/{scale}"], parts[f"loss/{scale}"] = reproj_loss, loss
        total = total + loss
        if scale == 0:
            scale0_min = reprojection
    if scale0_min is None:
        raise ValueError(f"teacher_loss: scales {scales} must include 0 (distillation uses it)")
    parts["loss"] = total / len(scales)
    return parts["loss"], parts, scale0_min


def student_loss(
    outputs: dict,
    batch: dict,
    loss_settings: objective.LossSettings,
    scales: tuple[int, ...] = (0,),
    hints: HintFn | None = None,
    teacher_error: jax.Array | None = None,
    ensemble_error: jax.Array | None = None,
    add_distillation: bool = True,
) -> tuple[jax.Array, dict]:
    """The multi-frame student's loss, with the distillation hint when ``teacher_error`` is
    given (``ensemble_error=None`` drops the ensemble candidate).

    Parts: ``reproj_loss/s``, ``consistency_loss/s``, ``loss/s``, ``original_loss`` (without
    distillation), ``distil_loss`` and ``loss``. With ``add_distillation`` the distillation
    loss is added to ``loss`` (and, at full resolution only, to ``loss/0`` as the reference
    reports it); otherwise a balancing step combines the two.
    """
    frames = batch["frames"]
    K0, inv_K0 = batch["K"][:, 0], batch["inv_K"][:, 0]
    cam_T_cam = jax.lax.stop_gradient(outputs["cam_T_cam"])
    trusted, consistency_weight = losses.multi_frame_masks(
        outputs["consistency_mask"]
        if loss_settings.motion_masking
        else jnp.ones_like(outputs["consistency_mask"]),
        outputs["augmentation_mask"][:, None, None, None],
    )
    parts, total, scale0_min = {}, 0.0, None
    for scale in scales:
        depth = outputs["depth"][scale]
        reprojection = min_reprojection(frames, depth, cam_T_cam, K0, inv_K0, hints)
        reproj_loss = losses.masked_mean(reprojection, trusted)
        consistency = losses.consistency_loss(
            depth, outputs["mono_depth"][scale], consistency_weight
        )
        loss = (
            reproj_loss
            + consistency
            + objective.smoothness_term(
                outputs["disp"][scale], frames, scale, loss_settings.disparity_smoothness
            )
        )
        parts[f"reproj_loss/{scale}"] = reproj_loss
        parts[f"consistency_loss/{scale}"] = consistency
        parts[f"loss/{scale}"] = loss
        total = total + loss
        if scale == 0:
            scale0_min = reprojection
    parts["original_loss"] = total / len(scales)
    parts["distil_loss"] = jnp.zeros((), jnp.float32)
    if teacher_error is not None:
        parts["distil_loss"], _ = distillation.distillation_hint(
            teacher_error,
            scale0_min,
            outputs["mono_depth"][0],
            outputs["depth"][0],
            trusted,
            ensemble_error,
        )
    parts["loss"] = parts["original_loss"]
    if add_distillation and teacher_error is not None:
        parts["loss"] = parts["loss"] + parts["distil_loss"]
        if scales == (0,):
            parts["loss/0"] = parts["loss"]
    return parts["loss"], parts


def _ensemble_error(outputs: dict, batch: dict, loss_settings) -> jax.Array:
    disp = distillation.ensemble_disparity(outputs["mono_disp"][0], outputs["disp"][0])
    return distillation.ensemble_reprojection(
        batch["frames"],
        disp,
        outputs["cam_T_cam"],
        batch["K"][:, 0],
        batch["inv_K"][:, 0],
        loss_settings.min_depth,
        loss_settings.max_depth,
    )


def mal_loss(
    outputs: dict,
    batch: dict,
    settings: MalSettings,
    loss_settings: objective.LossSettings,
    balance: loss_balance.BalanceState | None = None,
    *,
    train_teacher: bool = True,
    noise_rng: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """The whole MAL loss of one step from ``train_forward`` outputs; returns (loss, parts).

    ``balance`` is required when ``settings.loss_balance``; update it after the step with
    ``loss_balance.update_balance(balance, balance_observation(parts), ...)``. With
    ``train_teacher=False`` (frozen teacher) the teacher's loss only supplies its error map.
    Temporal hints read the batch's ``instance_ids``/``instance_class``/``instance_score``.
    """
    if settings.loss_balance and balance is None:
        raise ValueError("mal_loss: settings.loss_balance needs a BalanceState (balance=...)")
    scales = tuple(loss_settings.scales) if settings.multi_scale else (0,)
    needs_hints = settings.temporal or settings.main_temporal
    hints = instance_hints(batch, settings.hints) if needs_hints else None

    _, teacher_parts, teacher_error = teacher_loss(
        outputs, batch, loss_settings, scales, hints if settings.temporal else None, noise_rng
    )
    ensemble_error = (
        _ensemble_error(outputs, batch, loss_settings)
        if settings.distil and settings.ensemble
        else None
    )
    _, student_parts = student_loss(
        outputs,
        batch,
        loss_settings,
        scales,
        hints if settings.main_temporal else None,
        teacher_error if settings.distil else None,
        ensemble_error,
        add_distillation=not settings.loss_balance,
    )

    parts = objective.combine_losses(student_parts, teacher_parts if train_teacher else None)
    parts["teacher/loss"] = teacher_parts["loss"]
    parts["student/loss"] = student_parts["loss"]
    # The teacher has no "original_loss" entry, so combine_losses left the student's alone.
    parts["original_loss"] = student_parts["original_loss"] + (
        teacher_parts["loss"] if train_teacher else 0.0
    )
    if settings.loss_balance:
        factor = batch["frames"].shape[0] if settings.balance_batch_factor else 1.0
        parts["loss"] = loss_balance.balanced_loss(balance, balance_observation(parts), factor)
        parts["w_original"], parts["w_distil"] = balance.weights[0], balance.weights[1]
    return parts["loss"], parts


def balance_observation(parts: dict) -> jax.Array:
    """The (original, distillation) loss pair that the balancing rule records, (2,)."""
    return jnp.stack([parts["original_loss"], parts["distil_loss"]])
