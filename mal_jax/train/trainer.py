"""The training loop: data, sharded jitted steps, checkpoints, summaries, evaluation.

``train_and_evaluate(config, workdir)`` is what ``train.py`` calls. Data parallelism is
``jax.jit`` over a one-axis device mesh: the batch is split over ``"data"``, the state is
replicated, so BatchNorm statistics and the adaptive depth bins are global-batch quantities,
as on one device. Multi-host runs call ``distributed.initialize`` first (train.py does when
asked); each process feeds its shard of the data, every output fetched to the host is
replicated, and only process 0 writes files (orbax coordinates the checkpoint writes).
"""

from __future__ import annotations

import json
import logging
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions
from jax.sharding import NamedSharding, PartitionSpec

from mal_jax.data import pipeline, registry
from mal_jax.eval import evaluate
from mal_jax.models.manydepth import ManyDepth
from mal_jax.train import checkpointing, distributed, fine_tune, periodic
from mal_jax.train import state as train_state
from mal_jax.train import workdir as workdir_files
from mal_jax.train.step import initial_balance, make_train_step, step_settings, summary_images


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or inf; the latest checkpoint is the last good state."""


def build_model(config: ml_collections.ConfigDict) -> ManyDepth:
    return ManyDepth(num_layers=config.model.num_layers,
                     num_depth_bins=config.model.num_depth_bins,
                     inverse_depth_bins=config.model.inverse_depth_bins,
                     scales=tuple(config.model.scales),
                     compute_dtype=config.model.compute_dtype)


def freeze_step(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Global step at which the teacher and pose stop training (-1 = never)."""
    if config.training.freeze_teacher_step >= 0:
        return config.training.freeze_teacher_step
    if config.training.freeze_teacher_epoch < 0:
        return -1
    return config.training.freeze_teacher_epoch * steps_per_epoch


def _rate_fields(config) -> tuple:
    training = config.training
    return (training.learning_rate, training.lr_decay_epoch, training.lr_decay_factor,
            training.warmup_steps)


