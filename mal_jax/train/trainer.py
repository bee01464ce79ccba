"""The training loop: data, sharded jitted steps, checkpoints, summaries, evaluation.

``train_and_evaluate(config, workdir)`` is what ``train.py`` calls. Data parallelism is
``jax.jit`` over a one-axis device mesh: the batch is split over ``"data"``, the state is
replicated, so BatchNorm statistics and the adaptive depth bins are global-batch quantities,
as on one device. Multi-host runs call ``jax.distributed.initialize()`` first (train.py does
when asked) and feed each host its shard of the data.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections.config_dict import config_dict

from mal_jax.data import pipeline, sources
from mal_jax.models.manydepth import ManyDepth
from mal_jax.port.convert import init_from_torchvision, read_torch_state_dict
from mal_jax.train import checkpointing, periodic
from mal_jax.train import state as train_state
from mal_jax.train.step import initial_balance, make_train_step, step_settings, summary_images


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or inf; the latest checkpoint is the last good state."""


def build_model(config: ml_collections.ConfigDict) -> ManyDepth:
    return ManyDepth(num_layers=config.model.num_layers,
                     num_depth_bins=config.model.num_depth_bins,
                     inverse_depth_bins=config.model.inverse_depth_bins,
                     scales=tuple(config.model.scales),
                     compute_dtype=config.model.compute_dtype)


def _weights_folder(config) -> str:
    """``config.model.weights_folder``; configs that need one mark it required."""
    try:
        return config.model.weights_folder
    except config_dict.RequiredValueError as error:
        raise ValueError("config.model.weights_folder is required by this config: pass "
                         "--config.model.weights_folder=DIR (a ManyDepth .pth folder or a "
                         "training workdir)") from error


def _checkpoint_variables(workdir: str, fresh: dict) -> tuple[dict, float, float]:
    """Variables and bins of a workdir's latest checkpoint, checked against ``fresh``'s layout
    (another architecture or bin count fails naming the first differing weight)."""
    loaded = checkpointing.load_inference(workdir)
    expected = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(fresh)}
    found = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(loaded.variables)}
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            raise ValueError(f"{workdir}: weight {name} has shape {found.get(name)}, the config's "
                             f"model needs {expected.get(name)} (other num_layers or "
                             "num_depth_bins?)")
    return loaded.variables, loaded.min_depth_bin, loaded.max_depth_bin


def initial_variables(config, model: ManyDepth, rng: jax.Array) -> tuple[dict, float, float]:
    """Fresh, ImageNet-initialised or loaded variables and the starting bins.

    ``config.model.weights_folder`` may be a ManyDepth ``.pth`` folder or a training workdir
    (its latest checkpoint: fine-tuning a model trained here); either brings its depth bins.
    """
    weights_folder = _weights_folder(config)
    variables = jax.jit(lambda key: model.init(key, config.data.height, config.data.width))(rng)
    min_bin, max_bin = config.model.init_min_depth_bin, config.model.init_max_depth_bin
    if weights_folder and os.path.isdir(os.path.join(weights_folder,
                                                     checkpointing.CHECKPOINT_DIR)):
        return _checkpoint_variables(weights_folder, variables)
    if weights_folder:
        from mal_jax.port.convert import load_manydepth_folder

        variables, meta = load_manydepth_folder(weights_folder, model)
        min_bin = meta.get("min_depth_bin", min_bin)
        max_bin = meta.get("max_depth_bin", max_bin)
    elif config.model.imagenet_weights:
        variables = init_from_torchvision(
            variables, read_torch_state_dict(config.model.imagenet_weights), model,
            source=config.model.imagenet_weights)
    return variables, float(min_bin), float(max_bin)


def make_mesh(devices=None) -> Mesh:
    """A one-axis ``"data"`` mesh over ``devices`` (default: all)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def shard_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch -> global array split over the mesh's data axis."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in batch.items()}


def freeze_step(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Global step at which the teacher and pose stop training (-1 = never)."""
    if config.training.freeze_teacher_step >= 0:
        return config.training.freeze_teacher_step
    if config.training.freeze_teacher_epoch < 0:
        return -1
    return config.training.freeze_teacher_epoch * steps_per_epoch


def _rate_fields(config) -> tuple:
    training = config.training
    return training.learning_rate, training.lr_decay_epoch, training.lr_decay_factor


