"""One training step, ``train_step(state, batch, rng) -> (state, metrics)``, pure and jitted.

The step runs the networks (:mod:`mal_jax.train.forward`), the objective
(:mod:`mal_jax.mal.objective`: ManyDepth's losses with whichever MAL parts the config turns
on), Adam, the adaptive depth-bin update and the loss-balance update. Freezing the teacher and
pose changes the computation (their BatchNorm switches to running averages), so the trainer
builds one step for each phase; each is compiled once.

A step whose loss or gradients are not finite leaves the state untouched and reports
``finite = 0``; the trainer stops on it (the last good checkpoint stays the latest).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mal_jax.core.frames import FRAME_INDEX, frame, warp_sources
from mal_jax.core.network_losses import LossSettings
from mal_jax.data.registry import dataset_spec
from mal_jax.mal import loss_balance
from mal_jax.mal.objective import MalSettings, objective, translation_cosines
from mal_jax.mal.temporal_hints import TemporalHintConfig, instance_hints
from mal_jax.models.manydepth import ManyDepth
from mal_jax.train.forward import train_forward
from mal_jax.train.state import TEACHER_AND_POSE, TrainState, freeze


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static (hashable) description of the step, derived from the config."""

    loss: LossSettings  # scales already resolved by ``mal.loss_scales``
    mal: MalSettings  # every part off: plain ManyDepth
    matching_augmentation: bool
    # Keep the state of a non-finite step (training.skip_nonfinite_steps). Off, the trainer
    # stops at such a step before anything is saved, so the step need not select between the
    # new and the old state: that select made XLA copy Adam's moments every step (~5%).
    skip_nonfinite: bool = False


def mal_settings(config: ml_collections.ConfigDict, steps_per_epoch: int) -> MalSettings:
    """The config's ``mal`` section as :class:`MalSettings` (balancing needs distillation, so
    ``loss_balance`` without ``distil`` is off)."""
    mal = config.mal
    balance = loss_balance.BalanceSettings(
        enabled=mal.loss_balance and mal.distil, batch_factor=mal.batch_size_factor,
        schedule=loss_balance.LambdaSchedule(mal.balance_lambda_start, mal.balance_lambda_step,
                                             mal.balance_lambda_min),
        steps_per_epoch=steps_per_epoch)
    return MalSettings(
        temporal=mal.temporal, main_temporal=mal.main_temporal, distil=mal.distil,
        ensemble=mal.ensemble, multi_scale=mal.multi_scale,
        hints=TemporalHintConfig(score_threshold=mal.score_threshold, replace=mal.replace),
        balance=balance)


def step_settings(config: ml_collections.ConfigDict, steps_per_epoch: int) -> StepSettings:
    if not config.loss.scales or not set(config.loss.scales) <= set(config.model.scales):
        raise ValueError(f"config.loss.scales={tuple(config.loss.scales)} must be a non-empty "
                         f"subset of config.model.scales={tuple(config.model.scales)}")
    if config.loss.velocity_weight and not dataset_spec(config.data.dataset).has_true_poses:
        raise ValueError(f"config.loss.velocity_weight={config.loss.velocity_weight} needs the "
                         f"true camera poses, which config.data.dataset="
                         f"{config.data.dataset!r} does not provide")
    if config.loss.own_resolution_scales and config.mal.multi_scale:
        raise ValueError("config.loss.own_resolution_scales=True cannot go with "
                         "config.mal.multi_scale=True: MAL's hints and distillation targets "
                         "are built at the input resolution")
    mal = mal_settings(config, steps_per_epoch)
    loss = LossSettings(
        min_depth=config.model.min_depth, max_depth=config.model.max_depth,
        scales=mal.loss_scales(tuple(config.loss.scales)),
        disparity_smoothness=config.loss.disparity_smoothness,
        automasking=config.loss.automasking, motion_masking=config.loss.motion_masking,
        velocity_weight=config.loss.velocity_weight,
        own_resolution_scales=config.loss.own_resolution_scales)
    return StepSettings(loss, mal, config.loss.matching_augmentation,
                        config.training.skip_nonfinite_steps)


def initial_balance(settings: StepSettings):
    """The loss-balancing state a fresh run starts with ({} when balancing is off)."""
    return loss_balance.initial_state(settings.mal.balance)


def adaptive_bins_update(teacher_depth0: jnp.ndarray, min_bin, max_bin, min_depth: float):
    """The reference's exponential average of the teacher's depth range (momentum 0.99).

    Takes the batch mean of per-image min and max depth, widens them by 10% and averages.
    Under a data-parallel mesh the means are over the global batch.
    """
    depth = jax.lax.stop_gradient(teacher_depth0)
    batch_min = jnp.mean(jnp.min(depth, axis=(1, 2, 3)))
    batch_max = jnp.mean(jnp.max(depth, axis=(1, 2, 3)))
    batch_min = jnp.maximum(min_depth, batch_min * 0.9)
    batch_max = batch_max * 1.1
    return min_bin * 0.99 + batch_min * 0.01, max_bin * 0.99 + batch_max * 0.01


