"""The step-convolution census: HLO convolutions parsed into lax calls of the same shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.studies import step_convolutions

HLO = """
ENTRY %main (x.1: f32[2,10,12,3], k.1: f32[3,3,3,8]) -> f32[2,5,6,8] {
  %x.1 = f32[2,10,12,3]{3,2,1,0} parameter(0)
  %k.1 = f32[3,3,3,8]{3,2,1,0} parameter(1)
  %conv.1 = f32[2,5,6,8]{3,2,1,0} convolution(%x.1, %k.1), \
window={size=3x3 stride=2x2 pad=1_1x1_0}, dim_labels=b01f_01io->b01f, \
metadata={op_name="jit(step)/conv" stack_frame_id=3}
  %t.1 = f32[3,10,12,2]{3,2,1,0} transpose(%x.1), dimensions={3,1,2,0}
  %g.1 = f32[5,6,2,8]{3,2,1,0} transpose(%conv.1), dimensions={1,2,0,3}
  %convolution-window-dilated.1 = f32[3,3,3,8]{3,2,1,0} convolution(%t.1, %g.1), \
window={size=5x6 pad=1_0x1_0 rhs_dilate=2x2}, dim_labels=b01f_01io->b01f
}
"""


def test_parses_forward_and_xla_gradient_convolutions():
    forward, kernel_grad = step_convolutions.parse_convolutions(HLO)
    assert forward["lhs"] == (2, 10, 12, 3) and forward["rhs"] == (3, 3, 3, 8)
    assert forward["out"] == (2, 5, 6, 8)
    assert forward["strides"] == [2, 2] and forward["padding"] == [(1, 1), (1, 0)]
    assert forward["rhs_dilation"] == [1, 1] and not forward["gradient"]
    assert forward["dimension_numbers"] == ("NHWC", "HWIO", "NHWC")
    # No source metadata: one of XLA's own rewrites, here the kernel gradient.
    assert kernel_grad["gradient"] and kernel_grad["rhs_dilation"] == [2, 2]
    assert kernel_grad["padding"] == [(1, 0), (1, 0)] and kernel_grad["strides"] == [1, 1]
    # 2 x outputs x taps x input features, by hand: 2 * (2*5*6*8) * (3*3) * 3.
    assert step_convolutions.flops(forward) == 2 * 480 * 27
    assert step_convolutions.flops(kernel_grad) == 2 * (3 * 3 * 3 * 8) * (5 * 6) * 2


def test_rebuilt_convolutions_reproduce_the_gradient_they_came_from():
    """The parsed window of the kernel gradient, run through lax, equals jax's own kernel
    gradient of the forward convolution (so the timed calls are the step's computations)."""
    forward, kernel_grad = step_convolutions.parse_convolutions(HLO)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=forward["lhs"]), jnp.float32)
    k = jnp.asarray(rng.normal(size=forward["rhs"]), jnp.float32)
    g = jnp.asarray(rng.normal(size=forward["out"]), jnp.float32)

    def conv(kernel):
        return jax.lax.conv_general_dilated(x, kernel, forward["strides"], forward["padding"],
                                            dimension_numbers=forward["dimension_numbers"])

    expected = jax.vjp(conv, k)[1](g)[0]
    rebuilt = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), kernel_grad["strides"],
        kernel_grad["padding"], kernel_grad["lhs_dilation"], kernel_grad["rhs_dilation"],
        kernel_grad["dimension_numbers"])
    np.testing.assert_allclose(np.transpose(rebuilt, (1, 2, 0, 3)), expected, rtol=1e-5,
                               atol=1e-5)
    assert step_convolutions.time_convolution(kernel_grad, repeats=2) > 0
