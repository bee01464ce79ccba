"""ManyDepth's matching encoder: ResNet features with a cost volume built after ``layer1``.

The cost volume is a plane sweep at 1/4 resolution: for each hypothesised depth, lookup-frame
features are warped into the current frame and compared with an L1 distance. As in the
reference, nothing in the cost volume carries a gradient (it is built under ``no_grad`` there),
so the network learns to use it but never shapes it directly.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mal_jax.core import geometry
from mal_jax.models.layers import conv, imagenet_normalise
from mal_jax.models.pooling import max_pool
from mal_jax.models.resnet import (
    RESNET_STAGES,
    ResNetStage,
    ResNetStem,
    encoder_channels,
)

# Pixels this close to the border of either feature map are ignored: ResNet's zero padding
# makes their features unreliable.
BORDER_MARGIN = 2
# Stand-in for "no cost" when looking for the lowest cost (the reference's visualisation value).
NO_COST = 100.0
# Depth planes warped per iteration of the cost-volume loop (a divisor of the bin count is used).
BINS_PER_CHUNK = 4


def depth_bins(min_depth: jnp.ndarray, max_depth: jnp.ndarray, num_bins: int,
               inverse: bool = False) -> jnp.ndarray:
    """Hypothesised depths, increasing; linear in depth or in inverse depth."""
    if inverse:
        return 1.0 / jnp.linspace(1.0 / max_depth, 1.0 / min_depth, num_bins)[::-1]
    return jnp.linspace(min_depth, max_depth, num_bins)


def _bins_per_chunk(num_bins: int) -> int:
    """Largest divisor of ``num_bins`` not above ``BINS_PER_CHUNK``."""
    return max(n for n in range(1, min(BINS_PER_CHUNK, num_bins) + 1) if num_bins % n == 0)


def _single_cost_volume(current_feats, lookup_feats, lookup_poses, K, inv_K, bins):
    """Cost volume of one sample: (h, w, C) current, (N, h, w, C) lookups -> (h, w, D)."""
    height, width, _ = current_feats.shape
    num_bins = bins.shape[0]
    ys = jnp.arange(height)[:, None]
    xs = jnp.arange(width)[None, :]
    current_valid = ((ys >= BORDER_MARGIN) & (ys < height - BORDER_MARGIN)
                     & (xs >= BORDER_MARGIN) & (xs < width - BORDER_MARGIN))

    def chunk_diffs(chunk_bins):
        """(N, n, h, w) mean absolute feature differences for ``n`` depth planes."""
        num = chunk_bins.shape[0]
        planes = jnp.broadcast_to(chunk_bins[:, None, None], (num, height, width))
        points = geometry.backproject_depth(planes, jnp.broadcast_to(inv_K, (num, 4, 4)))

        def one_lookup(feats, pose):
            coords = geometry.project_points(points, jnp.broadcast_to(K, (num, 4, 4)),
                                             jnp.broadcast_to(pose, (num, 4, 4)))
            # One image, the chunk's planes stacked along the grid's rows: no feature copies.
            warped = geometry.grid_sample(feats[None], coords.reshape(1, num * height, width, 2),
                                          padding="zeros").reshape(num, height, width, -1)
            x_pix = (coords[..., 0] / 2 + 0.5) * (width - 1)
            y_pix = (coords[..., 1] / 2 + 0.5) * (height - 1)
            lookup_valid = ((x_pix >= BORDER_MARGIN) & (x_pix <= width - BORDER_MARGIN)
                            & (y_pix >= BORDER_MARGIN) & (y_pix <= height - BORDER_MARGIN))
            # A lookup frame whose pose sums to zero is missing (start of a sequence, or the
            # matching augmentation): it contributes nothing.
            present = jnp.sum(pose) != 0
            valid = lookup_valid & current_valid[None] & present
            return jnp.mean(jnp.abs(warped - current_feats[None]), axis=-1) * valid

        return jax.vmap(one_lookup)(lookup_feats, lookup_poses)

    # A few planes at a time: each chunk's warped features (n, h, w, C) stay in the CPU's
    # cache instead of all 96 planes' going through memory (2x faster at 96x320 on a CPU).
    per_chunk = _bins_per_chunk(num_bins)
    chunks = jax.lax.map(chunk_diffs, bins.reshape(num_bins // per_chunk, per_chunk))
    diffs = jnp.moveaxis(chunks, 1, 0).reshape(chunks.shape[1], num_bins, height, width)
    counts = jnp.sum((diffs > 0).astype(jnp.float32), axis=0)
    cost = jnp.sum(diffs, axis=0) / (counts + 1e-7)
    missing = cost == 0
    # Depths that landed outside every lookup frame get the pixel's worst observed cost.
    cost = jnp.where(missing, jnp.max(cost, axis=0, keepdims=True), cost)
    confidence = jnp.all((cost * ~missing) > 0, axis=0)
    lowest = jnp.argmin(jnp.where(cost == 0, NO_COST, cost), axis=0)
    lowest_cost = 1.0 / bins[lowest]
    return jnp.moveaxis(cost, 0, -1), confidence.astype(jnp.float32), lowest_cost


def cost_volume(current_feats: jnp.ndarray, lookup_feats: jnp.ndarray,
                lookup_poses: jnp.ndarray, K: jnp.ndarray, inv_K: jnp.ndarray,
                bins: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Batched plane-sweep cost volume.

    Args:
      current_feats: (B, h, w, C) features of the current frame.
      lookup_feats: (B, N, h, w, C) features of N lookup frames.
      lookup_poses: (B, N, 4, 4) transforms from current-camera to lookup-camera coordinates;
        an all-zero pose marks a missing frame.
      K, inv_K: (B, 4, 4) intrinsics at the features' resolution.
      bins: (D,) depths.

    Returns:
      cost (B, h, w, D) with missing entries set to the per-pixel maximum, the confidence mask
      (B, h, w; 1 where every depth was observed) and the lowest-cost disparity (B, h, w).
    """
    return jax.vmap(_single_cost_volume, in_axes=(0, 0, 0, 0, 0, None))(
        current_feats, lookup_feats, lookup_poses, K, inv_K, bins)


