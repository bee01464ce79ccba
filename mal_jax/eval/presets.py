"""Evaluation presets (``config.evaluation.protocol``): a protocol plus its depth range.

The two papers differ in the disparity-to-depth range they evaluate with: ManyDepth converts
with (0.1, 100) m, MAL's evaluator with (1e-3, 80) m. Which presets fit which dataset is the
dataset registry's ``eval_presets`` (``mal_jax.data.registry``).
"""

from __future__ import annotations

import dataclasses

from mal_jax.eval import metrics as metrics_lib
from mal_jax.eval.metrics import EvalProtocol


@dataclasses.dataclass(frozen=True)
class EvalPreset:
    """An evaluation protocol plus the disparity-to-depth range its paper evaluates with.

    ``moving_block``: also report metrics over moving-object pixels (needs ``moving_mask``).
    """

    protocol: EvalProtocol
    min_depth: float = 0.1
    max_depth: float = 100.0
    moving_block: bool = False


# The embedded dataset: dense metric GT (0 on sky), no crop, ManyDepth's GT range and scaling.
SYNTHETIC = EvalProtocol()

PRESETS = {
    "kitti_eigen": EvalPreset(metrics_lib.KITTI_EIGEN),
    "kitti_eigen_mal": EvalPreset(metrics_lib.KITTI_EIGEN, min_depth=1e-3, max_depth=80.0),
    "cityscapes": EvalPreset(metrics_lib.CITYSCAPES),
    "cityscapes_mal": EvalPreset(metrics_lib.CITYSCAPES, min_depth=1e-3, max_depth=80.0),
    "synthetic": EvalPreset(SYNTHETIC, moving_block=True),
}


def get_preset(name: str) -> EvalPreset:
    if name not in PRESETS:
        raise ValueError(f"config.evaluation.protocol={name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]
