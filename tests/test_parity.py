"""The parity command against every golden file of the reference (the port's main correctness
check), and deliberately broken ports that must fail it (every file; the gradient cut, whose
float64 pass is the slow part, on the smallest)."""

import io
import pathlib

import jax
import numpy as np
import pytest

from mal_jax.core import network_losses
from mal_jax.models import matching
from mal_jax.port import parity

GOLDEN_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"

GOLDEN_FILES = ("manydepth_mal_96x320.npz", "manydepth_mal_128x384_b1.npz",
                "manydepth_mal_64x224_b3.npz")
ALL_GROUPS = ("eval/teacher", "eval/pose", "eval/student", "eval/cost_volume", "geo", "photo",
              "train/losses", "train/outputs", "grad", "bn", "mal/synthesis",
              "mal/teacher_loss", "mal/distillation", "mal/loss_balance")


@pytest.fixture(params=GOLDEN_FILES)
def golden_path(request):
    path = GOLDEN_DIR / request.param
    if not path.exists():
        pytest.skip(f"golden fixture absent: {path} (../shared not checked out beside repo)")
    return str(path)


def _run(path, groups=None):
    out = io.StringIO()
    ok = parity.run(path, out=out, groups=groups)
    text = out.getvalue()
    print(text)
    return ok, text, text.strip().splitlines()


def _group_line(lines, group):
    (line,) = [x for x in lines if x.startswith(group + " ")]
    return line


def test_parity_command_passes_every_checked_group(golden_path):
    ok, text, lines = _run(golden_path)
    assert ok, text
    assert lines[-1].startswith("parity: 14 groups checked, 0 not checked")
    assert lines[-1].endswith("PASS")
    for group in ALL_GROUPS:
        assert _group_line(lines, group).endswith("PASS")
    # Every discrete output reports its ill-conditioned fraction.
    for name in ("lowest_cost", "confidence_mask", "confidence_mask_zero_pose",
                 "consistency_mask"):
        assert any(x.strip().startswith(f"{name}: ill-conditioned") for x in lines), name
    assert any("info: loss (own decisions, float32)" in x for x in lines)


def test_parity_fails_on_perturbed_reference(golden, tmp_path):
    """A wrong reference value must fail its group (the command cannot pass vacuously)."""
    arrays = {k: golden[k] for k in golden.keys()}
    arrays["eval/mono_disp/2"] = arrays["eval/mono_disp/2"] + 1e-3
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("train/", "grad/", "mal/"))}
    path = tmp_path / "perturbed.npz"
    np.savez(path, **arrays)
    ok, text, lines = _run(str(path))
    assert not ok
    assert "FAIL mono_disp/2" in text
    assert "train/losses       not checked (absent from file)" in text
    assert lines[-1].endswith("FAIL")


def test_depth_bin_off_by_one_fails(golden_path, monkeypatch):
    """Every hypothesised depth moved up one bin: the arg-min disagrees on well-conditioned
    pixels."""
    depth_bins = matching.depth_bins

    def shifted(min_depth, max_depth, num_bins, inverse=False):
        return depth_bins(min_depth, max_depth, num_bins + 1, inverse)[1:]

    monkeypatch.setattr(matching, "depth_bins", shifted)
    ok, _, lines = _run(golden_path, groups=("eval/cost_volume",))
    assert not ok
    line = _group_line(lines, "eval/cost_volume")
    assert "FAIL lowest_cost" in line, line


def test_inverted_confidence_mask_fails(golden_path, monkeypatch):
    cost_volume = matching.cost_volume

    def inverted(*args):
        cost, confidence, lowest = cost_volume(*args)
        return cost, 1.0 - confidence, lowest

    monkeypatch.setattr(matching, "cost_volume", inverted)
    ok, _, lines = _run(golden_path, groups=("eval/cost_volume",))
    assert not ok
    line = _group_line(lines, "eval/cost_volume")
    assert "confidence_mask ill-conditioned" in line and "confidence_mask_zero_pose" in line


@pytest.mark.parametrize("golden_path", [GOLDEN_FILES[2]], indirect=True)
def test_missing_gradient_path_fails(golden_path, monkeypatch):
    """The poses' gradient through the warp cut: the pose network's gradients fail.

    One file (the smallest): the gradient check is the same code for every file, and each
    file's float64 gradient pass costs ~1 min on 2 cores; the command test above runs it on
    all three."""
    warp_sources = network_losses.warp_sources

    def detached_pose(frames, depth, cam_T_cam, K0, inv_K0):
        return warp_sources(frames, depth, jax.lax.stop_gradient(cam_T_cam), K0, inv_K0)

    monkeypatch.setattr(network_losses, "warp_sources", detached_pose)
    ok, _, lines = _run(golden_path, groups=("grad",))
    assert not ok
    line = _group_line(lines, "grad")
    assert "FAIL" in line and "pose/net.3.bias" in line, line
