"""KITTI raw loaders (training triplets, Eigen evaluation pairs) in the common sample format.

Split files use ManyDepth's format, one ``<date>/<drive> <frame> l|r`` per line; images live at
``<root>/<date>/<drive>/image_02|image_03/data/<frame:010d><ext>``. Frames are read by
``frame_reader`` (Pillow decode and LANCZOS resize, exactly the reference's
``transforms.Resize``; the missing-neighbour policy), then augmented in TensorFlow
(``transforms``). Intrinsics are ManyDepth's normalised KITTI K scaled per scale.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import tensorflow as tf

from mal_jax.data import frame_reader, pipeline, transforms
from mal_jax.data import masks as masks_lib
from mal_jax.data.frame_reader import SplitLine

# ManyDepth's KITTI intrinsics, normalised by the image size.
KITTI_K_NORMALISED = np.array(
    [[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32
)
SIDE_TO_CAMERA = {"l": 2, "r": 3, "2": 2, "3": 3}


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


def _frame_spec(root, height, width, max_instances, masks, masks_root):
    return frame_reader.FrameSpec(
        root, height, width, max_instances, masks,
        masks_root or masks_lib.default_masks_root(root),
    )


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
    missing_neighbour: str = "black",
    flip_intrinsics: bool = False,
) -> pipeline.IndexedSource:
    """Training triplets (-1, 0, +1); with ``train`` the reference's jitter and flip."""
    frame_reader.check_policy(missing_neighbour)
    lines = read_split_file(split_file)
    spec = _frame_spec(root, height, width, max_instances, masks, masks_root)
    k, inv_k = transforms.intrinsics_pyramid(KITTI_K_NORMALISED, height, width)

    def read(index: int) -> dict:
        line = lines[index]
        paths = [image_path(root, line, o, img_ext) for o in (-1, 0, 1)]
        out = frame_reader.read_frames(spec, paths, missing_neighbour, line.context())
        return {**out, "K": k, "inv_K": inv_k}

    return pipeline.IndexedSource(
        name="kitti_train" if train else "kitti_triplets",
        num_samples=len(lines),
        read=read,
        signature=frame_reader.frame_signature(3, height, width, max_instances),
        finish=frame_reader.make_finish(
            train=train, max_instances=max_instances, flip_intrinsics=flip_intrinsics
        ),
        seed=seed,
    )


def load_gt_depths(gt_file: str, expected: int) -> np.ndarray:
    """The ``data`` array of a gt_depths.npz (object or 3-D array), checked against the split."""
    if not os.path.isfile(gt_file):
        raise FileNotFoundError(f"{gt_file}: ground-truth file missing")
    try:
        with np.load(gt_file, allow_pickle=True, fix_imports=True, encoding="latin1") as archive:
            data = archive["data"] if "data" in archive.files else None
            keys = archive.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{gt_file}: unreadable ground-truth file ({error})") from error
    if data is None:
        raise ValueError(f"{gt_file}: no 'data' array (keys: {keys})")
    if len(data) != expected:
        raise ValueError(f"{gt_file}: holds {len(data)} depth maps but the split has {expected}")
    return data


def kitti_eval_source(
    root: str,
    split_file: str,
    gt_file: str,
    *,
    height: int,
    width: int,
    img_ext: str = ".jpg",
    max_instances: int = 16,
    missing_neighbour: str = "black",
) -> pipeline.IndexedSource:
    """Eigen-style evaluation pairs (-1, 0) with ``depth_gt`` from gt_depths.npz at its native
    size (``depth_gt_shapes``; batches pad it). Evaluation reads no instance masks."""
    frame_reader.check_policy(missing_neighbour)
    lines = read_split_file(split_file)
    depths = load_gt_depths(gt_file, len(lines))
    spec = _frame_spec(root, height, width, max_instances, "off", None)
    k, inv_k = transforms.intrinsics_pyramid(KITTI_K_NORMALISED, height, width)

    def read(index: int) -> dict:
        line = lines[index]
        paths = [image_path(root, line, o, img_ext) for o in (-1, 0)]
        out = frame_reader.read_frames(spec, paths, missing_neighbour, line.context())
        depth = np.asarray(depths[index], np.float32)
        return {**out, "K": k, "inv_K": inv_k, "depth_gt": depth}

    signature = frame_reader.frame_signature(2, height, width, max_instances)
    signature["depth_gt"] = (tf.float32, (None, None))
    return pipeline.IndexedSource(
        name="kitti_eval",
        num_samples=len(lines),
        read=read,
        signature=signature,
        finish=frame_reader.make_finish(train=False, max_instances=max_instances),
        depth_gt_shapes=tuple(tuple(np.shape(d)) for d in depths),
    )
