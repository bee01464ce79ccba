"""The parity command against the reference's golden file (the port's main correctness check)."""

import io

from mal_jax.port import parity


def test_parity_command_passes_every_checked_group(golden):
    out = io.StringIO()
    ok = parity.run(golden.path, out=out)
    text = out.getvalue()
    print(text)
    lines = text.strip().splitlines()
    assert ok, text
    assert lines[-1].startswith("parity: 14 groups checked, 0 not checked")
    assert lines[-1].endswith("PASS")
    for group in ("eval/teacher", "eval/pose", "eval/multi", "eval/cost_volume", "geo", "photo",
                  "train/losses", "train/outputs", "grad", "bn", "mal/synthesis",
                  "mal/teacher_loss", "mal/distillation", "mal/loss_balance"):
        (line,) = [x for x in lines if x.startswith(group + " ")]
        assert line.endswith("PASS"), line


def test_parity_fails_on_perturbed_reference(golden, tmp_path):
    """A wrong reference value must fail its group (the command cannot pass vacuously)."""
    import numpy as np

    arrays = {k: golden[k] for k in golden.keys()}
    arrays["eval/mono_disp/2"] = arrays["eval/mono_disp/2"] + 1e-3
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("train/", "grad/", "mal/"))}
    path = tmp_path / "perturbed.npz"
    np.savez(path, **arrays)
    out = io.StringIO()
    assert not parity.run(str(path), out=out)
    text = out.getvalue()
    assert "FAIL mono_disp/2" in text
    assert "train/losses       not checked (absent from file)" in text
    assert text.strip().splitlines()[-1].endswith("FAIL")
