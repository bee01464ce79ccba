"""Building blocks shared by the networks: torch-compatible BatchNorm, padded convolutions.

Everything is NHWC. Convolutions use explicit symmetric padding so that strided convolutions
sample exactly the pixels torch's ``Conv2d(padding=p)`` samples.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mal_jax.models.convolution import conv_general_dilated

# torch.nn.BatchNorm2d defaults.
TORCH_BN_MOMENTUM = 0.1
TORCH_BN_EPS = 1e-5


class TorchBatchNorm(nn.Module):
    """BatchNorm with torch's semantics.

    Training mode normalises with the biased batch variance, as torch does, but updates the
    running variance with the *unbiased* one (torch multiplies by n / (n - 1)); flax's stock
    BatchNorm cannot, and drifts by a few percent from converted checkpoints within a few steps.
    Statistics are reduced over every axis but the last, so under ``jit`` with a sharded batch
    they cover the global batch.

    ``update_order`` runs several of torch's calls as one: the batch interleaves
    ``max(update_order) + 1`` groups (sample ``n`` of group ``g`` at row ``n * groups + g``, so
    a batch sharded by sample keeps each sample's groups on one device), each normalised with
    its own statistics, which then update the running averages in this order, as separate
    torch calls on each group, in that order, would. ``(0,)``: one group, one call.
    """

    momentum: float = TORCH_BN_MOMENTUM
    epsilon: float = TORCH_BN_EPS
    update_order: tuple[int, ...] = (0,)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        compute_dtype = x.dtype
        # Statistics in float32 at least: also when the network computes in bfloat16, and in
        # float64 when it computes in float64 (the float64 checks).
        x = x.astype(jnp.promote_types(compute_dtype, jnp.float32))
        if not train:
            inv = scale * jnp.reciprocal(jnp.sqrt(running_var.value + self.epsilon))
            return ((x - running_mean.value) * inv + bias).astype(compute_dtype)
        groups = max(self.update_order) + 1
        if x.shape[0] % groups:
            raise ValueError(f"TorchBatchNorm: a batch of {x.shape[0]} cannot hold {groups} "
                             f"interleaved groups (update_order {self.update_order})")
        grouped = x.reshape((x.shape[0] // groups, groups) + x.shape[1:])
        axes = (0,) + tuple(range(2, grouped.ndim - 1))
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        # Flax runs `init` in training mode too; statistics must not move then.
        if not self.is_initializing():
            count = grouped.size // (features * groups)
            unbiased = var.reshape(groups, features) * (count / max(count - 1, 1))
            keep = 1 - self.momentum
            for group in self.update_order:
                running_mean.value = (keep * running_mean.value
                                      + self.momentum * mean.reshape(groups, features)[group])
                running_var.value = keep * running_var.value + self.momentum * unbiased[group]
        inv = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        return ((grouped - mean) * inv + bias).reshape(x.shape).astype(compute_dtype)


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, use_bias: bool = True,
         name: str | None = None) -> nn.Conv:
    """A torch-style ``Conv2d``: square kernel, symmetric zero padding (input gradient:
    ``mal_jax.models.convolution``)."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                   conv_general_dilated=conv_general_dilated, name=name)


def reflection_pad(x: jnp.ndarray, amount: int = 1) -> jnp.ndarray:
    """torch ``ReflectionPad2d`` on an NHWC tensor (edge pixel not repeated)."""
    return jnp.pad(x, ((0, 0), (amount, amount), (amount, amount), (0, 0)), mode="reflect")


class ReflectConv3x3(nn.Module):
    """Reflection padding by one pixel, then a 3x3 convolution (the decoders' ``Conv3x3``)."""

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return conv(self.features, 3, name="conv")(reflection_pad(x))


def upsample_nearest(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
    """Nearest-neighbour upsampling by an integer factor (torch ``interpolate(mode='nearest')``)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def imagenet_normalise(image: jnp.ndarray) -> jnp.ndarray:
    """The encoders' input normalisation; ManyDepth uses one mean and std for all channels."""
    return (image - 0.45) / 0.225
