"""The XLA:CPU flag set at import (added once, never over a user's own setting) and the
entry points' restart with a faster malloc."""

import os
import subprocess
import sys

import pytest

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
TCMALLOC = "libtcmalloc_minimal.so.4"
FOUND, NONE = (lambda: TCMALLOC), (lambda: None)  # what the library lookup returns


def test_huge_pages_environment_adds_the_tunable_to_the_users_own():
    environ = xla_cpu.allocator_environment(BASE, NONE, (2, 36), "madvise", accelerator=False)
    assert environ == {"PATH": "/usr/bin",
                       "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert BASE["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # the caller's dict untouched
    alone = xla_cpu.allocator_environment({}, NONE, (2, 35), "madvise", accelerator=False)
    assert alone == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # Restarted once: the tunable is there, so no second restart.
    assert xla_cpu.allocator_environment(environ, NONE, (2, 36), "madvise", False) is None
    # Asked for glibc although tcmalloc is installed.
    glibc = xla_cpu.allocator_environment({**BASE, "MAL_JAX_MALLOC": "glibc"}, FOUND,
                                          (2, 36), "madvise", False)
    assert glibc["GLIBC_TUNABLES"].endswith("glibc.malloc.hugetlb=1") and "LD_PRELOAD" not in glibc


def test_tcmalloc_goes_first_in_the_users_preloads_and_only_once():
    environ = xla_cpu.allocator_environment({**BASE, "LD_PRELOAD": "libfoo.so"}, FOUND,
                                            (2, 36), "madvise", accelerator=False)
    assert environ["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libfoo.so"
    assert environ["GLIBC_TUNABLES"] == BASE["GLIBC_TUNABLES"]  # no huge-pages tunable
    assert environ["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)
    assert xla_cpu.allocator_environment(environ, FOUND, (2, 36), "madvise", False) is None

    def no_lookup():
        raise AssertionError("the restarted process looked the library up again")

    assert xla_cpu.allocator_environment(environ, no_lookup, (2, 36), "madvise", False) is None
    # The user's own report threshold is kept.
    own = xla_cpu.allocator_environment({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"},
                                        FOUND, None, "never", False)
    assert own == {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5", "LD_PRELOAD": TCMALLOC}


def test_no_restart_where_it_changes_nothing_or_is_refused():
    cases = [
        ({**BASE, "MAL_JAX_MALLOC": "OFF"}, FOUND, (2, 36), "madvise", False),  # opted out
        ({**BASE, "LD_PRELOAD": "/opt/libjemalloc.so.2"}, FOUND, (2, 36), "madvise",
         False),  # the user's own malloc
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NONE, (2, 36), "madvise", False),
        (BASE, NONE, (2, 34), "madvise", False),  # glibc without the tunable
        (BASE, NONE, None, "madvise", False),  # musl, macOS
        (BASE, NONE, (2, 36), "always", False),  # huge pages anyway
        (BASE, NONE, (2, 36), "never", False),  # refused by the kernel
        (BASE, FOUND, (2, 36), "madvise", True),  # GPU/TPU plugin installed: not measured
    ]
    for environ, tcmalloc, glibc, mode, accelerator in cases:
        assert xla_cpu.allocator_environment(environ, tcmalloc, glibc, mode, accelerator) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert xla_cpu._thp_mode(str(setting)) == "madvise"
    assert xla_cpu._thp_mode(str(tmp_path / "missing")) == "never"


def _run_restarting_script(tmp_path, env):
    script = tmp_path / "entry.py"
    script.write_text(
        "import os, sys\n"
        "from mal_jax import xla_cpu\n"
        "print('run', os.environ.get('LD_PRELOAD', '') or os.environ.get('GLIBC_TUNABLES', ''),"
        " sys.argv[1:], flush=True)\n"
        "xla_cpu.restart_with_fast_allocator()\n"
        "print('done', flush=True)\n")
    return subprocess.run([sys.executable, str(script), "--flag=1"], env=env,
                          capture_output=True, text=True, check=True).stdout.splitlines()


def test_restart_runs_the_same_command_once_with_the_allocator(tmp_path):
    """A script that restarts: where this machine qualifies it runs twice, the second time
    with tcmalloc preloaded (or the tunable) and the same arguments; elsewhere once."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "MAL_JAX_MALLOC", "LD_PRELOAD")}
    out = _run_restarting_script(tmp_path, env)
    restart = xla_cpu.allocator_environment(
        env, xla_cpu.tcmalloc_library, xla_cpu._glibc_version(), xla_cpu._thp_mode(),
        xla_cpu._accelerator_installed())
    if restart is None:
        assert out == ["run  ['--flag=1']", "done"]
    else:
        chosen = restart.get("LD_PRELOAD") or restart["GLIBC_TUNABLES"]
        assert out == ["run  ['--flag=1']", f"run {chosen} ['--flag=1']", "done"]


def test_preloaded_tcmalloc_runs_jax(tmp_path):
    """Where tcmalloc is installed, the restarted process really loads it and computes."""
    library = xla_cpu.tcmalloc_library()
    if library is None:  # .ci/run installs it where it can
        pytest.skip("no tcmalloc installed (Debian: libtcmalloc-minimal4)")
    env = {**os.environ, "LD_PRELOAD": library}
    code = ("import jax.numpy as jnp; print(float(jnp.ones((512, 512)).sum())); "
            "print(any('tcmalloc' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["262144.0", "True"]


def test_allocator_in_use_reads_the_mapped_libraries(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libtcmalloc_minimal.so.4.5.10\n")
    assert xla_cpu.allocator_in_use(str(maps)) == "tcmalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert xla_cpu.allocator_in_use(str(maps)) == "glibc+hugetlb"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert xla_cpu.allocator_in_use(str(maps)) == "glibc"
    assert xla_cpu.allocator_in_use(str(tmp_path / "missing")) == "unknown"
