"""A real multi-process run: 2 processes on localhost (``jax.distributed``, CPU collectives),
each with one CPU device, train configs/test.py's 4 steps with image summaries and
checkpoints, then the final evaluation; the final weights equal a single-process run's on the
same global batch (2 devices in one process: the same sharded program)."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from mal_jax.train import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by both sides: only the process layout differs. One step program (no teacher
# freeze) keeps the compile short; image summaries every 2 steps, checkpoints every 2.
SETUP = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update("jax_compilation_cache_dir", {cache!r})
    from configs import test as test_config
    config = test_config.get_config()
    config.training.freeze_teacher_step = -1
    config.training.image_every_steps = {images}
""")

WORKER = SETUP + textwrap.dedent("""
    from mal_jax.train import distributed
    distributed.initialize("localhost:{port}", 2, {process})
    assert jax.process_count() == 2 and jax.local_device_count() == 1, jax.devices()
    from mal_jax.train import trainer
    trainer.train_and_evaluate(config, {workdir!r})
    print("WORKER_DONE", {process}, time.time(), flush=True)
""")

SINGLE = SETUP + textwrap.dedent("""
    from mal_jax.train import trainer
    assert jax.process_count() == 1 and jax.device_count() == 2, jax.devices()
    trainer.Trainer(config, {workdir!r}).run()
    print("SINGLE_DONE", flush=True)
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _python(script: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", **env))


def _finish(process: subprocess.Popen, timeout: float) -> tuple[str, str, float]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return out, err, time.time()


def test_two_processes_train_summarise_checkpoint_evaluate_like_one(tmp_path):
    cache = jax.config.jax_compilation_cache_dir
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    workers = [_python(WORKER.format(repo=REPO, cache=cache, images=2, port=port, process=p,
                                     workdir=str(multi)), XLA_FLAGS="")
               for p in range(2)]
    finished = [_finish(worker, timeout=900) for worker in workers]
    for process, (out, err, _) in enumerate(finished):
        assert f"WORKER_DONE {process}" in out, f"process {process}:\n{out}\n{err[-4000:]}"
    # Process 1 did not wait for process 0's evaluation in a shutdown barrier.
    done = [float(out.split(f"WORKER_DONE {p} ")[1].split()[0])
            for p, (out, _, _) in enumerate(finished)]
    assert abs(done[1] - done[0]) < 60, done

    # Files came from process 0 only: one results file, checkpoints 2 and 4, summaries.
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
    assert (multi / "eval_results.json").is_file() and (multi / "config.json").is_file()
    assert not list(multi.glob(".*.tmp-*"))

    reference = _python(SINGLE.format(repo=REPO, cache=cache, images=0, workdir=str(single)),
                        XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out, err, _ = _finish(reference, timeout=900)
    assert "SINGLE_DONE" in out, out + err[-4000:]

    ours, theirs = (checkpointing.load_inference(str(path)) for path in (multi, single))
    # Two participants: every all-reduce adds the same two numbers, in either order, so the
    # two layouts compute the same values.
    for a, b in zip(jax.tree.leaves(ours.variables), jax.tree.leaves(theirs.variables),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([ours.min_depth_bin, ours.max_depth_bin],
                               [theirs.min_depth_bin, theirs.max_depth_bin], rtol=1e-6)
