"""kill -9 during training, once in the middle of a checkpoint write and once between
checkpoints, then resume: the final weights equal those of an uninterrupted run (CPU)."""

import os
import signal

import jax
import numpy as np
import training_scripts

from mal_jax.train import checkpointing

# A checkpoint after every step. ``kill``: ("save", s) = SIGKILL inside orbax's commit of
# checkpoint s (its files written to the temp folder, not yet renamed); ("step", s) = SIGKILL
# right after step s's update, once the previous checkpoint is complete; None = to the end.
RUN = """
    from mal_jax.train import trainer
    kill = {kill!r}
    if kill and kill[0] == "save":
        from orbax.checkpoint._src.path import atomicity
        commit = atomicity.AtomicRenameTemporaryPath.finalize
        async def killed_in_commit(self):
            if self.get().name.startswith(f"{{kill[1]}}."):
                os.kill(os.getpid(), signal.SIGKILL)
            return await commit(self)
        atomicity.AtomicRenameTemporaryPath.finalize = killed_in_commit
    run = trainer.Trainer(config, {workdir!r})
    if kill and kill[0] == "step":
        step = run.steps[False]
        def killed_after(state, batch, rng):
            state, metrics = step(state, batch, rng)
            if int(jax.device_get(state.step)) == kill[1]:
                run.manager.wait_until_finished()
                os.kill(os.getpid(), signal.SIGKILL)
            return state, metrics
        run.steps = {{False: killed_after, True: killed_after}}
    run.run()
    print("RUN_DONE", flush=True)
"""


def _train(workdir, kill=None) -> tuple[int, str, str]:
    source = training_scripts.script(RUN, image_every_steps=0, checkpoint_every_steps=1,
                                     kill=kill, workdir=str(workdir))
    return training_scripts.finish(training_scripts.start(source), timeout=900)


def _checkpoints(workdir) -> list[str]:
    return sorted(os.listdir(workdir / "checkpoints"))


def test_kill_during_checkpoint_write_and_training_then_resume(tmp_path):
    killed = tmp_path / "killed"
    code, _, err = _train(killed, kill=("save", 2))
    assert code == -signal.SIGKILL, err[-3000:]
    listing = _checkpoints(killed)
    assert listing[0] == "1" and listing[1].startswith("2.orbax-checkpoint-tmp"), listing

    code, _, err = _train(killed, kill=("step", 3))
    assert code == -signal.SIGKILL, err[-3000:]
    assert "the temp folder of an interrupted checkpoint save" in err
    assert _checkpoints(killed) == ["1", "2"]

    code, out, err = _train(killed)
    assert "RUN_DONE" in out, err[-3000:]
    assert _checkpoints(killed) == ["3", "4"]  # keep_checkpoints=2

    uninterrupted = tmp_path / "uninterrupted"
    code, out, err = _train(uninterrupted)
    assert "RUN_DONE" in out, err[-3000:]
    ours, theirs = (checkpointing.load_inference(str(path)) for path in (killed, uninterrupted))
    for a, b in zip(jax.tree.leaves(ours.variables), jax.tree.leaves(theirs.variables),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert (ours.min_depth_bin, ours.max_depth_bin) == (theirs.min_depth_bin,
                                                         theirs.max_depth_bin)
