"""Camera geometry and image warping for self-supervised depth (NHWC, batched, jittable).

Numerically follows ManyDepth's ``layers.py`` (disparity scaling, axis-angle poses,
back-projection, projection to normalised pixel coordinates) and torch's
``F.grid_sample(..., mode="bilinear", align_corners=True)`` for both ``border`` and ``zeros``
padding, gradients included.

Conventions: ``K`` and ``inv_K`` are (B, 4, 4) pixel intrinsics of the image being warped,
``T`` is (B, 4, 4) taking points from the target camera to the source camera, pixel grids are
(B, H, W, 2) with x (column) first, normalised so -1 and +1 are the centres of the first and
last pixels.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

# Small 4x4 and 3x3 products: ask for full float32 so accelerators do not drop to bf16/tf32,
# which would move pixel coordinates by whole pixels at typical focal lengths.
_EXACT = jax.lax.Precision.HIGHEST

# The reference divides the rotation vector by (|v| + 1e-7) rather than |v|.
_AXIS_EPS = 1e-7

Padding = Literal["border", "zeros"]


def disp_to_depth(
    disp: jax.Array, min_depth: float, max_depth: float
) -> tuple[jax.Array, jax.Array]:
    """Map a sigmoid output in [0, 1] linearly onto disparities [1/max_depth, 1/min_depth].

    Returns ``(scaled_disp, depth)`` with ``depth = 1 / scaled_disp``.
    """
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def _safe_norm(vec: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis (kept), with torch's zero gradient at the origin."""
    squared = jnp.sum(vec * vec, axis=-1, keepdims=True)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def rot_from_axisangle(axisangle: jax.Array) -> jax.Array:
    """Rodrigues rotation of a (..., 3) axis-angle vector, as a (..., 4, 4) homogeneous matrix."""
    if axisangle.shape[-1] != 3:
        raise ValueError(f"rot_from_axisangle: last axis must be 3, got shape {axisangle.shape}")
    angle = _safe_norm(axisangle)
    axis = axisangle / (angle + _AXIS_EPS)
    cos_a = jnp.cos(angle)[..., 0]
    sin_a = jnp.sin(angle)[..., 0]
    one_minus_cos = 1.0 - cos_a
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    x_c, y_c, z_c = x * one_minus_cos, y * one_minus_cos, z * one_minus_cos
    xy_c, yz_c, zx_c = x * y_c, y * z_c, z * x_c
    x_s, y_s, z_s = x * sin_a, y * sin_a, z * sin_a
    zero = jnp.zeros_like(x)
    one = jnp.ones_like(x)
    rows = (
        (x * x_c + cos_a, xy_c - z_s, zx_c + y_s, zero),
        (xy_c + z_s, y * y_c + cos_a, yz_c - x_s, zero),
        (zx_c - y_s, yz_c + x_s, z * z_c + cos_a, zero),
        (zero, zero, zero, one),
    )
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def translation_matrix(translation: jax.Array) -> jax.Array:
    """(..., 3) translation vector as a (..., 4, 4) homogeneous matrix."""
    if translation.shape[-1] != 3:
        raise ValueError(f"translation_matrix: last axis must be 3, got shape {translation.shape}")
    eye = jnp.broadcast_to(jnp.eye(4, dtype=translation.dtype), translation.shape[:-1] + (4, 4))
    return eye.at[..., :3, 3].set(translation)


def transformation_from_parameters(
    axisangle: jax.Array, translation: jax.Array, invert: bool = False
) -> jax.Array:
    """Pose-net output ((..., 3) axis-angle, (..., 3) translation) as a (..., 4, 4) matrix.

    ``invert=False`` gives ``T(t) @ R``; ``invert=True`` gives the exact inverse
    ``R^T @ T(-t)``. The reference feeds ``axisangle[:, 0]`` of shape (B, 1, 3); pass
    ``axisangle[:, 0, 0]`` of shape (B, 3) here to get (B, 4, 4).
    """
    rotation = rot_from_axisangle(axisangle)
    if invert:
        rotation = jnp.swapaxes(rotation, -1, -2)
        return jnp.matmul(rotation, translation_matrix(-translation), precision=_EXACT)
    return jnp.matmul(translation_matrix(translation), rotation, precision=_EXACT)


