"""The converged-start study: seeds trained in turns, curves written after every turn, and a
rerun that continues instead of starting over."""

import json
import os

from configs import converge as converge_config
from configs import test as test_config
from mal_jax.eval.evaluate import MODELS
from mal_jax.studies import converge


def _tiny_config():
    config = test_config.get_config()
    for part in ("temporal", "main_temporal", "distil", "ensemble", "loss_balance"):
        config.mal[part] = False
    config.training.freeze_teacher_step = -1
    config.training.image_every_steps = 0
    config.evaluation.write_images = 0
    reference = converge_config.get_config().converge
    config.converge = reference
    config.converge.seeds = (0, 1)
    config.converge.chunk_steps = 2  # 4 steps per run: two turns per seed
    return config


def test_converge_config_is_manydepth_alone_with_the_velocity_loss():
    config = converge_config.get_config()
    assert not any(config.mal[p] for p in ("temporal", "main_temporal", "distil", "ensemble",
                                           "loss_balance"))
    assert config.loss.velocity_weight > 0 and config.training.learning_rate == 1e-4
    assert config.model.weights_folder == "" and config.model.imagenet_weights == ""
    assert config.training.checkpoint_every_steps == config.converge.chunk_steps
    assert len(config.converge.seeds) >= 2


def test_markdown_verdict_on_last_common_step():
    def points(student, teacher):
        return [{"step": 10, f"{MODELS[0]}_abs_rel": student, f"{MODELS[1]}_abs_rel": teacher,
                 f"{MODELS[0]}_moving_abs_rel": 3 * student,
                 f"{MODELS[1]}_moving_abs_rel": 3 * teacher,
                 "min_depth_bin": 1.0, "max_depth_bin": 20.0}]

    config = converge_config.get_config()
    met = converge.markdown({0: points(0.12, 0.14), 1: points(0.10, 0.15)}, config)
    # all pixels: students and bins, teachers; then moving pixels: students, teachers
    assert ("| 10 | 0.1200 | 1.0-20.0 | 0.1000 | 1.0-20.0 | 0.1400 | 0.1500 | 0.3600 | 0.3000 "
            "| 0.4200 | 0.4500 |") in met
    assert met.splitlines()[1] == "|" + "---:|" * 11
    assert "worst AbsRel over seeds and networks 0.1500; target <= 0.15 met" in met
    missed = converge.markdown({0: points(0.12, 0.14), 1: points(0.10, 0.31)}, config)
    assert "0.3100; target <= 0.15 not met" in missed


def test_seeds_train_in_turns_and_a_rerun_continues(tmp_path):
    config = _tiny_config()
    workdir, results = str(tmp_path / "work"), str(tmp_path / "results")
    curves = converge.run_converge(config, workdir, results)
    assert sorted(curves) == [0, 1]
    for seed in (0, 1):
        assert [p["step"] for p in curves[seed]] == [2, 4]
        for point in curves[seed]:
            assert all(0 < point[f"{m}_abs_rel"] < 10 for m in MODELS)
            assert all(0 < point[f"{m}_moving_abs_rel"] < 10 for m in MODELS)
            assert 0 < point["min_depth_bin"] < point["max_depth_bin"]
    # Different seeds are different runs (initialisation, data order).
    assert curves[0][0][f"{MODELS[0]}_abs_rel"] != curves[1][0][f"{MODELS[0]}_abs_rel"]
    with open(os.path.join(results, "converge_curve.json")) as handle:
        assert json.load(handle) == {str(k): v for k, v in curves.items()}
    assert os.path.getsize(os.path.join(results, "converge_curve.png")) > 0
    with open(os.path.join(results, "converge.md")) as handle:
        assert "| 4 | " in handle.read()
    # Rerunning finds every seed finished: the same curves, no new step trained.
    checkpoints = {seed: os.path.join(workdir, f"seed_{seed}", "checkpoints") for seed in (0, 1)}
    before = {seed: sorted(os.listdir(path)) for seed, path in checkpoints.items()}
    assert all("4" in names for names in before.values())
    elsewhere = str(tmp_path / "elsewhere")
    assert converge.run_converge(config, workdir, elsewhere) == curves
    assert {seed: sorted(os.listdir(path)) for seed, path in checkpoints.items()} == before
    # ... and writes the finished study's files where that rerun asks.
    with open(os.path.join(elsewhere, "converge_curve.json")) as handle:
        assert json.load(handle) == {str(k): v for k, v in curves.items()}
    with open(os.path.join(elsewhere, "converge.md")) as handle:
        assert handle.read() == converge.markdown(curves, config)
