"""KITTI raw loaders (training triplets, Eigen evaluation pairs) in the common sample format.

Split files use ManyDepth's format, one ``<date>/<drive> <frame> l|r`` per line; images live at
``<root>/<date>/<drive>/image_02|image_03/data/<frame:010d><ext>``. Images are decoded and
resized with Pillow (LANCZOS, exactly the reference's ``transforms.Resize``), then augmented in
TensorFlow (``transforms``). Intrinsics are ManyDepth's normalised KITTI K scaled per scale.

Sequence boundaries. The reference replaces a missing neighbour (-1 or +1) with a black image
(its aug copy stays black) and its trainer zeroes the matching pose of all-black lookup frames;
a missing frame 0 is an error. ``missing_neighbour`` picks: "zeros" (the reference's black
frame, default for training and evaluation), "static" (a copy of frame 0: the static-camera
fallback) or "error". Each fallback is logged once per split line, and a missing frame 0 or an
undecodable file raises an error naming the file and its split line.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from mal_jax.data import masks as masks_lib
from mal_jax.data import pipeline, transforms

LOG = logging.getLogger(__name__)

# ManyDepth's KITTI intrinsics, normalised by the image size.
KITTI_K_NORMALISED = np.array(
    [[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32
)
SIDE_TO_CAMERA = {"l": 2, "r": 3, "2": 2, "3": 3}
NEIGHBOUR_POLICIES = ("zeros", "static", "error")


@dataclasses.dataclass(frozen=True)
class SplitLine:
    folder: str
    frame: int
    side: str
    number: int  # 1-based line number in the split file
    text: str
    split_file: str

    def context(self) -> str:
        return f" (split line {self.number} of {self.split_file}: '{self.text}')"


def read_split_file(path: str) -> list[SplitLine]:
    """Parse a ManyDepth KITTI split file; errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: split file missing")
    lines = []
    with open(path) as handle:
        for number, text in enumerate(handle, start=1):
            text = text.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 3 or parts[2] not in SIDE_TO_CAMERA or not parts[1].isdigit():
                raise ValueError(
                    f"{path}:{number}: expected '<date>/<drive> <frame> l|r', got '{text}'"
                )
            lines.append(SplitLine(parts[0], int(parts[1]), parts[2], number, text, path))
    if not lines:
        raise ValueError(f"{path}: split file has no lines")
    return lines


def image_path(root: str, line: SplitLine, offset: int, img_ext: str) -> str:
    camera = SIDE_TO_CAMERA[line.side]
    return os.path.join(
        root, line.folder, f"image_0{camera}", "data", f"{line.frame + offset:010d}{img_ext}"
    )


def split_image_paths(
    root: str, split_file: str, img_ext: str = ".jpg", offsets=(-1, 0, 1)
) -> list[str]:
    """Every image path the split's training samples refer to (existing or not)."""
    return [
        image_path(root, line, o, img_ext) for line in read_split_file(split_file) for o in offsets
    ]


