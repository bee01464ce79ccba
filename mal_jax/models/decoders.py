"""Depth decoder (four sigmoid disparity scales) and pose decoder (axis-angle + translation)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mal_jax.models.layers import ReflectConv3x3, conv, upsample_nearest

# Decoder channels at 1/1, 1/2, 1/4, 1/8, 1/16 resolution.
DECODER_CHANNELS = (16, 32, 64, 128, 256)
# ManyDepth scales the pose network's raw output so early predictions are near identity.
POSE_OUTPUT_SCALE = 0.01


class ConvBlock(nn.Module):
    """Reflection-padded 3x3 convolution followed by ELU."""

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.elu(ReflectConv3x3(self.features, name="conv")(x))


class DepthDecoder(nn.Module):
    """U-Net style decoder over five encoder features with skip connections.

    Returns sigmoid disparities for ``scales`` as a dict ``{scale: (B, H/2^s, W/2^s, 1)}``.
    """

    scales: tuple[int, ...] = (0, 1, 2, 3)

    @nn.compact
    def __call__(self, features: list[jnp.ndarray]) -> dict[int, jnp.ndarray]:
        disparities = {}
        x = features[-1]
        for level in range(4, -1, -1):
            x = ConvBlock(DECODER_CHANNELS[level], name=f"upconv_{level}_0")(x)
            x = upsample_nearest(x)
            if level > 0:
                x = jnp.concatenate([x, features[level - 1]], axis=-1)
            x = ConvBlock(DECODER_CHANNELS[level], name=f"upconv_{level}_1")(x)
            if level in self.scales:
                logits = ReflectConv3x3(1, name=f"dispconv_{level}")(x)
                disparities[level] = nn.sigmoid(logits)
        return disparities


class PoseDecoder(nn.Module):
    """Predicts ``frames_to_predict`` relative poses from the deepest pose-encoder feature.

    Returns ``(axisangle, translation)``, each (B, frames_to_predict, 1, 3) like the reference;
    ManyDepth uses index ``[:, 0]``.
    """

    frames_to_predict: int = 2

    @nn.compact
    def __call__(self, last_feature: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = nn.relu(conv(256, 1, name="squeeze")(last_feature))
        x = nn.relu(conv(256, 3, 1, 1, name="pose_0")(x))
        x = nn.relu(conv(256, 3, 1, 1, name="pose_1")(x))
        x = conv(6 * self.frames_to_predict, 1, name="pose_2")(x)
        x = POSE_OUTPUT_SCALE * jnp.mean(x, axis=(1, 2))
        x = x.reshape(-1, self.frames_to_predict, 1, 6)
        return x[..., :3], x[..., 3:]
