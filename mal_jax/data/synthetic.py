"""The embedded procedural driving-scene dataset: samples and a tf.data source.

Sample ``index`` of a split maps deterministically to (sequence, target frame): sequence ``s``
is generated from the seed words (tag, seed, split id, s), so splits never share a scene and any
sample can be rendered alone, in any order or shard.  Samples follow the team's common format
(``frames`` (F, H, W, 3) in frame order ``offsets``, K/inv_K pyramids, instance slots, depth_gt,
moving_mask, cam_T_cam, index); ``render_sample(..., extras=True)`` adds ground truth used by
tests and analysis.  Instance classes: 0 = car, 1 = pedestrian; parked cars and standing
pedestrians are instances that do not move.

Rendering speed: ``python -m mal_jax.studies.bench_synthetic``.
"""

from __future__ import annotations

import functools

import numpy as np

from mal_jax.data.synthetic_render import render_view
from mal_jax.data.synthetic_scene import Scene, generate_scene

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_SPLIT_ALIASES = {"val": "validation"}
DEFAULT_NUM_SAMPLES = {"train": 4400, "validation": 320, "test": 320}
SEQUENCE_LENGTH = 24
# Evaluation splits take a few spread-out targets per sequence, for more distinct scenes.
TARGETS_PER_SEQUENCE = {"train": SEQUENCE_LENGTH - 2, "validation": 4, "test": 4}
# Frames t - k, t, t + k with k = 1 are consecutive frames (the paper's KITTI setting); a larger
# stride multiplies the motion, and so the parallax, between them.
MAX_STRIDE = 4
TRAIN_OFFSETS = (-1, 0, 1)
EVAL_OFFSETS = (-1, 0)
MIN_INSTANCE_PIXELS = 8
NUM_SCALES = 4
_SEED_TAG = 0x5C3E
SAMPLE_KEYS = (
    "frames",
    "frames_aug",
    "K",
    "inv_K",
    "instance_ids",
    "instance_class",
    "instance_score",
    "depth_gt",
    "moving_mask",
    "cam_T_cam",
    "index",
)


def canonical_split(split: str) -> str:
    """'train', 'validation' or 'test' (also accepts 'val')."""
    name = _SPLIT_ALIASES.get(split, split)
    if name not in SPLIT_IDS:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
    return name


def default_offsets(split: str) -> tuple[int, ...]:
    """(-1, 0, 1) for training, (-1, 0) for validation and test (the common format)."""
    return TRAIN_OFFSETS if canonical_split(split) == "train" else EVAL_OFFSETS


