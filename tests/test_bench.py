"""The benchmark command runs end to end and reports every figure the README's Speed table
quotes (a tiny size; the figures themselves are measured by the command, not asserted)."""

import json
import os
import subprocess
import sys

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_command_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "mal_jax.studies.bench", "--height", "64", "--width", "96",
         "--batch_size", "2", "--steps", "1", "--no_mal", "--json", str(out),
         "--cache_dir", jax.config.jax_compilation_cache_dir],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("compile_s", "images_per_s", "eval_images_per_s", "peak_memory_gib",
                 "cpu_s_per_step", "step_s"):
        assert f"\n{name} " in "\n" + result.stdout, (name, result.stdout)
    figures = json.loads(out.read_text())
    assert (figures["height"], figures["width"], figures["mal"]) == (64, 96, False)
    assert figures["step_s"] > 0 and figures["images_per_s"] > 0
    assert figures["cpu_s_per_step"] > 0
    assert figures["eval_images_per_s"] > 0 and figures["peak_bytes"] > 0
