"""The training state (a pytree checkpointed as a whole) and the optimizer.

Everything a resumed run needs is here: parameters, BatchNorm statistics, Adam moments, the
adaptive depth-bin trackers, MAL's loss-balancing state, the step (which is also the data
position) and the base rng.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

# Networks the reference freezes together: the teacher and the pose network.
TEACHER_AND_POSE = ("teacher_encoder", "teacher_depth", "pose_encoder", "pose_decoder")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: completed steps; the data pipeline resumes from it
    params: Any
    batch_stats: Any
    opt_state: Any
    depth_bins: jax.Array  # float32 (2,): adaptive min and max depth of the cost volume, metres
    balance: Any  # MAL loss-balancing state (empty dict when unused)
    rng: jax.Array  # uint32 (2,): base key; step keys are fold_in(rng, step)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(learning_rate: float, decay_step: int, decay_factor: float,
                           warmup_steps: int = 0):
    """The rate of update ``s`` (0-based): ``learning_rate`` times ``decay_factor`` from
    ``decay_step`` on, times the linear warmup factor ``min(s + 1, warmup_steps) /
    warmup_steps`` (no warmup when ``warmup_steps <= 0``).

    The warmup follows MAL's Cityscapes scheduler (``WarmupStepLRScheduler``, init 1e-10): its
    update ``s`` runs at ``1e-10 + (peak - 1e-10) * (s + 1) / warmup_steps``; from update
    ``warmup_steps - 1`` on it keeps ``(warmup_steps - 1) / warmup_steps`` of the peak (it never
    sets the peak), where this schedule reaches the full rate; the 1e-10 offset is dropped.
    """
    decayed = (optax.constant_schedule(learning_rate) if decay_step <= 0 else
               optax.piecewise_constant_schedule(learning_rate, {decay_step: decay_factor}))
    if warmup_steps <= 0:
        return decayed

    def schedule(step):
        warmup = jnp.minimum(jnp.asarray(step, jnp.float32) + 1.0, warmup_steps) / warmup_steps
        return decayed(step) * warmup

    return schedule


# How ``TrainState.opt_state`` is laid out, recorded in every checkpoint's metadata: Adam's
# moments as one flat vector (``make_optimizer``). Checkpoints written before 2026-12-06 hold
# them per parameter array (no record) and are refused on resume, naming this.
OPT_STATE_LAYOUT = "adam_flat"
# How the parameter and BatchNorm trees name the networks, recorded in every checkpoint's
# metadata: teacher_*, student_*, pose_* (``mal_jax.models.manydepth.NETWORK_NAMES``).
# Checkpoints written before 2026-12-06 name them after the reference's checkpoint files
# (``mal_jax.port.convert.REFERENCE_FILES``) and hold no record; they are refused on resume and
# on loading for inference, naming this.
PARAM_NAMES = "teacher_student"


def make_optimizer(schedule) -> optax.GradientTransformation:
    """Adam with torch's defaults (betas 0.9/0.999, eps 1e-8), as the reference.

    Adam runs on all parameters raveled into one vector (``optax.flatten``; its moments are
    stored flat): the same element-wise arithmetic, but a few large operations instead of a
    dozen per parameter array, which cuts the train step's compile time by about a third
    (93 s -> 64 s for configs/test.py on 2 CPU cores, 2026-12-06).
    """
    return optax.flatten(optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))


def freeze(tree: dict, nets: tuple[str, ...]) -> dict:
    """``tree`` (keyed by network) with the subtrees of ``nets`` replaced by zeros."""
    return {net: (jax.tree.map(jnp.zeros_like, sub) if net in nets else sub)
            for net, sub in tree.items()}


def create_state(variables: dict, optimizer: optax.GradientTransformation, min_depth_bin: float,
                 max_depth_bin: float, balance: Any, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=optimizer.init(variables["params"]),
        depth_bins=jnp.asarray([min_depth_bin, max_depth_bin], jnp.float32),
        balance=balance,
        rng=jax.random.PRNGKey(seed),
    )