def intrinsics_pyramid(height: int, width: int, num_scales: int = NUM_SCALES):
    """ManyDepth's KITTI intrinsics per scale: normalised K times (W // 2^s, H // 2^s).

    Returns float32 ``K`` and ``inv_K`` of shape (num_scales, 4, 4); inverses by pseudo-inverse
    in float32 as the reference computes them.
    """
    normalised = np.array(
        [[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32
    )
    Ks, inv_Ks = [], []
    for scale in range(num_scales):
        K = normalised.copy()
        K[0, :] *= width // 2**scale
        K[1, :] *= height // 2**scale
        Ks.append(K)
        inv_Ks.append(np.linalg.pinv(K))
    return np.stack(Ks), np.stack(inv_Ks).astype(np.float32)


def check_stride(stride: int) -> int:
    """``stride`` as an int, or one clear error: frames t - stride and t + stride must both lie
    in a sequence of ``SEQUENCE_LENGTH`` frames."""
    if int(stride) != stride or not 1 <= stride <= MAX_STRIDE:
        raise ValueError(f"synthetic: frame_stride must be an integer in [1, {MAX_STRIDE}], "
                         f"got {stride}")
    return int(stride)


def targets_per_sequence(split: str, stride: int = 1) -> int:
    """Samples per sequence: every frame with both neighbours ``stride`` away for training,
    a few spread-out targets for evaluation."""
    split, stride = canonical_split(split), check_stride(stride)
    if split == "train":
        return SEQUENCE_LENGTH - 2 * stride
    return TARGETS_PER_SEQUENCE[split]


def locate(split: str, index: int, stride: int = 1) -> tuple[int, int]:
    """(sequence, target frame) of sample ``index`` of ``split``, the target at least
    ``stride`` frames from either end of its sequence."""
    per_sequence = targets_per_sequence(split, stride)  # checks the stride
    sequence, slot = divmod(int(index), per_sequence)
    span = SEQUENCE_LENGTH - 1 - 2 * stride
    return sequence, stride + (slot * span) // max(per_sequence - 1, 1)


@functools.lru_cache(maxsize=8)
def scene_for(split: str, sequence: int, seed: int = 0) -> Scene:
    """The (cached) scene of one sequence of a split."""
    split_id = SPLIT_IDS[canonical_split(split)]
    return generate_scene((_SEED_TAG, int(seed), split_id, int(sequence)), SEQUENCE_LENGTH)


@functools.lru_cache(maxsize=16)
def _cached_view(split: str, sequence: int, seed: int, frame: int, height: int, width: int):
    K, _ = intrinsics_pyramid(height, width, 1)
    view = render_view(scene_for(split, sequence, seed), frame, K[0], height, width)
    for array in view.values():
        array.setflags(write=False)  # shared by the cache
    return view


def render_frame(
    split: str, sequence: int, frame: int, *, height: int = 96, width: int = 320, seed: int = 0
) -> dict:
    """One rendered frame: ``rgb``, ``depth``, ``object_map``, ``surface`` (see render_view)."""
    _check_size(height, width)
    return _cached_view(
        canonical_split(split), int(sequence), int(seed), int(frame), int(height), int(width)
    )


def _check_size(height: int, width: int) -> None:
    if height < 8 or width < 8:
        raise ValueError(f"synthetic: height and width must be >= 8, got {height}x{width}")


def _instance_slots(object_maps: np.ndarray, target: int, num_objects: int, max_instances: int):
    """Slots for objects with enough visible pixels, largest in the target frame first."""
    counts = np.stack([np.bincount(m[m >= 0], minlength=num_objects) for m in object_maps])
    eligible = np.flatnonzero(counts.sum(0) >= MIN_INSTANCE_PIXELS)
    order = np.lexsort((eligible, -counts.sum(0)[eligible], -counts[target, eligible]))
    chosen = eligible[order][:max_instances]
    lookup = np.zeros(num_objects + 1, np.int32)  # object index + 1 -> slot + 1
    lookup[chosen + 1] = np.arange(1, len(chosen) + 1)
    return chosen, counts[:, chosen], lookup


def _relative_poses(world_T_cam, cam_T_world, target: int) -> np.ndarray:
    """frame-f camera <- target camera transforms, exactly the identity at the target."""
    poses = (cam_T_world @ world_T_cam[target]).astype(np.float32)
    poses[target] = np.eye(4, dtype=np.float32)
    return poses


def render_sample(
    split: str,
    index: int,
    *,
    height: int = 96,
    width: int = 320,
    seed: int = 0,
    max_instances: int = 16,
    offsets: tuple[int, ...] | None = None,
    extras: bool = False,
    stride: int = 1,
) -> dict:
    """Sample ``index`` of ``split`` as a dict of numpy arrays in the common format.

    ``offsets`` defaults to (-1, 0, 1) for train and (-1, 0) otherwise, in units of ``stride``
    frames (offset -1 is frame t - stride).  With ``extras`` the dict
    also holds ground truth beyond the common format: ``depth`` (F, H, W), ``object_map``
    (F, H, W) scene object index or -1, ``surface`` (F, H, W) surface kinds, ``world_T_cam``
    (F, 4, 4), ``cam_T_object`` (F, K, 4, 4) object-to-camera poses per slot,
    ``instance_object`` (K,) scene object index per slot (-1 empty), ``instance_moving`` (K,).
    """
    split = canonical_split(split)
    _check_size(height, width)
    if int(index) < 0:
        raise ValueError(f"synthetic: sample index must be >= 0, got {index}")
    offsets = tuple(default_offsets(split) if offsets is None else offsets)
    if 0 not in offsets or any(abs(o) > 1 for o in offsets):
        raise ValueError(f"synthetic: offsets must contain 0 and lie in [-1, 1], got {offsets}")
    sequence, target_frame = locate(split, index, stride)
    scene = scene_for(split, sequence, seed)
    frames = [target_frame + o * stride for o in offsets]
    views = [
        render_frame(split, sequence, f, height=height, width=width, seed=seed) for f in frames
    ]
    target = offsets.index(0)
    objects = scene.objects
    object_maps = np.stack([v["object_map"] for v in views])
    chosen, counts, lookup = _instance_slots(object_maps, target, len(objects.cls), max_instances)

    num_frames = len(offsets)
    instance_class = np.full((num_frames, max_instances), -1, np.int32)
    instance_score = np.zeros((num_frames, max_instances), np.float32)
    visible = counts > 0
    instance_class[:, : len(chosen)] = np.where(visible, objects.cls[chosen], -1)
    instance_score[:, : len(chosen)] = visible.astype(np.float32)

    world_T_cam = np.stack([scene.world_T_cam(f) for f in frames])
    cam_T_world = np.linalg.inv(world_T_cam)
    target_map = object_maps[target]
    K, inv_K = intrinsics_pyramid(height, width)
    sample = {
        "frames": np.stack([v["rgb"] for v in views]),
        "K": K,
        "inv_K": inv_K,
        "instance_ids": lookup[object_maps + 1],
        "instance_class": instance_class,
        "instance_score": instance_score,
        "depth_gt": np.array(views[target]["depth"]),
        "moving_mask": (target_map >= 0) & objects.moving[np.maximum(target_map, 0)],
        "cam_T_cam": _relative_poses(world_T_cam, cam_T_world, target),
        "index": np.int64(index),
    }
    sample["frames_aug"] = sample["frames"].copy()
    if extras:
        sample.update(_ground_truth_extras(scene, frames, chosen, views, object_maps,
                                           world_T_cam, cam_T_world, max_instances))
    return sample


def _ground_truth_extras(scene: Scene, frames, chosen, views, object_maps, world_T_cam,
                         cam_T_world, max_instances: int) -> dict:
    """The ``extras`` of ``render_sample``: ground truth beyond the common format."""
    slot_object = np.full(max_instances, -1, np.int32)
    slot_object[: len(chosen)] = chosen
    cam_T_object = np.tile(np.eye(4, dtype=np.float32), (len(frames), max_instances, 1, 1))
    for row, f in enumerate(frames):
        cam_T_object[row, : len(chosen)] = cam_T_world[row] @ scene.world_T_object(f)[chosen]
    moving = np.zeros(max_instances, bool)
    moving[: len(chosen)] = scene.objects.moving[chosen]
    return dict(
        depth=np.stack([v["depth"] for v in views]),
        object_map=object_maps,
        surface=np.stack([v["surface"] for v in views]),
        world_T_cam=world_T_cam.astype(np.float32),
        cam_T_object=cam_T_object,
        instance_object=slot_object,
        instance_moving=moving,
    )


def sample_signature(height: int, width: int, num_frames: int, max_instances: int) -> dict:
    """{key: (shape, numpy dtype)} of a common-format sample."""
    F, H, W, K = num_frames, height, width, max_instances
    return {
        "frames": ((F, H, W, 3), np.float32),
        "frames_aug": ((F, H, W, 3), np.float32),
        "K": ((NUM_SCALES, 4, 4), np.float32),
        "inv_K": ((NUM_SCALES, 4, 4), np.float32),
        "instance_ids": ((F, H, W), np.int32),
        "instance_class": ((F, K), np.int32),
        "instance_score": ((F, K), np.float32),
        "depth_gt": ((H, W), np.float32),
        "moving_mask": ((H, W), np.bool_),
        "cam_T_cam": ((F, 4, 4), np.float32),
        "index": ((), np.int64),
    }


def synthetic_dataset(
    split: str,
    *,
    height: int,
    width: int,
    num_samples: int | None = None,
    seed: int = 0,
    max_instances: int = 16,
    offsets: tuple[int, ...] | None = None,
    num_parallel_calls=None,
    stride: int = 1,
):
    """Unbatched tf.data.Dataset of ``num_samples`` common-format samples (default split size).

    Built as range + numpy_function, so element i is ``render_sample(split, i, ...)`` whatever
    the shuffling, sharding or skipping applied to the dataset.
    """
    from mal_jax.data.pipeline import hide_gpus_from_tf  # imports TensorFlow: only here

    hide_gpus_from_tf()
    import tensorflow as tf

    split = canonical_split(split)
    _check_size(height, width)
    offsets = tuple(default_offsets(split) if offsets is None else offsets)
    count = DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
    if count <= 0:
        raise ValueError(f"synthetic: num_samples must be positive, got {num_samples}")
    signature = sample_signature(height, width, len(offsets), max_instances)

    def produce(index):
        sample = render_sample(
            split,
            int(index),
            height=height,
            width=width,
            seed=seed,
            max_instances=max_instances,
            offsets=offsets,
            stride=stride,
        )
        return tuple(np.asarray(sample[key], signature[key][1]) for key in SAMPLE_KEYS)

    def to_dict(index):
        dtypes = [tf.as_dtype(signature[key][1]) for key in SAMPLE_KEYS]
        values = tf.numpy_function(produce, [index], dtypes, stateful=False)
        out = {}
        for key, value in zip(SAMPLE_KEYS, values, strict=True):
            value.set_shape(signature[key][0])
            out[key] = value
        return out

    indices = tf.data.Dataset.range(count)
    if num_parallel_calls is None:
        return indices.map(to_dict)
    return indices.map(to_dict, num_parallel_calls=num_parallel_calls, deterministic=True)
