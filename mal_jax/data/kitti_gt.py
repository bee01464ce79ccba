"""Eigen-split ground truth from velodyne scans, equal to the reference's export.

``python -m mal_jax.data.kitti_gt --root DIR --split_file FILE --out F.npz`` writes
``F.npz`` with one key, ``data``: an object array of float32 (H, W) depth maps in split order
(H, W from each drive's ``S_rect_02``), which is what the reference's ``gt_depths.npz`` holds
(KITTI's drives differ in size, so numpy stores them as objects; load with
``allow_pickle=True``).

Projection, as ManyDepth/Monodepth2's ``generate_depth_map`` with ``vel_depth=True`` and the
left colour camera (the reference always exports camera 2):

- keep velodyne points with x >= 0 (in front of the sensor plane);
- project with P_rect_02 @ R_rect_00 @ [R|T]_velo_to_cam; pixel = round(u), round(v) minus 1
  (numpy round: half to even), kept when inside [0, W) x [0, H) of S_rect_02;
- the stored depth is the velodyne x coordinate (forward distance), not the camera z;
- several points on one pixel: numpy's fancy assignment writes the last one; then the
  reference's duplicate pass groups points by the key ``row * (W - 1) + col - 1`` -- note W - 1,
  so pixel (r, W-1) shares a key with (r+1, 0) -- and writes each group's minimum depth at the
  pixel of the group's first point. Reproduced exactly, quirk included;
- negative depths are set to 0.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mal_jax.data.kitti import read_split_file


def read_calib_file(path: str) -> dict:
    """``key: values`` lines; values that parse as floats become float64 arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: calibration file missing")
    data = {}
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if ":" not in line:
                raise ValueError(f"{path}:{number}: expected 'key: values', got {line.strip()!r}")
            key, value = line.split(":", 1)
            value = value.strip()
            try:
                data[key] = np.array([float(v) for v in value.split()])
            except ValueError:
                data[key] = value
    return data


def _calib_array(calib: dict, key: str, size: int, path: str) -> np.ndarray:
    value = calib.get(key)
    if not isinstance(value, np.ndarray) or value.size != size:
        raise ValueError(f"{path}: key {key} must hold {size} numbers")
    return value


def velodyne_to_image(calib_dir: str, camera: int = 2) -> tuple[np.ndarray, tuple[int, int]]:
    """3x4 projection from homogeneous velodyne points to camera pixels, and (H, W)."""
    cam_path = os.path.join(calib_dir, "calib_cam_to_cam.txt")
    velo_path = os.path.join(calib_dir, "calib_velo_to_cam.txt")
    cam, velo = read_calib_file(cam_path), read_calib_file(velo_path)
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = _calib_array(velo, "R", 9, velo_path).reshape(3, 3)
    velo_to_cam[:3, 3] = _calib_array(velo, "T", 3, velo_path)
    rectify = np.eye(4)
    rectify[:3, :3] = _calib_array(cam, "R_rect_00", 9, cam_path).reshape(3, 3)
    projection = _calib_array(cam, f"P_rect_0{camera}", 12, cam_path).reshape(3, 4)
    width, height = _calib_array(cam, "S_rect_02", 2, cam_path).astype(np.int32)
    return projection @ rectify @ velo_to_cam, (int(height), int(width))


def load_velodyne(path: str) -> np.ndarray:
    """(N, 4) float32 points with the reflectance replaced by 1 (homogeneous)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: velodyne scan missing")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{path}: {raw.size} floats is not a whole number of (x, y, z, r) points")
    points = raw.reshape(-1, 4)
    points[:, 3] = 1.0
    return points


def project_depth(
    points: np.ndarray,
    velo_to_image: np.ndarray,
    shape: tuple[int, int],
    velodyne_depth: bool = True,
) -> np.ndarray:
    """float64 (H, W) sparse depth map from velodyne points (rules in the module docstring)."""
    height, width = shape
    points = points[points[:, 0] >= 0]
    projected = points @ velo_to_image.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = projected[:, :2] / projected[:, 2:3]
    depth = points[:, 0].astype(np.float64) if velodyne_depth else projected[:, 2]
    cols = np.round(uv[:, 0]) - 1
    rows = np.round(uv[:, 1]) - 1
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    cols, rows, depth = cols[inside].astype(np.int64), rows[inside].astype(np.int64), depth[inside]

    out = np.zeros((height, width))
    out[rows, cols] = depth
    keys = rows * (width - 1) + cols - 1
    unique, first, inverse, counts = np.unique(
        keys, return_index=True, return_inverse=True, return_counts=True
    )
    group_min = np.full(len(unique), np.inf)
    np.minimum.at(group_min, inverse, depth)
    repeated = counts > 1
    out[rows[first[repeated]], cols[first[repeated]]] = group_min[repeated]
    out[out < 0] = 0
    return out


def export_gt(root: str, split_file: str, out_path: str) -> int:
    """Write ``data`` (object array of float32 maps) for every split line; returns the count."""
    maps = []
    for line in read_split_file(split_file):
        calib_dir = os.path.join(root, line.folder.split("/")[0])
        velo_path = os.path.join(
            root, line.folder, "velodyne_points", "data", f"{line.frame:010d}.bin"
        )
        try:
            projection, shape = velodyne_to_image(calib_dir, camera=2)
            depth = project_depth(load_velodyne(velo_path), projection, shape)
        except (OSError, ValueError) as error:
            raise type(error)(f"{error}{line.context()}") from error
        maps.append(depth.astype(np.float32))
    data = np.empty(len(maps), dtype=object)
    data[:] = maps
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    np.savez_compressed(out_path, data=data)
    return len(maps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.data.kitti_gt")
    parser.add_argument("--root", required=True, help="KITTI raw root")
    parser.add_argument("--split_file", required=True, help="e.g. splits/eigen/test_files.txt")
    parser.add_argument("--out", required=True, help="output .npz (key 'data')")
    args = parser.parse_args(argv)
    count = export_gt(args.root, args.split_file, args.out)
    print(f"wrote {count} depth maps to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
