"""Every convolution of the compiled train step, timed alone: how close they run to the CPU.

    python -m mal_jax.studies.step_convolutions [--height 96 --width 320 --batch_size 4]

Compiles the KITTI model's ManyDepth step (as ``mal_jax.studies.bench``), reads each
``convolution`` instruction of the optimised HLO (forward convolutions, and the input and
kernel gradients XLA rewrote them into) and times it alone, jitted on random operands of its
shapes, window and dimension labels. Prints the count, the summed milliseconds, the
FLOP-weighted rate and the slowest rows with their rate (GFLOP/s: 2 x output elements x
kernel taps x input features per millisecond). A rate near the machine's multiply-add peak
everywhere means the step's convolutions cannot get much faster by layout or algorithm; a low
one names a shape to look at (README, Speed).
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.studies.bench import build_step, compile_step
from mal_jax.studies.bench_layers import median_ms

_SHAPE = re.compile(r"%([\w.\-]+) = f32\[([\d,]*)\]")
_PARAMETER = re.compile(r"([\w.\-]+): f32\[([\d,]*)\]")
_CONVOLUTION = re.compile(
    r"%([\w.\-]+) = f32\[([\d,]*)\]\S* convolution\(%([\w.\-]+), %([\w.\-]+)\), "
    r"window=\{([^}]*)\}, dim_labels=([^,\s]+)(.*)")
# HLO dimension letters -> lax's: batch/feature/spatial for images, in/out/spatial for kernels.
_IMAGE_LETTERS = {"b": "N", "f": "C", "0": "H", "1": "W"}
_KERNEL_LETTERS = {"i": "I", "o": "O", "0": "H", "1": "W"}


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.split(",") if size)


def _window_field(fields: dict, key: str, axes: int, parse, default) -> list:
    """One value per spatial axis of an HLO window field ("2x2", "1_1x1_1"), or defaults."""
    if key not in fields:
        return [default] * axes
    return [parse(value) for value in fields[key].split("x")]


def parse_convolutions(hlo_text: str) -> list[dict]:
    """One dict per 2-D ``convolution`` of HLO text: name, lhs/rhs/out shapes, the window's
    strides, padding and dilations, lax dimension numbers, and whether it is a gradient."""
    shapes = {name: _dims(dims) for name, dims in _PARAMETER.findall(hlo_text)}
    shapes.update({name: _dims(dims) for name, dims in _SHAPE.findall(hlo_text)})
    found = []
    for line in hlo_text.splitlines():
        match = _CONVOLUTION.search(line)
        if not match:
            continue
        name, out, lhs, rhs, window, labels, rest = match.groups()
        fields = dict(item.split("=") for item in window.split())
        axes = len(fields["size"].split("x"))
        lhs_labels, rest_labels = labels.split("_")
        rhs_labels, out_labels = rest_labels.split("->")
        found.append({
            "name": name, "lhs": shapes[lhs], "rhs": shapes[rhs], "out": _dims(out),
            "strides": _window_field(fields, "stride", axes, int, 1),
            "padding": _window_field(fields, "pad", axes,
                                     lambda v: tuple(int(p) for p in v.split("_")), (0, 0)),
            "lhs_dilation": _window_field(fields, "lhs_dilate", axes, int, 1),
            "rhs_dilation": _window_field(fields, "rhs_dilate", axes, int, 1),
            "dimension_numbers": ("".join(_IMAGE_LETTERS[c] for c in lhs_labels),
                                  "".join(_KERNEL_LETTERS[c] for c in rhs_labels),
                                  "".join(_IMAGE_LETTERS[c] for c in out_labels)),
            # Gradients are XLA's rewrites (no source) or jax's transposes of the forward.
            "gradient": "op_name=" not in rest or "transpose(" in rest,
        })
    return found


def flops(conv: dict) -> float:
    """Multiply-adds x 2: each output element sums kernel taps x input features."""
    kernel_layout = conv["dimension_numbers"][1]
    taps_and_inputs = np.prod([conv["rhs"][kernel_layout.index(axis)] for axis in "HWI"])
    return 2.0 * float(np.prod(conv["out"])) * float(taps_and_inputs)


def time_convolution(conv: dict, repeats: int) -> float:
    """Milliseconds of this convolution alone (jitted, random operands)."""
    run = jax.jit(lambda lhs, rhs: jax.lax.conv_general_dilated(
        lhs, rhs, conv["strides"], conv["padding"], conv["lhs_dilation"],
        conv["rhs_dilation"], conv["dimension_numbers"]))
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=conv["lhs"]), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=conv["rhs"]), jnp.float32)
    if tuple(run(lhs, rhs).shape) != conv["out"]:
        raise ValueError(f"step_convolutions: {conv['name']} rebuilt with shape "
                         f"{run(lhs, rhs).shape}, the step's is {conv['out']}")
    return median_ms(run, lhs, rhs, repeats=repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.studies.step_convolutions")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=15, help="slowest rows to print")
    args = parser.parse_args(argv)
    _, step, state, batch, _ = build_step(args.height, args.width, args.batch_size, mal=False)
    compiled, *_ = compile_step(step, state, batch)
    rows = []
    for conv in parse_convolutions(compiled.as_text()):
        ms = time_convolution(conv, args.repeats)
        rows.append({**conv, "ms": ms, "gflops": flops(conv) / ms / 1e6})
    total_ms = sum(row["ms"] for row in rows)
    print(f"convolutions {len(rows)} ({sum(row['gradient'] for row in rows)} gradients)")
    print(f"convolution_ms {total_ms:.1f} (each alone, summed)")
    print(f"convolution_gflops {sum(flops(row) for row in rows) / total_ms / 1e6:.1f}")
    print("| ms | GFLOP/s | gradient | input | kernel | output | strides | kernel dilation |")
    print("|---:|---:|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda row: -row["ms"])[:args.rows]:
        print(f"| {row['ms']:.2f} | {row['gflops']:.0f} | {row['gradient']} | {row['lhs']} | "
              f"{row['rhs']} | {row['out']} | {tuple(row['strides'])} | "
              f"{tuple(row['rhs_dilation'])} |")


if __name__ == "__main__":
    main()
