"""Procedural street layouts for the synthetic driving dataset.

A scene is one sequence: a straight street (road, raised sidewalks, optional cross street),
building boxes along both sides closed by an end wall, parked and moving cars, pedestrians and a
camera that drives along its lane with small heading changes.  Everything is deterministic in the
seed words handed to :func:`generate_scene`.

World frame: x right, y down, z forward along the street (the camera frame at zero yaw).  The
camera is at y = 0, the road surface at y = ``camera_height``.  Objects and buildings are boxes
given by a centre, half extents (x, y, z in the object frame) and a yaw about the y axis
(``world_R_object = rot_y(yaw)``); cars are 1.8 m wide, 1.5 m high, 4.2 m long on average.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

CAR = 0
PEDESTRIAN = 1
CLASS_NAMES = ("car", "pedestrian")

# Ego vehicle footprint relative to the camera (centre offset along z, half extents x and z):
# moving objects must never drive through it.
_EGO_OFFSET_Z, _EGO_HALF_X, _EGO_HALF_Z = -1.0, 1.0, 2.3
_FAR_X = 85.0  # lateral extent of the cross street canyon
_FACADE_HEX = "b89e80 9e5c47 ccc7b2 8c9499 d9bf8c 7a6b61 b2b8c7 a88575"
_PAINT_HEX = "d9d9db 1f1f24 991414 1a388c 8c8f94 d9b226 266b38 614c38"


@dataclasses.dataclass(frozen=True)
class Street:
    """Ground geometry shared by every frame of a sequence."""

    camera_height: float
    curb_height: float
    lane_width: float
    lanes_per_direction: int
    road_half_width: float
    has_cross: bool
    cross_z0: float
    cross_z1: float


@dataclasses.dataclass(frozen=True)
class Buildings:
    """Static axis-aligned boxes (buildings, walls) and their facade parameters."""

    centre: np.ndarray  # (B, 3)
    half: np.ndarray  # (B, 3)
    colour: np.ndarray  # (B, 3) base albedo
    windows: np.ndarray  # (B, 4) spacing along u, spacing along v, width fraction, height fraction
    noise_offset: np.ndarray  # (B, 2)


@dataclasses.dataclass(frozen=True)
class Objects:
    """Cars and pedestrians with one pose per frame."""

    cls: np.ndarray  # (O,) int32, CAR or PEDESTRIAN
    half: np.ndarray  # (O, 3)
    centre: np.ndarray  # (N, O, 3) per frame
    yaw: np.ndarray  # (N, O) per frame
    moving: np.ndarray  # (O,) bool: moves relative to the world
    colour: np.ndarray  # (O, 2, 3) primary and secondary albedo
    noise_offset: np.ndarray  # (O, 2)


@dataclasses.dataclass(frozen=True)
class Scene:
    """One sequence: street, buildings, objects and the camera trajectory."""

    street: Street
    buildings: Buildings
    objects: Objects
    cam_position: np.ndarray  # (N, 3)
    cam_yaw: np.ndarray  # (N,)

    @property
    def num_frames(self) -> int:
        return int(self.cam_yaw.shape[0])

    def world_T_cam(self, frame: int) -> np.ndarray:
        """(4, 4) float64 pose of camera ``frame`` in the world."""
        return rigid_transform(self.cam_yaw[frame], self.cam_position[frame])

    def world_T_object(self, frame: int) -> np.ndarray:
        """(O, 4, 4) float64 poses of every object (box centre, object axes) at ``frame``."""
        return rigid_transform(self.objects.yaw[frame], self.objects.centre[frame])


def rot_y(yaw: np.ndarray) -> np.ndarray:
    """Rotations about the (downward) y axis; positive yaw turns +z towards +x."""
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack(
        [np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)],
        -2,
    )


def rigid_transform(yaw: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Homogeneous (..., 4, 4) transforms from yaw angles and translations."""
    yaw = np.asarray(yaw, np.float64)
    out = np.zeros(yaw.shape + (4, 4))
    out[..., :3, :3] = rot_y(yaw)
    out[..., :3, 3] = position
    out[..., 3, 3] = 1.0
    return out


