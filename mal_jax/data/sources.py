"""Each dataset's training and evaluation source, built from the config.

One builder per dataset and role; ``registry.DATASETS`` names them. Every source is a
``pipeline.IndexedSource`` yielding the common sample format, so the trainer, the evaluator
and the benchmarks treat the embedded scenes, KITTI and Cityscapes alike. Evaluation sources
read no instance masks (scoring does not use them).
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from mal_jax.data import cityscapes, kitti, pipeline, synthetic, transforms


def mask_mode(config: ml_collections.ConfigDict) -> str:
    """``masks.MASK_MODES`` entry for training: masks on disk are required once configured."""
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
                                         stride=data.frame_stride, **size)
        sample.pop("index")
        return sample

    def finish(raw: dict, key):
        if train and data.augment:
            return transforms.augment_train_sample(raw, key)
        return raw

    return pipeline.IndexedSource(name=f"synthetic_{split}", num_samples=count, read=read,
                                  signature=signature, finish=finish, seed=config.training.seed)


def synthetic_train(config: ml_collections.ConfigDict) -> pipeline.IndexedSource:
    return _synthetic_source(config, "train", True, config.data.height, config.data.width)


def synthetic_eval(config: ml_collections.ConfigDict, height: int, width: int
                   ) -> pipeline.IndexedSource:
    return _synthetic_source(config, "test", False, height, width)


def _disk_train_options(config: ml_collections.ConfigDict) -> dict:
    data = config.data
    return dict(height=data.height, width=data.width, seed=config.training.seed,
                max_instances=data.max_instances, masks=mask_mode(config),
                masks_root=data.masks_root or None, train=data.augment)


def kitti_train(config: ml_collections.ConfigDict) -> pipeline.IndexedSource:
    data = config.data
    return kitti.kitti_source(data.root, data.train_split_file, img_ext=data.img_ext,
                              missing_neighbour=data.missing_neighbour,
                              **_disk_train_options(config))


def kitti_eval(config: ml_collections.ConfigDict, height: int, width: int
               ) -> pipeline.IndexedSource:
    data = config.data
    return kitti.kitti_eval_source(data.root, data.eval_split_file, data.gt_depth_file,
                                   height=height, width=width, img_ext=data.img_ext,
                                   max_instances=data.max_instances,
                                   missing_neighbour=data.missing_neighbour)


def cityscapes_train(config: ml_collections.ConfigDict) -> pipeline.IndexedSource:
    # The preprocessed triplets hold all three frames in one file: no neighbour can be missing.
    data = config.data
    return cityscapes.cityscapes_source(data.root, data.train_split_file,
                                        **_disk_train_options(config))


def cityscapes_eval(config: ml_collections.ConfigDict, height: int, width: int
                    ) -> pipeline.IndexedSource:
    data = config.data
    return cityscapes.cityscapes_eval_source(data.root, data.eval_split_file,
                                             data.gt_depth_file, height=height, width=width,
                                             max_instances=data.max_instances,
                                             missing_neighbour=data.missing_neighbour)
