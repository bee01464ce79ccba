"""Shared test fixtures: the golden parity file and a persistent compilation cache."""

import os
import pathlib

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_PATH = REPO.parent / "shared" / "golden" / "manydepth_mal_96x320.npz"

jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "MAL_JAX_CACHE", str(pathlib.Path.home() / ".cache" / "mal_jax_xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def golden():
    """The reference's golden file; skipped only where ../shared is absent (CI always has it)."""
    if not GOLDEN_PATH.exists():
        pytest.skip(f"golden fixture absent: {GOLDEN_PATH} (../shared not checked out beside repo)")
    from mal_jax.port.golden import GoldenFile

    return GoldenFile(str(GOLDEN_PATH))
