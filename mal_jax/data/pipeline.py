"""Deterministic input pipelines: per-host sharding, seeded epochs, batching, resume.

Two kinds of input are accepted:

- an ``IndexedSource`` (KITTI, Cityscapes): a sample count, a host ``read(index)`` that decodes
  one sample, and a graph ``finish(raw, key)`` that augments it. Each epoch's order is a
  permutation of the indices drawn from (seed, epoch) -- the same on every host -- then dealt
  out round-robin to hosts; only then are samples decoded, so shuffling costs nothing. This is
  the seeded per-epoch shuffle with ``reshuffle_each_iteration=False`` done on the index list.
- any unbatched ``tf.data.Dataset`` in the common format (the synthetic scenes): sharded with
  ``shard``, shuffled with a (seed, epoch)-seeded buffer, batched.

``train_batches(..., start_step=s)`` yields exactly what the s-th and later batches of a run from
step 0 would be: the data position of a resumed run. Training drops the remainder (per host,
every host gets the same number of batches); evaluation keeps every sample exactly once.

Command: ``python -m mal_jax.data.pipeline --bench [--height 192 --width 640 --batch_size 12
--steps 20]`` builds a KITTI-shaped tree in a temporary folder and prints samples/s; the last line
is ``pipeline_samples_per_s <value>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from mal_jax.data import transforms


def hide_gpus_from_tf() -> None:
    """Keep TensorFlow off the accelerators so JAX owns them (call before any TF op)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised: TF has started, nothing to undo
        pass


hide_gpus_from_tf()


@dataclasses.dataclass(frozen=True)
class IndexedSource:
    """A split: ``read(i)`` -> dict of numpy arrays (host), ``finish(raw, key)`` -> sample.

    ``signature`` maps every key ``read`` returns to (tf dtype, static shape, None = dynamic).
    """

    name: str
    num_samples: int
    read: Callable[[int], dict]
    signature: dict
    finish: Callable[[dict, tf.Tensor], dict]
    seed: int = 0

    def load(self, index, epoch=0) -> dict:
        """Graph-mode: one finished sample in the common format."""
        names = sorted(self.signature)

        def host(i):
            raw = self.read(int(i))
            return [np.asarray(raw[name], self.signature[name][0].as_numpy_dtype) for name in names]

        values = tf.numpy_function(
            host, [index], [self.signature[n][0] for n in names], stateful=False
        )
        raw = {}
        for name, value in zip(names, values, strict=True):
            value.set_shape(self.signature[name][1])
            raw[name] = value
        raw["index"] = tf.cast(index, tf.int64)
        return self.finish(raw, transforms.sample_key(self.seed, epoch, index))


def source_dataset(
    source: IndexedSource, epoch: int = 0, num_parallel_calls: int = tf.data.AUTOTUNE
) -> tf.data.Dataset:
    """Unbatched finished samples of a source in index order (one epoch's augmentation)."""
    return tf.data.Dataset.range(source.num_samples).map(
        lambda i: source.load(i, epoch), num_parallel_calls=num_parallel_calls, deterministic=True
    )


