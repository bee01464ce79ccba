"""Throughput of the KITTI loader and tf.data pipeline on a generated tree.

``python -m mal_jax.studies.bench_pipeline [--height 192 --width 640 --batch_size 12
--steps 20 --num_images 64]`` writes a KITTI-shaped tree of 375x1242 jpgs into a temporary
folder, times ``steps`` training batches after one warm-up batch and prints samples/s; the last
line is ``pipeline_samples_per_s <value>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from mal_jax.data import kitti, pipeline
from mal_jax.studies.kitti_tree import write_kitti_like_tree


def bench(height: int, width: int, batch_size: int, steps: int, num_images: int) -> float:
    """Training samples per second of the KITTI source (decode, resize, augment, batch)."""
    with tempfile.TemporaryDirectory() as root:
        split = write_kitti_like_tree(
            root, num_drives=2, frames_per_drive=num_images // 2, image_size=(375, 1242)
        )
        source = kitti.kitti_source(root, split, height=height, width=width, train=True)
        per_epoch = pipeline.steps_per_epoch(source.num_samples, batch_size)
        num_epochs = -(-(steps + 1) // max(per_epoch, 1))
        # A finite run, consumed to the end, so no prefetch thread outlives the temporary tree.
        timed = 0
        for step, _ in enumerate(
            pipeline.train_batches(source, batch_size=batch_size, seed=0, num_epochs=num_epochs)
        ):
            if step == 0:  # warm-up: graph tracing and thread pools
                start = time.perf_counter()
            elif step <= steps:
                timed, elapsed = step, time.perf_counter() - start
    return timed * batch_size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.studies.bench_pipeline")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_images", type=int, default=64)
    args = parser.parse_args(argv)
    rate = bench(args.height, args.width, args.batch_size, args.steps, args.num_images)
    print(
        f"KITTI-shaped jpg 375x1242 -> {args.height}x{args.width}, batch {args.batch_size}, "
        f"{args.steps} steps"
    )
    print(f"pipeline_samples_per_s {rate:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
