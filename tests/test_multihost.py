"""A real multi-process run: 2 processes on localhost (``jax.distributed``, CPU collectives),
each with one CPU device, train configs/test.py's 4 steps with image summaries and
checkpoints, then the final evaluation; the final weights equal a single-process run's on the
same global batch (2 devices in one process: the same sharded program)."""

import os
import socket
import time

import jax
import numpy as np
import training_scripts

from mal_jax.train import checkpointing

WORKER = """
    from mal_jax.train import distributed
    distributed.initialize("localhost:{port}", 2, {process})
    assert jax.process_count() == 2 and jax.local_device_count() == 1, jax.devices()
    from mal_jax.train import trainer
    trainer.train_and_evaluate(config, {workdir!r})
    print("WORKER_DONE", {process}, time.time(), flush=True)
"""

SINGLE = """
    from mal_jax.train import trainer
    assert jax.process_count() == 1 and jax.device_count() == 2, jax.devices()
    trainer.Trainer(config, {workdir!r}).run()
    print("SINGLE_DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_two_processes_train_summarise_checkpoint_evaluate_like_one(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    workers = [training_scripts.start(training_scripts.script(
        WORKER, image_every_steps=2, checkpoint_every_steps=2, port=port, process=process,
        workdir=str(multi)), XLA_FLAGS="") for process in range(2)]
    finished = [training_scripts.finish(worker, timeout=900) for worker in workers]
    for process, (_, out, err) in enumerate(finished):
        assert f"WORKER_DONE {process}" in out, f"process {process}:\n{out}\n{err[-4000:]}"
    # Process 1 did not wait for process 0's evaluation in a shutdown barrier.
    done = [float(out.split(f"WORKER_DONE {p} ")[1].split()[0])
            for p, (_, out, _) in enumerate(finished)]
    assert abs(done[1] - done[0]) < 60 and time.time() - max(done) < 120, done

    # Files came from process 0 only: one results file, checkpoints 2 and 4, the config.
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
    assert (multi / "eval_results.json").is_file() and (multi / "config.json").is_file()
    assert not list(multi.glob(".*.tmp-*"))

    reference = training_scripts.start(training_scripts.script(
        SINGLE, image_every_steps=0, checkpoint_every_steps=2, workdir=str(single)),
        XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _, out, err = training_scripts.finish(reference, timeout=900)
    assert "SINGLE_DONE" in out, out + err[-4000:]

    ours, theirs = (checkpointing.load_inference(str(path)) for path in (multi, single))
    # Two participants: every all-reduce adds the same two numbers, in either order, so the
    # two layouts compute the same values.
    for a, b in zip(jax.tree.leaves(ours.variables), jax.tree.leaves(theirs.variables),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([ours.min_depth_bin, ours.max_depth_bin],
                               [theirs.min_depth_bin, theirs.max_depth_bin], rtol=1e-6)
