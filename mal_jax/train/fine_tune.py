"""Where a run's weights come from: fresh (optionally with a starting motion and depth,
``mal_jax.models.init_priors``), ImageNet encoders, a ManyDepth ``.pth`` folder, or another
training workdir (fine-tuning a model trained here), optionally with its Adam state.

``config.model.weights_folder`` names the source. From a workdir, ``training.
carry_optimizer_state`` also restores the Adam moments and count of that run's latest checkpoint,
so fine-tuning continues the optimizer instead of starting a fresh Adam at full rate; the
learning-rate schedule (warmup, decay) still starts at this run's step 0.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
from ml_collections.config_dict import config_dict

from mal_jax.models import init_priors
from mal_jax.models.manydepth import ManyDepth
from mal_jax.port.convert import init_from_torchvision, read_torch_state_dict
from mal_jax.train import checkpointing
from mal_jax.train import workdir as workdir_files


def weights_folder(config) -> str:
    """``config.model.weights_folder``; configs that need one mark it required."""
    try:
        return config.model.weights_folder
    except config_dict.RequiredValueError as error:
        raise ValueError("config.model.weights_folder is required by this config: pass "
                         "--config.model.weights_folder=DIR (a ManyDepth .pth folder or a "
                         "training workdir)") from error


def is_training_workdir(folder: str) -> bool:
    return bool(folder) and checkpointing.checkpoint_dir(folder).is_dir()


def check_weights_source(config) -> None:
    """Fail before training, naming the field, when the weights source cannot be used."""
    folder = weights_folder(config)
    if folder and not workdir_files.path(folder).is_dir():
        raise FileNotFoundError(f"config.model.weights_folder={folder}: no such folder")
    if config.training.carry_optimizer_state and not is_training_workdir(folder):
        raise ValueError(f"config.training.carry_optimizer_state=True needs "
                         f"config.model.weights_folder to be a training workdir (with "
                         f"{checkpointing.CHECKPOINT_DIR}/), got {folder!r}")


def _layout(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _checkpoint_variables(workdir: str, fresh: dict) -> tuple[dict, float, float]:
    """Variables and bins of a workdir's latest checkpoint, checked against ``fresh``'s layout
    (another architecture or bin count fails naming the first differing weight)."""
    loaded = checkpointing.load_inference(workdir)
    expected, found = _layout(fresh), _layout(loaded.variables)
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
    folder = weights_folder(config)
    variables = jax.jit(lambda key: model.init(key, config.data.height, config.data.width))(rng)
    min_bin, max_bin = config.model.init_min_depth_bin, config.model.init_max_depth_bin
    if is_training_workdir(folder):
        return _checkpoint_variables(folder, variables)
    if folder:
        from mal_jax.port.convert import load_manydepth_folder

        variables, meta = load_manydepth_folder(folder, model)
        min_bin = meta.get("min_depth_bin", min_bin)
        max_bin = meta.get("max_depth_bin", max_bin)
    else:
        if config.model.imagenet_weights:
            variables = init_from_torchvision(
                variables, read_torch_state_dict(config.model.imagenet_weights), model,
                source=config.model.imagenet_weights)
        variables = fresh_decoder_priors(config, variables)
    return variables, float(min_bin), float(max_bin)


def fresh_decoder_priors(config, variables: dict) -> dict:
    """The starting motion and depth of ``config.model`` (0: the reference's random init) on
    freshly initialised decoders."""
    variables = init_priors.with_forward_motion(variables, config.model.init_forward_motion)
    return init_priors.with_initial_depth(variables, config.model.init_depth,
                                          config.model.min_depth, config.model.max_depth)


def carried_optimizer_state(config: ml_collections.ConfigDict, fresh_opt_state):
    """The Adam state of ``weights_folder``'s latest checkpoint, in ``fresh_opt_state``'s
    structure, with the schedule's step count reset to 0 (this run's schedule starts anew)."""
    folder = weights_folder(config)
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype),
                            fresh_opt_state)
    restored = checkpointing.restore_fields(folder, {"opt_state": abstract})["opt_state"]

    def restart_schedule(part):
        if isinstance(part, optax.ScaleByScheduleState):
            return part._replace(count=np.zeros_like(part.count))
        return part

    return jax.tree.map(restart_schedule, restored,
                        is_leaf=lambda part: isinstance(part, optax.ScaleByScheduleState))