def _camera_path(rng: np.random.Generator, num_frames: int, lane_x: float):
    """Speeds of 0.5-1.5 m per frame varying slowly, and a gently weaving heading."""
    frames = np.arange(num_frames, dtype=np.float64)
    base = rng.uniform(0.6, 1.4)
    speed = base + rng.uniform(-0.1, 0.1) * (frames / num_frames - 0.5) * 2
    speed += 0.05 * np.sin(2 * np.pi * frames / rng.uniform(12, 40) + rng.uniform(0, 2 * np.pi))
    speed = np.clip(speed, 0.5, 1.5)
    amplitude = rng.uniform(0.0, 0.04)
    yaw = amplitude * np.sin(2 * np.pi * frames / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi))
    position = np.zeros((num_frames, 3))
    position[0, 0] = lane_x
    steps = np.stack([speed * np.sin(yaw), np.zeros_like(yaw), speed * np.cos(yaw)], -1)
    position[1:] = position[0] + np.cumsum(steps[:-1], axis=0)
    return position, yaw, speed


def _palette(hex_colours: str) -> np.ndarray:
    """(N, 3) albedos in [0, 1] from space-separated RRGGBB colours."""
    return np.array([[int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in hex_colours.split()]) / 255


def _facade_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    palette = _palette(_FACADE_HEX)
    picks = palette[rng.integers(0, len(palette), count)]
    return np.clip(picks * rng.uniform(0.85, 1.15, (count, 3)), 0.05, 0.95)


def _buildings(rng: np.random.Generator, street: Street, z_min: float, z_max: float) -> Buildings:
    """Contiguous building rows on both sides, a cross-street canyon, and an end wall."""
    ground = street.camera_height - street.curb_height
    boxes = []  # (x0, x1, z0, z1, height) in world units
    spans = [(z_min, z_max)]
    if street.has_cross:
        spans = [(z_min, street.cross_z0), (street.cross_z1, z_max)]
    sidewalk = rng.uniform(2.5, 4.5)
    for side in (-1.0, 1.0):
        for span_index, (z0, z1) in enumerate(spans):
            cuts = [z0]
            while cuts[-1] < z1 - 4.0:
                cuts.append(min(cuts[-1] + rng.uniform(8.0, 24.0), z1))
            cuts[-1] = z1
            for k in range(len(cuts) - 1):
                near = street.road_half_width + sidewalk + rng.uniform(0.0, 2.0)
                far = near + rng.uniform(10.0, 20.0)
                # Buildings flanking the cross street are deep enough to wall off its canyon.
                at_gap = street.has_cross and (
                    (span_index == 0 and k == len(cuts) - 2) or (span_index == 1 and k == 0)
                )
                if at_gap:
                    far = _FAR_X + 10.0
                lo, hi = sorted((side * near, side * far))
                boxes.append((lo, hi, cuts[k], cuts[k + 1], rng.uniform(6.0, 22.0)))
        if street.has_cross:
            lo, hi = sorted((side * _FAR_X, side * (_FAR_X + 10.0)))
            boxes.append(
                (lo, hi, street.cross_z0 - 2.0, street.cross_z1 + 2.0, rng.uniform(8.0, 25.0))
            )
    boxes.append((-200.0, 200.0, z_max, z_max + 10.0, rng.uniform(6.0, 20.0)))
    arr = np.array(boxes)
    centre = np.stack(
        [(arr[:, 0] + arr[:, 1]) / 2, ground - arr[:, 4] / 2, (arr[:, 2] + arr[:, 3]) / 2], -1
    )
    half = np.stack([(arr[:, 1] - arr[:, 0]) / 2, arr[:, 4] / 2, (arr[:, 3] - arr[:, 2]) / 2], -1)
    count = len(boxes)
    windows = np.stack(
        [
            rng.uniform(2.4, 4.2, count),
            rng.uniform(2.9, 3.6, count),
            rng.uniform(0.35, 0.65, count),
            rng.uniform(0.4, 0.65, count),
        ],
        -1,
    )
    return Buildings(
        centre=centre,
        half=half,
        colour=_facade_colours(rng, count),
        windows=windows,
        noise_offset=rng.uniform(0, 200, (count, 2)),
    )


class _TrackBuilder:
    """Accumulates object tracks, rejecting any that collide with accepted ones or the ego car."""

    def __init__(
        self,
        num_frames: int,
        cam_position: np.ndarray,
        cam_yaw: np.ndarray,
        z_limits: tuple[float, float],
    ):
        self.num_frames = num_frames
        self.z_limits = z_limits
        ego_centre = cam_position + _EGO_OFFSET_Z * np.stack(
            [np.sin(cam_yaw), np.zeros_like(cam_yaw), np.cos(cam_yaw)], -1
        )
        self.footprints = [(ego_centre[:, [0, 2]], np.array([_EGO_HALF_X, _EGO_HALF_Z]))]
        self.tracks = []

    def add(self, cls, half, centre, yaw, moving, colour, noise_offset) -> bool:
        centre = np.broadcast_to(np.asarray(centre, np.float64), (self.num_frames, 3))
        yaw = np.broadcast_to(np.asarray(yaw, np.float64), (self.num_frames,))
        z_reach = half[2] + half[0]
        if (
            centre[:, 2].min() - z_reach < self.z_limits[0]
            or centre[:, 2].max() + z_reach > self.z_limits[1]
        ):
            return False
        # Axis-aligned footprint of the yawed box, with a small safety margin.
        c, s = np.abs(np.cos(yaw[0])), np.abs(np.sin(yaw[0]))
        extent = np.array([c * half[0] + s * half[2], s * half[0] + c * half[2]]) + 0.3
        xz = centre[:, [0, 2]]
        for other_xz, other_extent in self.footprints:
            overlap = np.abs(xz - other_xz) < extent + other_extent
            if np.any(overlap.all(axis=-1)):
                return False
        self.footprints.append((xz, extent))
        self.tracks.append((cls, half, centre, yaw, moving, colour, noise_offset))
        return True

    def build(self) -> Objects:
        if not self.tracks:
            n = self.num_frames
            return Objects(
                np.zeros(0, np.int32),
                np.zeros((0, 3)),
                np.zeros((n, 0, 3)),
                np.zeros((n, 0)),
                np.zeros(0, bool),
                np.zeros((0, 2, 3)),
                np.zeros((0, 2)),
            )
        cls, half, centre, yaw, moving, colour, offset = zip(*self.tracks, strict=True)
        return Objects(
            cls=np.array(cls, np.int32),
            half=np.array(half),
            centre=np.stack(centre, 1),
            yaw=np.stack(yaw, 1),
            moving=np.array(moving, bool),
            colour=np.array(colour),
            noise_offset=np.array(offset),
        )


def _car_colours(rng: np.random.Generator) -> np.ndarray:
    paints = _palette(_PAINT_HEX)
    body = np.clip(paints[rng.integers(len(paints))] * rng.uniform(0.85, 1.15, 3), 0.03, 0.97)
    return np.stack([body, rng.uniform(0.05, 0.15) * np.ones(3)])


def _person_colours(rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.uniform(0.1, 0.9, 3), rng.uniform(0.05, 0.5, 3)])


