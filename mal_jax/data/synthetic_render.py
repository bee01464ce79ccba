"""Vectorised analytic ray casting and procedural textures for the synthetic street scenes.

One ray per pixel through integer pixel coordinates (the convention of ManyDepth's
back-projection: pixel (u, v) has camera ray ``inv(K) @ (u, v, 1)``), scaled so its camera z
component is 1; the ray parameter of a hit is then the z-depth.  The ground (road, sidewalks,
curbs) is intersected per pixel as a set of planes; boxes (buildings, cars, pedestrians) are
slab-tested only on the pixels of their screen-space bounding rectangle, as one flat array of
(box, pixel) pairs, and resolved with a per-pixel minimum.

Textures are anchored to the world (ground, buildings) or to the object (cars, pedestrians) and
band-limited by the pixel footprint: octaves and stripes finer than ~2 pixels fade to their mean,
so moving the camera does not alias them and the photometric loss sees the same surface from
every viewpoint.  Shading is Lambertian under a fixed sun, so static surfaces keep their colour.
"""

from __future__ import annotations

import numpy as np

from mal_jax.data.synthetic_scene import PEDESTRIAN, Scene, rot_y

SKY, ROAD, SIDEWALK, CURB, BUILDING, OBJECT = range(6)
_NEAR = 0.05
_SUN = np.array([0.35, -0.85, 0.40], np.float32) / np.linalg.norm([0.35, -0.85, 0.40])
_NOISE_FLAT = np.random.default_rng(7).random(256 * 256, dtype=np.float32)
# Corner pairs of a box's 12 edges (corner bit 0: x, bit 1: y, bit 2: z).
_EDGES = np.array([(a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit])
_CORNER_SIGNS = np.array([[(c >> k & 1) * 2 - 1 for k in range(3)] for c in range(8)], np.float32)


def value_noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth lattice noise in [0, 1] with unit lattice spacing (period 256)."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    i0, j0 = iu.astype(np.int32) & 255, (iv.astype(np.int32) & 255) << 8
    i1, j1 = (i0 + 1) & 255, (j0 + 256) & 0xFF00
    n00, n01 = _NOISE_FLAT.take(j0 | i0), _NOISE_FLAT.take(j0 | i1)
    n10, n11 = _NOISE_FLAT.take(j1 | i0), _NOISE_FLAT.take(j1 | i1)
    top = n00 + fu * (n01 - n00)
    bottom = n10 + fu * (n11 - n10)
    return top + fv * (bottom - top)


def _keep(wavelength, footprint):
    """Weight of a pattern of this wavelength: 1 above 4 pixels, fading to 0 at 2 pixels."""
    return np.clip(wavelength / footprint * 0.5 - 1.0, 0.0, 1.0)


def fbm(u, v, footprint, base_freq: float, octaves: int = 4) -> np.ndarray:
    """Band-limited fractal value noise in [0, 1] with mean 0.5."""
    total = np.zeros_like(u)
    norm = 0.0
    for octave in range(octaves):
        freq = base_freq * 2.0**octave
        amp = 0.55**octave
        noise = value_noise(u * freq + 17.1 * octave, v * freq - 31.7 * octave)
        total += amp * (noise - 0.5) * _keep(1.0 / freq, footprint)
        norm += amp
    return 0.5 + total / norm


def stripes(coord, period: float, width: float, footprint, offset: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage of stripes of ``width`` every ``period`` (centred on ``offset``)."""
    dist = np.abs(np.mod(coord - offset + period / 2, period) - period / 2)
    coverage = np.clip((width / 2 - dist) / footprint + 0.5, 0.0, 1.0)
    mean = width / period
    return mean + (coverage - mean) * _keep(period, footprint)


def band(coord, lo, hi, footprint) -> np.ndarray:
    """Anti-aliased coverage of the interval [lo, hi]."""
    return np.clip(np.minimum(coord - lo, hi - coord) / footprint + 0.5, 0.0, 1.0)


def _mix(a, b, weight):
    return a + (b - a) * weight[..., None]


def pixel_rays(height: int, width: int, K: np.ndarray) -> np.ndarray:
    """(H*W, 3) float32 camera rays through integer pixel coordinates, with z = 1."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3).astype(np.float32)


def _cast_ground(street, origin, d_axes):
    """Nearest hit on the road, sidewalk and curb planes: (t, surface kind, world normal)."""
    h, c, w = street.camera_height, street.curb_height, street.road_half_width
    ox, oz = float(origin[0]), float(origin[2])
    dx, dy, dz = d_axes
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_x, inv_y, inv_z = 1.0 / dx, 1.0 / dy, 1.0 / dz

    def gap(z):
        if not street.has_cross:
            return np.zeros(z.shape, bool)
        return (z >= street.cross_z0) & (z <= street.cross_z1)

    # Candidate planes: (t, valid, kind, normal code); the normal code is 0 for up, 1 for a
    # face across x and 2 for a face across z, both turned towards the camera.
    candidates = []
    t = (h - c) * inv_y
    candidates.append((t, (dy > 0) & (np.abs(ox + t * dx) > w) & ~gap(oz + t * dz), SIDEWALK, 0))
    t = h * inv_y
    candidates.append((t, (dy > 0) & ((np.abs(ox + t * dx) <= w) | gap(oz + t * dz)), ROAD, 0))
    for side in (-1.0, 1.0):
        t = (side * w - ox) * inv_x
        y = t * dy
        candidates.append((t, (t > 0) & (y >= h - c) & (y <= h) & ~gap(oz + t * dz), CURB, 1))
    if street.has_cross:
        for z_face in (street.cross_z0, street.cross_z1):
            t = (z_face - oz) * inv_z
            y = t * dy
            valid = (t > 0) & (np.abs(ox + t * dx) > w) & (y >= h - c) & (y <= h)
            candidates.append((t, valid, CURB, 2))
    best_t = np.full(dx.shape, np.inf, np.float32)
    kind = np.full(dx.shape, SKY, np.int8)
    code = np.zeros(dx.shape, np.int8)
    for t, valid, surface, normal_code in candidates:
        closer = valid & (t < best_t)
        best_t = np.where(closer, t, best_t)
        kind[closer] = surface
        code[closer] = normal_code
    normal = np.zeros((dx.size, 3), np.float32)
    normal[:, 1] = np.where(code == 0, -1.0, 0.0)
    normal[:, 0] = np.where(code == 1, -np.sign(dx), 0.0)
    normal[:, 2] = np.where(code == 2, -np.sign(dz), 0.0)
    return best_t, kind, normal


def _screen_rects(centre, half, yaw, cam_R, origin, K, height, width):
    """Inclusive pixel rectangles (r0, r1, c0, c1) covering each box's near-clipped projection."""
    corners = centre[:, None] + np.einsum("bij,bcj->bci", rot_y(yaw), _CORNER_SIGNS * half[:, None])
    cam = (corners - origin) @ cam_R  # world to camera: R^T (p - o)
    za, zb = cam[:, _EDGES[:, 0], 2], cam[:, _EDGES[:, 1], 2]
    crossing = (za - _NEAR) * (zb - _NEAR) < 0
    alpha = np.where(crossing, (_NEAR - za) / np.where(crossing, zb - za, 1.0), 0.0)
    clipped = cam[:, _EDGES[:, 0]] + alpha[..., None] * (
        cam[:, _EDGES[:, 1]] - cam[:, _EDGES[:, 0]]
    )
    points = np.concatenate([cam, clipped], 1)
    valid = np.concatenate([cam[..., 2] >= _NEAR, crossing], 1)
    z = np.maximum(points[..., 2], _NEAR)
    u = K[0, 0] * points[..., 0] / z + K[0, 2]
    v = K[1, 1] * points[..., 1] / z + K[1, 2]
    big = 1e9
    c0 = np.floor(np.where(valid, u, big).min(1)).clip(-1, width)
    c1 = np.ceil(np.where(valid, u, -big).max(1)).clip(-1, width)
    r0 = np.floor(np.where(valid, v, big).min(1)).clip(-1, height)
    r1 = np.ceil(np.where(valid, v, -big).max(1)).clip(-1, height)
    r0, c0 = np.maximum(r0, 0), np.maximum(c0, 0)
    r1, c1 = np.minimum(r1, height - 1), np.minimum(c1, width - 1)
    empty = ~valid.any(1) | (r0 > r1) | (c0 > c1)
    return r0.astype(np.int64), r1.astype(np.int64), c0.astype(np.int64), c1.astype(np.int64), empty


def _cast_boxes(centre, half, yaw, origin, d_axes, cam_R, K, height, width):
    """Nearest box per pixel: (t, box index, local hit point, local normal, normal axis).

    t is inf and the box index -1 where no box is hit.
    """
    num_pixels = height * width
    r0, r1, c0, c1, empty = _screen_rects(centre, half, yaw, cam_R, origin, K, height, width)
    rect_w = np.where(empty, 0, c1 - c0 + 1)
    area = np.where(empty, 0, (r1 - r0 + 1) * rect_w)
    r0, c0, rect_w, area = (a.astype(np.int32) for a in (r0, c0, rect_w, area))
    box = np.repeat(np.arange(len(area), dtype=np.int32), area)
    offset = np.arange(box.size, dtype=np.int32) - np.repeat(np.cumsum(area) - area, area)
    row, col = np.divmod(offset, np.repeat(rect_w, area))
    pix = (np.repeat(r0, area) + row) * width + np.repeat(c0, area) + col

    cos, sin = np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32)
    rel = (origin - centre).astype(np.float32)
    o_loc = np.stack(
        [cos * rel[:, 0] - sin * rel[:, 2], rel[:, 1], sin * rel[:, 0] + cos * rel[:, 2]], -1
    )
    gx, gy, gz = (axis_values[pix] for axis_values in d_axes)
    pair_cos, pair_sin = np.repeat(cos, area), np.repeat(sin, area)
    d_loc = (pair_cos * gx - pair_sin * gz, gy, pair_sin * gx + pair_cos * gz)
    lower, upper = -half - o_loc, half - o_loc
    t_entry, t_leave = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            # Slab test; a ray parallel to a slab gets +-inf here, which max/min handle.
            inv = 1.0 / d_loc[axis]
            ta = np.repeat(lower[:, axis], area) * inv
            tb = np.repeat(upper[:, axis], area) * inv
            t_entry.append(np.minimum(ta, tb))
            t_leave.append(np.maximum(ta, tb))
    t_near = np.maximum(np.maximum(t_entry[0], t_entry[1]), t_entry[2])
    t_far = np.minimum(np.minimum(t_leave[0], t_leave[1]), t_leave[2])
    hits = np.flatnonzero((t_near <= t_far) & (t_near > _NEAR))

    t_pix = np.full(num_pixels, np.inf, np.float32)
    np.minimum.at(t_pix, pix[hits], t_near[hits])
    won = hits[t_near[hits] == t_pix[pix[hits]]]
    won_pix = pix[won]
    box_pix = np.full(num_pixels, -1, np.int64)
    box_pix[won_pix] = box[won]
    point = np.zeros((num_pixels, 3), np.float32)
    for axis in range(3):
        point[won_pix, axis] = o_loc[box[won], axis] + t_near[won] * d_loc[axis][won]
    axis_pix = np.zeros(num_pixels, np.int8)
    axis_won = np.stack([entry[won] for entry in t_entry]).argmax(0)
    axis_pix[won_pix] = axis_won
    normal = np.zeros((num_pixels, 3), np.float32)
    d_won = np.stack([component[won] for component in d_loc])
    normal[won_pix, axis_won] = -np.sign(d_won[axis_won, np.arange(len(won))])
    return t_pix, box_pix, point, normal, axis_pix


def _ground_albedo(street, kind, x, z, footprint):
    """Asphalt with lane markings, paved sidewalks and concrete curbs (world-anchored)."""
    grain = fbm(x, z, footprint, 1.3, 4)
    patches = fbm(x, z, footprint, 0.12, 3)
    asphalt = (0.22 + 0.22 * grain + 0.12 * patches)[:, None] * np.float32([1.0, 1.0, 1.04])
    lanes = street.lanes_per_direction
    edge = lanes * street.lane_width
    paint = stripes(x, 2 * edge, 0.15, footprint, edge) + stripes(x, 1e6, 0.12, footprint)
    if lanes > 1:
        dashes = stripes(z, 9.0, 3.0, footprint)
        for side in (-1.0, 1.0):
            paint = (
                paint
                + band(
                    x, side * street.lane_width - 0.07, side * street.lane_width + 0.07, footprint
                )
                * dashes
            )
    if street.has_cross:
        in_gap = band(z, street.cross_z0, street.cross_z1, footprint)
        zebra = stripes(x, 1.0, 0.5, footprint) * band(
            z, street.cross_z0 + 0.5, street.cross_z0 + 3.5, footprint
        )
        paint = paint * (1 - in_gap) + zebra
    road = _mix(asphalt, np.float32([0.86, 0.86, 0.82]), np.clip(paint, 0, 1) * 0.9)
    joints = stripes(x, 0.6, 0.04, footprint) + stripes(z, 0.6, 0.04, footprint)
    tiles = (0.45 + 0.25 * grain + 0.15 * patches)[:, None] * np.float32([1.0, 0.96, 0.9])
    walk = _mix(tiles, np.float32([0.25, 0.24, 0.22]), np.clip(joints, 0, 1))
    curb = (0.5 + 0.3 * grain)[:, None] * np.float32([1.0, 1.0, 1.0])
    on_walk = (kind == SIDEWALK)[:, None]
    return np.where((kind == ROAD)[:, None], road, np.where(on_walk, walk, curb))


def _facade_albedo(buildings, index, point, axis, footprint):
    """Facades with noise, floors and a window grid; coordinates on the hit face."""
    half = buildings.half[index].astype(np.float32)
    along = np.where(axis == 0, point[:, 2] + half[:, 2], point[:, 0] + half[:, 0])
    rise = half[:, 1] - point[:, 1]  # height above the building's base
    off = buildings.noise_offset[index].astype(np.float32)
    spacing_u, spacing_v, frac_u, frac_v = buildings.windows[index].T.astype(np.float32)
    grain = fbm(along + off[:, 0], rise + off[:, 1], footprint, 2.0, 4)
    blotch = fbm(along * 0.9 + off[:, 1], rise * 0.9 + off[:, 0], footprint, 0.25, 3)
    wall = buildings.colour[index].astype(np.float32) * (0.7 + 0.3 * grain + 0.3 * blotch)[:, None]
    cell_u = np.abs(np.mod(along, spacing_u) - spacing_u / 2)
    cell_v = np.abs(np.mod(rise - 0.8, spacing_v) - spacing_v / 2)
    inside_u = np.clip((frac_u * spacing_u / 2 - cell_u) / footprint + 0.5, 0, 1)
    inside_v = np.clip((frac_v * spacing_v / 2 - cell_v) / footprint + 0.5, 0, 1)
    window = inside_u * inside_v * band(rise, 1.2, 2 * half[:, 1] - 1.0, footprint)
    mean = frac_u * frac_v
    window = mean + (window - mean) * _keep(np.minimum(spacing_u, spacing_v), footprint)
    glass = (0.08 + 0.35 * blotch)[:, None] * np.float32([0.8, 0.9, 1.1])
    return _mix(wall, glass, window)


def _object_albedo(objects, index, point, axis, footprint):
    """Cars (paint, glass band, lights, dark underbody) and pedestrians (head, shirt, legs)."""
    half = objects.half[index].astype(np.float32)
    height = (point[:, 1] + half[:, 1]) / (2 * half[:, 1])  # 0 at the top, 1 at the bottom
    across = np.where(axis == 2, point[:, 0], point[:, 2])
    off = objects.noise_offset[index].astype(np.float32)
    grain = fbm(across + off[:, 0], point[:, 1] + off[:, 1], footprint, 3.0, 3)
    primary = objects.colour[index, 0].astype(np.float32)
    secondary = objects.colour[index, 1].astype(np.float32)
    fp_h = footprint / (2 * half[:, 1])  # the footprint in height fractions
    # Cars.
    body = primary * (0.8 + 0.4 * grain)[:, None]
    glass = band(height, 0.1, 0.42, fp_h) * (axis != 1)
    seams = stripes(across, 1.4, 0.05, footprint) * (axis == 0) * band(height, 0.42, 0.85, fp_h)
    car = _mix(body, secondary + 0.15 * grain[:, None], glass)
    underbody = band(height, 0.85, 1.1, fp_h)
    car = _mix(car, np.float32([0.05, 0.05, 0.05]), np.maximum(seams, underbody))
    lamp = (
        band(np.abs(point[:, 0]) / half[:, 0], 0.55, 0.9, footprint / half[:, 0])
        * band(height, 0.48, 0.6, fp_h)
        * (axis == 2)
    )
    lamp_colour = np.where(
        (point[:, 2] > 0)[:, None], np.float32([0.95, 0.95, 0.8]), np.float32([0.8, 0.1, 0.1])
    )
    car = _mix(car, lamp_colour, lamp)
    # Pedestrians.
    skin = np.float32([0.8, 0.6, 0.5]) * (0.9 + 0.2 * grain)[:, None]
    shirt = primary * (0.75 + 0.5 * stripes(point[:, 1], 0.12, 0.05, footprint))[:, None]
    legs = secondary * (0.8 + 0.4 * grain)[:, None]
    person = _mix(
        _mix(skin, shirt, band(height, 0.13, 0.5, fp_h) + (height > 0.5)),
        legs,
        np.clip((height - 0.5) / fp_h + 0.5, 0, 1),
    )
    is_person = (objects.cls[index] == PEDESTRIAN)[:, None]
    return np.where(is_person, person, car)


def render_view(scene: Scene, frame: int, K: np.ndarray, height: int, width: int) -> dict:
    """Renders frame ``frame`` of ``scene`` through the 3x3 (or 4x4) intrinsics ``K``.

    Returns float32 ``rgb`` (H, W, 3) quantised to 8-bit levels, float32 ``depth`` (H, W) z-depth
    in metres (0 on sky), int32 ``object_map`` (H, W) object index in the scene (-1 for none),
    and int8 ``surface`` (H, W) surface kind (SKY, ROAD, SIDEWALK, CURB, BUILDING, OBJECT).
    """
    K = np.asarray(K, np.float32)
    cam_R = rot_y(np.float32(scene.cam_yaw[frame])).astype(np.float32)
    origin = scene.cam_position[frame].astype(np.float32)
    d = pixel_rays(height, width, K) @ cam_R.T
    d_axes = tuple(np.ascontiguousarray(d[:, axis]) for axis in range(3))
    buildings, objects = scene.buildings, scene.objects
    num_buildings = len(buildings.half)
    centre = np.concatenate([buildings.centre, objects.centre[frame]]).astype(np.float32)
    half = np.concatenate([buildings.half, objects.half]).astype(np.float32)
    yaw = np.concatenate([np.zeros(num_buildings), objects.yaw[frame]]).astype(np.float32)

    t_ground, kind_ground, normal_ground = _cast_ground(scene.street, origin, d_axes)
    t_box, box, point, normal_local, axis = _cast_boxes(
        centre, half, yaw, origin, d_axes, cam_R, K, height, width
    )
    box_wins = t_box < t_ground
    depth = np.where(box_wins, t_box, t_ground)
    kind = np.where(box_wins, np.where(box < num_buildings, BUILDING, OBJECT), kind_ground)
    kind = np.where(np.isfinite(depth), kind, SKY).astype(np.int8)
    object_map = np.where(kind == OBJECT, box - num_buildings, -1).astype(np.int32)

    normal = normal_ground
    on_box = np.flatnonzero(box_wins)
    yaw_hit = yaw[box[on_box]]
    cos, sin = np.cos(yaw_hit), np.sin(yaw_hit)
    local = normal_local[on_box]
    normal[on_box] = np.stack(
        [cos * local[:, 0] + sin * local[:, 2], local[:, 1], cos * local[:, 2] - sin * local[:, 0]],
        -1,
    )
    ray_len = np.linalg.norm(d, axis=1)
    facing = np.abs(np.sum(normal * d, 1)) / ray_len
    footprint = (
        np.where(np.isfinite(depth), depth, 1.0) * ray_len / (K[0, 0] * np.maximum(facing, 0.2))
    )

    colour = np.empty((d.shape[0], 3), np.float32)
    sky = kind == SKY
    # Rays have camera z = 1 and the camera never pitches: -y is the slope above the horizon,
    # constant along image rows.
    elevation = np.clip(-d[sky, 1] * 4.0, 0, 1)
    colour[sky] = _mix(np.float32([0.80, 0.86, 0.92]), np.float32([0.40, 0.58, 0.86]), elevation)
    on_ground = (kind == ROAD) | (kind == SIDEWALK) | (kind == CURB)
    hit = origin + depth[on_ground, None] * d[on_ground]
    colour[on_ground] = _ground_albedo(
        scene.street, kind[on_ground], hit[:, 0], hit[:, 2], footprint[on_ground]
    )
    on_building = kind == BUILDING
    colour[on_building] = _facade_albedo(
        buildings, box[on_building], point[on_building], axis[on_building], footprint[on_building]
    )
    on_object = kind == OBJECT
    colour[on_object] = _object_albedo(
        objects, object_map[on_object], point[on_object], axis[on_object], footprint[on_object]
    )
    lit = ~sky
    colour[lit] *= (0.5 + 0.55 * np.maximum(normal[lit] @ _SUN, 0.0))[:, None]
    rgb = np.round(np.clip(colour, 0.0, 1.0) * 255.0) / 255.0
    return {
        "rgb": rgb.reshape(height, width, 3).astype(np.float32),
        "depth": np.where(sky, 0.0, depth).reshape(height, width).astype(np.float32),
        "object_map": object_map.reshape(height, width),
        "surface": kind.reshape(height, width),
    }
