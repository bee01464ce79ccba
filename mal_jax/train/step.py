"""One training step, ``train_step(state, batch, rng) -> (state, metrics)``, pure and jitted.

The step runs the networks (teacher, pose, multi-frame), the ManyDepth or MAL loss, Adam, the
adaptive depth-bin update and MAL's loss balancing. Freezing the teacher and pose changes the
computation (their BatchNorm switches to running averages), so the trainer builds one step for
each phase; each is compiled once.

A step whose loss or gradients are not finite leaves the state untouched and reports
``finite = 0``; the trainer stops on it (the last good checkpoint stays the latest).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mal_jax.core import geometry, objective
from mal_jax.data.registry import dataset_spec
from mal_jax.mal import loss_balance
from mal_jax.mal import objective as mal_objective
from mal_jax.mal.temporal_hints import TemporalHintConfig
from mal_jax.models.manydepth import ManyDepth
from mal_jax.train.state import TEACHER_AND_POSE, TrainState, freeze


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static (hashable) description of the step, derived from the config."""

    loss: objective.LossSettings
    mal: mal_objective.MalSettings | None  # None: plain ManyDepth
    matching_augmentation: bool
    steps_per_epoch: int
    lambda_schedule: loss_balance.LambdaSchedule


def step_settings(config: ml_collections.ConfigDict, steps_per_epoch: int) -> StepSettings:
    loss = objective.LossSettings(
        min_depth=config.model.min_depth, max_depth=config.model.max_depth,
        scales=tuple(config.loss.scales), disparity_smoothness=config.loss.disparity_smoothness,
        automasking=config.loss.automasking, motion_masking=config.loss.motion_masking,
        velocity_weight=config.loss.velocity_weight)
    if not config.loss.scales or not set(config.loss.scales) <= set(config.model.scales):
        raise ValueError(f"config.loss.scales={tuple(config.loss.scales)} must be a non-empty "
                         f"subset of config.model.scales={tuple(config.model.scales)}")
    if config.loss.velocity_weight and not dataset_spec(config.data.dataset).has_true_poses:
        raise ValueError(f"config.loss.velocity_weight={config.loss.velocity_weight} needs the "
                         f"true camera poses, which config.data.dataset="
                         f"{config.data.dataset!r} does not provide")
    mal_cfg = config.mal
    uses_mal = mal_cfg.temporal or mal_cfg.main_temporal or mal_cfg.distil
    mal = None
    if uses_mal:
        mal = mal_objective.MalSettings(
            temporal=mal_cfg.temporal, main_temporal=mal_cfg.main_temporal,
            distil=mal_cfg.distil, ensemble=mal_cfg.ensemble,
            loss_balance=mal_cfg.loss_balance and mal_cfg.distil,
            multi_scale=mal_cfg.multi_scale, balance_batch_factor=mal_cfg.batch_size_factor,
            hints=TemporalHintConfig(score_threshold=mal_cfg.score_threshold,
                                     replace=mal_cfg.replace))
    schedule = loss_balance.LambdaSchedule(mal_cfg.balance_lambda_start,
                                           mal_cfg.balance_lambda_step,
                                           mal_cfg.balance_lambda_min)
    return StepSettings(loss, mal, config.loss.matching_augmentation, steps_per_epoch, schedule)


