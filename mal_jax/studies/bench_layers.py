"""Timings behind two of the train step's layout choices (README, Speed).

``python -m mal_jax.studies.bench_layers [--height 96 --width 320 --batch_size 4]`` prints

* for the 3x3 convolutions of ResNet-18 at that size, the input gradient as XLA computes it
  and as :mod:`mal_jax.models.convolution`'s GEMM computes it, with the ratio
  ``batch * output pixels / output features`` that decides between them
  (``_gemm_input_gradient_pays``: GEMM up to 2);
* the pose encoder's forward+backward on two frame pairs as two calls
  (:meth:`ManyDepth.pose` twice) and as one batched call (:meth:`ManyDepth.poses`), training
  mode, with the statistics updates the train step makes.

Milliseconds, median of ``--repeats`` calls after two warm-up calls.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.models import convolution
from mal_jax.models.manydepth import ManyDepth, with_batch_stats


def median_ms(function, *args, repeats: int = 20) -> float:
    """Median wall-clock milliseconds of ``function(*args)`` after two warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - tic)
    return float(np.median(times)) * 1e3


def resnet_convolutions(height: int, width: int, batch: int):
    """(batch, input height, width, in features, out features, stride) of ResNet-18's distinct
    3x3 convolutions at this image size (stage inputs at 1/4 .. 1/32 resolution)."""
    shapes = []
    for stage, features in enumerate((64, 128, 256, 512)):
        scale = 4 * 2**stage
        if stage:
            shapes.append((batch, 2 * height // scale, 2 * width // scale, features // 2,
                           features, 2))
        shapes.append((batch, height // scale, width // scale, features, features, 1))
    return shapes


def input_gradient_ms(shape, repeats: int) -> dict:
    """XLA's and the GEMM's input-gradient milliseconds for one convolution ``shape``."""
    batch, height, width, in_features, out_features, stride = shape
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(size=(batch, height, width, in_features)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_features, out_features)), jnp.float32)
    strides, padding = (stride, stride), ((1, 1), (1, 1))
    out = convolution._lax_conv(image, kernel, strides, padding)
    output_grad = jnp.ones_like(out)
    xla = jax.jit(lambda g, k: jax.vjp(
        lambda x: convolution._lax_conv(x, k, strides, padding), image)[1](g)[0])
    gemm = jax.jit(lambda g, k: convolution._gemm_input_gradient(
        g, k, image.shape, strides, padding))
    return {"shape": shape, "ratio": out.shape[0] * out.shape[1] * out.shape[2] / out_features,
            "gemm_chosen": convolution._gemm_input_gradient_pays(out.shape, kernel.shape),
            "xla_ms": median_ms(xla, output_grad, kernel, repeats=repeats),
            "gemm_ms": median_ms(gemm, output_grad, kernel, repeats=repeats)}


def pose_pair_ms(height: int, width: int, batch: int, repeats: int) -> dict:
    """Pose encoder+decoder forward+backward on two pairs: two calls against one batch."""
    model = ManyDepth()
    variables = jax.jit(lambda key: model.init(key, height, width))(jax.random.key(0))
    rng = np.random.default_rng(1)
    frames = [jnp.asarray(rng.uniform(size=(batch, height, width, 3)), jnp.float32)
              for _ in range(3)]
    pairs = [(frames[0], frames[1]), (frames[1], frames[2])]

    def separate(params):
        state, total = {**variables, "params": params}, 0.0
        for pair in pairs:
            (_, translation), stats = model.pose(state, *pair, train=True)
            state = with_batch_stats(state, "pose_encoder", stats)
            total = total + jnp.sum(translation**2)
        return total

    def batched(params):
        poses, _ = model.poses({**variables, "params": params}, pairs, train=True)
        return sum(jnp.sum(translation**2) for _, translation in poses)

    params = variables["params"]
    return {"two_calls_ms": median_ms(jax.jit(jax.grad(separate)), params, repeats=repeats),
            "one_batch_ms": median_ms(jax.jit(jax.grad(batched)), params, repeats=repeats)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.studies.bench_layers")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print("| 3x3 convolution (batch, H, W, in, out, stride) | ratio | XLA ms | GEMM ms | chosen |")
    print("|---|---:|---:|---:|---|")
    for shape in resnet_convolutions(args.height, args.width, args.batch_size):
        row = input_gradient_ms(shape, args.repeats)
        print(f"| {row['shape']} | {row['ratio']:.2f} | {row['xla_ms']:.2f} | "
              f"{row['gemm_ms']:.2f} | {'GEMM' if row['gemm_chosen'] else 'XLA'} |")
    pose = pose_pair_ms(args.height, args.width, args.batch_size, max(args.repeats // 4, 3))
    print(f"pose_two_calls_ms {pose['two_calls_ms']:.1f}")
    print(f"pose_one_batch_ms {pose['one_batch_ms']:.1f}")


if __name__ == "__main__":
    main()
