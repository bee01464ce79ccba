"""The datasets by name (``config.data.dataset``) and the check of a config's data paths.

``DATASETS`` maps each name to a ``DatasetSpec``: its training and evaluation sources, the
evaluation presets that fit it, whether samples carry the true camera motion, and, for data
on disk, how its split files and images are laid out (instance masks then come from
``data.masks_root``; the embedded scenes render theirs). Code that depends on the dataset asks
its spec, never compares names.

``check_config(config)`` runs every check of the config's data and evaluation fields and of
the paths they name before anything is built or written; the first problem is a
``ConfigError`` of one line naming the field and its value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections

from mal_jax.data import cityscapes, kitti, pipeline, sources, synthetic
from mal_jax.data.frame_reader import NEIGHBOUR_POLICIES


class ConfigError(ValueError):
    """A config field whose value cannot work; the message names the field and the value."""


@dataclasses.dataclass(frozen=True)
class DiskLayout:
    """How a dataset on disk names its files (for the config check and the mask validator)."""

    read_split: Callable[[str], list]  # parses a split file; errors name the file and line
    # (root, split file, image extension) -> the image files behind every sample's frames
    train_images: Callable[[str, str, str], list[str]]
    eval_images: Callable[[str, str, str], list[str]]
    gt_is_folder: bool  # data.gt_depth_file: a folder of per-sample .npy, else one .npz


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    train_source: Callable[[ml_collections.ConfigDict], pipeline.IndexedSource]
    # (config, height, width): evaluation pairs (-1, 0) with depth_gt at that image size
    eval_source: Callable[[ml_collections.ConfigDict, int, int], pipeline.IndexedSource]
    eval_presets: tuple[str, ...]  # config.evaluation.protocol values (eval.presets.PRESETS)
    has_true_poses: bool  # samples carry cam_T_cam, the true motion (velocity loss)
    layout: DiskLayout | None  # None: generated in memory, instance masks rendered with it

    @property
    def masks_on_disk(self) -> bool:
        return self.layout is not None


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("synthetic", sources.synthetic_train, sources.synthetic_eval,
                    eval_presets=("synthetic",), has_true_poses=True, layout=None),
        DatasetSpec(
            "kitti", sources.kitti_train, sources.kitti_eval,
            eval_presets=("kitti_eigen", "kitti_eigen_mal"), has_true_poses=False,
            layout=DiskLayout(
                read_split=kitti.read_split_file,
                train_images=lambda root, split, ext: kitti.split_image_paths(
                    root, split, ext, offsets=(-1, 0, 1)),
                eval_images=lambda root, split, ext: kitti.split_image_paths(
                    root, split, ext, offsets=(-1, 0)),
                gt_is_folder=False)),
        DatasetSpec(
            "cityscapes", sources.cityscapes_train, sources.cityscapes_eval,
            eval_presets=("cityscapes", "cityscapes_mal"), has_true_poses=False,
            layout=DiskLayout(
                read_split=cityscapes.read_city_split,
                train_images=lambda root, split, ext: cityscapes.triplet_image_paths(root, split),
                eval_images=lambda root, split, ext: cityscapes.eval_image_paths(root, split),
                gt_is_folder=True)),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"config.data.dataset={name!r}: unknown dataset; known: "
                          f"{', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def train_source(config: ml_collections.ConfigDict) -> pipeline.IndexedSource:
    """The training split of ``config.data.dataset``."""
    return dataset_spec(config.data.dataset).train_source(config)


def eval_source(config: ml_collections.ConfigDict, height: int | None = None,
                width: int | None = None) -> pipeline.IndexedSource:
    """The evaluation split of ``config.data.dataset`` at ``height`` x ``width`` (default: the
    training size)."""
    spec = dataset_spec(config.data.dataset)
    return spec.eval_source(config, height or config.data.height, width or config.data.width)


# ------------------------------------------------------------------ the config check


def check_config(config: ml_collections.ConfigDict, *, training: bool = True) -> DatasetSpec:
    """Check ``config.data`` and ``config.evaluation`` and every path they name; return the
    dataset's spec. ``training=False`` (evaluation only) skips the training split and masks.

    Loss fields are checked where the step is configured (``train.step.step_settings``), which
    the trainer also does before the first step and before writing anything.
    """
    data = config.data
    spec = dataset_spec(data.dataset)
    for field in ("height", "width"):
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 32:
            raise ConfigError(f"config.data.{field}={value!r}: must be a positive multiple of 32 "
                              "(the encoders downsample by 32)")
    _check_frame_stride(data, spec)
    if data.missing_neighbour not in NEIGHBOUR_POLICIES:
        raise ConfigError(f"config.data.missing_neighbour={data.missing_neighbour!r}: expected "
                          f"one of {', '.join(NEIGHBOUR_POLICIES)}")
    protocol = config.evaluation.protocol
    if protocol not in spec.eval_presets:
        raise ConfigError(f"config.evaluation.protocol={protocol!r}: dataset {spec.name!r} is "
                          f"evaluated with one of {', '.join(spec.eval_presets)}")
    if config.evaluation.batch_size < 1:
        raise ConfigError(f"config.evaluation.batch_size={config.evaluation.batch_size}: "
                          "must be at least 1")
    if spec.layout is not None:
        _check_paths(config, spec, training)
    return spec


def _check_frame_stride(data: ml_collections.ConfigDict, spec: DatasetSpec) -> None:
    if spec.layout is not None and data.frame_stride != 1:
        raise ConfigError(f"config.data.frame_stride={data.frame_stride!r}: only the embedded "
                          f"synthetic scenes take a stride (dataset {spec.name!r} reads "
                          "consecutive frames)")
    try:
        synthetic.check_stride(data.frame_stride)
    except ValueError as error:
        raise ConfigError(f"config.data.frame_stride: {error}") from None


def _check_paths(config: ml_collections.ConfigDict, spec: DatasetSpec, training: bool) -> None:
    data, layout = config.data, spec.layout
    _require(spec, "root", data.root, folder=True)
    for field in ("train_split_file", "eval_split_file") if training else ("eval_split_file",):
        path = data[field]
        _require(spec, field, path, folder=False)
        try:
            layout.read_split(path)
        except (OSError, ValueError) as error:
            raise ConfigError(f"config.data.{field}={path!r}: {error}") from None
    _require(spec, "gt_depth_file", data.gt_depth_file, folder=layout.gt_is_folder)
    if data.masks_root:
        _require(spec, "masks_root", data.masks_root, folder=True)
    elif training and (config.mal.temporal or config.mal.main_temporal):
        raise ConfigError(
            f"config.data.masks_root='': MAL's temporal hints (config.mal.temporal, "
            f"config.mal.main_temporal) need instance masks on dataset {spec.name!r}; give the "
            "masks folder (data/README.md) or set both to False")


def _require(spec: DatasetSpec, field: str, path: str, *, folder: bool) -> None:
    kind = "folder" if folder else "file"
    if not path:
        raise ConfigError(f"config.data.{field}='': dataset {spec.name!r} needs a {kind} here "
                          f"(--config.data.{field}=...)")
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise ConfigError(f"config.data.{field}={path!r}: {kind} missing")
