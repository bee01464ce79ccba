"""A generated KITTI-shaped tree (random images, calibration, velodyne scans) for the loader
benchmark (``bench_pipeline``) and the tests; never read by the library."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


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
