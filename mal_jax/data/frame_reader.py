"""The host-side frame reader shared by the on-disk loaders (KITTI, Cityscapes).

A loader turns one split line into a list of image paths (frames -1, 0[, +1]); this module
decodes them with Pillow (optional top crop, LANCZOS resize: the reference's
``transforms.Resize``), loads each frame's instance masks, applies the missing-neighbour
policy and describes the result to tf.data (``frame_signature``, ``make_finish``).

Missing neighbours (frame -1 or +1 at a sequence boundary), ``NEIGHBOUR_POLICIES``:

- ``"black"``: an all-black frame with empty masks, what the reference's KITTI loader
  substitutes (its trainer then zeroes the cost-volume pose of that frame; evaluation matches
  frame 0 against itself instead, ManyDepth's ``--static_camera``). Logged once per split line.
- ``"error"``: refuse, naming the file and the split line.

A missing or undecodable frame 0 is always an error naming the file and its split line.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from mal_jax.data import masks as masks_lib
from mal_jax.data import transforms

LOG = logging.getLogger(__name__)

NEIGHBOUR_POLICIES = ("black", "error")
TARGET = 1  # frame 0 sits at index 1 in both (-1, 0, +1) and (-1, 0)


@dataclasses.dataclass(frozen=True)
class SplitLine:
    """One line of a split file; ``folder``/``frame``/``side`` are the loader's fields."""

    folder: str
    frame: int
    side: str
    number: int  # 1-based line number in the split file
    text: str
    split_file: str

    def context(self) -> str:
        return f" (split line {self.number} of {self.split_file}: '{self.text}')"


def check_policy(policy: str) -> None:
    if policy not in NEIGHBOUR_POLICIES:
        raise ValueError(f"missing_neighbour must be one of {NEIGHBOUR_POLICIES}, got {policy!r}")


def decode_rgb(path: str, context: str = "") -> np.ndarray:
    """uint8 (H, W, 3) at the file's size. A missing file is a FileNotFoundError, a truncated
    or corrupt one a ValueError; both name the file and ``context`` (the split line)."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: image missing{context}") from error
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: cannot decode image ({reason}){context}") from error


def resize_lanczos(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3) with Pillow's LANCZOS filter (the reference's resize)."""
    if pixels.shape[:2] == (height, width):
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """Everything the host reader needs to turn split lines into uint8 frames and masks."""

    root: str
    height: int
    width: int
    max_instances: int
    masks: str  # masks.MASK_MODES
    masks_root: str


def read_frames(spec: FrameSpec, paths: list[str], policy: str, context: str, cut=None) -> dict:
    """Frames (F, H, W, 3) uint8 and their masks; a missing file other than frame 0 (index 1)
    is handled by ``policy``. ``cut(image_height)`` gives the rows kept before the resize
    (Cityscapes' ego-car crop); the masks are cut alike."""
    frames, masks, missing = [], [], []
    for path in paths:
        if not os.path.isfile(path):
            frames.append(None)
            masks.append(None)
            missing.append(path)
            continue
        pixels = decode_rgb(path, context)
        rows = slice(None) if cut is None else slice(0, cut(pixels.shape[0]))
        frames.append(resize_lanczos(pixels[rows], spec.height, spec.width))
        mask_path = masks_lib.mask_path_for(path, spec.root, spec.masks_root)
        masks.append(
            masks_lib.load_frame_masks(
                mask_path,
                height=spec.height,
                width=spec.width,
                max_instances=spec.max_instances,
                mode=spec.masks,
                rows=rows,
                context=context,
            )
        )
    return _assemble(spec, paths, frames, masks, missing, policy, context)


_WARNED: set = set()


def _assemble(spec, paths, frames, masks, missing, policy, context) -> dict:
    if frames[TARGET] is None:
        raise FileNotFoundError(f"{paths[TARGET]}: target image missing{context}")
    if missing:
        if policy == "error":
            raise FileNotFoundError(
                f"{missing[0]}: neighbour image missing (data.missing_neighbour='error'){context}"
            )
        if context not in _WARNED:
            _WARNED.add(context)
            LOG.warning("neighbour frame(s) %s missing%s: using a black frame", missing, context)
    empty = masks_lib.empty_masks(spec.height, spec.width, spec.max_instances)
    for i, frame in enumerate(frames):
        if frame is None:
            frames[i], masks[i] = np.zeros_like(frames[TARGET]), empty
    return {
        "frames": np.stack(frames),
        "instance_ids": np.stack([m[0] for m in masks]),
        "instance_class": np.stack([m[1] for m in masks]),
        "instance_score": np.stack([m[2] for m in masks]),
    }


def frame_signature(num_frames: int, height: int, width: int, max_instances: int) -> dict:
    """tf dtype and static shape of every key ``read_frames`` (plus K pyramids) returns."""
    return {
        "frames": (tf.uint8, (num_frames, height, width, 3)),
        "instance_ids": (tf.int32, (num_frames, height, width)),
        "instance_class": (tf.int32, (num_frames, max_instances)),
        "instance_score": (tf.float32, (num_frames, max_instances)),
        "K": (tf.float32, (transforms.NUM_SCALES, 4, 4)),
        "inv_K": (tf.float32, (transforms.NUM_SCALES, 4, 4)),
    }


def make_finish(*, train: bool, max_instances: int, flip_intrinsics: bool = False):
    """Graph part shared by the loaders: float frames, augmentation (train), neutral keys."""

    def finish(raw: dict, key: tf.Tensor) -> dict:
        sample = dict(raw)
        sample["frames"] = tf.cast(raw["frames"], tf.float32) / 255.0
        sample["frames_aug"] = sample["frames"]
        if train:
            sample = transforms.augment_train_sample(sample, key, flip_intrinsics)
        return transforms.fill_neutral_keys(sample, max_instances)

    return finish
