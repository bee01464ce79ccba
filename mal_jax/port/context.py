"""What every parity group shares: the reference run's settings and the :class:`Context`
(converted weights, inputs, and the training-mode passes computed once per golden file)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mal_jax.core.network_losses import LossSettings
from mal_jax.mal.objective import MANYDEPTH, objective
from mal_jax.models.manydepth import ManyDepth
from mal_jax.port.convert import REFERENCE_FILES, convert_state_dicts
from mal_jax.port.golden import GoldenFile, nchw_to_nhwc
from mal_jax.train.forward import train_forward

# Settings of the reference run that produced the golden file (see shared/golden/README.md).
EVAL_BINS = (0.5, 15.0)
TRAIN_BINS = (0.1, 10.0)
# Gradients: max absolute error relative to the reference's norm.
GRAD_TOL = 1e-3


class Context:
    """Inputs, converted weights and lazily computed outputs shared by the groups."""

    def __init__(self, golden: GoldenFile):
        self.golden = golden
        self.model = ManyDepth()
        self.variables, self.metadata = convert_state_dicts(golden.state_dicts(), None,
                                                            source=golden.path)
        self.model = ManyDepth(num_layers=18,
                               num_depth_bins=self._num_bins())
        self.colors = {f: jnp.asarray(nchw_to_nhwc(golden[f"in/color/{f}"])) for f in (-1, 0, 1)}
        K = jnp.stack([jnp.asarray(golden[f"in/K/{s}"]) for s in range(4)], axis=1)
        frames = jnp.stack([self.colors[f] for f in (-1, 0, 1)], axis=1)
        self.batch = {"frames": frames, "frames_aug": frames, "K": K, "inv_K": jnp.linalg.inv(K)}
        self._train = None
        self._float64 = None

    def _num_bins(self) -> int:
        student_encoder = self.golden.state_dict(REFERENCE_FILES["student_encoder"])
        return int(student_encoder["reduce_conv.0.weight"].shape[1] - 64)

    def _loss(self, params, variables: dict, batch: dict, decisions: dict | None = None):
        """The reference's training-mode loss of ``params``: (loss, (parts, outputs,
        variables)).

        ``decisions`` ({"lowest_cost", "consistency_mask"}: (B, H, W, 1)) replaces the port's
        own discrete outputs before the losses are taken; the port's own are kept in the
        outputs as ``own_lowest_cost`` and ``own_consistency_mask``. Everything is an
        argument, not a closed-over constant: XLA would otherwise constant-fold every part
        of the loss that depends on the frames alone (auto-masking's identity reprojection
        error, for one) at compile time, element by element (~1 min per golden file).
        """
        settings = LossSettings(tie_break_noise=False)
        outputs, updated = train_forward(
            self.model, {**variables, "params": params}, batch, *TRAIN_BINS, settings=settings)
        outputs["own_lowest_cost"] = outputs["lowest_cost"]
        outputs["own_consistency_mask"] = outputs["consistency_mask"]
        outputs.update(decisions or {})
        _, parts = objective(outputs, batch, MANYDEPTH, settings)
        return parts["loss"], (parts, outputs, updated)

    def train_outputs(self):
        """One training-mode loss evaluation in float32 with the port's own discrete outputs
        (as training runs): (parts, outputs, variables)."""
        if self._train is None:
            _, aux = jax.jit(self._loss)(self.variables["params"], _without_params(self.variables),
                                         self.batch)
            self._train = jax.device_get(aux)
        return self._train

    def reference_decisions(self) -> dict:
        """The reference's own training-mode discrete outputs, (B, H, W, 1)."""
        return {name: self.golden[f"train/{name}"][..., None]
                for name in ("lowest_cost", "consistency_mask")}

    def train_float64(self):
        """Gradients, loss parts and outputs of the training-mode pass in float64, with the
        reference's discrete decisions substituted: ``(grads, parts, outputs)``.

        Float64 because the reference's own float32 gradients of the pose encoder's first
        BatchNorm move by up to 3e-3 of their norm between float32 and float64 (golden
        README), and the port's by 2.5e-3 with the CPU's rounding: in float64 the check
        measures the port, not the rounding. The substituted decisions keep near-tied arg-mins
        from moving the losses (the unconditioned comparison uses :meth:`train_outputs`).
        """
        if self._float64 is None:
            with jax.enable_x64(True):
                variables, batch = as_float64(self.variables), as_float64(self.batch)
                decisions = as_float64(self.reference_decisions())
                grad_fn = jax.jit(jax.grad(self._loss, has_aux=True))
                grads, (parts, outputs, _) = jax.device_get(
                    grad_fn(variables["params"], _without_params(variables), batch, decisions))
            self._float64 = (grads, parts, outputs)
        return self._float64


def _without_params(variables: dict) -> dict:
    """The non-trainable collections (BatchNorm statistics) of ``variables``."""
    return {name: value for name, value in variables.items() if name != "params"}


def as_float64(tree):
    """Every floating leaf of ``tree`` as float64 (call under ``jax.enable_x64``)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def eval_student(ctx: Context, pose):
    """The student (multi-frame network) in eval mode with frame -1 as the lookup frame at
    ``pose``."""
    K2 = ctx.batch["K"][:, 2]
    return ctx.model.student(ctx.variables, ctx.colors[0], ctx.colors[-1][:, None],
                             pose[:, None], K2, jnp.linalg.inv(K2), *EVAL_BINS, train=False)[0]
