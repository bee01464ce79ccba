"""Which pixels of a discrete output a parity check may require to agree.

A discrete output (the cost volume's arg-min, a mask from a comparison, a per-pixel choice
among candidates) flips when rounding moves its deciding quantity across a tie. Where the
port's float64 evaluation puts the best candidate within a stated tolerance of the second
best (or a compared value within a tolerance of its threshold), the pixel is
*ill-conditioned*: the reference's own float32 and float64 runs may disagree there, so no
code can be required to match it. Everywhere else the pixel is *well-conditioned* and one
disagreement fails the check. The fraction of ill-conditioned pixels is reported per array.
"""

from __future__ import annotations

import numpy as np

from mal_jax.port.checks import Check


def best_two_margin(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Float64 gap between the smallest and second-smallest value along ``axis``.

    An exact tie gives 0; a single candidate gives +inf (nothing to flip to).
    """
    values = np.asarray(values, np.float64)
    if values.shape[axis] < 2:
        return np.full(np.delete(values.shape, axis % values.ndim), np.inf)
    two = np.partition(values, 1, axis=axis)
    return np.take(two, 1, axis=axis) - np.take(two, 0, axis=axis)


def threshold_margin(values: np.ndarray, thresholds) -> np.ndarray:
    """Float64 distance of ``values`` to the nearest of ``thresholds`` (a comparison's edge)."""
    values = np.asarray(values, np.float64)
    return np.min([np.abs(values - t) for t in np.atleast_1d(thresholds)], axis=0)


def upsample_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, h, w) map repeated to (B, H, W) (torch's nearest upsampling by an integer factor)."""
    factor_y, factor_x = height // mask.shape[1], width // mask.shape[2]
    return np.repeat(np.repeat(mask, factor_y, axis=1), factor_x, axis=2)


def compare_conditioned(name: str, ours, ref, ill: np.ndarray, rtol: float = 1e-5) -> Check:
    """Discrete agreement required where ``ill`` is False.

    ``ours`` and ``ref`` are equal-shaped arrays of the discrete output (values compared with
    ``rtol``); ``ill`` marks the ill-conditioned entries. ``rel`` is the fraction of
    well-conditioned entries that disagree (the check passes only at 0).
    """
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Check(name, np.inf, np.inf, False, f"shape {ours.shape} != {ref.shape}")
    ill = np.broadcast_to(np.asarray(ill, bool), ref.shape)
    disagree = ~np.isclose(ours, ref, rtol=rtol, atol=0)
    wrong = disagree & ~ill
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    detail = (f"ill-conditioned {ill.mean():.3%}, disagree {disagree.mean():.3%}, "
              f"{int(wrong.sum())} on well-conditioned")
    return Check(name, err, float(wrong.mean()) if ref.size else 0.0, not wrong.any(), detail,
                 note=True)
