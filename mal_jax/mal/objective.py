"""The training objective: ManyDepth's two losses with MAL's parts, each switchable.

Plain ManyDepth is this objective with every MAL part off (:data:`MANYDEPTH`); the published
MAL recipe is :data:`MAL_PRESET` (``--loss_blc --load_pretrained --temporal --distil``, ensemble
on). Composition, as the reference's trainer and loss utilities:

* teacher loss and student loss (:mod:`mal_jax.core.network_losses`) over the loss scales:
  ManyDepth's (``LossSettings.scales``, 0..3) when no MAL part is on or with ``multi_scale``,
  else full resolution only, as MAL's code (:meth:`MalSettings.loss_scales`);
* ``temporal``: the two temporal-hint frames (synthesized from the teacher's warped sources)
  join the teacher's minimum reprojection candidates; ``main_temporal`` gives the student its
  own (off in the published recipe: the reference then forces the student's "has instances"
  flag off, so only the teacher gets hints);
* ``distil``: the distillation hint of :mod:`mal_jax.mal.distillation` (with the ensemble
  candidate when ``ensemble``) joins the student's loss with weight 1; the reference reports it
  inside the student's ``loss/0`` too;
* the teacher's entries are added to the student's entries of the same name while the teacher
  trains, as in ManyDepth;
* the velocity loss (synthetic data only; ``LossSettings.velocity_weight``) supervises the
  pose network's translation length while the teacher and pose train; it is part of the
  *original* loss;
* loss balancing (:mod:`mal_jax.mal.loss_balance`): instead of ``original + distillation``
  the loss is the weighted sum of the two; ``original`` is the student's loss without
  distillation plus the teacher's loss and the velocity loss.

With no matched object the temporal-hint frames equal the warped frames, so every sample
without one gets exactly the ManyDepth loss. The reference hard-codes smoothness 1e-3 at
scale 0 in its MAL path; here it is ``LossSettings.disparity_smoothness`` (1e-3 by default).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mal_jax.core import network_losses
from mal_jax.core.frames import FRAME_INDEX, SOURCE_FRAMES
from mal_jax.core.network_losses import LossSettings
from mal_jax.mal import distillation, loss_balance
from mal_jax.mal.temporal_hints import TemporalHintConfig, instance_hints


@dataclasses.dataclass(frozen=True)
class MalSettings:
    """Which MAL parts are on (hashable: part of the jitted step's static settings).

    The defaults are MAL's published recipe; every "(MAL: x)" is that recipe's value.
    """

    temporal: bool = True  # temporal hints for the teacher (MAL: on, --temporal)
    main_temporal: bool = False  # temporal hints for the student too (MAL: off)
    distil: bool = True  # distillation hint for the student (MAL: on, --distil)
    ensemble: bool = True  # ensemble candidate of the distillation (MAL: on, no --no_ens)
    multi_scale: bool = False  # MAL's losses over ManyDepth's scales (MAL: off, scale 0)
    hints: TemporalHintConfig = TemporalHintConfig()
    balance: loss_balance.BalanceSettings = loss_balance.BalanceSettings()  # (MAL: on)

    def __post_init__(self):
        if self.balance.enabled and not self.distil:
            raise ValueError("MalSettings: balance.enabled=True needs distil=True (it balances "
                             "the original loss against the distillation loss)")

    @property
    def uses_hints(self) -> bool:
        return self.temporal or self.main_temporal

    def loss_scales(self, manydepth_scales: tuple[int, ...]) -> tuple[int, ...]:
        """The scales both losses average over: ManyDepth's without MAL or with
        ``multi_scale``, else full resolution only (MAL's code)."""
        if self.multi_scale or not (self.uses_hints or self.distil):
            return tuple(manydepth_scales)
        return (0,)


MAL_PRESET = MalSettings()
# ManyDepth itself: every MAL part off (its losses over ManyDepth's scales).
MANYDEPTH = MalSettings(temporal=False, distil=False, ensemble=False,
                        balance=loss_balance.BalanceSettings(enabled=False))


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


def translation_cosines(cam_T_cam: dict, true_cam_T_cam: jnp.ndarray) -> jnp.ndarray:
    """(source frames, B) cosines between the predicted and the known camera translations (a
    diagnostic: the velocity loss pins their lengths, not their direction; runs whose pose
    network settles sideways lose their depth, mal_jax/models/init_priors.py)."""
    cosines = []
    for frame_id in SOURCE_FRAMES:
        predicted = cam_T_cam[frame_id][:, :3, 3]
        known = true_cam_T_cam[:, FRAME_INDEX[frame_id], :3, 3]
        cosines.append(jnp.sum(predicted * known, -1) / jnp.maximum(
            jnp.linalg.norm(predicted, axis=-1) * jnp.linalg.norm(known, axis=-1), 1e-12))
    return jnp.stack(cosines)


def _distillation_loss(outputs: dict, batch: dict, settings: LossSettings, ensemble: bool,
                       teacher_error: jax.Array | None, student_error: jax.Array | None):
    if teacher_error is None or student_error is None:
        raise ValueError(f"objective: distillation compares full-resolution errors, so the "
                         f"loss scales {settings.scales} must include 0")
    ensemble_error = None
    if ensemble:
        disp = distillation.ensemble_disparity(outputs["teacher_disp"][0],
                                               outputs["student_disp"][0])
        ensemble_error = distillation.ensemble_reprojection(
            batch["frames"], disp, outputs["cam_T_cam"], batch["K"][:, 0], batch["inv_K"][:, 0],
            settings.min_depth, settings.max_depth)
    trusted, _ = network_losses.student_masks(outputs, settings)
    loss, _ = distillation.distillation_hint(teacher_error, student_error,
                                             outputs["teacher_depth"][0],
                                             outputs["student_depth"][0],
                                             trusted, ensemble_error)
    return loss


def student_parts(outputs: dict, batch: dict, mal: MalSettings, settings: LossSettings,
                  hints, teacher_error: jax.Array | None) -> dict:
    """The student's loss entries with MAL's parts: ``original_loss`` (without distillation),
    ``distil_loss`` when distilling, and ``loss`` (plus distillation unless balancing)."""
    _, parts, student_error = network_losses.student_loss(
        outputs, batch, settings, hints if mal.main_temporal else None)
    parts["original_loss"] = parts["loss"]
    if mal.distil:
        parts["distil_loss"] = _distillation_loss(outputs, batch, settings, mal.ensemble,
                                                  teacher_error, student_error)
        if not mal.balance.enabled:
            parts["loss"] = parts["loss"] + parts["distil_loss"]
            if settings.scales == (0,):  # as the reference reports it
                parts["loss/0"] = parts["loss"]
    return parts


def objective(outputs: dict, batch: dict, mal: MalSettings, loss_settings: LossSettings,
              balance: loss_balance.BalanceState | dict | None = None, *,
              train_teacher: bool = True, noise_rng: jax.Array | None = None
              ) -> tuple[jax.Array, dict]:
    """The whole loss of one step from ``train_forward`` outputs; returns ``(loss, parts)``.

    ``balance`` is required when ``mal.balance.enabled``; update it after the step with
    ``loss_balance.update``. With ``train_teacher=False`` (teacher and pose frozen) the
    teacher's loss only supplies its error map and the velocity loss is left out. Temporal
    hints read the batch's ``instance_ids``/``instance_class``/``instance_score``; the
    velocity loss its ``cam_T_cam``.
    """
    if mal.balance.enabled and not isinstance(balance, loss_balance.BalanceState):
        raise ValueError("objective: mal.balance.enabled needs a BalanceState (balance=...)")
    settings = dataclasses.replace(loss_settings, scales=mal.loss_scales(loss_settings.scales))
    hints = instance_hints(batch, mal.hints) if mal.uses_hints else None

    _, teacher, teacher_error = network_losses.teacher_loss(
        outputs, batch, settings, hints if mal.temporal else None, noise_rng)
    student = student_parts(outputs, batch, mal, settings, hints, teacher_error)
    parts = network_losses.combine_losses(student, teacher if train_teacher else None)
    parts["teacher/loss"], parts["student/loss"] = teacher["loss"], student["loss"]
    # The teacher has no "original_loss" entry, so combine_losses left the student's alone.
    parts["original_loss"] = student["original_loss"] + (teacher["loss"] if train_teacher
                                                         else 0.0)
    if settings.velocity_weight and train_teacher:
        parts["velocity_loss"] = velocity_loss(outputs["cam_T_cam"], batch["cam_T_cam"])
        weighted = settings.velocity_weight * parts["velocity_loss"]
        parts["original_loss"] = parts["original_loss"] + weighted
        parts["loss"] = parts["loss"] + weighted
    if mal.balance.enabled:
        parts["loss"] = loss_balance.apply(mal.balance, balance, parts, batch["frames"].shape[0])
    return parts["loss"], parts
