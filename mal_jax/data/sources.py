"""Pick the training and evaluation sources a config asks for.

Every source is a ``pipeline.IndexedSource`` yielding the common sample format, so the
trainer, the evaluator and the benchmarks treat the embedded scenes, KITTI and Cityscapes
alike.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from mal_jax.data import cityscapes, kitti, pipeline, synthetic, transforms


def _mask_policy(config: ml_collections.ConfigDict) -> str:
    return "required" if config.data.masks_root else "off"


def _synthetic_source(config, split: str, train: bool, height: int, width: int
                      ) -> pipeline.IndexedSource:
    data = config.data
    count = data.num_train_samples if train else data.num_eval_samples
    offsets = synthetic.TRAIN_OFFSETS if train else synthetic.EVAL_OFFSETS
    size = dict(height=height, width=width)
    signature = {
        key: (tf.as_dtype(dtype), shape)
        for key, (shape, dtype) in synthetic.sample_signature(
            num_frames=len(offsets), max_instances=data.max_instances, **size).items()
        if key != "index"
    }

    def read(index: int) -> dict:
        sample = synthetic.render_sample(split, index, seed=data.seed,
                                         max_instances=data.max_instances, offsets=offsets,
                                         **size)
        sample.pop("index")
        return sample

    def finish(raw: dict, key):
        if train and data.augment:
            return transforms.augment_train_sample(raw, key)
        return raw

    return pipeline.IndexedSource(name=f"synthetic_{split}", num_samples=count, read=read,
                                  signature=signature, finish=finish, seed=config.training.seed)


def train_source(config: ml_collections.ConfigDict) -> pipeline.IndexedSource:
    """The training split of ``config.data.dataset``."""
    data = config.data
    if data.dataset == "synthetic":
        return _synthetic_source(config, "train", True, data.height, data.width)
    common = dict(height=data.height, width=data.width, seed=config.training.seed,
                  max_instances=data.max_instances, masks=_mask_policy(config),
                  masks_root=data.masks_root or None)
    if data.dataset == "kitti":
        return kitti.kitti_source(data.root, data.train_split_file, train=data.augment,
                                  img_ext=data.img_ext, **common)
    if data.dataset == "cityscapes":
        return cityscapes.cityscapes_source(data.root, data.train_split_file,
                                            train=data.augment, **common)
    raise ValueError(f"config.data.dataset={data.dataset!r}: expected synthetic, kitti or "
                     "cityscapes")


def eval_source(config: ml_collections.ConfigDict, *, height: int | None = None,
                width: int | None = None, missing_neighbour: str = "static"
                ) -> pipeline.IndexedSource:
    """The evaluation split (frames -1 and 0, ground truth) of ``config.data.dataset``, at
    ``height`` x ``width`` (default: the training size). ``missing_neighbour`` is what replaces
    a missing frame -1 (see kitti.NEIGHBOUR_POLICIES)."""
    data = config.data
    height, width = height or data.height, width or data.width
    if data.dataset == "synthetic":
        return _synthetic_source(config, "test", False, height, width)
    common = dict(height=height, width=width, max_instances=data.max_instances,
                  masks=_mask_policy(config), masks_root=data.masks_root or None,
                  missing_neighbour=missing_neighbour)
    if data.dataset == "kitti":
        return kitti.kitti_eval_source(data.root, data.eval_split_file, data.gt_depth_file,
                                       img_ext=data.img_ext, **common)
    if data.dataset == "cityscapes":
        return cityscapes.cityscapes_eval_source(data.root, data.eval_split_file,
                                                 data.gt_depth_file, **common)
    raise ValueError(f"config.data.dataset={data.dataset!r}: expected synthetic, kitti or "
                     "cityscapes")
