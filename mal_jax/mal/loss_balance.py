"""MAL's balancing of the original loss against the distillation loss, as pure functions.

MAL weighs its two training losses with the multi-loss rebalancing rule of Lee et al.
("Multi-Loss Rebalancing Algorithm for Monocular Depth Estimation", ECCV 2020), updated after
every training step from the running mean of both losses over the current epoch:

* first update: each weight becomes ``total / (n * mean_k)`` with ``total = sum_k w_k mean_k``
  under the starting weights 1/n, so both weighted losses start equal;
* later updates: ``w_k *= clip(1 + lam * ((total / prev_total) * (prev_mean_k / mean_k) - 1),
  1/2, 2)`` (skipped while ``prev_total <= 0``), where ``prev_*`` are the values recorded at
  the previous update; a loss that falls more slowly than the total gains weight when
  ``lam > 0``;
* ``lam`` follows ``max(start + slope * epoch, floor)`` (3, -1.5 and -3 in the reference).

Unlike the reference, a running mean of exactly 0 does not divide: see :func:`update_balance`
(with MAL's batch of 12 it needs all 12 samples augmented; with batch 4, 1 step in 16).

The means are over the steps of the current epoch so far, restarting with each epoch (the
reference indexes its record table by the step within the epoch, so a new epoch overwrites it
from row 0 and averages only its own rows). The weights applied to a step's loss are those
from before that step's update, and they are constants to the gradient.

Everything the step carries lives in :class:`BalanceState`, a pytree of arrays that a jitted
train step can carry and a checkpoint can store; everything static in :class:`BalanceSettings`.
This module owns the whole rule: :func:`initial_state`, :func:`apply` (the balanced loss),
:func:`update` (after the step, with the lambda schedule) and :func:`weight_metrics`.

What is balanced, as the reference: the *original* loss (the student's loss without
distillation plus, while it trains, the teacher's loss) against the *distillation* loss
(:data:`BALANCED_PARTS`, entries of the objective's parts). The velocity loss (synthetic data
only, :mod:`mal_jax.mal.objective`) is part of the original loss: it supervises the pose
network alongside the teacher's photometric loss, and the distillation loss never reaches the
pose network, so a small ``w_original`` scales the pose network's whole loss (photometric and
velocity together, which Adam's normalisation undoes) instead of leaving it the velocity loss
alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

# The objective's parts that are balanced, in weight order: (original, distillation).
BALANCED_PARTS = ("original_loss", "distil_loss")
# Bounds of the per-update multiplicative change of a weight.
MIN_ADJUST, MAX_ADJUST = 0.5, 2.0


@dataclasses.dataclass(frozen=True)
class LambdaSchedule:
    """The adjustment strength per epoch: ``max(start + slope * epoch, floor)``."""

    start: float = 3.0
    slope: float = -1.5
    floor: float = -3.0

    def at(self, epoch) -> jax.Array:
        """Lambda for a (0-based) epoch; jittable in ``epoch``."""
        return jnp.maximum(self.start + self.slope * jnp.asarray(epoch, jnp.float32), self.floor)


@dataclasses.dataclass(frozen=True)
class BalanceSettings:
    """Static description of the balancing (hashable: part of the jitted step's settings).

    enabled: balance original vs distillation (MAL: on, ``--loss_blc``); needs distillation.
    batch_factor: multiply the balanced loss by the batch size, as the reference's sum over
      batch elements does (MAL: on, implicitly; off by default, configs/default.py says why).
    schedule: lambda per epoch (MAL: 3, -1.5, -3).
    steps_per_epoch: training steps per epoch; the means restart and lambda moves per epoch.
    """

    enabled: bool = True
    batch_factor: bool = False
    schedule: LambdaSchedule = LambdaSchedule()
    steps_per_epoch: int = 0


@struct.dataclass
class BalanceState:
    """Loss weights and what the next update needs.

    weights: (n,) weights applied to the next step's losses.
    previous_mean, previous_total: (n,) epoch means and the weighted total recorded at the last
      update (after that update's weights).
    epoch_sum, epoch_count: running sum of the observed losses and the number of steps in the
      current epoch.
    initialized: whether the first (initialising) update has happened.
    """

    weights: jax.Array
    previous_mean: jax.Array
    previous_total: jax.Array
    epoch_sum: jax.Array
    epoch_count: jax.Array
    initialized: jax.Array


def init_balance(num_losses: int = 2) -> BalanceState:
    """Equal weights 1/n and an empty record."""
    if num_losses < 1:
        raise ValueError(f"init_balance: num_losses must be >= 1, got {num_losses}")
    zeros = jnp.zeros((num_losses,), jnp.float32)
    return BalanceState(
        weights=jnp.full((num_losses,), 1.0 / num_losses, jnp.float32),
        previous_mean=zeros,
        previous_total=jnp.zeros((), jnp.float32),
        epoch_sum=zeros,
        epoch_count=jnp.zeros((), jnp.int32),
        initialized=jnp.zeros((), bool),
    )


def balanced_loss(state: BalanceState, losses: jax.Array, scale=1.0) -> jax.Array:
    """``scale * sum_k w_k losses_k`` with the weights held constant for the gradient.

    ``scale`` is where the reference's batch-size factor goes (it adds the weighted sum once
    per batch element); 1 leaves the loss on the scale of its parts.
    """
    losses = jnp.asarray(losses)
    if losses.shape != state.weights.shape:
        raise ValueError(
            f"balanced_loss: losses shape {losses.shape} != weights shape {state.weights.shape}"
        )
    return scale * jnp.sum(jax.lax.stop_gradient(state.weights) * losses)


def _first_weights(state: BalanceState, mean: jax.Array, total: jax.Array) -> jax.Array:
    share = 1.0 / state.weights.shape[0]
    return total * share / jnp.where(mean > 0, mean, 1.0)


def _adjusted_weights(
    state: BalanceState, mean: jax.Array, total: jax.Array, adjust_lambda: jax.Array
) -> jax.Array:
    usable = (state.previous_total > 0) & jnp.all(mean > 0) & jnp.all(state.previous_mean > 0)
    ratio = (total / jnp.where(usable, state.previous_total, 1.0)) * (
        state.previous_mean / jnp.where(usable, mean, 1.0))
    adjust = jnp.clip(1.0 + adjust_lambda * (ratio - 1.0), MIN_ADJUST, MAX_ADJUST)
    return jnp.where(usable, state.weights * adjust, state.weights)


def update_balance(
    state: BalanceState, losses: jax.Array, step_in_epoch, adjust_lambda
) -> BalanceState:
    """Record one step's (n,) losses and update the weights, as the reference after each step.

    ``step_in_epoch`` (0-based) restarts the running means at 0; ``adjust_lambda`` is
    ``LambdaSchedule().at(epoch)``. The losses are observations: no gradient flows.
    """
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    if losses.shape != state.weights.shape:
        raise ValueError(
            f"update_balance: losses shape {losses.shape} != weights shape {state.weights.shape}"
        )
    new_epoch = jnp.asarray(step_in_epoch) == 0
    epoch_sum = jnp.where(new_epoch, 0.0, state.epoch_sum) + losses
    epoch_count = jnp.where(new_epoch, 0, state.epoch_count) + 1
    mean = epoch_sum / epoch_count
    total = jnp.sum(mean * state.weights)
    # A mean of exactly 0 (the distillation loss of a batch whose samples all had matching
    # augmentation, which masks every pixel) would make the reference's weights infinite.
    # The first update waits for a step where every mean is positive; a later update leaves
    # the weights as they are while a mean is 0.
    can_start = jnp.all(mean > 0)
    weights = jnp.where(
        state.initialized,
        _adjusted_weights(state, mean, total, jnp.asarray(adjust_lambda)),
        jnp.where(can_start, _first_weights(state, mean, total), state.weights),
    )
    return BalanceState(
        weights=weights,
        previous_mean=mean,
        previous_total=jnp.sum(mean * weights),
        epoch_sum=epoch_sum,
        epoch_count=epoch_count,
        initialized=state.initialized | can_start,
    )


def initial_state(settings: BalanceSettings) -> BalanceState | dict:
    """The state a fresh run starts with ({} when balancing is off: nothing to carry)."""
    return init_balance(len(BALANCED_PARTS)) if settings.enabled else {}


def observed(parts: dict) -> jax.Array:
    """The (original, distillation) losses of one step's parts, (2,)."""
    return jnp.stack([parts[name] for name in BALANCED_PARTS])


def apply(settings: BalanceSettings, state: BalanceState, parts: dict, batch_size: int
          ) -> jax.Array:
    """The balanced loss of one step (weights from before the step's update)."""
    factor = batch_size if settings.batch_factor else 1.0
    return balanced_loss(state, observed(parts), factor)


def update(settings: BalanceSettings, state, parts: dict, step) -> BalanceState | dict:
    """The state after step ``step`` (0-based global step) observed ``parts``; unchanged when
    balancing is off."""
    if not settings.enabled:
        return state
    if settings.steps_per_epoch < 1:
        raise ValueError(f"BalanceSettings.steps_per_epoch={settings.steps_per_epoch}: "
                         "balancing needs the number of steps per epoch (>= 1)")
    epoch, step_in_epoch = jnp.divmod(step, settings.steps_per_epoch)
    return update_balance(state, observed(parts), step_in_epoch, settings.schedule.at(epoch))


def weight_metrics(settings: BalanceSettings, state) -> dict:
    """The weights as scalars named ``balance/w_original``, ``balance/w_distil`` ({} if off)."""
    if not settings.enabled:
        return {}
    return {f"balance/w_{name.removesuffix('_loss')}": state.weights[index]
            for index, name in enumerate(BALANCED_PARTS)}