def index_order(
    num_samples: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = False,
) -> np.ndarray:
    """This host's sample indices for one epoch.

    The global order is shared by all hosts; host p takes positions p, p + P, ... With
    ``drop_remainder`` every host gets ``num_samples // P`` (training); without it the hosts
    together cover every index exactly once (evaluation).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    order = np.arange(num_samples, dtype=np.int64)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(order)
    if drop_remainder:
        order = order[: (num_samples // process_count) * process_count]
    return order[process_index::process_count]


def steps_per_epoch(num_samples: int, batch_size: int, process_count: int = 1) -> int:
    """Training batches per epoch on every host (remainders dropped)."""
    return (num_samples // process_count) // batch_size


def _num_samples(data) -> int:
    if isinstance(data, IndexedSource):
        return data.num_samples
    count = int(data.cardinality())
    if count < 0:
        raise ValueError(
            "pipeline: dataset has unknown or infinite cardinality; "
            "use a finite dataset (e.g. synthetic_dataset(num_samples=...))"
        )
    return count


def epoch_dataset(
    data,
    *,
    epoch: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = True,
    start_batch: int = 0,
    shuffle_buffer: int = 1024,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Batched samples of one epoch for this host, starting at batch ``start_batch``."""
    if isinstance(data, IndexedSource):
        order = index_order(
            data.num_samples,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            process_index=process_index,
            process_count=process_count,
            drop_remainder=drop_remainder,
        )
        ds = tf.data.Dataset.from_tensor_slices(order[start_batch * batch_size :])
        ds = ds.map(
            lambda i: data.load(i, epoch), num_parallel_calls=num_parallel_calls, deterministic=True
        )
    else:
        count = _num_samples(data)
        ds = data
        if drop_remainder:  # equal share per host, as for indexed sources
            ds = ds.take((count // process_count) * process_count)
        ds = ds.shard(process_count, process_index)
        if shuffle:
            ds = ds.shuffle(
                shuffle_buffer,
                seed=int(np.random.default_rng([seed, epoch]).integers(2**31)),
                reshuffle_each_iteration=False,
            )
        ds = ds.skip(start_batch * batch_size)
    return ds.padded_batch(batch_size, drop_remainder=drop_remainder)


def train_batches(
    data,
    *,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    num_epochs: int | None = None,
    prefetch: int = 2,
    shuffle_buffer: int = 1024,
) -> Iterator[dict]:
    """Numpy training batches from global step ``start_step`` on (epochs chained)."""
    per_epoch = steps_per_epoch(_num_samples(data), batch_size, process_count)
    if per_epoch == 0:
        raise ValueError(
            f"pipeline: {_num_samples(data)} samples over {process_count} host(s) "
            f"do not fill one batch of {batch_size}"
        )
    epoch, offset = divmod(start_step, per_epoch)
    while num_epochs is None or epoch < num_epochs:
        ds = epoch_dataset(
            data,
            epoch=epoch,
            batch_size=batch_size,
            seed=seed,
            shuffle=True,
            process_index=process_index,
            process_count=process_count,
            drop_remainder=True,
            start_batch=offset,
            shuffle_buffer=shuffle_buffer,
        )
        yield from ds.prefetch(prefetch).as_numpy_iterator()
        epoch, offset = epoch + 1, 0


def eval_batches(
    data, *, batch_size: int, process_index: int = 0, process_count: int = 1, prefetch: int = 2
) -> Iterator[dict]:
    """Numpy evaluation batches in split order; every sample once across hosts.

    Batches are padded per batch where a key's shape varies (KITTI's ground truth differs in
    size between drives): the padding is 0 (invalid depth); recover each map's true size from
    ``index`` (e.g. ``kitti.gt_shapes``).
    """
    ds = epoch_dataset(
        data,
        epoch=0,
        batch_size=batch_size,
        seed=0,
        shuffle=False,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=False,
    )
    return ds.prefetch(prefetch).as_numpy_iterator()


def _bench(height: int, width: int, batch_size: int, steps: int, num_images: int) -> float:
    from mal_jax.data import kitti

    with tempfile.TemporaryDirectory() as root:
        split = kitti.write_kitti_like_tree(
            root, num_drives=2, frames_per_drive=num_images // 2, image_size=(375, 1242)
        )
        source = kitti.kitti_source(root, split, height=height, width=width, train=True)
        per_epoch = steps_per_epoch(source.num_samples, batch_size)
        num_epochs = -(-(steps + 1) // max(per_epoch, 1))
        # A finite run, consumed to the end, so no prefetch thread outlives the temporary tree.
        timed = 0
        for step, _ in enumerate(
            train_batches(source, batch_size=batch_size, seed=0, num_epochs=num_epochs)
        ):
            if step == 0:  # warm-up: graph tracing and thread pools
                start = time.perf_counter()
            elif step <= steps:
                timed, elapsed = step, time.perf_counter() - start
    return timed * batch_size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mal_jax.data.pipeline")
    parser.add_argument("--bench", action="store_true", help="measure KITTI loader throughput")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_images", type=int, default=64)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    rate = _bench(args.height, args.width, args.batch_size, args.steps, args.num_images)
    print(
        f"KITTI-shaped jpg 375x1242 -> {args.height}x{args.width}, batch {args.batch_size}, "
        f"{args.steps} steps"
    )
    print(f"pipeline_samples_per_s {rate:.1f}")
    return 0


if __name__ == "__main__":
    # Run the imported module's main: under ``-m`` this file is ``__main__``, whose
    # IndexedSource class is not the one the loaders build.
    from mal_jax.data import pipeline as _pipeline

    sys.exit(_pipeline.main())
