"""The benchmark command runs end to end and reports every figure the README's Speed table
quotes (a tiny size; the figures themselves are measured by the command, not asserted)."""

import json
import os
import subprocess
import sys

import jax

from mal_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_command_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "mal_jax.studies.bench", "--height", "64", "--width", "96",
         "--batch_size", "2", "--steps", "1", "--no_mal", "--json", str(out),
         "--cache_dir", jax.config.jax_compilation_cache_dir],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**{k: v for k, v in os.environ.items() if k != "MAL_JAX_MALLOC"},
             "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("compile_s", "images_per_s", "eval_images_per_s", "peak_memory_gib",
                 "cpu_s_per_step", "step_s"):
        assert f"\n{name} " in "\n" + result.stdout, (name, result.stdout)
    figures = json.loads(out.read_text())
    assert (figures["height"], figures["width"], figures["mal"]) == (64, 96, False)
    assert figures["step_s"] > 0 and figures["images_per_s"] > 0
    assert figures["cpu_s_per_step"] >= figures["sys_s_per_step"] >= 0
    assert figures["page_faults_per_step"] >= 0
    assert figures["eval_images_per_s"] > 0 and figures["peak_bytes"] > 0
    # The command restarted itself with tcmalloc where one is installed (a CPU-only machine).
    tcmalloc = xla_cpu.tcmalloc_library() and not xla_cpu._accelerator_installed()
    assert figures["malloc"] == "tcmalloc" if tcmalloc else figures["malloc"].startswith("glibc")


def test_layer_bench_lists_resnet_convolutions_and_times_both_gradients():
    from mal_jax.studies import bench_layers

    # ResNet-18 at 64x96, batch 2: stage inputs at 16x24 (1/4) down to 2x3 (1/32).
    assert bench_layers.resnet_convolutions(64, 96, 2) == [
        (2, 16, 24, 64, 64, 1), (2, 16, 24, 64, 128, 2), (2, 8, 12, 128, 128, 1),
        (2, 8, 12, 128, 256, 2), (2, 4, 6, 256, 256, 1), (2, 4, 6, 256, 512, 2),
        (2, 2, 3, 512, 512, 1)]
    row = bench_layers.input_gradient_ms((2, 8, 12, 128, 256, 2), repeats=1)
    # 2 x 4 x 6 output pixels over 256 features: the GEMM's side of the rule.
    assert row["ratio"] == 48 / 256 and row["gemm_chosen"]
    assert row["xla_ms"] > 0 and row["gemm_ms"] > 0