def decode_resized(
    path: str, height: int, width: int, context: str = "", crop_rows=None
) -> np.ndarray:
    """uint8 (height, width, 3): Pillow decode to RGB, optional top crop, LANCZOS resize."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            image = image.convert("RGB")
            if crop_rows is not None:
                image = image.crop((0, 0, image.width, crop_rows(image.height)))
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: image missing{context}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: cannot decode image ({error}){context}") from error


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """Everything the host reader needs to turn split lines into uint8 frames and masks."""

    root: str
    height: int
    width: int
    img_ext: str
    max_instances: int
    masks: str
    masks_root: str


def read_frames(spec: FrameSpec, paths: list[str], policy: str, context: str, cut=None) -> dict:
    """Frames (F, H, W, 3) uint8 and their masks; ``paths[i] is None`` -> fallback for i.

    The target frame must exist; ``cut(image)`` may crop before the resize (Cityscapes).
    """
    frames, masks, missing = [], [], []
    for path in paths:
        if path is None or not os.path.isfile(path):
            frames.append(None)
            masks.append(None)
            missing.append(path)
            continue
        frames.append(decode_resized(path, spec.height, spec.width, context, crop_rows=cut))
        mask_path = masks_lib.mask_path_for(path, spec.root, spec.masks_root)
        rows = slice(None) if cut is None else slice(0, cut(_image_height(path)))
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


def _image_height(path: str) -> int:
    with Image.open(path) as image:
        return image.height


_WARNED: set = set()


def _assemble(spec, paths, frames, masks, missing, policy, context) -> dict:
    target = 1  # frame 0 sits at index 1 in both (-1, 0, +1) and (-1, 0)
    if frames[target] is None:
        raise FileNotFoundError(f"{paths[target]}: target image missing{context}")
    if missing:
        if policy == "error":
            raise FileNotFoundError(f"{missing[0]}: neighbour image missing{context}")
        if context not in _WARNED:
            _WARNED.add(context)
            LOG.warning(
                "neighbour frame(s) %s missing%s: using the '%s' fallback", missing, context, policy
            )
    empty = masks_lib.empty_masks(spec.height, spec.width, spec.max_instances)
    for i, frame in enumerate(frames):
        if frame is None:
            if policy == "static":
                frames[i], masks[i] = frames[target], masks[target]
            else:
                frames[i], masks[i] = np.zeros_like(frames[target]), empty
    return {
        "frames": np.stack(frames),
        "instance_ids": np.stack([m[0] for m in masks]),
        "instance_class": np.stack([m[1] for m in masks]),
        "instance_score": np.stack([m[2] for m in masks]),
    }


def frame_signature(num_frames: int, height: int, width: int, max_instances: int) -> dict:
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


def _check_policy(policy: str) -> None:
    if policy not in NEIGHBOUR_POLICIES:
        raise ValueError(f"missing_neighbour must be one of {NEIGHBOUR_POLICIES}, got {policy!r}")


def kitti_source(
    root: str,
    split_file: str,
    *,
    height: int,
    width: int,
    train: bool = True,
    img_ext: str = ".jpg",
    seed: int = 0,
    max_instances: int = 16,
    masks: str = "off",
    masks_root: str | None = None,
    missing_neighbour: str = "zeros",
    flip_intrinsics: bool = False,
) -> pipeline.IndexedSource:
    """Training triplets (-1, 0, +1); with ``train`` the reference's jitter and flip."""
    _check_policy(missing_neighbour)
    lines = read_split_file(split_file)
    spec = FrameSpec(
        root,
        height,
        width,
        img_ext,
        max_instances,
        masks,
        masks_root or masks_lib.default_masks_root(root),
    )
    k, inv_k = transforms.intrinsics_pyramid(KITTI_K_NORMALISED, height, width)

    def read(index: int) -> dict:
        line = lines[index]
        paths = [image_path(root, line, o, img_ext) for o in (-1, 0, 1)]
        out = read_frames(spec, paths, missing_neighbour, line.context())
        return {**out, "K": k, "inv_K": inv_k}

    return pipeline.IndexedSource(
        name="kitti_train" if train else "kitti_triplets",
        num_samples=len(lines),
        read=read,
        signature=frame_signature(3, height, width, max_instances),
        finish=make_finish(
            train=train, max_instances=max_instances, flip_intrinsics=flip_intrinsics
        ),
        seed=seed,
    )


def load_gt_depths(gt_file: str, expected: int) -> np.ndarray:
    """The ``data`` array of a gt_depths.npz (object or 3-D array), checked against the split."""
    if not os.path.isfile(gt_file):
        raise FileNotFoundError(f"{gt_file}: ground-truth file missing")
    with np.load(gt_file, allow_pickle=True, fix_imports=True, encoding="latin1") as archive:
        if "data" not in archive.files:
            raise KeyError(f"{gt_file}: no 'data' array (keys: {archive.files})")
        data = archive["data"]
    if len(data) != expected:
        raise ValueError(f"{gt_file}: holds {len(data)} depth maps but the split has {expected}")
    return data


def gt_shapes(gt_file: str) -> list[tuple[int, int]]:
    """Native (H, W) of every map in a gt_depths.npz, in split order (for unpadding)."""
    with np.load(gt_file, allow_pickle=True, encoding="latin1") as archive:
        return [tuple(np.shape(d)) for d in archive["data"]]