class Trainer:
    """Everything one run needs, built once; ``run`` trains until ``num_steps``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        self.config, self.workdir = config, workdir
        self.mesh = make_mesh(devices)
        if config.training.batch_size % self.mesh.size:
            raise ValueError(f"training.batch_size={config.training.batch_size} is not divisible"
                             f" by the {self.mesh.size} devices")
        self.source = sources.train_source(config)
        self.local_batch = config.training.batch_size // jax.process_count()
        self.steps_per_epoch = pipeline.steps_per_epoch(
            self.source.num_samples, self.local_batch, jax.process_count())
        self.num_steps = self.steps_per_epoch * config.training.num_epochs
        self.freeze_at = freeze_step(config, self.steps_per_epoch)
        self.model = build_model(config)
        self.schedule = train_state.learning_rate_schedule(
            config.training.learning_rate,
            config.training.lr_decay_epoch * self.steps_per_epoch,
            config.training.lr_decay_factor)
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
        self.images = jax.jit(summary_images(self.model, self.settings))
        self.manager = checkpointing.checkpoint_manager(workdir, config.training.keep_checkpoints)
        self.meta = checkpointing.model_meta(self.model, config.data.height, config.data.width)

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

    def initial_state(self) -> train_state.TrainState:
        """The latest checkpoint of the workdir, or a fresh state."""
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
        state, _ = checkpointing.restore(self.manager, abstract)
        if state is not None:
            logging.info("resumed from step %d", int(state.step))
            return state
        fresh = state_of(*initial_variables(config, self.model, rng))
        # Distinct buffers per leaf: the step donates the state, and a leaf shared by two
        # fields (e.g. one zeros array) cannot be donated twice.
        return jax.device_put(jax.tree.map(np.array, fresh), self.replicated)

    def step_fn(self, step: int):
        return self.steps[0 <= self.freeze_at <= step]

    def run(self, num_steps: int | None = None) -> train_state.TrainState:
        """Train from the workdir's latest checkpoint up to ``num_steps`` (default: all)."""
        config = self.config
        last = self.num_steps if num_steps is None else num_steps
        checkpointing.write_config(self.workdir, config)
        writer = metric_writers.create_default_writer(
            self.workdir, just_logging=jax.process_index() > 0)
        state = self.initial_state()
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
        for batch in batches:
            batch = shard_batch(batch, self.data_sharding)
            state, metrics = self.step_fn(step)(state, batch, jax.random.fold_in(base_rng, step))
            step += 1
            if not bool(jax.device_get(metrics["finite"])):
                self.manager.wait_until_finished()
                raise NonFiniteLoss(
                    f"step {step}: loss or gradients are NaN/inf (loss={float(metrics['loss'])});"
                    f" training stopped, the last good checkpoint in "
                    f"{os.path.join(self.workdir, checkpointing.CHECKPOINT_DIR)} is kept")
            progress(step)
            if periodic.is_due(step, config.training.log_every_steps, last):
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - tic
                scalars["step_time_s"] = elapsed / max(config.training.log_every_steps, 1)
                writer.write_scalars(step, scalars)
                tic = time.perf_counter()
            if periodic.is_due(step, config.training.image_every_steps):
                images = jax.device_get(self.images(state, batch))
                writer.write_images(step, {k: np.clip(v[:4], 0, 1) if v.shape[-1] in (1, 3)
                                           else v[:4] for k, v in images.items()})
            if periodic.is_due(step, config.training.checkpoint_every_steps, last):
                checkpointing.save(self.manager, state, {**self.meta, "step": step})
            if periodic.is_due(step, config.training.eval_every_steps):
                self.evaluate(state, writer, step)
            if step >= last:
                break
        self.manager.wait_until_finished()
        writer.flush()
        return state

    def evaluate(self, state, writer, step: int) -> dict:
        """Evaluate the current state on the config's test split; results to the workdir."""
        from mal_jax.eval import evaluate

        bins = [float(b) for b in jax.device_get(state.depth_bins)]
        inference = checkpointing.InferenceModel(
            self.model, jax.device_get(state.variables), bins[0], bins[1],
            self.config.data.height, self.config.data.width)
        results = evaluate.evaluate(inference, self.config, self.workdir,
                                    checkpoint=f"{self.workdir} step {step}")
        writer.write_scalars(step, evaluate.flat_scalars(results))
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Train per ``config`` in ``workdir`` (resuming if it has checkpoints), then evaluate."""
    trainer = Trainer(config, workdir)
    state = trainer.run()
    if jax.process_index() == 0:
        writer = metric_writers.create_default_writer(workdir, just_logging=True)
        trainer.evaluate(state, writer, int(jax.device_get(state.step)))
    return state
