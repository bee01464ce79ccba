"""ResNet-18/50 encoders with the feature pyramid ManyDepth's decoders consume.

Parameter names follow torchvision's (``conv1``, ``bn1``, ``layer1_0``, ``downsample_conv``…)
so the converter maps a state_dict key to a Flax path by renaming only.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mal_jax.models.layers import TorchBatchNorm, conv, imagenet_normalise
from mal_jax.models.pooling import max_pool

# Blocks per stage of the supported depths.
RESNET_STAGES = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def encoder_channels(num_layers: int) -> tuple[int, ...]:
    """Channels of the five features (1/2, 1/4, 1/8, 1/16, 1/32 resolution)."""
    if num_layers not in RESNET_STAGES:
        raise ValueError(f"num_layers={num_layers}: only ResNet-18 and ResNet-50 are supported")
    expansion = 4 if num_layers == 50 else 1
    return (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1-projected) shortcut."""

    features: int
    stride: int = 1
    update_order: tuple[int, ...] = (0,)  # TorchBatchNorm's
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = conv(self.features, 3, self.stride, 1, use_bias=False, name="conv1")(x)
        out = nn.relu(TorchBatchNorm(update_order=self.update_order, name="bn1")(out, train))
        out = conv(self.features, 3, 1, 1, use_bias=False, name="conv2")(out)
        out = TorchBatchNorm(update_order=self.update_order, name="bn2")(out, train)
        return nn.relu(out + _shortcut(self, x, self.features, train))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision v1.5), 1x1 expand by 4."""

    features: int
    stride: int = 1
    update_order: tuple[int, ...] = (0,)  # TorchBatchNorm's
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        out = conv(self.features, 1, use_bias=False, name="conv1")(x)
        out = nn.relu(TorchBatchNorm(update_order=self.update_order, name="bn1")(out, train))
        out = conv(self.features, 3, self.stride, 1, use_bias=False, name="conv2")(out)
        out = nn.relu(TorchBatchNorm(update_order=self.update_order, name="bn2")(out, train))
        out = conv(self.features * 4, 1, use_bias=False, name="conv3")(out)
        out = TorchBatchNorm(update_order=self.update_order, name="bn3")(out, train)
        return nn.relu(out + _shortcut(self, x, self.features * 4, train))


def _shortcut(block: nn.Module, x: jnp.ndarray, out_features: int, train: bool) -> jnp.ndarray:
    """torchvision projects the shortcut whenever the shape changes.

    Called from inside ``block``'s compact ``__call__``, so the layers it creates belong to it.
    """
    if block.stride == 1 and x.shape[-1] == out_features:
        return x
    out = conv(out_features, 1, block.stride, use_bias=False, name="downsample_conv")(x)
    return TorchBatchNorm(update_order=block.update_order, name="downsample_bn")(out, train)


class ResNetStage(nn.Module):
    """One torchvision ``layerN``: ``blocks`` residual blocks, the first one strided."""

    num_layers: int
    features: int
    blocks: int
    stride: int
    update_order: tuple[int, ...] = (0,)  # TorchBatchNorm's

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        block = Bottleneck if self.num_layers == 50 else BasicBlock
        for index in range(self.blocks):
            x = block(self.features, self.stride if index == 0 else 1, self.update_order,
                      name=str(index))(x, train)
        return x


class ResNetStem(nn.Module):
    """conv1 (7x7, stride 2) + bn1 + ReLU: the 1/2-resolution feature."""

    update_order: tuple[int, ...] = (0,)  # TorchBatchNorm's

    @nn.compact
    def __call__(self, image: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = conv(64, 7, 2, 3, use_bias=False, name="conv1")(image)
        return nn.relu(TorchBatchNorm(update_order=self.update_order, name="bn1")(x, train))


class ResnetEncoder(nn.Module):
    """ResNet encoder returning five features; ``num_input_images`` frames stacked on channels.

    The pose network uses ``num_input_images=2`` (6 input channels). ``update_order``: the
    batch holds interleaved groups that BatchNorm treats as separate calls (TorchBatchNorm).
    """

    num_layers: int = 18
    num_input_images: int = 1
    update_order: tuple[int, ...] = (0,)

    @nn.compact
    def __call__(self, image: jnp.ndarray, train: bool) -> list[jnp.ndarray]:
        expected = 3 * self.num_input_images
        if image.shape[-1] != expected:
            raise ValueError(f"ResnetEncoder expects {expected} input channels, got {image.shape}")
        stages = RESNET_STAGES[self.num_layers]
        features = [ResNetStem(self.update_order, name="stem")(imagenet_normalise(image), train)]
        x = max_pool(features[0])
        for index, (blocks, width) in enumerate(zip(stages, (64, 128, 256, 512), strict=True)):
            x = ResNetStage(self.num_layers, width, blocks, 1 if index == 0 else 2,
                            self.update_order, name=f"layer{index + 1}")(x, train)
            features.append(x)
        return features
