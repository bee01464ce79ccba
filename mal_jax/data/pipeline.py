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

A loader error inside ``read`` (missing or corrupt file: one line naming the file and the split
line) reaches the caller of ``train_batches``/``eval_batches`` as that same Python exception,
not as the TensorFlow error that wraps it. The loader throughput benchmark is
``python -m mal_jax.studies.bench_pipeline``.
"""

from __future__ import annotations

import dataclasses
import threading
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


class _FirstError:
    """The first exception a source's host ``read`` raised, kept for the consumer thread
    (tf.data runs ``read`` in its own threads and re-raises a wrapped, multi-line error)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error

    def pop(self) -> BaseException | None:
        with self._lock:
            error, self._error = self._error, None
            return error


@dataclasses.dataclass(frozen=True)
class IndexedSource:
    """A split: ``read(i)`` -> dict of numpy arrays (host), ``finish(raw, key)`` -> sample.

    ``signature`` maps every key ``read`` returns to (tf dtype, static shape, None = dynamic).
    ``depth_gt_shapes``: each sample's native ``depth_gt`` size where it varies (KITTI), since
    batches zero-pad it; None where it is fixed.
    """

    name: str
    num_samples: int
    read: Callable[[int], dict]
    signature: dict
    finish: Callable[[dict, tf.Tensor], dict]
    seed: int = 0
    depth_gt_shapes: tuple | None = None
    host_errors: _FirstError = dataclasses.field(
        default_factory=_FirstError, compare=False, repr=False
    )

    def load(self, index, epoch=0) -> dict:
        """Graph-mode: one finished sample in the common format."""
        names = sorted(self.signature)

        def host(i):
            try:
                raw = self.read(int(i))
            except Exception as error:
                self.host_errors.record(error)
                raise
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


def numpy_batches(data, ds: tf.data.Dataset) -> Iterator[dict]:
    """``ds.as_numpy_iterator()``; a host error of ``data`` (an IndexedSource) surfaces as the
    loader's own exception, whose message names the file and the split line."""
    errors = data.host_errors if isinstance(data, IndexedSource) else None
    if errors is not None:
        errors.pop()  # a stale error of an abandoned iteration (prefetch ran ahead) is not ours
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError:
            original = errors.pop() if errors is not None else None
            if original is None:
                raise
            raise original.with_traceback(None) from None
        yield batch


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
        yield from numpy_batches(data, ds.prefetch(prefetch))
        epoch, offset = epoch + 1, 0


def eval_batches(
    data, *, batch_size: int, process_index: int = 0, process_count: int = 1, prefetch: int = 2
) -> Iterator[dict]:
    """Numpy evaluation batches in split order; every sample once across hosts.

    Batches are padded per batch where a key's shape varies (KITTI's ground truth differs in
    size between drives): the padding is 0 (invalid depth); recover each map's true size from
    ``index`` (``data.depth_gt_shapes[index]``).
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
    return numpy_batches(data, ds.prefetch(prefetch))
