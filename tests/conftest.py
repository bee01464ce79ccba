"""Shared test fixtures: the golden parity file and a persistent compilation cache."""

import pathlib

import pytest

from mal_jax.train import compilation_cache

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_PATH = REPO.parent / "shared" / "golden" / "manydepth_mal_96x320.npz"

# $MAL_JAX_CACHE or ~/.cache/mal_jax_xla: compiled train steps survive between test runs.
compilation_cache.enable()


@pytest.fixture(scope="session")
def golden():
    """The reference's golden file; skipped only where ../shared is absent (CI always has it)."""
    if not GOLDEN_PATH.exists():
        pytest.skip(f"golden fixture absent: {GOLDEN_PATH} (../shared not checked out beside repo)")
    from mal_jax.port.golden import GoldenFile

    return GoldenFile(str(GOLDEN_PATH))
