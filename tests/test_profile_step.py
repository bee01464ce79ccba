"""Attribution of the train step's XLA ops to model parts (mal_jax.studies.profile_step)."""

import jax
import jax.numpy as jnp

from mal_jax.core import geometry, losses
from mal_jax.studies import profile_step


def _warp_and_ssim(image, grid):
    warped = geometry.grid_sample(image, grid)
    return jnp.mean(losses.ssim_dissimilarity(warped, image))


def test_ops_are_attributed_by_python_function_and_pass():
    image = jax.random.uniform(jax.random.key(0), (1, 8, 12, 3))
    grid = jax.random.uniform(jax.random.key(1), (1, 8, 12, 2)) * 2 - 1
    compiled = jax.jit(jax.grad(_warp_and_ssim, argnums=1)).lower(image, grid).compile()
    parts = profile_step.op_parts(compiled.as_text())
    found = set(parts.values())
    for part in ("grid sampling", "SSIM"):
        assert (part, False) in found and (part, True) in found, found


def test_profile_rows_sum_to_one_and_table_lists_every_part():
    image = jax.random.uniform(jax.random.key(0), (1, 16, 24, 3))
    grid = jax.random.uniform(jax.random.key(1), (1, 16, 24, 2)) * 2 - 1
    compiled = jax.jit(jax.grad(_warp_and_ssim, argnums=1)).lower(image, grid).compile()
    rows = profile_step.profile_compiled(compiled, lambda: compiled(image, grid), steps=2)
    assert abs(sum(row["share"] for row in rows) - 1.0) < 1e-6
    assert {row["part"] for row in rows} >= {"SSIM", "grid sampling"}
    table = profile_step.markdown_table(rows)
    assert all(f"| {row['part']} |" in table for row in rows)


def test_untraced_row_is_cpu_time_minus_traced_ops():
    rows = [{"part": "SSIM", "forward_s": 0.2, "backward_s": 0.1, "total_s": 0.3},
            {"part": "grid sampling", "forward_s": 0.1, "backward_s": 0.0, "total_s": 0.1}]
    table = profile_step.with_untraced_time(rows, cpu_s=1.0)
    assert [row["part"] for row in table] == [profile_step.UNTRACED, "SSIM", "grid sampling"]
    assert abs(table[0]["total_s"] - 0.6) < 1e-12
    assert [round(row["share"], 6) for row in table] == [0.6, 0.3, 0.1]
    # CPU time below the traced total (clock granularity): no negative row, shares of the ops.
    short = profile_step.with_untraced_time(rows, cpu_s=0.3)
    assert short[-1]["total_s"] == 0.0 and abs(sum(r["share"] for r in short) - 1) < 1e-12


def test_part_of_rules():
    stack = [("/x/mal_jax/models/manydepth.py", "teacher"), ("/x/flax/linen.py", "apply")]
    assert profile_step.part_of("jit(f)/ResnetEncoder/layer1/conv", stack) == "teacher encoder"
    assert profile_step.part_of("jit(f)/DepthDecoder/upconv", stack) == "teacher decoder"
    # Only flax's frame on the Python stack: the name stack's module decides.
    flax_only = [("/x/flax/linen/linear.py", "_Conv.__call__")]
    assert profile_step.part_of("jit(f)/transpose(jvp(ResnetEncoder))/layer4/1/conv2/conv",
                                flax_only) == "teacher and pose encoders"
    assert profile_step.part_of("jit(f)/jvp(DepthDecoder)/upconv_4_0/conv", flax_only) \
        .startswith("depth decoders")
    cost = [("/x/mal_jax/models/matching.py", "one_lookup"),
            ("/x/mal_jax/core/geometry.py", "grid_sample")]
    assert profile_step.part_of("jit(f)/MatchingEncoder/gather", cost) == "cost volume"
    assert profile_step.part_of("jit(f)/add", [("/x/mal_jax/mal/distillation.py", "f")]) \
        .startswith("MAL")
    assert profile_step.part_of("jit(f)/add", [("/x/mal_jax/train/step.py", "train_step")]) \
        == "optimizer and state update"