def make_train_step(model: ManyDepth, optimizer: optax.GradientTransformation,
                    schedule, settings: StepSettings, frozen: bool):
    """The pure step for one phase: ``frozen`` = teacher and pose no longer train."""

    def loss_fn(params, state: TrainState, batch: dict, rng: jax.Array):
        augmentation_rng, noise_rng = jax.random.split(rng)
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, variables = train_forward(
            model, variables, batch, state.depth_bins[0], state.depth_bins[1],
            settings=settings.loss, train_teacher_and_pose=not frozen,
            augmentation_rng=augmentation_rng if settings.matching_augmentation else None)
        loss, parts = objective(outputs, batch, settings.mal, settings.loss, state.balance,
                                train_teacher=not frozen, noise_rng=noise_rng)
        return loss, (parts, outputs, variables["batch_stats"])

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (parts, outputs, batch_stats)), grads = grad_fn(state.params, state, batch, rng)
        if frozen:
            grads = freeze(grads, TEACHER_AND_POSE)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if frozen:  # Adam's moments would still move a parameter with zero gradient
            updates = freeze(updates, TEACHER_AND_POSE)
        params = optax.apply_updates(state.params, updates)

        depth_bins = state.depth_bins
        if not frozen:  # the reference stops adapting the bins with the teacher
            depth_bins = jnp.stack(adaptive_bins_update(
                outputs["teacher_depth"][0], depth_bins[0], depth_bins[1],
                settings.loss.min_depth))
        balance = loss_balance.update(settings.mal.balance, state.balance, parts, state.step)

        # One reduction instead of one per parameter array: the norm is finite exactly when
        # every gradient is (or when one is so large that its square overflows, a step as
        # unusable as a NaN).
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, depth_bins=depth_bins, balance=balance)
        if settings.skip_nonfinite:
            # A non-finite step changes nothing (but the step counter, so the trainer can
            # report it and take the next batch).
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                                     state.replace(step=state.step + 1))
        metrics = {f"loss/{k}" if not k.startswith("loss") else k: v for k, v in parts.items()
                   if jnp.ndim(v) == 0}
        metrics.update(
            grad_norm=grad_norm, learning_rate=schedule(state.step),
            min_depth_bin=depth_bins[0], max_depth_bin=depth_bins[1],
            finite=finite.astype(jnp.float32),
            augmented_fraction=jnp.mean(outputs["augmentation_mask"]))
        if settings.loss.velocity_weight:  # true poses in the batch (step_settings checks)
            metrics["pose_direction_cosine"] = jnp.mean(translation_cosines(
                outputs["cam_T_cam"], batch["cam_T_cam"]))
        # The weights after this step's update, as the reference logs them.
        metrics.update(loss_balance.weight_metrics(settings.mal.balance, balance))
        return new_state, metrics

    return train_step


def summary_images(model: ManyDepth, settings: StepSettings):
    """A function ``(state, batch) -> dict of (B, H, W, C) images in [0, 1]`` for TensorBoard:
    disparities, the teacher's warped sources, the consistency mask and, with MAL, the
    synthesized frames and frame 0's instance masks."""

    def images(state: TrainState, batch: dict):
        outputs, _ = train_forward(
            model, state.variables, batch, state.depth_bins[0], state.depth_bins[1],
            settings=settings.loss, train_teacher_and_pose=False)
        frames = batch["frames"]
        warped, grids = warp_sources(frames, outputs["teacher_depth"][0], outputs["cam_T_cam"],
                                     batch["K"][:, 0], batch["inv_K"][:, 0])
        normalise = lambda d: d / jnp.max(d, axis=(1, 2, 3), keepdims=True)  # noqa: E731
        out = {
            "frame_0": frame(frames, 0),
            "disp_student": normalise(outputs["student_disp"][0]),
            "disp_teacher": normalise(outputs["teacher_disp"][0]),
            "warped_-1": warped[-1],
            "warped_1": warped[1],
            "consistency_mask": outputs["consistency_mask"],
        }
        if settings.mal.uses_hints:
            hints = instance_hints(batch, settings.mal.hints)
            out["synthesized_-1"], out["synthesized_1"] = hints(warped, grids)
            ids = batch["instance_ids"][:, FRAME_INDEX[0]]
            num_slots = batch["instance_class"].shape[-1]
            out["instances_0"] = (ids.astype(jnp.float32) / num_slots)[..., None]
        return out

    return images
