"""Checkpoints and run files that survive bad input and crashes, on a tiny state (no training
step is compiled here): newest-intact resume, refusing another image size, leftover temp
folders, atomic writes, the warmup schedule, commands from any folder, the CI golden rule."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mal_jax.models.manydepth import ManyDepth
from mal_jax.train import checkpointing, state, workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
META = {"model": {"num_layers": 18, "num_depth_bins": 16}, "height": 64, "width": 96}


def _tiny_state(value: float) -> state.TrainState:
    optimizer = state.make_optimizer(state.learning_rate_schedule(1e-4, 0, 1.0))
    variables = {"params": {"w": jnp.full((300,), value)}, "batch_stats": {}}
    return state.create_state(variables, optimizer, 0.1, 10.0, {}, seed=0)


def _saved_workdir(path, steps=(1, 2, 3)) -> str:
    manager = checkpointing.checkpoint_manager(str(path), keep=5)
    for step in steps:
        checkpointing.save(manager, _tiny_state(float(step)).replace(step=jnp.asarray(step)),
                           {**META, "step": step})
    manager.wait_until_finished()
    return str(path)


def _restore(path, meta=META):
    manager = checkpointing.checkpoint_manager(str(path), keep=5)
    abstract = jax.eval_shape(lambda: _tiny_state(0.0))
    return checkpointing.restore(manager, abstract, meta)


def _truncate_array_file(folder: pathlib.Path) -> None:
    largest = max((p for p in (folder / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:40])


def _truncate_metadata(folder: pathlib.Path) -> None:
    (folder / "meta" / "metadata").write_text('{"model": {"num_la')


def _drop_commit_marker(folder: pathlib.Path) -> None:
    (folder / checkpointing.COMMIT_MARKER).unlink()


@pytest.mark.parametrize("damage", [_truncate_array_file, _truncate_metadata,
                                    _drop_commit_marker])
def test_resume_falls_back_to_newest_intact_checkpoint(tmp_path, caplog, damage):
    _saved_workdir(tmp_path)
    damage(tmp_path / "checkpoints" / "3")
    with caplog.at_level(logging.WARNING):
        restored, meta = _restore(tmp_path)
    assert int(restored.step) == 2 and meta["step"] == 2
    np.testing.assert_array_equal(restored.params["w"], np.full((300,), 2.0))
    warnings = [r.getMessage() for r in caplog.records if "is broken" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "checkpoints" / "3") in warnings[0]
    # Nothing is lost: the broken one is set aside, the intact ones stay.
    assert (tmp_path / checkpointing.BROKEN_DIR / "3").is_dir()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_resume_refuses_other_image_size_naming_the_field(tmp_path):
    _saved_workdir(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoints/3 was trained with data\.height=64, "
                                         r"the config has data\.height=100"):
        _restore(tmp_path, {**META, "height": 100})
    with pytest.raises(ValueError, match=r"model\.num_depth_bins=16, the config has "
                                         r"model\.num_depth_bins=8"):
        _restore(tmp_path, {**META, "model": {"num_layers": 18, "num_depth_bins": 8}})
    # A checkpoint without the optimizer-state layout record (Adam per parameter array).
    with pytest.raises(ValueError, match=r"checkpoints/3 stores the optimizer state as None .*"
                                         r"this version as 'adam_flat'"):
        _restore(tmp_path, {**META, "opt_state": state.OPT_STATE_LAYOUT})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3"]
    assert int(_restore(tmp_path)[0].step) == 3


def test_checkpoints_with_the_old_parameter_names_are_refused(tmp_path):
    # META has no param_names record, as a checkpoint written before the networks were named
    # teacher_*/student_*/pose_* (its parameter tree uses the reference's file names).
    _saved_workdir(tmp_path)
    expected = {**checkpointing.model_meta(ManyDepth(), 64, 96), **META}
    assert expected["param_names"] == state.PARAM_NAMES == "teacher_student"
    refusal = (r"checkpoints/3 has param_names=None \(None: written before 2026-12-06, .*\), "
               r"this version needs 'teacher_student'")
    with pytest.raises(ValueError, match=refusal):  # on resume
        _restore(tmp_path, expected)
    with pytest.raises(ValueError, match=refusal):  # for evaluation, prediction, fine-tuning
        checkpointing.load_inference(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "3"]  # nothing set aside
    # The same checkpoints with the record restore.
    marked = tmp_path / "marked"
    manager = checkpointing.checkpoint_manager(str(marked), keep=5)
    checkpointing.save(manager, _tiny_state(1.0).replace(step=jnp.asarray(1)), expected)
    manager.wait_until_finished()
    assert int(_restore(marked, expected)[0].step) == 1


def test_temp_folders_of_interrupted_saves_are_removed(tmp_path, caplog):
    _saved_workdir(tmp_path, steps=(1,))
    leftover = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1733000000000000"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "partial").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.WARNING):
        manager = checkpointing.checkpoint_manager(str(tmp_path), keep=5)
        manager.wait_until_finished()
    assert not leftover.exists()
    assert any(leftover.name in r.getMessage() for r in caplog.records)
    assert manager.all_steps() == [1]


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    workdir.write_json_atomic(target, {"a": 1})
    workdir.write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["results.json"]  # no temp file left

    def interrupted(self, text):  # the disk fills up half-way through the temp file
        pathlib.Path(os.fspath(self)).write_text(text[:3])
        raise OSError("No space left on device")

    monkeypatch.setattr(type(workdir.path(target)), "write_text", interrupted)
    with pytest.raises(OSError):
        workdir.write_json_atomic(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 2}


def test_warmup_schedule_values():
    # Rate 1e-4, warmup over 4 steps, x0.1 from step 6: update s runs at 1e-4 * (s + 1) / 4.
    schedule = state.learning_rate_schedule(1e-4, 6, 0.1, warmup_steps=4)
    expected = [2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5]
    np.testing.assert_allclose([float(schedule(s)) for s in range(8)], expected, rtol=1e-6)
    # MAL's Cityscapes recipe: 500 steps; its first update runs at 1e-4 / 500.
    cityscapes = state.learning_rate_schedule(1e-4, 0, 1.0, warmup_steps=500)
    np.testing.assert_allclose([float(cityscapes(s)) for s in (0, 249, 499, 5000)],
                               [2e-7, 5e-5, 1e-4, 1e-4], rtol=1e-6)
    assert float(state.learning_rate_schedule(1e-4, 0, 1.0)(0)) == pytest.approx(1e-4)


def _run_elsewhere(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))


def test_eval_and_train_load_configs_from_another_folder(tmp_path):
    # A missing checkpoint is reported after the config loaded (from configs/ of the repo).
    missing = tmp_path / "no_such_run"
    result = _run_elsewhere(tmp_path, str(REPO / "eval.py"), "--config=configs/test.py",
                            f"--workdir={missing}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("eval.py: ") and str(missing) in last, result.stderr[-2000:]
    # train.py: the config loads, and a bad weights folder stops it before anything is written.
    run = tmp_path / "run"
    result = _run_elsewhere(tmp_path, str(REPO / "train.py"), "--config", "configs/test.py",
                            f"--workdir={run}", f"--config.model.weights_folder={missing}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"train.py: config.model.weights_folder={missing}: no such folder")
    assert not (run / "config.json").exists() and not list(run.glob("events.out.*"))


@pytest.mark.parametrize("ci", ["", "1"])
def test_golden_tests_fail_under_ci_when_shared_is_missing(tmp_path, ci):
    result = _run_elsewhere(
        REPO, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
        "tests/test_geometry.py::test_golden_pose_is_inverted_pair_minus_one",
        env={"CI": ci, "MAL_JAX_GOLDEN": str(tmp_path / "absent.npz")})
    summary = result.stdout.strip().splitlines()[-1]
    if ci:
        assert result.returncode != 0 and "1 error" in summary, result.stdout[-2000:]
        assert "CI is set, so the golden tests fail" in result.stdout
    else:
        assert result.returncode == 0 and "1 skipped" in summary, result.stdout[-2000:]
