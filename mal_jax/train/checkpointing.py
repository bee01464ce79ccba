"""Orbax checkpoints of the training state, and loading weights for inference.

A training workdir holds ``checkpoints/<step>/{state,meta}``; ``meta`` records the model
architecture, image size and the run's config, so that evaluation and prediction need nothing
but the path. ``load_inference`` also accepts a ManyDepth ``.pth`` folder (converted on the fly).

Resuming takes the newest checkpoint that restores: a broken one (truncated array file or
metadata, a step folder without orbax's commit marker) is moved to ``checkpoints_broken/`` with
a warning naming it, and the next older one is tried. Temp folders of interrupted saves are
removed when the manager opens. Paths go through ``etils.epath``: a ``gs://`` workdir works.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mal_jax.models.manydepth import ManyDepth
from mal_jax.port.convert import METADATA_FILE
from mal_jax.train import workdir as workdir_files
from mal_jax.train.state import PARAM_NAMES

CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "checkpoints_broken"  # broken checkpoints set aside by a resume, kept for a look
COMMIT_MARKER = "commit_success.txt"  # orbax writes it last into a finished step folder
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temp folder of a save in progress
# What a checkpoint that cannot be read raises: tensorstore (ValueError), JSON (ValueError),
# a missing item (KeyError), a missing or short file (OSError).
_UNREADABLE = (ValueError, KeyError, OSError)


def checkpoint_dir(workdir: str) -> epath.Path:
    return workdir_files.path(workdir) / CHECKPOINT_DIR


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A manager keeping the latest ``keep`` checkpoints; saving is decided by the caller.
    Temp folders left by interrupted saves are removed first (with a warning each)."""
    directory = checkpoint_dir(workdir)
    if directory.exists() and workdir_files.is_writer():
        for leftover in sorted(directory.glob(f"*{_TMP_SUFFIX}*")):
            logging.warning("removing %s: the temp folder of an interrupted checkpoint save",
                            leftover)
            leftover.rmtree()
    _barrier("checkpoint_tmp_cleanup")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _set_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> None:
    """Move the broken checkpoint ``step`` out of the manager's sight, warning with its path."""
    folder = epath.Path(manager.directory) / str(step)
    target = epath.Path(manager.directory).parent / BROKEN_DIR / str(step)
    logging.warning("checkpoint %s is broken (%s); moved to %s, resuming from an older one",
                    folder, reason, target)
    if workdir_files.is_writer():
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.parent / f"{step}.{len(list(target.parent.iterdir()))}"
        folder.rename(target)
    _barrier(f"set_aside_{step}")
    manager.reload()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def check_param_names(found: dict, where: str) -> None:
    """Refuse a checkpoint whose parameter tree names the networks otherwise than this
    version (``param_names``: before 2026-12-06, the reference's checkpoint file names)."""
    if found.get("param_names") != PARAM_NAMES:
        raise ValueError(f"{where} has param_names={found.get('param_names')!r} (None: written "
                         "before 2026-12-06, networks named after the reference's checkpoint "
                         f"files), this version needs {PARAM_NAMES!r}: its weights cannot be "
                         "loaded; start a new workdir")


def check_meta(found: dict, expected: dict, where: str) -> None:
    """Refuse a config whose model or image size differs from the checkpoint's, naming the
    config field (``data.height``, ``model.num_depth_bins``, ...), whose parameters are named
    otherwise (``param_names``), or whose optimizer state has another layout
    (``opt_state``)."""
    if "param_names" in expected:
        check_param_names(found, where)
    if "opt_state" in expected and found.get("opt_state") != expected["opt_state"]:
        raise ValueError(f"{where} stores the optimizer state as {found.get('opt_state')!r} "
                         f"(None: per parameter array, before 2026-12-06), this version as "
                         f"{expected['opt_state']!r}: start a new workdir, or fine-tune from it "
                         "(model.weights_folder) without training.carry_optimizer_state")
    fields = {"data.height": ("height",), "data.width": ("width",),
              **{f"model.{name}": ("model", name) for name in expected["model"]}}
    for field, keys in fields.items():
        ours, theirs = expected, found
        for key in keys:
            ours, theirs = ours[key], (theirs or {}).get(key)
        if theirs != ours:
            raise ValueError(f"{where} was trained with {field}={theirs!r}, the config has "
                             f"{field}={ours!r}: resume with the checkpoint's value or start a "
                             "new workdir")


