"""Test helper: model variables of the right structure without compiling ``init``."""

import jax
import numpy as np

from mal_jax.models.manydepth import ManyDepth


def random_variables(model: ManyDepth, height: int, width: int, seed: int = 0) -> dict:
    """Fan-in scaled normal weights, unit BatchNorm (compiling ``init`` takes ~50 s on CPU)."""
    abstract = jax.eval_shape(lambda r: model.init(r, height, width), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            return np.ones(leaf.shape, np.float32)
        if name in ("mean", "bias"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)
