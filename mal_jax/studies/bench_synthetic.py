"""Rendering speed of the embedded synthetic scenes.

``python -m mal_jax.studies.bench_synthetic [--height 96 --width 320 --frames 96]`` renders
distinct frames (scene generation included) and prints milliseconds per frame; the last two
lines are ``wall_clock_fps <value>`` and ``synthetic_fps <value>``, the latter from process
CPU time: the one-core throughput, meaningful on a shared machine (numpy renders on one
thread).
"""

from __future__ import annotations

import argparse
import time

from mal_jax.data import synthetic


def bench(height: int = 96, width: int = 320, num_frames: int = 96) -> tuple[float, float]:
    """(wall-clock, process-CPU) frames per second of rendering distinct frames."""
    synthetic.render_frame("train", 10_000, 0, height=height, width=width)  # warm imports
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(num_frames):  # every (sequence, frame) once: no cache hit
        sequence, frame = divmod(i, synthetic.SEQUENCE_LENGTH)
        synthetic.render_frame("train", sequence, frame, height=height, width=width)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return num_frames / wall, num_frames / max(cpu, 1e-9)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.studies.bench_synthetic")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--frames", type=int, default=96)
    args = parser.parse_args(argv)
    wall_fps, cpu_fps = bench(args.height, args.width, args.frames)
    print(
        f"rendered {args.frames} frames at {args.height}x{args.width}: "
        f"{1000.0 / cpu_fps:.1f} ms CPU per frame, {1000.0 / wall_fps:.1f} ms wall per frame"
    )
    print(f"wall_clock_fps {wall_fps:.1f}")
    print(f"synthetic_fps {cpu_fps:.1f}")


if __name__ == "__main__":
    main()