def kitti_eval_source(
    root: str,
    split_file: str,
    gt_file: str,
    *,
    height: int,
    width: int,
    img_ext: str = ".jpg",
    max_instances: int = 16,
    masks: str = "off",
    masks_root: str | None = None,
    missing_neighbour: str = "zeros",
) -> pipeline.IndexedSource:
    """Eigen-style evaluation pairs (-1, 0) with ``depth_gt`` from gt_depths.npz (native size)."""
    _check_policy(missing_neighbour)
    lines = read_split_file(split_file)
    depths = load_gt_depths(gt_file, len(lines))
    spec = FrameSpec(
        root,
        height,
        width,
        img_ext,
        max_instances,
        masks,
        masks_root or masks_lib.default_masks_root(root),
    )
    k, inv_k = transforms.intrinsics_pyramid(KITTI_K_NORMALISED, height, width)

    def read(index: int) -> dict:
        line = lines[index]
        paths = [image_path(root, line, o, img_ext) for o in (-1, 0)]
        out = read_frames(spec, paths, missing_neighbour, line.context())
        depth = np.asarray(depths[index], np.float32)
        return {**out, "K": k, "inv_K": inv_k, "depth_gt": depth}

    signature = frame_signature(2, height, width, max_instances)
    signature["depth_gt"] = (tf.float32, (None, None))
    return pipeline.IndexedSource(
        name="kitti_eval",
        num_samples=len(lines),
        read=read,
        signature=signature,
        finish=make_finish(train=False, max_instances=max_instances),
    )


def write_kitti_like_tree(
    root: str,
    *,
    num_drives: int = 1,
    frames_per_drive: int = 5,
    image_size=(375, 1242),
    ext: str = ".jpg",
    with_velodyne: bool = False,
    date: str = "2011_09_26",
    seed: int = 0,
) -> str:
    """A small KITTI-shaped tree of random images (+ calibration, velodyne); returns a split file
    listing every frame that has both neighbours (left camera)."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    lines = []
    for drive in range(num_drives):
        folder = f"{date}/{date}_drive_{drive + 1:04d}_sync"
        for camera in (2, 3):
            os.makedirs(os.path.join(root, folder, f"image_0{camera}", "data"), exist_ok=True)
        for frame in range(frames_per_drive):
            base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
            for camera in (2, 3):
                image.save(
                    os.path.join(root, folder, f"image_0{camera}", "data", f"{frame:010d}{ext}"),
                    quality=95,
                )
            if with_velodyne:
                velo_dir = os.path.join(root, folder, "velodyne_points", "data")
                os.makedirs(velo_dir, exist_ok=True)
                points = rng.uniform([-5, -20, -2, 0], [60, 20, 2, 1], (500, 4))
                points.astype(np.float32).tofile(os.path.join(velo_dir, f"{frame:010d}.bin"))
            if 0 < frame < frames_per_drive - 1:
                lines.append(f"{folder} {frame} l")
    write_kitti_calibration(os.path.join(root, date), image_size)
    split = os.path.join(root, "train_files.txt")
    with open(split, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return split


def write_kitti_calibration(calib_dir: str, image_size=(375, 1242)) -> None:
    """KITTI-like calib_cam_to_cam.txt / calib_velo_to_cam.txt (velodyne x fwd, y left, z up)."""
    os.makedirs(calib_dir, exist_ok=True)
    height, width = image_size
    p_rect = (
        "7.215377e+02 0 6.095593e+02 4.485728e+01 0 7.215377e+02 1.728540e+02 "
        "2.163791e-01 0 0 1 2.745884e-03"
    )
    with open(os.path.join(calib_dir, "calib_cam_to_cam.txt"), "w") as handle:
        handle.write("calib_time: 09-Jan-2012 13:57:47\n")
        handle.write(f"S_rect_02: {float(width):e} {float(height):e}\n")
        handle.write("R_rect_00: 1 0 0 0 1 0 0 0 1\n")
        handle.write(f"P_rect_02: {p_rect}\nP_rect_03: {p_rect}\n")
    with open(os.path.join(calib_dir, "calib_velo_to_cam.txt"), "w") as handle:
        handle.write("calib_time: 15-Mar-2012 11:37:16\n")
        handle.write("R: 0 -1 0 0 0 -1 1 0 0\nT: 0 -0.08 -0.27\n")