def hparams(config: ml_collections.ConfigDict) -> dict:
    """The config as flat TensorBoard hyperparameters (tuples and None as text)."""
    flat = {}

    def visit(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                visit(f"{prefix}{key}.", value)
            else:
                plain = isinstance(value, (bool, int, float, str))
                flat[f"{prefix}{key}"] = value if plain else str(value)

    visit("", json.loads(checkpointing.config_json(config)))
    return flat


class Trainer:
    """Everything one run needs, built once; ``run`` trains until ``num_steps``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        self.config, self.workdir = config, workdir
        registry.check_config(config)  # every data/eval field and path, before anything is written
        self.mesh = distributed.make_mesh(devices)
        if config.training.batch_size % self.mesh.size:
            raise ValueError(f"training.batch_size={config.training.batch_size} is not divisible"
                             f" by the {self.mesh.size} devices")
        self.source = registry.train_source(config)
        self.evaluator = evaluate.Evaluator(config)  # its data source is built once, here
        self.local_batch = config.training.batch_size // jax.process_count()
        self.steps_per_epoch = pipeline.steps_per_epoch(
            self.source.num_samples, self.local_batch, jax.process_count())
        self.num_steps = self.steps_per_epoch * config.training.num_epochs
        self.freeze_at = freeze_step(config, self.steps_per_epoch)
        self.model = build_model(config)
        self.schedule = train_state.learning_rate_schedule(
            config.training.learning_rate,
            config.training.lr_decay_epoch * self.steps_per_epoch,
            config.training.lr_decay_factor, config.training.warmup_steps)
        self.optimizer = train_state.make_optimizer(self.schedule)
        self.settings = step_settings(config, self.steps_per_epoch)

        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        steps = {}
        for frozen in (False, True):
            step = make_train_step(self.model, self.optimizer, self.schedule, self.settings,
                                   frozen)
            steps[frozen] = jax.jit(step, in_shardings=(self.replicated, self.data_sharding,
                                                        self.replicated),
                                    out_shardings=(self.replicated, self.replicated),
                                    donate_argnums=0)
        self.steps = steps
        # Replicated outputs: every process can fetch them (multi-host).
        # Image summaries run on one device of process 0, from its local batch: a program
        # with collectives would have to be compiled identically by every process (XLA:CPU
        # compiles may order independent all-gathers differently; seen as a gloo size mismatch
        # in tests/test_multihost.py), and the others would run it only to discard the result.
        self.images = jax.jit(summary_images(self.model, self.settings))
        self.manager = checkpointing.checkpoint_manager(workdir, config.training.keep_checkpoints)
        self.meta = {**checkpointing.model_meta(self.model, config.data.height, config.data.width),
                     "opt_state": train_state.OPT_STATE_LAYOUT,
                     "config": json.loads(checkpointing.config_json(config))}
        self.skipped_steps = 0  # non-finite steps skipped by this process's run

    def reuse_programs(self, other: Trainer) -> None:
        """Run with ``other``'s compiled step and summary programs (compiling the step takes
        minutes on CPU). Only for runs whose programs are the same: equal step settings, model,
        image size and devices; the seed, workdir and starting weights may differ."""
        same = (self.settings == other.settings and self.model == other.model
                and self.mesh.devices.tolist() == other.mesh.devices.tolist()
                and _rate_fields(self.config) == _rate_fields(other.config)
                and self.local_batch == other.local_batch
                and (self.config.data.height, self.config.data.width)
                == (other.config.data.height, other.config.data.width))
        if not same:
            raise ValueError(f"trainer for {self.workdir}: cannot reuse the programs of "
                             f"{other.workdir} (different step settings, model or devices)")
        self.steps, self.images = other.steps, other.images

    def validate_before_first_step(self) -> None:
        """Every check of the config that can fail, before anything is trained or written.

        The checkpoint (model and image size vs the config) is checked by ``initial_state``,
        which runs right after this and also before the first step. The data and evaluation
        fields and paths were checked by ``registry.check_config`` when the trainer was built.
        """
        fine_tune.check_weights_source(self.config)

    def initial_state(self) -> train_state.TrainState:
        """The newest intact checkpoint of the workdir, or a fresh state."""
        config = self.config
        rng = jax.random.PRNGKey(config.training.seed)

        def state_of(variables, min_bin, max_bin):
            return train_state.create_state(variables, self.optimizer, min_bin, max_bin,
                                            initial_balance(self.settings), config.training.seed)

        # The layout of a fresh state; loading starting weights is not traceable, and the
        # layout does not depend on them (initial_variables checks that).
        abstract = jax.eval_shape(lambda: state_of(
            self.model.init(rng, config.data.height, config.data.width),
            config.model.init_min_depth_bin, config.model.init_max_depth_bin))
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=self.replicated),
            abstract)
        state, _ = checkpointing.restore(self.manager, abstract, self.meta)
        if state is not None:
            logging.info("resumed from step %d", int(state.step))
            return state
        fresh = state_of(*fine_tune.initial_variables(config, self.model, rng))
        if config.training.carry_optimizer_state:
            fresh = fresh.replace(opt_state=fine_tune.carried_optimizer_state(
                config, fresh.opt_state))
        return distributed.replicate(fresh, self.replicated)

    def step_fn(self, step: int):
        return self.steps[0 <= self.freeze_at <= step]

    def run(self, num_steps: int | None = None) -> train_state.TrainState:
        """Train from the workdir's newest intact checkpoint up to ``num_steps`` (default:
        all). Nothing is written before the config and the checkpoint passed their checks."""
        config = self.config
        last = self.num_steps if num_steps is None else num_steps
        self.validate_before_first_step()
        state = self.initial_state()
        checkpointing.write_config(self.workdir, config)
        writer = metric_writers.create_default_writer(
            self.workdir, just_logging=not workdir_files.is_writer())
        writer.write_hparams(hparams(config))
        step = int(jax.device_get(state.step))
        if step >= last:
            return state
        progress = periodic_actions.ReportProgress(num_train_steps=last, writer=writer,
                                                   every_secs=30.0)
        batches = pipeline.train_batches(
            self.source, batch_size=self.local_batch, seed=config.training.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            start_step=step)
        base_rng = jax.device_get(state.rng)  # the state is donated to each step
        tic = time.perf_counter()
        for local_batch in batches:
            batch = distributed.shard_batch(local_batch, self.data_sharding)
            # A global (replicated) key: multi-process jit takes global arrays only.
            rng = distributed.replicate(jax.random.fold_in(base_rng, step), self.replicated)
            state, metrics = self.step_fn(step)(state, batch, rng)
            step += 1
            self._check_finite(step, metrics)
            progress(step)
            if periodic.is_due(step, config.training.log_every_steps, last):
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                scalars["step_time_s"] = ((time.perf_counter() - tic)
                                          / max(config.training.log_every_steps, 1))
                scalars["skipped_nonfinite_steps"] = self.skipped_steps
                writer.write_scalars(step, scalars)
                tic = time.perf_counter()
            self._periodic_actions(step, last, state, local_batch, writer)
            if step >= last:
                break
        self.manager.wait_until_finished()
        writer.flush()
        return state

    def _check_finite(self, step: int, metrics: dict) -> None:
        """Stop on a NaN/inf step, or count and skip it (``training.skip_nonfinite_steps``;
        the step left the state unchanged, the next step takes the next batch)."""
        if bool(jax.device_get(metrics["finite"])):
            return
        if self.config.training.skip_nonfinite_steps:
            self.skipped_steps += 1
            logging.warning("step %d: loss or gradients are NaN/inf; update skipped (%d skipped "
                            "so far in this run)", step, self.skipped_steps)
            return
        self.manager.wait_until_finished()
        raise NonFiniteLoss(
            f"step {step}: loss or gradients are NaN/inf (loss={float(metrics['loss'])});"
            f" training stopped, the last good checkpoint in "
            f"{checkpointing.checkpoint_dir(self.workdir)} is kept (set "
            "training.skip_nonfinite_steps=True to skip such steps)")

    def _periodic_actions(self, step: int, last: int, state, local_batch: dict,
                          writer) -> None:
        """Image summaries (of this process's ``local_batch``), checkpoints and evaluation
        when due after ``step`` steps."""
        training = self.config.training
        if periodic.is_due(step, training.image_every_steps) and workdir_files.is_writer():
            images = jax.device_get(self.images(distributed.local_copy(state), local_batch))
            writer.write_images(step, {k: np.clip(v[:4], 0, 1) if v.shape[-1] in (1, 3)
                                       else v[:4] for k, v in images.items()})
        if periodic.is_due(step, training.checkpoint_every_steps, last):
            checkpointing.save(self.manager, state, {**self.meta, "step": step})
        if periodic.is_due(step, training.eval_every_steps):
            self.evaluate(state, writer, step)

    def evaluate(self, state, writer, step: int) -> dict:
        """Evaluate the current state on the config's test split; results to the workdir.

        Every process evaluates (the same data, on its own devices); only process 0 writes the
        files. So no process waits for process 0 in a timed shutdown barrier.
        """
        bins = [float(b) for b in jax.device_get(state.depth_bins)]
        inference = checkpointing.InferenceModel(
            self.model, jax.device_get(state.variables), bins[0], bins[1],
            self.config.data.height, self.config.data.width)
        results = self.evaluator.run(inference, checkpoint=f"{self.workdir} step {step}")
        if workdir_files.is_writer():
            self.evaluator.write(inference, results, self.workdir)
        writer.write_scalars(step, evaluate.flat_scalars(results))
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Train per ``config`` in ``workdir`` (resuming if it has checkpoints), then evaluate;
    the final scalars go to the workdir's TensorBoard summaries."""
    trainer = Trainer(config, workdir)
    state = trainer.run()
    writer = metric_writers.create_default_writer(
        workdir, just_logging=not workdir_files.is_writer())
    trainer.evaluate(state, writer, int(jax.device_get(state.step)))
    writer.flush()
    return state