def initial_balance(settings: StepSettings):
    """The loss-balancing state a fresh run starts with ({} when balancing is off)."""
    if settings.mal is not None and settings.mal.loss_balance:
        return loss_balance.init_balance(2)
    return {}


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def make_train_step(model: ManyDepth, optimizer: optax.GradientTransformation,
                    schedule, settings: StepSettings, frozen: bool):
    """The pure step for one phase: ``frozen`` = teacher and pose no longer train."""

    def loss_fn(params, state: TrainState, batch: dict, rng: jax.Array):
        augmentation_rng, noise_rng = jax.random.split(rng)
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, variables = objective.train_forward(
            model, variables, batch, state.depth_bins[0], state.depth_bins[1],
            settings=settings.loss, train_teacher_and_pose=not frozen,
            augmentation_rng=augmentation_rng if settings.matching_augmentation else None)
        if settings.mal is None:
            _, multi = objective.multi_frame_loss(outputs, batch, settings.loss)
            teacher = None
            if not frozen:
                _, teacher = objective.single_frame_loss(outputs, batch, settings.loss,
                                                         noise_rng)
            parts = objective.combine_losses(multi, teacher)
        else:
            balance = state.balance if settings.mal.loss_balance else None
            _, parts = mal_objective.mal_loss(outputs, batch, settings.mal, settings.loss,
                                              balance, train_teacher=not frozen,
                                              noise_rng=noise_rng)
        if settings.loss.velocity_weight and not frozen:
            parts = dict(parts, velocity_loss=objective.velocity_loss(outputs["cam_T_cam"],
                                                                      batch["cam_T_cam"]))
            parts["loss"] = parts["loss"] + settings.loss.velocity_weight * parts["velocity_loss"]
        return parts["loss"], (parts, outputs, variables["batch_stats"])

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
            depth_bins = jnp.stack(objective.adaptive_bins_update(
                outputs["mono_depth"][0], depth_bins[0], depth_bins[1],
                settings.loss.min_depth))
        balance = state.balance
        if settings.mal is not None and settings.mal.loss_balance:
            epoch, step_in_epoch = jnp.divmod(state.step, settings.steps_per_epoch)
            balance = loss_balance.update_balance(
                balance, mal_objective.balance_observation(parts), step_in_epoch,
                settings.lambda_schedule.at(epoch))

        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, depth_bins=depth_bins, balance=balance)
        # A non-finite step changes nothing (but the step counter, so the trainer can report it).
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                                 state.replace(step=state.step + 1))
        metrics = {f"loss/{k}" if not k.startswith("loss") else k: v for k, v in parts.items()
                   if jnp.ndim(v) == 0}
        metrics.update(
            grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step),
            min_depth_bin=depth_bins[0], max_depth_bin=depth_bins[1],
            finite=finite.astype(jnp.float32),
            augmented_fraction=jnp.mean(outputs["augmentation_mask"]))
        return new_state, metrics

    return train_step


def summary_images(model: ManyDepth, settings: StepSettings):
    """A function ``(state, batch) -> dict of (B, H, W, C) images in [0, 1]`` for TensorBoard:
    disparities, the teacher's warped sources, the consistency mask and, with MAL, the
    synthesized frames and frame 0's instance masks."""

    def images(state: TrainState, batch: dict):
        outputs, _ = objective.train_forward(
            model, state.variables, batch, state.depth_bins[0], state.depth_bins[1],
            settings=settings.loss, train_teacher_and_pose=False)
        frames = batch["frames"]
        K0, inv_K0 = batch["K"][:, 0], batch["inv_K"][:, 0]
        warped, coords = {}, {}
        for f in objective.SOURCE_FRAMES:
            warped[f], coords[f] = geometry.warp_frame(
                objective.frame(frames, f), outputs["mono_depth"][0], outputs["cam_T_cam"][f],
                K0, inv_K0)
        normalise = lambda d: d / jnp.max(d, axis=(1, 2, 3), keepdims=True)  # noqa: E731
        out = {
            "frame_0": objective.frame(frames, 0),
            "disp_multi": normalise(outputs["disp"][0]),
            "disp_teacher": normalise(outputs["mono_disp"][0]),
            "warped_-1": warped[-1],
            "warped_1": warped[1],
            "consistency_mask": outputs["consistency_mask"],
        }
        if settings.mal is not None and (settings.mal.temporal or settings.mal.main_temporal):
            hints = mal_objective.instance_hints(batch, settings.mal.hints)
            out["synthesized_-1"], out["synthesized_1"] = hints(warped, coords)
            ids = batch["instance_ids"][:, objective.FRAME_INDEX[0]]
            num_slots = batch["instance_class"].shape[-1]
            out["instances_0"] = (ids.astype(jnp.float32) / num_slots)[..., None]
        return out

    return images
