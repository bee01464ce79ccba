"""2-D convolution whose input gradient skips XLA:CPU's kernel transposes where they dominate.

The gradient of a convolution with respect to its input is a convolution of the output
gradient with the kernel flipped and its two feature axes swapped. XLA:CPU materialises that
flipped, transposed kernel before every backward convolution (``transpose_copy_fusion``,
~10 ms for a 3x3x512x512 kernel on this project's 2-core CPU): for the deep ResNet stages,
whose kernels are larger than their activations, the copy costs as much as the convolution.
Here that gradient is instead one matrix product of the kernel as stored with the
(activation-sized) transposed output gradient, giving every pixel's contribution to each of
its kernel-window inputs, then summed into place ("col2im", one strided slice per tap). The
forward pass and the kernel gradient are XLA's own.

The product is ``kernel_height * kernel_width`` times the input gradient's size, so it is
used only where the kernel is at least half of that (``_gemm_input_gradient_pays``) and only on CPU,
where GPU and TPU compilers pick their own kernel layouts. Values equal XLA's up to float
summation order (tests/test_models.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=NHWC_DIMENSIONS)


def _gemm_input_gradient(output_grad, kernel, input_shape, strides, padding):
    """d(conv)/d(input): kernel . output_grad per tap, then summed into place.

    Channel-major throughout ([features, N, H, W]) so that the product reads the kernel as
    stored, contracting its last axis with the first axis of the (small) transposed output
    gradient: a plain GEMM, for which XLA:CPU copies nothing of kernel size.
    """
    kernel_height, kernel_width, in_features, _ = kernel.shape
    batch, out_height, out_width, _ = output_grad.shape
    (pad_top, pad_bottom), (pad_left, pad_right) = padding
    stride_y, stride_x = strides
    height, width = input_shape[1], input_shape[2]
    grad_channels_first = jnp.transpose(output_grad, (3, 0, 1, 2))
    # [KH, KW, I, N, OH, OW]: what output pixel (y, x) sends to padded input (y*s+i, x*s+j).
    per_tap = lax.dot_general(kernel, grad_channels_first, (((3,), (0,)), ((), ())))
    padded_grad = jnp.zeros((in_features, batch, height + pad_top + pad_bottom,
                             width + pad_left + pad_right), per_tap.dtype)
    for i in range(kernel_height):
        for j in range(kernel_width):
            rows = slice(i, i + (out_height - 1) * stride_y + 1, stride_y)
            cols = slice(j, j + (out_width - 1) * stride_x + 1, stride_x)
            padded_grad = padded_grad.at[:, :, rows, cols].add(per_tap[i, j])
    input_grad = padded_grad[:, :, pad_top:pad_top + height, pad_left:pad_left + width]
    return jnp.transpose(input_grad, (1, 2, 3, 0))


def _gemm_input_gradient_pays(output_shape, kernel_shape) -> bool:
    """True where the per-tap product (KH*KW*I*N*OH*OW) is at most twice the kernel
    (KH*KW*I*O), i.e. N*OH*OW <= 2*O: ResNet-18's last two stages at 96x320, batch 4.
    ``python -m mal_jax.studies.bench_layers`` times both gradients per convolution (README,
    Speed)."""
    batch, out_height, out_width, _ = output_shape
    out_features = kernel_shape[3]
    return jax.default_backend() == "cpu" and batch * out_height * out_width <= 2 * out_features


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_gemm_backward(x, kernel, strides, padding):
    return _lax_conv(x, kernel, strides, padding)


def _forward(x, kernel, strides, padding):
    return _lax_conv(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, output_grad):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _lax_conv(x, k, strides, padding), kernel)
    (kernel_grad,) = kernel_vjp(output_grad)
    input_grad = _gemm_input_gradient(output_grad, kernel, x.shape, strides, padding)
    return input_grad.astype(x.dtype), kernel_grad


_conv_gemm_backward.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """``lax.conv_general_dilated`` for ``flax.linen.Conv``; plain NHWC convolutions whose
    kernel is at least half their per-tap product take the GEMM input gradient."""
    plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs and precision is None
             and not isinstance(padding, str)
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC_DIMENSIONS)
             and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())))
    if plain:
        strides = tuple(window_strides)
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        output_shape = (lhs.shape[0],) + tuple(
            (size + low + high - k) // s + 1
            for size, (low, high), k, s in zip(lhs.shape[1:3], padding, rhs.shape[:2], strides,
                                                  strict=True)
        ) + (rhs.shape[3],)
        if _gemm_input_gradient_pays(output_shape, rhs.shape):
            return _conv_gemm_backward(lhs, rhs, strides, padding)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
