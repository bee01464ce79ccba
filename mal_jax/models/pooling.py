"""torch's ``MaxPool2d(3, stride=2, padding=1)`` with a gradient XLA:CPU runs fast.

The ResNet stems max-pool their 1/2-resolution features. ``flax.linen.max_pool``'s gradient
is XLA's select-and-scatter, which XLA:CPU rewrites into a reduce-window carrying the value
and four integer indices per output, plus iota arrays of the input's size: about 330 ms of
the 96x320 ManyDepth step's op time (four pools) on this project's 2-core CPU. Here the
forward pass keeps its reduce-window, and the backward pass routes each output's gradient
to the first maximum of its 3x3 window in row-major order (torch's CPU rule: a later tap
wins only if strictly larger) with nine strided slices and their transposes, all
elementwise. Exact ties only occur between zeros after the ReLU that precedes every pool,
whose own gradient is zero there, so the tie rule never changes a trained weight.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_WINDOW, _STRIDE = 3, 2


def _window_taps(x: jnp.ndarray) -> list[jnp.ndarray]:
    """The nine [N, H_out, W_out, C] views of the -inf-padded input, one per window tap in
    row-major order: tap (i, j) of output (y, x) is padded input (2y + i, 2x + j)."""
    n, height, width, channels = x.shape
    out_height, out_width = (height - 1) // _STRIDE + 1, (width - 1) // _STRIDE + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return [jax.lax.slice(padded, (0, i, j, 0),
                          (n, i + _STRIDE * (out_height - 1) + 1,
                           j + _STRIDE * (out_width - 1) + 1, channels),
                          (1, _STRIDE, _STRIDE, 1))
            for i in range(_WINDOW) for j in range(_WINDOW)]


@jax.custom_vjp
def max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """torch ``MaxPool2d(3, stride=2, padding=1)`` on NHWC (padding never wins the max)."""
    return nn.max_pool(x, (_WINDOW, _WINDOW), strides=(_STRIDE, _STRIDE),
                       padding=((1, 1), (1, 1)))


def _max_pool_forward(x):
    taps = _window_taps(x)
    best, first_tap = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for index, tap in enumerate(taps[1:], start=1):
        first_tap = jnp.where(tap > best, jnp.int8(index), first_tap)
        best = jnp.maximum(best, tap)
    return best, (x, first_tap)


def _max_pool_backward(residuals, output_grad):
    x, first_tap = residuals
    _, taps_transpose = jax.vjp(_window_taps, x)
    per_tap = [jnp.where(first_tap == index, output_grad, 0).astype(output_grad.dtype)
               for index in range(_WINDOW * _WINDOW)]
    return taps_transpose(per_tap)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
