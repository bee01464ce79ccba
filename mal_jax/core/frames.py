"""The frame layout of a training triplet and the one warp of its source frames.

A batch's ``frames`` axis holds frames (-1, 0, +1) in that order; frame 0 is the target whose
depth is predicted, -1 and +1 are the sources warped into it. Training (both networks'
losses), MAL's hints and distillation, and the oracle studies all warp through
:func:`warp_sources`, so they sample the sources identically.
"""

from __future__ import annotations

import jax.numpy as jnp

from mal_jax.core import geometry

# Frame ids in the order they sit on the ``frames`` axis, and each id's position there.
FRAME_IDS = (-1, 0, 1)
FRAME_INDEX = {frame_id: index for index, frame_id in enumerate(FRAME_IDS)}
# The frames warped into frame 0 by the photometric losses.
SOURCE_FRAMES = (-1, 1)


def frame(batch_frames: jnp.ndarray, frame_id: int) -> jnp.ndarray:
    """(B, ...) slice of ``frame_id`` from a (B, F, ...) array laid out as :data:`FRAME_IDS`."""
    return batch_frames[:, FRAME_INDEX[frame_id]]


def warp_sources(frames: jnp.ndarray, depth: jnp.ndarray, cam_T_cam: dict, K0, inv_K0
                 ) -> tuple[dict, dict]:
    """Each source frame warped into frame 0 with frame 0's ``depth`` (B, H, W, 1).

    ``cam_T_cam[f]`` (B, 4, 4) maps frame 0's camera to frame f's. Bilinear sampling with
    border padding, as the reference. Returns ``(warped {f: (B, H, W, 3)}, pixel grids
    {f: (B, H, W, 2)})``; the grids resample anything else of frame f the same way.
    """
    warped, grids = {}, {}
    for frame_id in SOURCE_FRAMES:
        warped[frame_id], grids[frame_id] = geometry.warp_frame(
            frame(frames, frame_id), depth, cam_T_cam[frame_id], K0, inv_K0)
    return warped, grids