def _car_half(rng: np.random.Generator) -> np.ndarray:
    return np.array([1.8, 1.5, 4.2]) * rng.uniform(0.92, 1.08, 3) / 2


def _populate(rng, street: Street, cam_position, cam_yaw, cam_speed, z_min, z_max) -> Objects:
    n = len(cam_yaw)
    frames = np.arange(n, dtype=np.float64)
    tracks = _TrackBuilder(n, cam_position, cam_yaw, (z_min + 2.0, z_max - 1.0))
    road_y = street.camera_height
    lanes = (np.arange(street.lanes_per_direction) + 0.5) * street.lane_width
    cam_lane = cam_position[0, 0]

    def moving_car(x: float, z_track: np.ndarray, yaw: float) -> bool:
        half = _car_half(rng)
        centre = np.stack([np.full(n, x), np.full(n, road_y - half[1]), z_track], -1)
        return tracks.add(CAR, half, centre, yaw, True, _car_colours(rng), rng.uniform(0, 200, 2))

    # The classic failure case first: a lead car in the ego lane at the ego speed.
    if rng.random() < 0.75:
        ratio = rng.uniform(0.95, 1.05)
        start = cam_position[0, 2] + rng.uniform(8.0, 22.0)
        z = start + np.concatenate([[0.0], np.cumsum(cam_speed[:-1] * ratio)])
        moving_car(cam_lane, z, 0.0)
    for _ in range(rng.integers(0, 3)):  # other traffic in our direction
        z = cam_position[0, 2] + rng.uniform(-10.0, 50.0) + rng.uniform(0.5, 1.6) * frames
        moving_car(lanes[rng.integers(len(lanes))] + rng.uniform(-0.2, 0.2), z, 0.0)
    for _ in range(rng.integers(1, 4)):  # oncoming traffic
        z = cam_position[0, 2] + rng.uniform(15.0, 90.0) - rng.uniform(0.5, 1.5) * frames
        moving_car(-lanes[rng.integers(len(lanes))] + rng.uniform(-0.2, 0.2), z, np.pi)
    if street.has_cross:
        for _ in range(rng.integers(1, 3)):
            direction = rng.choice([-1.0, 1.0])
            speed = rng.uniform(0.5, 1.2)
            x = direction * speed * (frames - rng.uniform(0, n))
            lane_z = street.cross_z0 + (street.cross_z1 - street.cross_z0) * (
                0.75 if direction > 0 else 0.25)
            half = _car_half(rng)
            centre = np.stack([x, np.full(n, road_y - half[1]), np.full(n, lane_z)], -1)
            tracks.add(CAR, half, centre, direction * np.pi / 2, True, _car_colours(rng),
                       rng.uniform(0, 200, 2))
    # Parked cars line both curbs, leaving the cross street free.
    for side in (-1.0, 1.0):
        z = z_min + rng.uniform(2.0, 8.0)
        while z < z_max - 8.0:
            half = _car_half(rng)
            z_centre = z + half[2]
            blocked = street.has_cross and (
                street.cross_z0 - 3.0 < z_centre < street.cross_z1 + 3.0)
            if rng.random() < 0.75 and not blocked:
                x = side * (street.road_half_width - 1.05 - rng.uniform(0.0, 0.2))
                yaw = (0.0 if side > 0 else np.pi) + rng.uniform(-0.04, 0.04)
                centre = np.array([x, road_y - half[1], z_centre])
                tracks.add(CAR, half, centre, yaw, False, _car_colours(rng), rng.uniform(0, 200, 2))
            z += 2 * half[2] + rng.uniform(0.8, 6.0)
    # Pedestrians on the sidewalks, most of them walking along the street.
    walk_y = street.camera_height - street.curb_height
    for _ in range(rng.integers(2, 7)):
        half = np.array([0.6, 1.7, 0.6]) * rng.uniform(0.9, 1.1, 3) / 2
        side = rng.choice([-1.0, 1.0])
        x = side * (street.road_half_width + rng.uniform(0.6, 2.0))
        walking = rng.random() < 0.7
        speed = rng.uniform(0.08, 0.18) * rng.choice([-1.0, 1.0]) if walking else 0.0
        z = cam_position[0, 2] + rng.uniform(6.0, 60.0) + speed * frames
        if street.has_cross and np.any((z > street.cross_z0 - 1) & (z < street.cross_z1 + 1)):
            continue
        centre = np.stack([np.full(n, x), np.full(n, walk_y - half[1]), z], -1)
        tracks.add(PEDESTRIAN, half, centre, 0.0 if speed >= 0 else np.pi, walking,
                   _person_colours(rng), rng.uniform(0, 200, 2))
    return tracks.build()


