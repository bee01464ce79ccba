"""Shared test fixtures: the golden parity file and a persistent compilation cache."""

import os
import pathlib

import pytest

from mal_jax.train import compilation_cache

REPO = pathlib.Path(__file__).resolve().parents[1]
# MAL_JAX_GOLDEN points elsewhere (the test of this fixture's CI behaviour uses it).
GOLDEN_PATH = pathlib.Path(os.environ.get(
    "MAL_JAX_GOLDEN", REPO.parent / "shared" / "golden" / "manydepth_mal_96x320.npz"))

# $MAL_JAX_CACHE or ~/.cache/mal_jax_xla: compiled train steps survive between test runs.
compilation_cache.enable()


@pytest.fixture(scope="session")
def golden():
    """The reference's golden file. Where it is absent: a skip locally, a failure under CI
    (``CI`` set), so CI cannot pass without the parity tests."""
    if not GOLDEN_PATH.exists():
        reason = f"golden fixture absent: {GOLDEN_PATH} (../shared not checked out beside repo)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, so the golden tests fail instead of skipping")
        pytest.skip(reason)
    from mal_jax.port.golden import GoldenFile

    return GoldenFile(str(GOLDEN_PATH))
