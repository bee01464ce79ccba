"""One compared array of a parity check, and the comparisons the groups use."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Check:
    """One compared array: its errors and whether it is within tolerance.

    ``note``: print ``detail`` on its own line even when the check passes (discrete outputs
    report their ill-conditioned fraction). ``info``: shown for information only, never
    counted in the verdict or the worst error (the unconditioned comparisons).
    """

    name: str
    max_abs: float
    rel: float
    ok: bool
    detail: str = ""
    note: bool = False
    info: bool = False


def compare_abs(name, ours, ref, tol) -> Check:
    """Max absolute error <= tol; relative error reported against max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Check(name, np.inf, np.inf, False, f"shape {ours.shape} != {ref.shape}")
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    return Check(name, err, err / max(float(np.max(np.abs(ref))), 1e-12), err <= tol)


def compare_rel(name, ours, ref, tol) -> Check:
    """Scalar (or array) relative error |ours - ref| / |ref| <= tol."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    err = float(np.max(np.abs(ours - ref)))
    rel = err / max(float(np.max(np.abs(ref))), 1e-12)
    return Check(name, err, rel, rel <= tol)


def compare_norm(name, ours, ref, tol) -> Check:
    """Max absolute error relative to the reference's norm <= tol (gradients)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    err = float(np.max(np.abs(ours - ref)))
    rel = err / max(float(np.linalg.norm(ref)), 1e-12)
    return Check(name, err, rel, rel <= tol)