def generate_scene(seed_words: Sequence[int], num_frames: int) -> Scene:
    """Builds one sequence deterministically from ``seed_words`` (e.g. (split, seed, sequence))."""
    if num_frames < 3:
        raise ValueError(f"synthetic_scene: num_frames must be >= 3, got {num_frames}")
    rng = np.random.default_rng(np.random.SeedSequence(list(seed_words)))
    lanes_per_direction = int(rng.integers(1, 3))
    lane_width = rng.uniform(3.1, 3.6)
    road_half_width = lanes_per_direction * lane_width + rng.uniform(2.1, 2.6)
    cam_lane = (rng.integers(lanes_per_direction) + 0.5) * lane_width
    cam_position, cam_yaw, cam_speed = _camera_path(rng, num_frames, cam_lane)
    z_min = -30.0
    z_max = cam_position[-1, 2] + rng.uniform(50.0, 70.0)
    has_cross = bool(rng.random() < 0.6)
    cross_width = rng.uniform(10.0, 14.0)
    cross_z0 = rng.uniform(cam_position[0, 2] + 12.0, z_max - 25.0) if has_cross else 0.0
    street = Street(
        camera_height=1.65,
        curb_height=rng.uniform(0.1, 0.18),
        lane_width=lane_width,
        lanes_per_direction=lanes_per_direction,
        road_half_width=road_half_width,
        has_cross=has_cross,
        cross_z0=cross_z0,
        cross_z1=cross_z0 + cross_width,
    )
    buildings = _buildings(rng, street, z_min, z_max)
    objects = _populate(rng, street, cam_position, cam_yaw, cam_speed, z_min, z_max)
    return Scene(
        street=street,
        buildings=buildings,
        objects=objects,
        cam_position=cam_position,
        cam_yaw=cam_yaw,
    )