def restore(manager: ocp.CheckpointManager, abstract_state, expected_meta: dict):
    """(state, meta) of the newest intact checkpoint, into the structure/sharding of
    ``abstract_state``; ``(None, None)`` when none exists. Broken ones are set aside (see the
    module docstring); one recorded with another model or image size is refused."""
    for step in sorted(manager.all_steps(), reverse=True):
        folder = epath.Path(manager.directory) / str(step)
        if not (folder / COMMIT_MARKER).exists():
            _set_aside(manager, step, f"no {COMMIT_MARKER}: its save never finished")
            continue
        try:
            meta = manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except _UNREADABLE as error:
            _set_aside(manager, step, f"metadata unreadable, {_first_line(error)}")
            continue
        check_meta(meta, expected_meta, f"checkpoint {folder}")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
        except _UNREADABLE as error:
            _set_aside(manager, step, f"state unreadable, {_first_line(error)}")
            continue
        return restored["state"], meta
    return None, None


def restore_fields(workdir: str, fields: dict) -> dict:
    """The ``fields`` (a dict of TrainState field -> abstract subtree) of the latest
    checkpoint of ``workdir``, restored as numpy arrays; the other fields are not read."""
    directory = checkpoint_dir(workdir)
    step = latest_step(workdir)
    if step is None:
        raise FileNotFoundError(f"{directory}: no checkpoint saved yet")
    return ocp.PyTreeCheckpointer().restore(
        directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            item=fields, restore_args=ocp.checkpoint_utils.construct_restore_args(fields),
            partial_restore=True))


def model_meta(model: ManyDepth, height: int, width: int) -> dict:
    """What a checkpoint records about the architecture and its parameter names
    (JSON-serialisable)."""
    return {"model": {**dataclasses.asdict(model), "scales": list(model.scales)},
            "param_names": PARAM_NAMES, "height": height, "width": width}


def model_from_meta(meta: dict) -> ManyDepth:
    fields = dict(meta["model"])
    fields["scales"] = tuple(fields["scales"])
    return ManyDepth(**fields)


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """Everything prediction needs: architecture, variables, cost-volume range, image size."""

    model: ManyDepth
    variables: dict
    min_depth_bin: float
    max_depth_bin: float
    height: int
    width: int


def _is_manydepth_folder(path: str) -> bool:
    return (workdir_files.path(path) / METADATA_FILE).is_file()


def load_inference(path: str, step: int | None = None) -> InferenceModel:
    """Weights for inference from a training workdir (latest or ``step`` checkpoint) or a
    ManyDepth ``.pth`` folder (needs the torch extra)."""
    if not workdir_files.path(path).is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a training workdir or "
                                "a ManyDepth weights folder)")
    if _is_manydepth_folder(path):
        from mal_jax.port.convert import load_manydepth_folder

        variables, meta = load_manydepth_folder(path)
        missing = [k for k in ("height", "width", "min_depth_bin", "max_depth_bin")
                   if k not in meta]
        if missing:
            raise ValueError(f"{os.path.join(path, METADATA_FILE)}: metadata {missing[0]!r} "
                             "missing (ManyDepth stores height, width and depth bins there)")
        matching = variables["params"]["student_encoder"]
        model = ManyDepth(num_layers=50 if "conv3" in matching["layer1"]["0"] else 18)
        return InferenceModel(model, variables, meta["min_depth_bin"], meta["max_depth_bin"],
                              meta["height"], meta["width"])
    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{path}: no {CHECKPOINT_DIR}/ folder and no {METADATA_FILE}; "
                                "not a training workdir or ManyDepth weights folder")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            read_only=True)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint saved yet")
        restored = manager.restore(step, args=ocp.args.Composite(
            # Saved by another device layout (e.g. a multi-host run): onto a local device.
            state=ocp.args.StandardRestore(fallback_sharding=jax.sharding.SingleDeviceSharding(
                jax.local_devices()[0])), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], restored["meta"]
    check_param_names(meta, f"checkpoint {directory / str(step)}")
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    bins = np.asarray(state["depth_bins"], np.float64)
    return InferenceModel(model_from_meta(meta), variables, float(bins[0]), float(bins[1]),
                          int(meta["height"]), int(meta["width"]))


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint step of a training workdir (None: none), read through a read-only
    manager, so another run's folder is left exactly as it is."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return None
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            read_only=True)) as manager:
        return manager.latest_step()


def write_config(workdir: str, config) -> None:
    """The run's config as JSON beside the checkpoints (human-readable provenance), written
    atomically by process 0; every checkpoint's meta also records the config it ran with."""
    if workdir_files.is_writer():
        workdir_files.write_text_atomic(workdir_files.path(workdir) / "config.json",
                                        config_json(config))


def config_json(config) -> str:
    return config.to_json_best_effort(indent=2) + "\n" if hasattr(
        config, "to_json_best_effort") else json.dumps(dict(config), indent=2) + "\n"
