"""The persistent XLA compilation cache, set up in one place for every entry point.

Compiling the train step takes minutes on a CPU; with the cache a second process running the
same program (same config, shapes, code, JAX version and devices) loads the executable from
disk instead. ``train.py``, ``eval.py``, the benchmark and the test suite call ``enable()``.

Why the train step used to be compiled again by every run: only the test suite turned the cache
on, and ``train.py``, ``eval.py`` and the benchmark never did. The cache itself writes the
step (no host callbacks, no size or time threshold excludes it); whether a second process
hits it is what ``python -m mal_jax.studies.bench --compile_twice`` reports. One trap
remains, which ``enable`` handles: JAX decides once per process, at its first compilation,
whether a cache is in use; a directory set after anything was compiled is silently ignored
unless the cache is reset.
"""

from __future__ import annotations

import logging
import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

# Environment variable naming the cache directory; "off" disables the cache.
CACHE_DIR_ENV = "MAL_JAX_CACHE"
DEFAULT_CACHE_DIR = pathlib.Path.home() / ".cache" / "mal_jax_xla"
# Programs compiling faster than this (seconds) are not written: loading costs about as much.
MIN_COMPILE_TIME_S = 1.0


def cache_dir_from_env() -> str | None:
    """The directory ``enable()`` uses by default: ``$MAL_JAX_CACHE``, else ~/.cache/mal_jax_xla;
    None when ``MAL_JAX_CACHE=off``."""
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    if value.lower() == "off":
        return None
    return value or str(DEFAULT_CACHE_DIR)


def enable(cache_dir: str | None = None) -> str | None:
    """Turn the persistent compilation cache on (``cache_dir``, else ``cache_dir_from_env()``).

    Safe to call more than once and after other compilations: a process that already decided
    it had no cache is reset so the directory takes effect. Returns the directory in use (None
    when off, and always after ``jax.distributed`` was initialised: several processes compile
    their own programs).
    """
    path = cache_dir or cache_dir_from_env()
    if jax.distributed.is_initialized():
        # Several processes: no shared cache (mal_jax.train.distributed.initialize says why).
        path = None
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"compilation cache: cannot create {CACHE_DIR_ENV} directory "
                         f"{path!r}: {error}") from error
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        # The cache is initialised lazily at the first compilation and never looked at again.
        jax_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    logging.getLogger(__name__).info("persistent compilation cache: %s", path)
    return path
