"""One PNG of a run's example predictions: per test image, the input frame next to the
teacher's and the student's disparity, as the evaluation wrote them to ``eval_images/``.

    python -m mal_jax.studies.example_sheet WORKDIR OUT.png [--num_images 3]

README command 1's ``results/default_run/depth_examples.png`` is this sheet of its workdir
(``evaluation.write_images`` images are written by every evaluation).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

# Columns of the sheet, as ``eval_images/<index>_<column>.png``.
COLUMNS = ("input", "teacher_disp", "student_disp")


def example_sheet(images_dir: str, num_images: int) -> np.ndarray:
    """``(num_images * H, len(COLUMNS) * W, 3)`` uint8: row i holds image i's columns."""
    rows = []
    for index in range(num_images):
        tiles = []
        for column in COLUMNS:
            path = os.path.join(images_dir, f"{index:04d}_{column}.png")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such example image (the evaluation writes "
                                        "evaluation.write_images of them)")
            tiles.append(np.asarray(Image.open(path).convert("RGB")))
        shapes = {tile.shape for tile in tiles}
        if len(shapes) != 1:
            raise ValueError(f"{images_dir}: example {index} has tiles of sizes {sorted(shapes)}")
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a training workdir (its eval_images/ folder)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--num_images", type=int, default=3)
    args = parser.parse_args(argv)
    sheet = example_sheet(os.path.join(args.workdir, "eval_images"), args.num_images)
    Image.fromarray(sheet).save(args.out)
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]}")


if __name__ == "__main__":
    main()
