"""Depth for a frame sequence.

``python -m mal_jax.eval.predict --checkpoint C --frames DIR --out O``

``--frames`` is a folder (its image files, sorted by name) or a list of image files, in time
order. Each frame is resized to the model's training size (Pillow LANCZOS, as ManyDepth's
``test_simple``) and predicted with the previous frame as the lookup frame. The first frame has
no previous frame: it is run like ``test_simple --mode mono``, the student (multi-frame network)
with a zero lookup pose, which leaves the cost volume empty. ``--mode teacher`` runs the teacher
(single-frame network) on every frame instead.

Per frame ``<stem>_depth.npy`` (H, W) float32 depth at network resolution, in the units of
``--min_depth/--max_depth`` (up to the scale ambiguity of self-supervised training), and
``<stem>_depth.png``, the disparity colour-mapped with magma. The network step is jitted once;
progress and the time left show on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mal_jax.eval import outputs as eval_outputs
from mal_jax.eval.inference import (
    InferenceModelLike,
    load_inference,
    student_disparity,
    teacher_disparity,
)
from mal_jax.eval.progress import track

# Which network predicts: the student (multi-frame) or the teacher (single-frame).
MODES = ("student", "teacher")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
# ManyDepth's KITTI intrinsics, normalised by the image size (its default for KITTI training).
KITTI_NORMALISED_K = ((0.58, 0.0, 0.5), (0.0, 1.92, 0.5), (0.0, 0.0, 1.0))


def list_frames(frames: Sequence[str]) -> list[str]:
    """One folder -> its image files sorted by name; otherwise the files as given."""
    if len(frames) == 1 and os.path.isdir(frames[0]):
        folder = frames[0]
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return [os.path.join(folder, n) for n in names]
    if not frames:
        raise ValueError("--frames: give a folder or image files")
    for path in frames:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: frame file missing")
    return list(frames)


def load_frame(path: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1]: RGB, LANCZOS resize as the reference."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            return np.asarray(image, np.float32) / 255.0
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: frame file missing") from error
    except OSError as error:
        raise ValueError(f"{path}: cannot decode image ({error})") from error


def intrinsics_at_quarter(normalised_K, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, 4, 4) K and inverse at 1/4 resolution (the cost volume's), as ``test_simple``."""
    K = np.eye(4, dtype=np.float64)
    K[:3, :3] = np.asarray(normalised_K, np.float64)
    K[0] *= width // 4
    K[1] *= height // 4
    return K[None].astype(np.float32), np.linalg.pinv(K)[None].astype(np.float32)


def read_intrinsics(path: str | None):
    """Normalised 3x3 K from a JSON file (``test_simple``'s format), default KITTI's."""
    if not path:
        return KITTI_NORMALISED_K
    try:
        with open(path) as handle:
            K = np.asarray(json.load(handle), np.float64)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: intrinsics file missing") from error
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read intrinsics JSON ({error})") from error
    if K.shape != (3, 3):
        raise ValueError(f"{path}: intrinsics must be a 3x3 list, got shape {K.shape}")
    return K


def make_step(inference: InferenceModelLike, mode: str, min_depth: float, max_depth: float):
    """Jitted ``step(previous, current, has_previous) -> depth (H, W)`` for one frame."""
    model, variables = inference.model, inference.variables
    min_bin = jnp.float32(inference.min_depth_bin)
    max_bin = jnp.float32(inference.max_depth_bin)
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected 'student' or 'teacher'")

    @jax.jit
    def step(variables, previous, current, has_previous, K, inv_K):
        current, previous = current[None], previous[None]
        if mode == "teacher":
            disp = teacher_disparity(model, variables, current, min_depth, max_depth)
        else:
            lookup = jnp.where(has_previous, previous, current)
            zero_pose = jnp.logical_not(has_previous)[None]
            disp = student_disparity(
                model,
                variables,
                current,
                lookup,
                zero_pose,
                K,
                inv_K,
                min_bin,
                max_bin,
                min_depth,
                max_depth,
            )
        return 1.0 / disp[0]

    return lambda *args: step(variables, *args)


def predict_sequence(
    inference: InferenceModelLike,
    frame_paths: Sequence[str],
    out_dir: str,
    *,
    height: int | None = None,
    width: int | None = None,
    intrinsics=KITTI_NORMALISED_K,
    mode: str = "student",
    min_depth: float = 0.1,
    max_depth: float = 100.0,
) -> list[str]:
    """Predict every frame with a one-frame rolling buffer; return the .npy paths written."""
    height = int(height or inference.height)
    width = int(width or inference.width)
    if height % 32 or width % 32:
        raise ValueError(f"--height/--width {height}x{width}: both must be multiples of 32")
    stems = [os.path.splitext(os.path.basename(p))[0] for p in frame_paths]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"--frames: two frames share the name {duplicate!r}; outputs would clash")
    os.makedirs(out_dir, exist_ok=True)
    K, inv_K = intrinsics_at_quarter(intrinsics, height, width)
    step = make_step(inference, mode, min_depth, max_depth)
    written, previous = [], None
    for path, stem in track(zip(frame_paths, stems, strict=True), len(stems), "predict"):
        current = load_frame(path, height, width)
        has_previous = previous is not None
        lookup = previous if has_previous else current
        depth = np.asarray(step(lookup, current, np.bool_(has_previous), K, inv_K))
        npy_path = os.path.join(out_dir, f"{stem}_depth.npy")
        np.save(npy_path, depth.astype(np.float32))
        eval_outputs.save_png(
            os.path.join(out_dir, f"{stem}_depth.png"), eval_outputs.disparity_image(1.0 / depth)
        )
        written.append(npy_path)
        previous = current
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.eval.predict", description=__doc__)
    parser.add_argument(
        "--checkpoint", required=True, help="training workdir or ManyDepth .pth folder"
    )
    parser.add_argument("--frames", nargs="+", required=True, help="folder or image files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--height", type=int, default=None, help="default: the model's")
    parser.add_argument("--width", type=int, default=None, help="default: the model's")
    parser.add_argument(
        "--intrinsics", default=None, help="JSON normalised 3x3 K (default: ManyDepth's KITTI K)"
    )
    parser.add_argument("--mode", choices=MODES, default="student")
    parser.add_argument("--min_depth", type=float, default=0.1, help="training min depth")
    parser.add_argument("--max_depth", type=float, default=100.0, help="training max depth")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, inference: InferenceModelLike | None = None) -> int:
    """CLI entry; ``inference`` skips loading ``--checkpoint`` (for tests and notebooks)."""
    args = parse_args(argv)
    try:
        paths = list_frames(args.frames)  # cheap checks before loading weights
        intrinsics = read_intrinsics(args.intrinsics)
        if inference is None:
            inference = load_inference(args.checkpoint)
        written = predict_sequence(
            inference,
            paths,
            args.out,
            height=args.height,
            width=args.width,
            intrinsics=intrinsics,
            mode=args.mode,
            min_depth=args.min_depth,
            max_depth=args.max_depth,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"mal_jax.eval.predict: {error}") from None
    print(f"wrote {len(written)} depth maps (.npy + .png) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
