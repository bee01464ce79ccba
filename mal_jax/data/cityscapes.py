"""Cityscapes loaders: ManyDepth's preprocessed training triplets and the evaluation pairs.

Training (``cityscapes_source``), the layout SfMLearner's ``prepare_train_data.py`` writes and
ManyDepth reads (split lines ``<city> <frame name>``):

- ``<root>/<city>/<frame name>.jpg``: frames -1, 0, +1 side by side (standard: 3072 x 384, the
  ego car already cropped); frame i is columns [i w, (i+1) w) with w = width // 3 (the last
  frame takes any leftover columns, as the reference);
- ``<root>/<city>/<frame name>_cam.txt``: the 3x3 K of one frame, comma separated; fx, u0, fy,
  v0 are entries 0, 2, 4, 5. The reference normalises by 1024 x 384 (its constants); here by the
  actual frame size, identical for the standard preprocessing and still right for others.

Evaluation (``cityscapes_eval_source``), split lines ``<city> <city>_<seq>_<frame>``, F=2:

- frame 0: ``<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``; frame -1: the frame
  number minus 2 in ``<root>/leftImg8bit_sequence/<split>/<city>/`` (zero padded to 6 digits);
- both cropped to the top ``h * 3 // 4`` rows (ego car) before the resize;
- K from ``<root>/camera_trainvaltest/camera/<split>/<city>/<name>_camera.json``
  (``intrinsic`` fx, fy, u0, v0), normalised by the width and the cropped height (2048, 768);
- ``depth_gt``: ``<gt_dir>/<i:03d>_depth.npy`` (ManyDepth's distributed files, i = split
  position), cropped to its top ``round(0.75 h)`` rows like the reference's evaluation. The
  reference's final centre crop ([256:, 192:1856] of that) belongs to the metric code.

The latest reference raises when frame -1 is missing, so ``missing_neighbour="error"`` is this
function's default; configs pass ``data.missing_neighbour`` (see ``frame_reader``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from mal_jax.data import frame_reader, pipeline, transforms
from mal_jax.data import masks as masks_lib
from mal_jax.data.frame_reader import SplitLine


def read_city_split(path: str) -> list[SplitLine]:
    """Parse ``<city> <frame name>`` lines (frame name kept in ``folder``'s place)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: split file missing")
    lines = []
    with open(path) as handle:
        for number, text in enumerate(handle, start=1):
            text = text.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected '<city> <frame name>', got '{text}'")
            lines.append(SplitLine(parts[0], 0, parts[1], number, text, path))
    if not lines:
        raise ValueError(f"{path}: split file has no lines")
    return lines


def _normalised_k(fx, fy, u0, v0, width, height) -> np.ndarray:
    k = np.array([[fx, 0, u0, 0], [0, fy, v0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    k[0, :] /= width
    k[1, :] /= height
    return k


def triplet_paths(root: str, line: SplitLine) -> tuple[str, str]:
    city, name = line.folder, line.side
    return (os.path.join(root, city, f"{name}.jpg"), os.path.join(root, city, f"{name}_cam.txt"))


def triplet_image_paths(root: str, split_file: str) -> list[str]:
    return [triplet_paths(root, line)[0] for line in read_city_split(split_file)]


def read_triplet_camera(path: str, frame_size: tuple[int, int], context: str) -> np.ndarray:
    try:
        values = np.loadtxt(path, delimiter=",").reshape(-1)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read camera file ({error}){context}") from error
    if values.size != 9:
        raise ValueError(f"{path}: expected 9 comma-separated values, got {values.size}{context}")
    height, width = frame_size
    return _normalised_k(values[0], values[4], values[2], values[5], width, height)


def cityscapes_source(
    root: str,
    split_file: str,
    *,
    height: int,
    width: int,
    train: bool = True,
    seed: int = 0,
    max_instances: int = 16,
    masks: str = "off",
    masks_root: str | None = None,
    flip_intrinsics: bool = False,
) -> pipeline.IndexedSource:
    """Preprocessed triplets (-1, 0, +1); with ``train`` the reference's jitter and flip."""
    lines = read_city_split(split_file)
    masks_root = masks_root or masks_lib.default_masks_root(root)

    def read(index: int) -> dict:
        line = lines[index]
        context = line.context()
        image_path, camera_path = triplet_paths(root, line)
        strip = frame_reader.decode_rgb(image_path, context)
        third = strip.shape[1] // 3
        columns = [slice(0, third), slice(third, 2 * third), slice(2 * third, None)]
        frames = np.stack(
            [frame_reader.resize_lanczos(strip[:, c], height, width) for c in columns]
        )
        mask_path = masks_lib.mask_path_for(image_path, root, masks_root)
        frame_masks = [
            masks_lib.load_frame_masks(
                mask_path,
                height=height,
                width=width,
                max_instances=max_instances,
                mode=masks,
                cols=c,
                context=context,
            )
            for c in columns
        ]
        k = read_triplet_camera(camera_path, (strip.shape[0], third), context)
        k_pyramid, inv_k = transforms.intrinsics_pyramid(k, height, width)
        return {
            "frames": frames,
            "instance_ids": np.stack([m[0] for m in frame_masks]),
            "instance_class": np.stack([m[1] for m in frame_masks]),
            "instance_score": np.stack([m[2] for m in frame_masks]),
            "K": k_pyramid,
            "inv_K": inv_k,
        }

    return pipeline.IndexedSource(
        name="cityscapes_train" if train else "cityscapes_triplets",
        num_samples=len(lines),
        read=read,
        signature=frame_reader.frame_signature(3, height, width, max_instances),
        finish=frame_reader.make_finish(
            train=train, max_instances=max_instances, flip_intrinsics=flip_intrinsics
        ),
        seed=seed,
    )


def previous_frame_name(name: str, offset: int = -2) -> str:
    city, sequence, number = name.split("_")
    return f"{city}_{sequence}_{int(number) + offset:06d}"


def eval_paths(root: str, line: SplitLine, split: str = "test") -> dict:
    city, name = line.folder, line.side
    prev = previous_frame_name(name)
    return {
        "previous": os.path.join(
            root, "leftImg8bit_sequence", split, city, f"{prev}_leftImg8bit.png"
        ),
        "target": os.path.join(root, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"),
        "camera": os.path.join(
            root, "camera_trainvaltest", "camera", split, city, f"{name}_camera.json"
        ),
    }


def eval_image_paths(root: str, split_file: str, split: str = "test") -> list[str]:
    return [
        p
        for line in read_city_split(split_file)
        for key, p in eval_paths(root, line, split).items()
        if key != "camera"
    ]


def _crop_rows(image_height: int) -> int:
    return image_height * 3 // 4


def read_eval_camera(path: str, context: str) -> np.ndarray:
    try:
        with open(path) as handle:
            intrinsic = json.load(handle)["intrinsic"]
        fx, fy, u0, v0 = (float(intrinsic[key]) for key in ("fx", "fy", "u0", "v0"))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: camera file missing{context}") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: cannot read camera intrinsics ({error}){context}") from error
    return fx, fy, u0, v0


def cityscapes_eval_source(
    root: str,
    split_file: str,
    gt_dir: str,
    *,
    height: int,
    width: int,
    split: str = "test",
    max_instances: int = 16,
    missing_neighbour: str = "error",
    gt_size: tuple[int, int] = (1024, 2048),
) -> pipeline.IndexedSource:
    """Evaluation pairs (-1, 0) with cropped ``depth_gt`` of ``gt_size`` (before the crop).
    Evaluation reads no instance masks."""
    frame_reader.check_policy(missing_neighbour)
    lines = read_city_split(split_file)
    spec = frame_reader.FrameSpec(
        root, height, width, max_instances, "off", masks_lib.default_masks_root(root)
    )
    gt_rows = int(round(gt_size[0] * 0.75))

    def read(index: int) -> dict:
        line = lines[index]
        context = line.context()
        paths = eval_paths(root, line, split)
        out = frame_reader.read_frames(
            spec, [paths["previous"], paths["target"]], missing_neighbour, context, cut=_crop_rows
        )
        with Image.open(paths["target"]) as image:
            raw_width, raw_height = image.size
        fx, fy, u0, v0 = read_eval_camera(paths["camera"], context)
        k = _normalised_k(fx, fy, u0, v0, raw_width, _crop_rows(raw_height))
        k_pyramid, inv_k = transforms.intrinsics_pyramid(k, height, width)
        gt_path = os.path.join(gt_dir, f"{index:03d}_depth.npy")
        if not os.path.isfile(gt_path):
            raise FileNotFoundError(f"{gt_path}: ground truth missing{context}")
        depth = np.load(gt_path).astype(np.float32)
        if depth.shape != tuple(gt_size):
            raise ValueError(f"{gt_path}: shape {depth.shape}, expected {tuple(gt_size)}{context}")
        return {**out, "K": k_pyramid, "inv_K": inv_k, "depth_gt": depth[:gt_rows]}

    signature = frame_reader.frame_signature(2, height, width, max_instances)
    signature["depth_gt"] = (tf.float32, (gt_rows, gt_size[1]))
    return pipeline.IndexedSource(
        name="cityscapes_eval",
        num_samples=len(lines),
        read=read,
        signature=signature,
        finish=frame_reader.make_finish(train=False, max_instances=max_instances),
    )
