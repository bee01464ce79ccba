"""The XLA:CPU flag set at import (added once, never over a user's own setting) and the
entry points' restart with huge pages."""

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


BASE = {"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


def test_huge_pages_environment_adds_the_tunable_to_the_users_own():
    environ = xla_cpu.huge_pages_environment(BASE, (2, 36), "madvise", accelerator=False)
    assert environ == {"PATH": "/usr/bin",
                       "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert BASE["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # the caller's dict untouched
    alone = xla_cpu.huge_pages_environment({}, (2, 35), "madvise", accelerator=False)
    assert alone == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # Restarted once: the tunable is there, so no second restart.
    assert xla_cpu.huge_pages_environment(environ, (2, 36), "madvise", False) is None


def test_no_restart_where_it_changes_nothing_or_is_refused():
    cases = [
        ({**BASE, "MAL_JAX_HUGEPAGES": "OFF"}, (2, 36), "madvise", False),  # opted out
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", False),  # user's own
        (BASE, (2, 34), "madvise", False),  # glibc without the tunable
        (BASE, None, "madvise", False),  # musl, macOS
        (BASE, (2, 36), "always", False),  # huge pages anyway
        (BASE, (2, 36), "never", False),  # refused by the kernel
        (BASE, (2, 36), "madvise", True),  # GPU/TPU plugin installed: not measured there
    ]
    for environ, glibc, mode, accelerator in cases:
        assert xla_cpu.huge_pages_environment(environ, glibc, mode, accelerator) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert xla_cpu._thp_mode(str(setting)) == "madvise"
    assert xla_cpu._thp_mode(str(tmp_path / "missing")) == "never"


def test_restart_runs_the_same_command_once_with_the_tunable(tmp_path):
    """A script that restarts: where this machine qualifies it runs twice, the second time
    with the tunable and the same arguments; elsewhere once, unchanged."""
    script = tmp_path / "entry.py"
    script.write_text(
        "import os, sys\n"
        "from mal_jax import xla_cpu\n"
        "print('run', os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], flush=True)\n"
        "xla_cpu.restart_with_huge_pages()\n"
        "print('done', flush=True)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "MAL_JAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, str(script), "--flag=1"], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    qualifies = xla_cpu.huge_pages_environment(
        env, xla_cpu._glibc_version(), xla_cpu._thp_mode(),
        xla_cpu._accelerator_installed()) is not None
    if qualifies:
        assert out == ["run  ['--flag=1']", "run glibc.malloc.hugetlb=1 ['--flag=1']", "done"]
    else:
        assert out == ["run  ['--flag=1']", "done"]
