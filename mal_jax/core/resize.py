"""Resizing of network outputs and images between the decoder scales, as the reference does.

Depth is predicted at four scales (1/2^s); the losses upsample each scale's disparity to the
input size (bilinear) and the cost-volume maps by repetition (nearest), and the smoothness term
compares a scale's disparity with the image box-averaged to that scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def downsample_image(image: jnp.ndarray, scale: int) -> jnp.ndarray:
    """Image at 1/2^scale resolution by 2^s x 2^s box averaging (the smoothness term's colour)."""
    if scale == 0:
        return image
    factor = 2**scale
    batch, height, width, channels = image.shape
    blocks = image.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(2, 4))


def upsample_bilinear(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """torch ``interpolate(mode='bilinear', align_corners=False)`` for integer upscaling."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear",
                            antialias=False)


def upsample_nearest_to(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """torch ``interpolate(mode='nearest')`` for an integer factor, on (B, h, w) maps."""
    factor_y, factor_x = height // x.shape[1], width // x.shape[2]
    return jnp.repeat(jnp.repeat(x, factor_y, axis=1), factor_x, axis=2)
