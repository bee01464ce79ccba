"""Per-sample preprocessing ops on common-format dicts (graph-safe TensorFlow, pure functions).

Every op takes a sample dict (and, where random, a stateless key) and returns a new dict, so
the same code runs eagerly and inside ``tf.data`` maps with identical results. Randomness is
drawn only from ``tf.random.stateless_*`` keyed by ``sample_key(seed, epoch, index)``, which
makes order, augmentation and resume deterministic.

Reference behaviour reproduced (ManyDepth ``mono_dataset.py`` with the torchvision it was
written for): a horizontal flip and a colour jitter, each with probability 0.5; the jitter's
four factors (brightness, contrast, saturation in [0.8, 1.2], hue in [-0.1, 0.1]) and its
random op order are drawn ONCE per sample and applied to every frame; an all-black frame (the
reference's placeholder for a missing neighbour) is left black. The ops follow Pillow's 8-bit
arithmetic (truncating blends, Pillow's HSV quantisation) so ``frames_aug`` lands within a level
of what the reference's PIL pipeline produces. The reference does NOT move the principal point
when it flips; ``random_flip(..., flip_intrinsics=True)`` is an opt-in correction.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BRIGHTNESS_RANGE = (0.8, 1.2)
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_RANGE = (-0.1, 0.1)
NUM_SCALES = 4

# Pillow's ITU-R 601-2 luma ("L" conversion) in 16-bit fixed point.
_LUMA_FIXED = (19595.0, 38470.0, 7471.0)


# --------------------------------------------------------------------------- keys


def sample_key(seed: int, epoch, index) -> tf.Tensor:
    """Stateless key (shape [2], int64) for one sample of one epoch."""
    base = tf.constant([seed, 0x5EED], dtype=tf.int64)
    key = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


def _split_key(key: tf.Tensor, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(key, num=num)


# --------------------------------------------------------------------------- intrinsics


def intrinsics_pyramid(
    k_normalised: np.ndarray, height: int, width: int, num_scales: int = NUM_SCALES
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel intrinsics and their pseudo-inverses for scales 0..num_scales-1 (host, numpy).

    As the reference: row 0 of the normalised 4x4 K times ``width // 2**s``, row 1 times
    ``height // 2**s`` (integer division), inverse by ``np.linalg.pinv`` in float32.
    """
    k_normalised = np.asarray(k_normalised, dtype=np.float32)
    if k_normalised.shape != (4, 4):
        raise ValueError(f"intrinsics_pyramid: K must be 4x4, got shape {k_normalised.shape}")
    ks, inv_ks = [], []
    for scale in range(num_scales):
        k = k_normalised.copy()
        k[0, :] *= width // (2**scale)
        k[1, :] *= height // (2**scale)
        ks.append(k)
        inv_ks.append(np.linalg.pinv(k).astype(np.float32))
    return np.stack(ks), np.stack(inv_ks)


