"""The persistent compilation cache setup shared by train.py, eval.py, the bench and the tests."""

import os

import jax
import jax.numpy as jnp
import pytest

from mal_jax.train import compilation_cache


@pytest.fixture
def restore_cache():
    """Put the suite's cache (conftest) back after a test redirects it."""
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      compilation_cache.MIN_COMPILE_TIME_S)
    compilation_cache.enable()


def test_enable_after_a_compilation_still_writes_the_new_directory(tmp_path, restore_cache):
    """JAX decides once per process whether a cache is in use; enable() must reset that."""
    jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()  # the process has compiled
    assert compilation_cache.enable(str(tmp_path)) == str(tmp_path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.jit(lambda x: jnp.sin(x) * 3.25)(jnp.ones(5)).block_until_ready()
    entries = os.listdir(tmp_path)
    assert any(name.startswith("jit__lambda") for name in entries), entries


def test_directory_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, str(tmp_path / "xla"))
    assert compilation_cache.cache_dir_from_env() == str(tmp_path / "xla")
    monkeypatch.setenv(compilation_cache.CACHE_DIR_ENV, "off")
    assert compilation_cache.cache_dir_from_env() is None
    monkeypatch.delenv(compilation_cache.CACHE_DIR_ENV)
    assert compilation_cache.cache_dir_from_env() == str(compilation_cache.DEFAULT_CACHE_DIR)


def test_uncreatable_directory_names_the_variable(tmp_path, restore_cache):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="MAL_JAX_CACHE directory .*file/cache"):
        compilation_cache.enable(str(blocker / "cache"))