class MatchingEncoder(nn.Module):
    """ResNet encoder with a cost volume after ``layer1`` (ManyDepth's ResnetEncoderMatching).

    Returns the five features for the depth decoder, the lowest-cost disparity and the confidence
    mask, both at 1/4 resolution. Any number of lookup frames.
    """

    num_layers: int = 18
    num_depth_bins: int = 96
    inverse_depth_bins: bool = False

    @nn.compact
    def __call__(self, image, lookup_images, lookup_poses, K, inv_K, min_depth_bin,
                 max_depth_bin, train: bool):
        if self.num_layers not in RESNET_STAGES:
            raise ValueError(f"num_layers={self.num_layers}: only ResNet-18 and -50 supported")
        stages = RESNET_STAGES[self.num_layers]
        channels = encoder_channels(self.num_layers)
        stem = ResNetStem(name="stem")
        layer1 = ResNetStage(self.num_layers, 64, stages[0], 1, name="layer1")

        def extract(frames):
            feats0 = stem(imagenet_normalise(frames), train)
            return feats0, layer1(max_pool(feats0), train)

        feats0, feats1 = extract(image)
        batch, num_lookup, height, width, _ = lookup_images.shape
        # The lookup pass runs in training mode too (its BatchNorm statistics update, as in the
        # reference) but is cut from the gradient.
        _, lookup_feats = extract(lookup_images.reshape(batch * num_lookup, height, width, 3))
        lookup_feats = jax.lax.stop_gradient(lookup_feats)
        lookup_feats = lookup_feats.reshape((batch, num_lookup) + lookup_feats.shape[1:])

        bins = depth_bins(min_depth_bin, max_depth_bin, self.num_depth_bins,
                          self.inverse_depth_bins)
        # The cost volume stays in float32 (at least) when the network computes in bfloat16:
        # its arg-min picks among 96 close costs.
        volume_dtype = jnp.promote_types(feats1.dtype, jnp.float32)
        cost, confidence, lowest_cost = jax.lax.stop_gradient(cost_volume(
            feats1.astype(volume_dtype), lookup_feats.astype(volume_dtype), lookup_poses, K,
            inv_K, bins))
        cost = (cost * confidence[..., None]).astype(feats1.dtype)
        x = nn.relu(conv(channels[1], 3, 1, 1, name="reduce_conv")(
            jnp.concatenate([feats1, cost], axis=-1)))
        features = [feats0, feats1]
        for index, width_ in enumerate((128, 256, 512)):
            x = ResNetStage(self.num_layers, width_, stages[index + 1], 2,
                            name=f"layer{index + 2}")(x, train)
            features.append(x)
        return features, lowest_cost, confidence