def pixel_grid(height: int, width: int, dtype=jnp.float32) -> jax.Array:
    """(H, W, 3) homogeneous pixel coordinates (x, y, 1) of the pixel centres."""
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij"
    )
    return jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1)


def backproject_depth(depth: jax.Array, inv_K: jax.Array) -> jax.Array:
    """Lift a depth map (B, H, W) or (B, H, W, 1) to homogeneous camera points (B, H, W, 4)."""
    if depth.ndim == 4:
        if depth.shape[-1] != 1:
            raise ValueError(f"backproject_depth: depth must have 1 channel, got {depth.shape}")
        depth = depth[..., 0]
    if depth.ndim != 3:
        raise ValueError(f"backproject_depth: depth must be (B,H,W[,1]), got {depth.shape}")
    _, height, width = depth.shape
    rays = jnp.einsum(
        "bij,hwj->bhwi", inv_K[:, :3, :3], pixel_grid(height, width, depth.dtype), precision=_EXACT
    )
    points = depth[..., None] * rays
    return jnp.concatenate([points, jnp.ones_like(points[..., :1])], axis=-1)


def project_points(points: jax.Array, K: jax.Array, T: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Project homogeneous points (B, H, W, 4) through ``K @ T`` to a grid_sample grid.

    Returns (B, H, W, 2), x first, scaled so pixel 0 maps to -1 and pixel W-1 (H-1) to +1.
    Like the reference, ``eps`` is added to z (not clamped), so points behind the camera
    land on the far side of the image rather than being rejected.
    """
    _, height, width, _ = points.shape
    projection = jnp.matmul(K, T, precision=_EXACT)[:, :3, :]
    cam = jnp.einsum("bij,bhwj->bhwi", projection, points, precision=_EXACT)
    pix = cam[..., :2] / (cam[..., 2:3] + eps)
    scale = jnp.asarray([width - 1, height - 1], dtype=pix.dtype)
    return (pix / scale - 0.5) * 2.0


def _unnormalise(coord: jax.Array, size: int, padding: Padding) -> jax.Array:
    """Normalised coordinate to pixel units, clipped into a NaN/overflow-safe range.

    For border padding, positions at or beyond the edge are clamped with the gradient stopped,
    as torch treats the border itself as outside for the gradient. For zeros padding, anything
    at or beyond -1 or ``size`` has all its weight on outside (zero) taps, so clamping to
    [-1, size] changes no value, stops the gradient where torch's is zero too, and keeps
    ``floor`` and the int cast in range.
    """
    pixel = (coord + 1.0) * (0.5 * (size - 1))
    # NaN coordinates (e.g. 0/0 in a projection) are treated as far outside the image.
    pixel = jnp.where(jnp.isnan(pixel), -2.0, pixel)
    if padding == "border":
        inside = (pixel > 0) & (pixel < size - 1)
        clamped = jax.lax.stop_gradient(jnp.clip(pixel, 0.0, size - 1.0))
        return jnp.where(inside, pixel, clamped)
    return jnp.clip(pixel, -1.0, float(size))


# One gather of each output pixel's 2x2 neighbourhood from a (H, W, C) image: start (row, col).
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(1, 2, 3), collapsed_slice_dims=(), start_index_map=(0, 1))


def grid_sample(image: jax.Array, grid: jax.Array, padding: Padding = "border") -> jax.Array:
    """Bilinear sampling of ``image`` (B, H, W, C) at ``grid`` (B, Ho, Wo, 2) in [-1, 1].

    Equal to torch ``F.grid_sample(mode="bilinear", align_corners=True)`` with
    ``padding_mode`` ``"border"`` or ``"zeros"``, in value and in the gradients with respect
    to image and grid. Implemented as one gather of 2x2 windows from the image padded by one
    pixel (zeros, or edge copies for border padding), so every window is in range and
    out-of-image taps read the padding value without a validity mask.
    """
    if padding not in ("border", "zeros"):
        raise ValueError(f"grid_sample: padding must be 'border' or 'zeros', got {padding!r}")
    if image.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(
            f"grid_sample: need image (B,H,W,C) and grid (B,Ho,Wo,2), got {image.shape}, "
            f"{grid.shape}"
        )
    if image.shape[0] != grid.shape[0]:
        raise ValueError(f"grid_sample: batch mismatch {image.shape[0]} vs {grid.shape[0]}")
    batch, height, width, channels = image.shape
    _, out_h, out_w, _ = grid.shape

    x = _unnormalise(grid[..., 0], width, padding)
    y = _unnormalise(grid[..., 1], height, padding)
    mode = "constant" if padding == "zeros" else "edge"
    padded = jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode)
    # Two extra channels carry each padded pixel's own (x, y) coordinate. The weights below are
    # computed from the coordinates *gathered with the values*, not from a second floor():
    # XLA's CPU backend may recompute x in several fusions with different rounding, and floor
    # would then disagree between index and weight by a whole pixel. With gathered coordinates
    # an off-by-one index near an integer x just moves the same weight to the same pixel.
    xs = jnp.arange(-1, width + 1, dtype=image.dtype)
    ys = jnp.arange(-1, height + 1, dtype=image.dtype)
    coords = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)
    source = jnp.concatenate(
        [padded, jnp.broadcast_to(coords[None], (batch, height + 2, width + 2, 2))], axis=-1)
    # Window start in the padded image; [0, size] keeps both taps in range whatever x rounds to.
    col0 = jnp.clip(jax.lax.stop_gradient(jnp.floor(x)).astype(jnp.int32) + 1, 0, width)
    row0 = jnp.clip(jax.lax.stop_gradient(jnp.floor(y)).astype(jnp.int32) + 1, 0, height)
    starts = jnp.stack([row0, col0], axis=-1).reshape(batch, out_h * out_w, 2)
    windows = jax.vmap(lambda img, start: jax.lax.gather(
        img, start, _WINDOW_GATHER, (2, 2, channels + 2), mode="promise_in_bounds"))(
        source, starts)
    windows = windows.reshape(batch, out_h, out_w, 2, 2, channels + 2)
    # torch's weights: (x1 - x) for the low tap, (x - x0) for the high one, x0 and y0 read
    # from the top-left tap.
    tap_x = jax.lax.stop_gradient(windows[:, :, :, 0, 0, channels])
    tap_y = jax.lax.stop_gradient(windows[:, :, :, 0, 0, channels + 1])
    weight_x = (tap_x + 1.0 - x, x - tap_x)
    weight_y = (tap_y + 1.0 - y, y - tap_y)
    out = None
    for d_row in (0, 1):
        for d_col in (0, 1):
            weight = (weight_y[d_row] * weight_x[d_col])[..., None]
            contribution = windows[:, :, :, d_row, d_col, :channels] * weight
            out = contribution if out is None else out + contribution
    return out


def warp_frame(
    image: jax.Array,
    depth: jax.Array,
    T: jax.Array,
    K: jax.Array,
    inv_K: jax.Array,
    padding: Padding = "border",
) -> tuple[jax.Array, jax.Array]:
    """Resample a source ``image`` into the target view given target ``depth`` and pose ``T``.

    Returns ``(warped (B, H, W, C), pix_coords (B, H, W, 2))``; ``depth`` is at the target
    resolution and ``K``/``inv_K`` are the intrinsics at that resolution.
    """
    points = backproject_depth(depth, inv_K)
    pix_coords = project_points(points, K, T)
    return grid_sample(image, pix_coords, padding), pix_coords
