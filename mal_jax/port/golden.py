"""Reader for golden parity files produced by the PyTorch reference.

The layout is described in ``shared/golden/README.md``: weights are stored as int8 levels
``w/<net>/<key>`` times a float32 scale ``s/<net>/<key>``; everything else is a float32 array
in the reference's NCHW layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from mal_jax.port.convert import REFERENCE_FILES

# The file's eval-mode disparities of each network, ``<prefix>/<scale>`` (NCHW): the reference
# names the teacher ``mono`` and the student ``multi``.
EVAL_DISPARITIES = {"teacher": "eval/mono_disp", "student": "eval/multi_disp"}


class GoldenFile:
    """A golden ``.npz`` file: dequantised weights per network plus named arrays."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"golden file not found: {path}")
        self.path = path
        with np.load(path) as npz:
            self._arrays = {key: npz[key] for key in npz.files}
        for key in self._arrays:
            if key.startswith("w/") and "s/" + key[2:] not in self._arrays:
                raise ValueError(f"{path}: weight {key!r} has no scale 's/{key[2:]}'")

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            raise KeyError(f"{self.path}: no array {key!r}")
        return self._arrays[key]

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._arrays if k.startswith(prefix))

    def state_dict(self, net: str) -> dict[str, np.ndarray]:
        """The float32 state_dict of one reference network (``w * s``), by its checkpoint file
        name (``encoder``, ``mono_depth``, ...: ``convert.REFERENCE_FILES``)."""
        prefix = f"w/{net}/"
        out = {}
        for key in self.keys(prefix):
            name = key[len(prefix):]
            out[name] = self._arrays[key].astype(np.float32) * np.float32(
                self._arrays["s/" + key[2:]])
        if not out:
            raise KeyError(f"{self.path}: no weights for network {net!r}")
        return out

    def state_dicts(self) -> dict[str, dict[str, np.ndarray]]:
        """All six networks' state_dicts, keyed like a ManyDepth checkpoint folder (by the
        reference's file names, as ``convert.convert_state_dicts`` takes them)."""
        return {file: self.state_dict(file) for file in REFERENCE_FILES.values()}

    def group(self, prefix: str) -> Mapping[str, np.ndarray]:
        """Arrays under ``prefix`` with the prefix stripped."""
        return {k[len(prefix):]: self._arrays[k] for k in self.keys(prefix)}

    @property
    def batch_size(self) -> int:
        return int(self["in/color/0"].shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        _, _, height, width = self["in/color/0"].shape
        return int(height), int(width)


def nchw_to_nhwc(array: np.ndarray) -> np.ndarray:
    """Move the channel axis of a (B, C, H, W) array last."""
    return np.transpose(array, (0, 2, 3, 1))
