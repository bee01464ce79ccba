"""Precomputed per-frame instance masks: on-disk format and padded loader.

Format (one ``.npz`` per raw image file, path mirroring the image path under a masks root,
by default ``<data root>/instance_masks``; e.g. the mask of
``<root>/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000005.jpg`` is
``<root>/instance_masks/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000005.npz``):

- ``ids``: uint8 or uint16 (H, W), the image's full size; 0 = background, v in 1..N = the
  instance described by entry v-1 of the arrays below.
- ``classes``: int32 (N,), any label space the segmenter uses (>= 0).
- ``scores``: float32 (N,), the segmenter's confidence.

Where one image file holds several frames (Cityscapes' preprocessed triplets), the id map
covers the whole file and the loader cuts it like the image.

The loader keeps the (at most) K instances with the highest scores among those with pixels in
the frame (ties: lower id first), numbers them 1..K by descending score, resizes the id map
to the training resolution with nearest neighbour (pixel-centre aligned, like the image
resize) and pads ``classes``/``scores`` with -1 / 0.

The command that checks every mask file of a split is ``python -m mal_jax.data.masks_cli``.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

DEFAULT_MASKS_DIRNAME = "instance_masks"
MASK_MODES = ("off", "required", "optional")


class MaskFileError(ValueError):
    """A mask file that is missing or does not follow the format."""


def default_masks_root(data_root: str) -> str:
    return os.path.join(data_root, DEFAULT_MASKS_DIRNAME)


def mask_path_for(image_path: str, data_root: str, masks_root: str) -> str:
    """The mask file mirroring ``image_path`` (relative to ``data_root``) under ``masks_root``."""
    relative = os.path.relpath(image_path, data_root)
    return os.path.join(masks_root, os.path.splitext(relative)[0] + ".npz")


def load_mask_arrays(path: str) -> dict:
    """The arrays of one mask file as stored (unchecked); MaskFileError naming the file when it
    is missing or unreadable."""
    if not os.path.isfile(path):
        raise MaskFileError(f"{path}: mask file missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise MaskFileError(f"{path}: unreadable mask file ({error})") from error


def read_mask_file(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, classes, scores) of one mask file; MaskFileError naming the file otherwise."""
    arrays = load_mask_arrays(path)
    problems = format_problems(arrays)
    if problems:
        raise MaskFileError(f"{path}: {problems[0]}")
    return arrays["ids"], arrays["classes"].astype(np.int32), arrays["scores"].astype(np.float32)


def format_problems(arrays: dict, image_size: tuple[int, int] | None = None) -> list[str]:
    """Violations of the format (keys, dtypes, ranks, id range, lengths, optional size)."""
    missing = [name for name in ("ids", "classes", "scores") if name not in arrays]
    if missing:
        return [f"missing key(s) {', '.join(missing)}"]
    ids, classes, scores = arrays["ids"], arrays["classes"], arrays["scores"]
    problems = []
    if ids.ndim != 2 or ids.dtype not in (np.uint8, np.uint16):
        problems.append(f"ids must be uint8/uint16 (H, W), got {ids.dtype} {ids.shape}")
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        problems.append(f"classes must be integer (N,), got {classes.dtype} {classes.shape}")
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.floating):
        problems.append(f"scores must be float (N,), got {scores.dtype} {scores.shape}")
    if problems:
        return problems
    if len(classes) != len(scores):
        problems.append(f"classes has {len(classes)} entries but scores has {len(scores)}")
    if ids.size and int(ids.max()) > len(classes):
        problems.append(f"ids reach {int(ids.max())} but only {len(classes)} instances listed")
    if image_size is not None and ids.shape != tuple(image_size):
        problems.append(f"ids shape {ids.shape} differs from image size {tuple(image_size)}")
    return problems


def select_instances(
    ids: np.ndarray, classes: np.ndarray, scores: np.ndarray, max_instances: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the top-``max_instances`` instances present in ``ids``; renumber them 1..K.

    Returns the renumbered id map (int32, same shape), classes (K,) int32 padded with -1 and
    scores (K,) float32 padded with 0, slots ordered by descending score.
    """
    present = np.unique(ids)
    present = present[present > 0].astype(np.int64)
    order = present[np.argsort(-scores[present - 1], kind="stable")][:max_instances]
    lookup = np.zeros(len(classes) + 1, np.int32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    slot_classes = np.full(max_instances, -1, np.int32)
    slot_scores = np.zeros(max_instances, np.float32)
    slot_classes[: len(order)] = classes[order - 1]
    slot_scores[: len(order)] = scores[order - 1]
    return lookup[ids.astype(np.int64)], slot_classes, slot_scores


def resize_nearest(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize sampling source pixel floor((i + 0.5) * in / out)."""
    in_h, in_w = ids.shape
    rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.int64), in_w - 1)
    return ids[rows[:, None], cols[None, :]]


def empty_masks(height: int, width: int, max_instances: int):
    return (
        np.zeros((height, width), np.int32),
        np.full(max_instances, -1, np.int32),
        np.zeros(max_instances, np.float32),
    )


def load_frame_masks(
    path: str,
    *,
    height: int,
    width: int,
    max_instances: int,
    mode: str,
    rows: slice = slice(None),
    cols: slice = slice(None),
    context: str = "",
):
    """Masks of one frame at (height, width): (ids int32, classes (K,), scores (K,)).

    ``rows``/``cols`` cut the stored map like the image was cut (crop, triplet third).
    ``mode``: "required" (missing file is an error), "optional" (missing file -> empty
    masks), "off" (always empty). ``context`` (e.g. the split line) is added to errors.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"masks mode must be one of {MASK_MODES}, got {mode!r}")
    if mode == "off" or (mode == "optional" and not os.path.isfile(path)):
        return empty_masks(height, width, max_instances)
    try:
        ids, classes, scores = read_mask_file(path)
    except MaskFileError as error:
        raise MaskFileError(f"{error}{context}") from error
    ids, slot_classes, slot_scores = select_instances(
        ids[rows, cols], classes, scores, max_instances
    )
    return resize_nearest(ids, height, width), slot_classes, slot_scores


def write_mask_file(path: str, ids: np.ndarray, classes, scores) -> None:
    """Write one mask file in the documented format (creates parent folders)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ids = np.asarray(ids)
    dtype = np.uint8 if ids.max(initial=0) < 256 else np.uint16
    np.savez_compressed(
        path,
        ids=ids.astype(dtype),
        classes=np.asarray(classes, np.int32),
        scores=np.asarray(scores, np.float32),
    )
