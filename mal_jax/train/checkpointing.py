"""Orbax checkpoints of the training state, and loading weights for inference.

A training workdir holds ``checkpoints/<step>/{state,meta}``; ``meta`` records the model
architecture and image size so that evaluation and prediction need nothing but the path.
``load_inference`` also accepts a ManyDepth ``.pth`` folder (converted on the fly).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from mal_jax.models.manydepth import ManyDepth

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A manager keeping the latest ``keep`` checkpoints; saving is decided by the caller."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                 options=options)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """(state, meta) of ``step`` (default latest) into the structure/sharding of
    ``abstract_state``; ``(None, None)`` when the workdir has no checkpoint."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None, None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def model_meta(model: ManyDepth, height: int, width: int) -> dict:
    """What a checkpoint records about the architecture (JSON-serialisable)."""
    return {"model": {**dataclasses.asdict(model), "scales": list(model.scales)},
            "height": height, "width": width}


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
    return os.path.isfile(os.path.join(path, "encoder.pth"))


def load_inference(path: str, step: int | None = None) -> InferenceModel:
    """Weights for inference from a training workdir (latest or ``step`` checkpoint) or a
    ManyDepth ``.pth`` folder (needs the torch extra)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a training workdir or "
                                "a ManyDepth weights folder)")
    if _is_manydepth_folder(path):
        from mal_jax.port.convert import load_manydepth_folder

        variables, meta = load_manydepth_folder(path)
        missing = [k for k in ("height", "width", "min_depth_bin", "max_depth_bin")
                   if k not in meta]
        if missing:
            raise ValueError(f"{os.path.join(path, 'encoder.pth')}: metadata {missing[0]!r} "
                             "missing (ManyDepth stores height, width and depth bins there)")
        model = ManyDepth(num_layers=50 if "conv3" in variables["params"]["encoder"]["layer1"]["0"]
                          else 18)
        return InferenceModel(model, variables, meta["min_depth_bin"], meta["max_depth_bin"],
                              meta["height"], meta["width"])
    directory = os.path.abspath(os.path.join(path, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: no {CHECKPOINT_DIR}/ folder and no encoder.pth; not a "
                                "training workdir or ManyDepth weights folder")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            read_only=True)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint saved yet")
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], restored["meta"]
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    bins = np.asarray(state["depth_bins"], np.float64)
    return InferenceModel(model_from_meta(meta), variables, float(bins[0]), float(bins[1]),
                          int(meta["height"]), int(meta["width"]))


def write_config(workdir: str, config) -> None:
    """The run's config as JSON beside the checkpoints (human-readable provenance)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as handle:
        handle.write(config.to_json_best_effort(indent=2) if hasattr(
            config, "to_json_best_effort") else json.dumps(dict(config), indent=2))