def flipped_intrinsics(k: tf.Tensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """K (S, 4, 4) for horizontally flipped images: cx -> (W_s - 1) - cx, and inverses.

    Pixel centres sit at integer coordinates in the reference's backprojection grid, so a
    mirror maps u to W_s - 1 - u.
    """
    num_scales = k.shape[0]
    widths = tf.constant([float(width // (2**s)) for s in range(num_scales)], tf.float32)
    new_cx = widths - 1.0 - k[:, 0, 2]
    index = tf.stack(
        [tf.range(num_scales), tf.zeros([num_scales], tf.int32), tf.fill([num_scales], 2)], axis=1
    )
    k = tf.tensor_scatter_nd_update(k, index, new_cx)
    return k, tf.linalg.inv(k)


# --------------------------------------------------------------------------- flip


def flip_sample(sample: dict, flip_intrinsics: bool = False) -> dict:
    """Mirror every image-like entry left-right (frames, masks, GT maps) together, and the
    true poses (synthetic data) with them."""
    out = dict(sample)
    for name in ("frames", "frames_aug", "instance_ids"):
        if name in out:
            out[name] = tf.reverse(out[name], axis=[2])
    for name in ("depth_gt", "moving_mask"):
        if name in out:
            out[name] = tf.reverse(out[name], axis=[1])
    if flip_intrinsics:
        width = int(out["frames"].shape[2])
        out["K"], out["inv_K"] = flipped_intrinsics(out["K"], width)
    if "cam_T_cam" in out:
        # The true motion of the mirrored camera: x negated on both sides, M T M with
        # M = diag(-1, 1, 1, 1) (sideways translation and yaw change sign).
        mirror = tf.constant([-1.0, 1.0, 1.0, 1.0], out["cam_T_cam"].dtype)
        out["cam_T_cam"] = out["cam_T_cam"] * mirror[:, None] * mirror[None, :]
    return out


def random_flip(
    sample: dict, key: tf.Tensor, flip_intrinsics: bool = False, probability: float = 0.5
) -> dict:
    """Flip with the given probability (the reference: ``random() > 0.5``)."""
    do_flip = tf.random.stateless_uniform([], seed=key) < probability
    return tf.cond(do_flip, lambda: flip_sample(sample, flip_intrinsics), lambda: dict(sample))


# --------------------------------------------------------------------------- colour jitter


def _luma(levels: tf.Tensor) -> tf.Tensor:
    """Pillow's RGB -> L on 8-bit levels (rounded fixed point), shape (..., H, W, 1)."""
    r, g, b = tf.unstack(levels, axis=-1)
    luma = tf.floor(
        (r * _LUMA_FIXED[0] + g * _LUMA_FIXED[1] + b * _LUMA_FIXED[2] + 32768.0) / 65536.0
    )
    return luma[..., None]


def _blend(degenerate: tf.Tensor, levels: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Pillow's ``Image.blend``: d + f (x - d), clipped to [0, 255] and truncated."""
    return tf.floor(tf.clip_by_value(degenerate + factor * (levels - degenerate), 0.0, 255.0))


def _adjust_brightness(levels, factor):
    return _blend(tf.zeros_like(levels), levels, factor)


def _adjust_contrast(levels, factor):
    # One mean per frame (each frame is a separate PIL image in the reference).
    mean = tf.reduce_mean(_luma(levels), axis=(-3, -2, -1), keepdims=True)
    return _blend(tf.floor(mean + 0.5), levels, factor)


def _adjust_saturation(levels, factor):
    return _blend(_luma(levels), levels, factor)


def _rgb_to_hsv_levels(levels):
    # Pillow mixes float32 ratios with double-precision scaling; mirroring that precision
    # keeps hue levels from flipping at integer boundaries.
    r, g, b = tf.unstack(levels, axis=-1)
    maxc = tf.maximum(r, tf.maximum(g, b))
    minc = tf.minimum(r, tf.minimum(g, b))
    span = maxc - minc
    grey = span == 0.0
    safe_span = tf.where(grey, 1.0, span)
    sat = span / tf.where(maxc == 0.0, 1.0, maxc)
    rc, gc, bc = (maxc - r) / safe_span, (maxc - g) / safe_span, (maxc - b) / safe_span
    rc, gc, bc = (tf.cast(c, tf.float64) for c in (rc, gc, bc))
    hue = tf.where(r == maxc, bc - gc, tf.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = tf.cast(hue, tf.float32)
    hue = tf.cast(tf.math.floormod(tf.cast(hue, tf.float64) / 6.0 + 1.0, 1.0), tf.float32)
    hue_level = tf.floor(tf.cast(hue, tf.float64) * 255.0)
    sat_level = tf.floor(tf.cast(sat, tf.float64) * 255.0)
    hue_level = tf.where(grey, 0.0, tf.clip_by_value(tf.cast(hue_level, tf.float32), 0.0, 255.0))
    sat_level = tf.where(grey, 0.0, tf.clip_by_value(tf.cast(sat_level, tf.float32), 0.0, 255.0))
    return hue_level, sat_level, maxc


def _hsv_levels_to_rgb(hue, sat, val):
    h6 = tf.cast(hue, tf.float64) * 6.0 / 255.0
    sector = tf.floor(h6)
    frac = tf.cast(tf.cast(h6 - sector, tf.float32), tf.float64)
    sat_frac = tf.cast(tf.cast(tf.cast(sat, tf.float64) / 255.0, tf.float32), tf.float64)
    val64 = tf.cast(val, tf.float64)

    def rounded(x):  # C round(): half away from zero (values are non-negative)
        return tf.cast(tf.floor(val64 * x + 0.5), tf.float32)

    p = rounded(1.0 - sat_frac)
    q = rounded(1.0 - sat_frac * frac)
    t = rounded(1.0 - sat_frac * (1.0 - frac))
    sector = tf.cast(tf.math.floormod(sector, 6.0), tf.int32)
    choices = {  # sector -> (r, g, b)
        0: (val, t, p),
        1: (q, val, p),
        2: (p, val, t),
        3: (p, q, val),
        4: (t, p, val),
        5: (val, p, q),
    }
    rgb = []
    for channel in range(3):
        value = choices[5][channel]
        for s in range(4, -1, -1):
            value = tf.where(sector == s, choices[s][channel], value)
        rgb.append(tf.where(sat == 0.0, val, value))
    return tf.stack(rgb, axis=-1)


def _adjust_hue(levels, factor):
    hue, sat, val = _rgb_to_hsv_levels(levels)
    # torchvision adds np.uint8(factor * 255) to the 8-bit hue: truncation, then wrap mod 256.
    shift = tf.math.floormod(tf.cast(tf.cast(factor * 255.0, tf.int32), tf.float32), 256.0)
    hue = tf.math.floormod(hue + shift, 256.0)
    return _hsv_levels_to_rgb(hue, sat, val)


def sample_jitter_params(key: tf.Tensor) -> dict:
    """Factors and op order for one sample: one draw shared by all its frames."""
    keys = _split_key(key, 5)
    ranges = (BRIGHTNESS_RANGE, CONTRAST_RANGE, SATURATION_RANGE, HUE_RANGE)
    factors = [
        tf.random.stateless_uniform([], seed=keys[i], minval=lo, maxval=hi)
        for i, (lo, hi) in enumerate(ranges)
    ]
    order = tf.argsort(tf.random.stateless_uniform([4], seed=keys[4]))
    return {"factors": tf.stack(factors), "order": tf.cast(order, tf.int32)}


def color_jitter(frames: tf.Tensor, params: dict) -> tf.Tensor:
    """Apply brightness/contrast/saturation/hue (op ids 0..3) in ``params['order']``.

    ``frames``: float32 (F, H, W, 3) in [0, 1]; every frame gets the same factors. Frames that
    are entirely zero stay zero (the reference keeps its missing-frame placeholder black).
    """
    levels = tf.round(tf.clip_by_value(frames, 0.0, 1.0) * 255.0)
    ops = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)
    factors = params["factors"]
    out = levels
    for position in range(4):
        op_id = params["order"][position]
        branches = [lambda x=out, i=i: ops[i](x, factors[i]) for i in range(4)]
        out = tf.switch_case(op_id, branches)
    blank = tf.reduce_all(frames == 0.0, axis=(-3, -2, -1), keepdims=True)
    return tf.where(blank, frames, out / 255.0)


def random_color_jitter(sample: dict, key: tf.Tensor, probability: float = 0.5) -> dict:
    """Set ``frames_aug`` to a jittered copy of ``frames`` with the given probability."""
    keys = _split_key(key, 2)
    do_jitter = tf.random.stateless_uniform([], seed=keys[0]) < probability
    params = sample_jitter_params(keys[1])
    frames = sample["frames"]
    out = dict(sample)
    out["frames_aug"] = tf.cond(
        do_jitter, lambda: color_jitter(frames, params), lambda: tf.identity(frames)
    )
    return out


def augment_train_sample(sample: dict, key: tf.Tensor, flip_intrinsics: bool = False) -> dict:
    """The reference's training augmentation: colour jitter, then flip (independent draws)."""
    keys = _split_key(key, 2)
    sample = random_color_jitter(sample, keys[0])
    return random_flip(sample, keys[1], flip_intrinsics=flip_intrinsics)


# --------------------------------------------------------------------------- neutral keys


def fill_neutral_keys(sample: dict, max_instances: int) -> dict:
    """Add every common-format key a dataset lacks, with its neutral value.

    ``depth_gt``/``moving_mask`` default to the frame resolution (all invalid / all static);
    ``cam_T_cam`` to identities; instance entries to empty slots.
    """
    out = dict(sample)
    frames = out["frames"]
    num_frames, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    out.setdefault("frames_aug", frames)
    if "instance_ids" not in out:
        out["instance_ids"] = tf.zeros([num_frames, height, width], tf.int32)
        out["instance_class"] = tf.fill([num_frames, max_instances], -1)
        out["instance_score"] = tf.zeros([num_frames, max_instances], tf.float32)
    out.setdefault("depth_gt", tf.zeros([height, width], tf.float32))
    gt_shape = tf.shape(out["depth_gt"])
    out.setdefault("moving_mask", tf.zeros(gt_shape, tf.bool))
    out.setdefault("cam_T_cam", tf.eye(4, batch_shape=[num_frames], dtype=tf.float32))
    out["index"] = tf.cast(out["index"], tf.int64)
    return out
