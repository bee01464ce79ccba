"""Photometric and ManyDepth loss pieces as small pure functions (NHWC).

Each function is one step of ManyDepth's ``Trainer.compute_losses`` (or of the SSIM and
smoothness layers it uses); a separate module composes them into the multi-scale total. Where
the reference detaches a tensor, the function applies ``jax.lax.stop_gradient`` at the same
place and says so in its docstring.

How the reference combines them for one scale (all maps at the full training resolution):

* candidates: ``reprojection_error(warped_f, target)`` for each source frame f, and
  ``reprojection_error(source_f, target)`` for the identity (unwarped) candidates;
* ``reprojection = per_pixel_minimum(candidates)``, ``identity = per_pixel_minimum(identities)``;
* the teacher (single-frame network): mask = ``automask(reprojection, identity, noise)``;
  the student (multi-frame network): the automask is computed but then *replaced* by
  ``student_masks(consistency_mask, augmentation_mask)``, where ``consistency_mask`` is the
  nearest-upsampled cost-volume confidence times ``compute_matching_mask(...)``;
* ``masked_mean(reprojection, mask)`` + (student only)
  ``consistency_loss(student_depth, teacher_depth, 1 - mask)`` +
  ``smoothness_weight * smoothness_loss(normalise_disparity(disp_s), color_s) / 2**s`` with the
  network's own disparity and the target image at that scale's resolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_WEIGHT = 0.85
# Standard deviation of the Gaussian noise the reference adds to identity losses.
TIE_BREAK_STD = 1e-5
# Denominator guards used by the reference.
MASKED_MEAN_EPS = 1e-7
DISP_NORM_EPS = 1e-7


def _abs(x: jax.Array) -> jax.Array:
    """``|x|`` with torch's gradient ``sign(x)``, i.e. 0 at x == 0 (``jnp.abs`` gives 1 there).

    Exact ties are common in practice (saturated pixels, identical static frames), so the
    subgradient choice changes training gradients, not just corner cases.
    """
    return x * jax.lax.stop_gradient(jnp.sign(x))


def _box3(x: jax.Array) -> jax.Array:
    """3x3 mean with stride 1 and no padding over axes 1 and 2 (H, W shrink by 2 each).

    One ``reduce_window`` sum: its gradient is one more windowed sum, where nine shifted
    slices (torch's tap-by-tap order) differentiate into nine pads and adds; on a CPU that
    made SSIM's backward pass 6x slower, for a rounding difference of about 1e-7.
    """
    window = (1, 3, 3) + (1,) * (x.ndim - 3)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * x.ndim, "VALID")
    return total / 9.0


def ssim_dissimilarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-pixel, per-channel ``clip((1 - SSIM(x, y)) / 2, 0, 1)`` of two (B, H, W, C) images.

    Local statistics are 3x3 means over reflection-padded inputs (padding of 1, edge pixel not
    repeated), with the usual constants C1 = 0.01**2 and C2 = 0.03**2.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"ssim_dissimilarity: need equal (B,H,W,C) shapes, got {x.shape}, {y.shape}"
        )
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    x = jnp.pad(x, pad, mode="reflect")
    y = jnp.pad(y, pad, mode="reflect")
    mu_x = _box3(x)
    mu_y = _box3(y)
    # E[x^2] - E[x]^2 cancels heavily in flat regions: float32 rounding (summation order, the
    # FMAs XLA forms on CPU) moves the result by up to ~1e-4 absolute, as much as the
    # float32 reference itself differs from a float64 evaluation.
    sigma_x = _box3(x * x) - mu_x * mu_x
    sigma_y = _box3(y * y) - mu_y * mu_y
    sigma_xy = _box3(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return jnp.clip((1 - numerator / denominator) / 2, 0.0, 1.0)


def reprojection_error(pred: jax.Array, target: jax.Array, use_ssim: bool = True) -> jax.Array:
    """Photometric error (B, H, W, 1): 0.85 * mean_c SSIM term + 0.15 * mean_c |pred - target|.

    ``use_ssim=False`` gives the plain channel-mean L1 (the reference's ``--no_ssim``).
    """
    l1 = jnp.mean(_abs(target - pred), axis=-1, keepdims=True)
    if not use_ssim:
        return l1
    ssim = jnp.mean(ssim_dissimilarity(pred, target), axis=-1, keepdims=True)
    return SSIM_WEIGHT * ssim + (1 - SSIM_WEIGHT) * l1


def normalise_disparity(disp: jax.Array) -> jax.Array:
    """Divide a (B, H, W, 1) disparity by its per-image spatial mean (+1e-7)."""
    mean = jnp.mean(disp, axis=(1, 2), keepdims=True)
    return disp / (mean + DISP_NORM_EPS)


def smoothness_loss(disp: jax.Array, image: jax.Array) -> jax.Array:
    """Edge-aware first-order smoothness of ``disp`` (B, H, W, 1) guided by ``image``.

    ``mean(|dx disp| * exp(-mean_c |dx image|)) + mean(|dy disp| * exp(-mean_c |dy image|))``;
    the image must be at the disparity's resolution. Callers normalise the disparity first
    (see ``normalise_disparity``), as the reference trainer does.
    """
    if disp.shape[:3] != image.shape[:3]:
        raise ValueError(
            f"smoothness_loss: disp {disp.shape} and image {image.shape} differ in (B,H,W)"
        )
    disp_dx = _abs(disp[:, :, :-1] - disp[:, :, 1:])
    disp_dy = _abs(disp[:, :-1] - disp[:, 1:])
    image_dx = jnp.mean(_abs(image[:, :, :-1] - image[:, :, 1:]), axis=-1, keepdims=True)
    image_dy = jnp.mean(_abs(image[:, :-1] - image[:, 1:]), axis=-1, keepdims=True)
    return jnp.mean(disp_dx * jnp.exp(-image_dx)) + jnp.mean(disp_dy * jnp.exp(-image_dy))


def per_pixel_minimum(candidates: jax.Array, average: bool = False) -> jax.Array:
    """Reduce (B, H, W, N) candidate losses to (B, H, W, 1) by min (or mean if ``average``).

    The minimum is ManyDepth's default; ``average=True`` is its ``--avg_reprojection``.
    """
    if average:
        return jnp.mean(candidates, axis=-1, keepdims=True)
    return jnp.min(candidates, axis=-1, keepdims=True)


def tie_break_noise(rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Gaussian noise (std 1e-5) that the reference adds to identity losses to break ties."""
    return TIE_BREAK_STD * jax.random.normal(rng, shape, dtype)


def automask(
    reprojection: jax.Array, identity: jax.Array, noise: jax.Array | None = None
) -> jax.Array:
    """Monodepth2 auto-mask: 1.0 where warping beats not moving at all, else 0.0.

    ``identity`` is the per-pixel minimum over the unwarped source frames; ``noise`` (e.g.
    ``tie_break_noise``) is added to it first, ``None`` adds nothing. Ties go to the warped
    loss (the reference takes the first arg-min of ``[reprojection, identity]``). The mask is
    a comparison, so it carries no gradient.
    """
    if noise is not None:
        identity = identity + noise
    return (reprojection <= identity).astype(reprojection.dtype)


def masked_mean(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(loss * mask) / (sum(mask) + 1e-7)`` over every element (batch included)."""
    return jnp.sum(loss * mask) / (jnp.sum(mask) + MASKED_MEAN_EPS)


def compute_matching_mask(teacher_depth: jax.Array, lowest_cost: jax.Array) -> jax.Array:
    """Where the cost volume agrees with the teacher: 1.0 if neither depth exceeds twice the other.

    ``teacher_depth`` is the teacher's full-resolution depth at scale 0 and ``lowest_cost`` the
    cost volume's arg-min *disparity* (``1 / depth``) upsampled (nearest) to the same size;
    both (B, H, W, 1). The reference tests ``(d_cv - d_teacher) / d_teacher < 1`` and
    ``(d_teacher - d_cv) / d_cv < 1``. A comparison has no gradient; both inputs are also
    stopped so no gradient can leak through any later arithmetic on them.
    """
    teacher_depth = jax.lax.stop_gradient(teacher_depth)
    matching_depth = 1.0 / jax.lax.stop_gradient(lowest_cost)
    agree = (((matching_depth - teacher_depth) / teacher_depth) < 1.0) & (
        ((teacher_depth - matching_depth) / matching_depth) < 1.0
    )
    return agree.astype(teacher_depth.dtype)


def student_masks(
    consistency_mask: jax.Array, augmentation_mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The student's (reprojection mask, consistency-loss mask).

    The student's loss does not use the auto-mask: its reprojection mask is
    ``consistency_mask`` ((B, H, W, 1): nearest-upsampled cost-volume confidence times
    ``compute_matching_mask``; pass ones for ``--disable_motion_masking``) times
    ``1 - augmentation_mask`` ((B, 1, 1, 1), 1 for images whose lookup frames were replaced by
    the target or whose poses were zeroed; ``None`` for ``--no_matching_augmentation``). The
    consistency-loss mask is its complement. Both are stopped: they are 0/1 selections.
    """
    mask = consistency_mask
    if augmentation_mask is not None:
        mask = mask * (1.0 - augmentation_mask)
    mask = jax.lax.stop_gradient(mask)
    return mask, 1.0 - mask


def consistency_loss(student_depth: jax.Array, teacher_depth: jax.Array,
                     mask: jax.Array) -> jax.Array:
    """Pull the student's depth towards the teacher's where ``mask`` is 1.

    ``mean(|student_depth - stop_gradient(teacher_depth)| * mask)`` over *all* pixels (not
    over the mask): depths (B, H, W, 1) at full resolution for the same scale; the teacher is
    detached as in the reference.
    """
    teacher_depth = jax.lax.stop_gradient(teacher_depth)
    return jnp.mean(_abs(student_depth - teacher_depth) * mask)
