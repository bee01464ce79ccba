"""TFDS builder for the synthetic driving scenes: builds locally, nothing is downloaded.

Every split stores full triplets (frames -1, 0, +1) so one feature spec serves all splits;
:func:`load_synthetic_tfds` decodes records into the common sample format and keeps only the
requested frames (by default (-1, 0) for validation and test, as ``synthetic_dataset`` does).
Frames are stored as uint8 levels, which is lossless: the renderer quantises to 8 bits.

    builder = MalSyntheticScenes(data_dir="/tmp/tfds")           # config "96x320"
    builder.download_and_prepare()
    ds = load_synthetic_tfds("train", data_dir="/tmp/tfds")
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from mal_jax.data import pipeline, synthetic

_ZLIB = tfds.features.Encoding.ZLIB
pipeline.hide_gpus_from_tf()


@dataclasses.dataclass(eq=False)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """Resolution, split sizes and seed of one build."""

    height: int = 96
    width: int = 320
    num_train: int = synthetic.DEFAULT_NUM_SAMPLES["train"]
    num_validation: int = synthetic.DEFAULT_NUM_SAMPLES["validation"]
    num_test: int = synthetic.DEFAULT_NUM_SAMPLES["test"]
    max_instances: int = 16
    seed: int = 0


class MalSyntheticScenes(tfds.core.GeneratorBasedBuilder):
    """Procedural street scenes with moving cars and pedestrians, rendered with ground truth."""

    name = "mal_synthetic"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [SyntheticScenesConfig(name="96x320", description="Default resolution.")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 finds this through importlib_resources, which is not installed here; the
        # path only serves to look for a (non-existent) checksums file beside the module.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        F, H, W, K = 3, cfg.height, cfg.width, cfg.max_instances
        scales = synthetic.NUM_SCALES
        features = tfds.features.FeaturesDict(
            {
                "frames": tfds.features.Tensor(
                    shape=(F, H, W, 3),
                    dtype=np.uint8,
                    encoding=_ZLIB,
                    doc="RGB of frames (-1, 0, +1); float frames are these levels / 255.",
                ),
                "K": tfds.features.Tensor(
                    shape=(scales, 4, 4),
                    dtype=np.float32,
                    doc="Intrinsics per scale (image of H/2^s x W/2^s).",
                ),
                "inv_K": tfds.features.Tensor(shape=(scales, 4, 4), dtype=np.float32),
                "instance_ids": tfds.features.Tensor(
                    shape=(F, H, W),
                    dtype=np.uint8,
                    encoding=_ZLIB,
                    doc="0 = none, k = instance slot k-1 (same object in every frame).",
                ),
                "instance_class": tfds.features.Tensor(
                    shape=(F, K), dtype=np.int32, doc="0 car, 1 pedestrian, -1 empty slot."
                ),
                "instance_score": tfds.features.Tensor(shape=(F, K), dtype=np.float32),
                "depth_gt": tfds.features.Tensor(
                    shape=(H, W),
                    dtype=np.float32,
                    encoding=_ZLIB,
                    doc="Metric z-depth of frame 0; 0 on sky.",
                ),
                "moving_mask": tfds.features.Tensor(shape=(H, W), dtype=np.bool_, encoding=_ZLIB),
                "cam_T_cam": tfds.features.Tensor(
                    shape=(F, 4, 4),
                    dtype=np.float32,
                    doc="Frame-0 camera coordinates to frame-f camera coordinates.",
                ),
                "index": tfds.features.Scalar(dtype=np.int64),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            homepage="https://github.com/nianticlabs/manydepth",
            disable_shuffling=True,
        )  # records stay in index order

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
            "test": self._generate_examples("test", cfg.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        if cfg.max_instances > 255:
            raise ValueError(f"{self.name}: max_instances {cfg.max_instances} exceeds uint8 ids")
        for index in range(count):
            sample = synthetic.render_sample(
                split,
                index,
                height=cfg.height,
                width=cfg.width,
                seed=cfg.seed,
                max_instances=cfg.max_instances,
                offsets=synthetic.TRAIN_OFFSETS,
            )
            record = {key: sample[key] for key in synthetic.SAMPLE_KEYS if key != "frames_aug"}
            record["frames"] = np.round(sample["frames"] * 255.0).astype(np.uint8)
            record["instance_ids"] = sample["instance_ids"].astype(np.uint8)
            yield index, record


def to_common_format(record: dict, offsets: tuple[int, ...] = synthetic.TRAIN_OFFSETS) -> dict:
    """A decoded record as a common-format sample holding the frames at ``offsets``."""
    rows = [synthetic.TRAIN_OFFSETS.index(o) for o in offsets]
    frames = tf.cast(tf.gather(record["frames"], rows), tf.float32) / 255.0
    return {
        "frames": frames,
        "frames_aug": frames,
        "K": record["K"],
        "inv_K": record["inv_K"],
        "instance_ids": tf.cast(tf.gather(record["instance_ids"], rows), tf.int32),
        "instance_class": tf.gather(record["instance_class"], rows),
        "instance_score": tf.gather(record["instance_score"], rows),
        "depth_gt": record["depth_gt"],
        "moving_mask": record["moving_mask"],
        "cam_T_cam": tf.gather(record["cam_T_cam"], rows),
        "index": record["index"],
    }


def load_synthetic_tfds(
    split: str,
    *,
    data_dir: str,
    config: str | SyntheticScenesConfig = "96x320",
    offsets: tuple[int, ...] | None = None,
) -> tf.data.Dataset:
    """The prepared split in index order, in the common format."""
    pipeline.hide_gpus_from_tf()
    split = synthetic.canonical_split(split)
    offsets = tuple(synthetic.default_offsets(split) if offsets is None else offsets)
    unknown = [o for o in offsets if o not in synthetic.TRAIN_OFFSETS]
    if unknown:
        raise ValueError(f"{MalSyntheticScenes.name}: offsets {unknown} not stored (have -1, 0, 1)")
    builder = MalSyntheticScenes(config=config, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda record: to_common_format(record, offsets))
