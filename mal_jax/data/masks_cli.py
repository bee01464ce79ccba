"""Check every instance-mask file a split needs: ``python -m mal_jax.data.masks_cli validate``.

``python -m mal_jax.data.masks_cli validate --root DIR --split_file FILE [--dataset kitti|
cityscapes] [--split train|eval] [--masks_root DIR] [--img_ext .jpg]`` prints one line per
problem naming the mask file (missing, unreadable, not in the format of ``masks``, or of
another size than its image), then ``mask_problems <count>``; exit status 1 when there is any.
``--split train`` checks the frames of training samples (KITTI: -1, 0, +1; Cityscapes: the
preprocessed triplet files), ``--split eval`` those of evaluation pairs (frames -1, 0).
"""

from __future__ import annotations

import argparse
import os
import sys

from PIL import Image

from mal_jax.data import masks as masks_lib
from mal_jax.data import registry


def split_images(root: str, split_file: str, *, dataset: str, split: str, img_ext: str
                 ) -> list[str]:
    """Distinct existing image files behind every frame of every split line."""
    layout = registry.dataset_spec(dataset).layout
    if layout is None:
        raise ValueError(f"--dataset {dataset}: its instance masks are rendered, not files")
    images = layout.train_images if split == "train" else layout.eval_images
    return sorted({p for p in images(root, split_file, img_ext) if os.path.isfile(p)})


def validate(root: str, split_file: str, *, dataset: str = "kitti", split: str = "train",
             masks_root: str | None = None, img_ext: str = ".jpg") -> list[str]:
    """One message per problem across every mask file the split's frames need."""
    masks_root = masks_root or masks_lib.default_masks_root(root)
    problems = []
    for image_path in split_images(root, split_file, dataset=dataset, split=split,
                                   img_ext=img_ext):
        mask_path = masks_lib.mask_path_for(image_path, root, masks_root)
        try:
            arrays = masks_lib.load_mask_arrays(mask_path)
        except masks_lib.MaskFileError as error:
            problems.append(f"{error} (image {image_path})")
            continue
        try:
            with Image.open(image_path) as image:
                size = (image.height, image.width)
        except OSError as error:
            problems.append(f"{mask_path}: cannot read image {image_path} ({error})")
            continue
        problems.extend(f"{mask_path}: {p}" for p in masks_lib.format_problems(arrays, size))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.data.masks_cli")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check every mask file of a split")
    check.add_argument("--root", required=True, help="dataset root (images)")
    check.add_argument("--split_file", required=True)
    on_disk = sorted(n for n, spec in registry.DATASETS.items() if spec.masks_on_disk)
    check.add_argument("--dataset", default="kitti", choices=on_disk)
    check.add_argument("--split", default="train", choices=("train", "eval"),
                       help="frames of training triplets or of evaluation pairs")
    check.add_argument("--masks_root", default=None,
                       help=f"default: <root>/{masks_lib.DEFAULT_MASKS_DIRNAME}")
    check.add_argument("--img_ext", default=".jpg", help="KITTI image extension")
    args = parser.parse_args(argv)
    try:
        problems = validate(args.root, args.split_file, dataset=args.dataset, split=args.split,
                            masks_root=args.masks_root, img_ext=args.img_ext)
    except (OSError, ValueError) as error:
        raise SystemExit(f"mal_jax.data.masks_cli: {error}") from None
    for line in problems:
        print(line)
    print(f"mask_problems {len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
