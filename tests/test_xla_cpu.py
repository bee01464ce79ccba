"""The XLA:CPU flag set at import: added once, never over a user's own setting."""

import os
import subprocess
import sys

from mal_jax import xla_cpu


def test_flag_added_to_existing_flags_once():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_cpu.prefer_xla_convolutions(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type="
    assert not xla_cpu.prefer_xla_convolutions(environ)  # already there: unchanged
    assert environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_user_setting_and_opt_out_are_kept():
    own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}
    assert not xla_cpu.prefer_xla_convolutions(own)
    assert own["XLA_FLAGS"].endswith("LIBRARY_FUSION_TYPE_DOT")
    opted_out = {"MAL_JAX_YNN": "on"}
    assert not xla_cpu.prefer_xla_convolutions(opted_out)
    assert "XLA_FLAGS" not in opted_out


def test_importing_the_package_sets_the_flag_before_jax_starts():
    """A fresh interpreter: importing mal_jax puts the flag in XLA_FLAGS, and XLA accepts it
    (an unknown flag would abort the backend's start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MAL_JAX_YNN")}
    code = ("import mal_jax, os, jax; print(os.environ['XLA_FLAGS']); "
            "print(float(jax.numpy.ones(3).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["--xla_cpu_experimental_ynn_fusion_type=", "3.0"]
