"""XLA:CPU settings: convolutions off the YNNPACK path (at import), a faster malloc (entry points).

jaxlib 0.10 hands each convolution to YNNPACK (``--xla_cpu_experimental_ynn_fusion_type``).
On the 2-core AMD EPYC this project measures on, that path runs the depth decoders' and the
matching encoder's convolutions (32-192 input channels at 24x80-96x320) 3-10x slower than
XLA's own convolution emitter: a 3x3 convolution 96 -> 32 channels at 48x160, batch 4, takes
44 ms forward and 143 ms forward+backward with YNNPACK, 10 ms and 34 ms without; the
ManyDepth train step at 96x320 drops from 2.28 s to about 2.0 s
(``python -m mal_jax.studies.bench ... --no_mal``, README *Speed*). With every YNNPACK fusion
type off, XLA falls back to its Eigen-based kernels for convolutions, dots and reductions.

Only CPU programs are affected (the flag is an ``xla_cpu_`` flag). XLA reads ``XLA_FLAGS``
once, when the first backend starts, so this must run before anything touches a device; the
package does it when ``mal_jax`` is imported. A user's own setting of the flag in
``XLA_FLAGS`` is kept, and ``MAL_JAX_YNN=on`` leaves jaxlib's default in place.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import platform
import sys
from collections.abc import Callable

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Environment variable: "on" keeps jaxlib's YNNPACK fusions (its default).
KEEP_YNN_ENV = "MAL_JAX_YNN"


def prefer_xla_convolutions(environ=os.environ) -> bool:
    """Add ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions) to ``XLA_FLAGS``
    unless the user set that flag or ``MAL_JAX_YNN=on``. True when it was added."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(KEEP_YNN_ENV, "").strip().lower() == "on" or YNN_FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
    return True


# Entry points restart themselves once with a faster malloc for XLA:CPU's per-step buffers.
# XLA:CPU allocates every step's temporaries anew (about 1.4 GB per ManyDepth step at 96x320,
# batch 4, in blocks of 37-690 MB); glibc maps blocks that large fresh from the kernel, which
# faults in and zeroes every 4 KiB page on each step: ~170k page faults and 0.30-0.34 s of
# system time per step. tcmalloc keeps freed blocks for the next step: ~0.01 s of system
# time, the step 1.67-1.92 s -> 1.56-1.63 s (five paired rounds, 2026-12-07 evening). Where
# no tcmalloc is installed, glibc's own tunable for transparent huge pages: 0.9-1.5k faults,
# 0.21-0.31 s, the step 3.6% faster (five paired rounds). Both measured with
# ``python -m mal_jax.studies.bench ...``, which prints the faults and system time (README,
# Speed, 2-core AMD EPYC). The dynamic loader reads LD_PRELOAD and glibc reads GLIBC_TUNABLES
# only when a process starts, hence the restart.
TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
PRELOAD_ENV = "LD_PRELOAD"
# Debian/Ubuntu package libtcmalloc-minimal4 (gperftools); the full library works the same.
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
# tcmalloc reports every allocation over 1 GiB on stderr; a large step makes such blocks.
TCMALLOC_REPORT_ENV = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"
TCMALLOC_REPORT_BYTES = str(1 << 40)
# Environment variable: "glibc" skips tcmalloc (huge pages only), "off" skips the restart.
MALLOC_ENV = "MAL_JAX_MALLOC"
# Accelerator plugins: where one is installed the restart is skipped (measured on CPU only).
ACCELERATOR_MODULES = ("jax_plugins", "libtpu")


def allocator_environment(environ, find_tcmalloc: Callable[[], str | None],
                          glibc_version: tuple[int, ...] | None, thp_mode: str,
                          accelerator: bool) -> dict | None:
    """The environment to restart with, or None where a restart changes nothing or was not
    asked for. The library ``find_tcmalloc()`` names (None when not installed; looked up only
    where it matters, not again in the restarted process) goes first in LD_PRELOAD unless
    ``MAL_JAX_MALLOC=glibc``; otherwise glibc's huge-pages tunable, see
    ``huge_pages_environment``. None with ``MAL_JAX_MALLOC=off``, an accelerator plugin, or a
    malloc already in LD_PRELOAD (the user's choice, or this restart's)."""
    choice = environ.get(MALLOC_ENV, "").strip().lower()
    if choice == "off" or accelerator or "malloc" in environ.get(PRELOAD_ENV, ""):
        return None
    tcmalloc = find_tcmalloc() if choice != "glibc" else None
    if tcmalloc:
        preload = ":".join(filter(None, (tcmalloc, environ.get(PRELOAD_ENV, ""))))
        return {TCMALLOC_REPORT_ENV: TCMALLOC_REPORT_BYTES, **environ, PRELOAD_ENV: preload}
    return huge_pages_environment(environ, glibc_version, thp_mode)


def huge_pages_environment(environ, glibc_version: tuple[int, ...] | None,
                           thp_mode: str) -> dict | None:
    """``environ`` plus the huge-pages tunable, or None where it changes nothing: already
    set, glibc older than 2.35 (no such tunable) or absent, transparent huge pages not in
    ``madvise`` mode (``always`` gives them anyway, ``never`` refuses them)."""
    tunables = environ.get(TUNABLES_ENV, "")
    if ("glibc.malloc.hugetlb" in tunables or glibc_version is None
            or glibc_version < (2, 35) or thp_mode != "madvise"):
        return None
    return {**environ, TUNABLES_ENV: ":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE)))}


def tcmalloc_library() -> str | None:
    """The installed tcmalloc's shared-library name (the loader finds it by that name), or
    None."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _glibc_version() -> tuple[int, ...] | None:
    library, version = platform.libc_ver()
    if library != "glibc" or not version:
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def _thp_mode(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str:
    """The bracketed word of the kernel's setting ("always [madvise] never"); "never" if
    there is no such file."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "never"


def _accelerator_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_MODULES)


def restart_with_fast_allocator() -> None:
    """Re-execute this process, same interpreter and command line, with tcmalloc preloaded
    or glibc's huge-pages tunable, where ``allocator_environment`` says it helps; otherwise
    return. Call it first thing in a command's ``__main__`` block, before anything starts
    threads or a backend."""
    environ = allocator_environment(os.environ, tcmalloc_library, _glibc_version(),
                                    _thp_mode(), _accelerator_installed())
    if environ is None or not sys.executable:  # an embedded interpreter: nothing to re-run
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def allocator_in_use(maps_path: str = "/proc/self/maps") -> str:
    """What this process allocates with, for benchmark records: "tcmalloc" where a tcmalloc
    library is mapped, else "glibc+hugetlb" or "glibc" (by the tunable), "unknown" off Linux."""
    try:
        with open(maps_path) as handle:
            if "tcmalloc" in handle.read():
                return "tcmalloc"
    except OSError:
        return "unknown"
    return "glibc+hugetlb" if HUGE_PAGES_TUNABLE in os.environ.get(TUNABLES_ENV, "") else "glibc"
