"""Pipeline: sharding covers the split once, seeded order, resume position, generic datasets,
loader errors surfacing as themselves, and the loader benchmark command."""

import numpy as np
import pytest
import tensorflow as tf

from mal_jax.data import pipeline, transforms
from mal_jax.studies import bench_pipeline


def _toy_source(num_samples=23, seed=0):
    """An IndexedSource whose samples carry their index in their pixels (cheap to read)."""

    def read(index):
        return {"frames": np.full((3, 4, 6, 3), index, np.uint8)}

    def finish(raw, key):
        sample = {
            "frames": tf.cast(raw["frames"], tf.float32) / 255.0,
            "index": raw["index"],
            "K": tf.zeros([4, 4, 4]),
            "inv_K": tf.zeros([4, 4, 4]),
        }
        return transforms.fill_neutral_keys(transforms.random_color_jitter(sample, key), 4)

    return pipeline.IndexedSource(
        "toy", num_samples, read, {"frames": (tf.uint8, (3, 4, 6, 3))}, finish, seed
    )


def test_eval_sharding_covers_split_exactly_once():
    for hosts in (1, 2, 3, 5):
        shards = [
            pipeline.index_order(
                23, seed=0, epoch=0, shuffle=False, process_index=p, process_count=hosts
            )
            for p in range(hosts)
        ]
        np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(23))
    source = _toy_source()
    seen = [
        b["index"]
        for p in range(3)
        for b in pipeline.eval_batches(source, batch_size=4, process_index=p, process_count=3)
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(23))


def test_train_sharding_disjoint_equal_and_seeded():
    shards = [
        pipeline.index_order(
            23, seed=4, epoch=1, shuffle=True, process_index=p, process_count=3, drop_remainder=True
        )
        for p in range(3)
    ]
    assert [len(s) for s in shards] == [7, 7, 7]
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == 21 and flat.max() < 23
    again = pipeline.index_order(
        23, seed=4, epoch=1, shuffle=True, process_index=1, process_count=3, drop_remainder=True
    )
    np.testing.assert_array_equal(again, shards[1])
    other_epoch = pipeline.index_order(23, seed=4, epoch=2, shuffle=True, drop_remainder=True)
    other_seed = pipeline.index_order(23, seed=5, epoch=1, shuffle=True, drop_remainder=True)
    base = pipeline.index_order(23, seed=4, epoch=1, shuffle=True, drop_remainder=True)
    assert not np.array_equal(base, other_epoch) and not np.array_equal(base, other_seed)
    with pytest.raises(ValueError, match="process_index 3 outside"):
        pipeline.index_order(23, seed=0, epoch=0, shuffle=True, process_index=3, process_count=3)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_same_seed_same_batches_and_resume_equals_skip():
    source = _toy_source()
    full = _take(pipeline.train_batches(source, batch_size=4, seed=7), 9)  # 5 per epoch
    repeat = _take(pipeline.train_batches(source, batch_size=4, seed=7), 9)
    for a, b in zip(full, repeat, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for start in (3, 5, 7):
        resumed = _take(
            pipeline.train_batches(source, batch_size=4, seed=7, start_step=start), 9 - start
        )
        for a, b in zip(full[start:], resumed, strict=True):
            np.testing.assert_array_equal(a["index"], b["index"])
            np.testing.assert_array_equal(a["frames_aug"], b["frames_aug"])
    # frames carry the index: the right samples were decoded in the right order
    np.testing.assert_allclose(full[0]["frames"][:, 0, 0, 0, 0] * 255, full[0]["index"], atol=1e-4)
    epoch0 = np.concatenate([b["index"] for b in full[:5]])
    assert len(set(epoch0.tolist())) == 20
    assert not np.array_equal(
        epoch0, np.concatenate([b["index"] for b in full[5:9]] + [full[0]["index"]])
    )


def test_generic_dataset_sharded_batched_and_resumable():
    def make(i):
        return {"frames": tf.fill([3, 2, 2, 3], tf.cast(i, tf.float32)), "index": i}

    ds = tf.data.Dataset.range(10).map(make)
    covered = []
    for p in range(2):
        batches = list(pipeline.eval_batches(ds, batch_size=3, process_index=p, process_count=2))
        covered.extend(np.concatenate([b["index"] for b in batches]).tolist())
    assert sorted(covered) == list(range(10))
    full = _take(pipeline.train_batches(ds, batch_size=2, seed=1, shuffle_buffer=10), 7)
    resumed = _take(
        pipeline.train_batches(ds, batch_size=2, seed=1, start_step=4, shuffle_buffer=10), 3
    )
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
    assert sorted(np.concatenate([b["index"] for b in full[:5]]).tolist()) == list(range(10))


def test_bench_command_prints_rate(capsys):
    args = ["--height", "32", "--width", "96", "--batch_size", "2", "--steps", "2"]
    assert bench_pipeline.main([*args, "--num_images", "8"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = last.split()
    assert name == "pipeline_samples_per_s" and float(value) > 0


def _failing_source(bad_index: int, error: Exception) -> pipeline.IndexedSource:
    def read(index):
        if index == bad_index:
            raise error
        return {"value": np.float32(index)}

    return pipeline.IndexedSource(
        name="failing", num_samples=6, read=read,
        signature={"value": (tf.float32, ())}, finish=lambda raw, key: raw,
    )


def test_host_error_reaches_the_caller_as_itself():
    error = ValueError("/data/x.jpg: cannot decode image (truncated) (split line 5 of s.txt: 'x')")
    source = _failing_source(4, error)
    with pytest.raises(ValueError) as raised:
        list(pipeline.eval_batches(source, batch_size=2))
    assert raised.value is error and "\n" not in str(raised.value)
    assert source.host_errors.pop() is None  # consumed: a later iteration is not blamed
    clean = _failing_source(99, error)
    assert len(list(pipeline.train_batches(clean, batch_size=2, num_epochs=1))) == 3
    with pytest.raises(FileNotFoundError, match="gone.png"):
        list(pipeline.train_batches(_failing_source(0, FileNotFoundError("gone.png")),
                                    batch_size=3, num_epochs=1))
