"""The ablation driver: row configs, the seed summary and its paired changes, and a tiny
end-to-end ablation (one pretraining, two seeds, two rows) whose files and numbers agree with
each other."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from configs import ablation as ablation_config
from configs import test as test_config
from mal_jax.studies import ablation, ablation_report, ablation_rows
from mal_jax.train import step as train_step


def _metrics(abs_rel_all, abs_rel_moving):
    block = {"abs_rel": 0.0, "sq_rel": 1.0, "rmse": 2.0, "a1": 0.5}
    return {model: {"all": dict(block, abs_rel=abs_rel_all),
                    "moving": dict(block, abs_rel=abs_rel_moving)}
            for model in ablation_rows.MODELS}


def test_rows_switch_exactly_their_mal_parts():
    base = ablation_config.get_config()
    names = [row.name for row in ablation_rows.ROWS]
    assert names == ["baseline", "baseline_scale0", "temporal", "distil", "mal",
                     "mal_student_hints"]
    expected = {  # (temporal, main_temporal, distil, ensemble, loss_balance)
        "baseline": (False, False, False, False, False),
        "baseline_scale0": (False, False, False, False, False),
        "temporal": (True, False, False, False, False),  # the teacher's hints only
        "distil": (True, False, True, True, False),
        "mal": (True, False, True, True, True),  # MAL's published recipe
        "mal_student_hints": (True, True, True, True, True),
    }
    for row in ablation_rows.ROWS:
        config = ablation.finetune_config(base, row, seed=7, pretrained="/pre/seed_7")
        mal = config.mal
        assert (mal.temporal, mal.main_temporal, mal.distil, mal.ensemble,
                mal.loss_balance) == expected[row.name]
        assert config.training.seed == 7 and config.model.weights_folder == "/pre/seed_7"
        assert config.training.num_epochs == base.ablation.finetune_epochs
        # Only the control changes ManyDepth's loss scales; MAL's rows run at scale 0 by
        # MAL's own rule, so the control differs from them in MAL's parts alone.
        scales = (0,) if row.name == ablation_rows.CONTROL else (0, 1, 2, 3)
        assert tuple(config.loss.scales) == scales
        resolved = (0, 1, 2, 3) if row.name == ablation_rows.BASELINE else (0,)
        assert train_step.step_settings(config, 150).loss.scales == resolved
    # The published recipe's row is the default config's MAL section.
    mal_row = ablation.finetune_config(base, ablation_rows.ROWS[4], seed=0, pretrained="")
    assert mal_row.mal.to_dict() == base.mal.to_dict()
    # The base config is not modified by building rows from it.
    assert base.mal.loss_balance and base.model.weights_folder == ""
    pretrain = ablation.pretrain_config(base, seed=3)
    assert not (pretrain.mal.temporal or pretrain.mal.distil)
    assert pretrain.loss.automasking and pretrain.training.learning_rate == 1e-4
    assert pretrain.training.num_epochs == base.ablation.pretrain_epochs
    assert pretrain.data.num_train_samples == base.ablation.pretrain_num_train_samples
    assert pretrain.loss.velocity_weight == base.loss.velocity_weight > 0  # every phase
    # Every seed fine-tunes the one pretraining, unless each seed is asked to pretrain its own.
    assert [ablation.pretrain_seed(base, seed) for seed in (0, 1, 5)] == [0, 0, 0]
    base.ablation.pretrain_seed = -1
    assert [ablation.pretrain_seed(base, seed) for seed in (0, 1, 5)] == [0, 1, 5]
    # The start: pretrained in the workdir, or a run trained elsewhere ({seed}: the start seed).
    assert ablation.start_dir(base, "/w", 3) == os.path.join("/w", "pretrain", "seed_3")
    base.ablation.start_workdir = "/runs/converge/seed_{seed}"
    assert ablation.start_dir(base, "/w", 3) == "/runs/converge/seed_3"
    start = ablation.start_config(base, 3, "/runs/converge/seed_3")
    assert start.training.num_epochs == 0 and start.model.weights_folder == "/runs/converge/seed_3"
    assert not (start.mal.temporal or start.mal.distil or start.mal.loss_balance)


def test_balance_table_picks_the_steps_nearest_each_fraction():
    balance = {"mal": {"0": {"step": [10, 20, 30, 40], "w_original": [0.5, 0.4, 0.3, 0.2],
                             "w_distil": [0.5, 0.6, 0.7, 0.8]}},
               "baseline": {"0": {"step": [], "w_original": [], "w_distil": []}}}
    lines = ablation_report.balance_table(balance, fractions=(0.0, 0.5, 1.0)).splitlines()
    assert len(lines) == 3  # header, rule, the one balancing run
    # 0% -> step 10 (nearest to 0), 50% -> step 20 (|20-20| = 0), 100% -> step 40.
    assert lines[2] == ("| + loss balancing (MAL's published recipe) | 0 | 0.500 (step 10) "
                        "| 0.400 (step 20) | 0.200 (step 40) |")


def test_summary_means_half_ranges_and_paired_changes():
    runs = {
        "baseline": {"0": _metrics(0.20, 0.40), "1": _metrics(0.10, 0.50)},
        "mal": {"0": _metrics(0.20, 0.30), "1": _metrics(0.11, 0.45)},
    }
    summary = ablation_report.summarize(runs)
    moving = summary["baseline"]["teacher/moving/abs_rel"]
    assert moving["mean"] == pytest.approx(0.45) and moving["half_range"] == pytest.approx(0.05)
    change = summary["mal"]["student/moving/abs_rel_change_pct"]
    # Paired per seed: (0.30 - 0.40) / 0.40 and (0.45 - 0.50) / 0.50.
    np.testing.assert_allclose(change["per_seed"], [-25.0, -10.0])
    assert change["mean"] == pytest.approx(-17.5)
    assert "student/moving/abs_rel_change_pct" not in summary["baseline"]
    assert "student/moving/abs_rel_change_vs_control_pct" not in summary["mal"]  # no control
    # Seed 1 raises the all-pixel AbsRel by 10%: the target is not met.
    line = ablation_report.verdict(summary)
    assert "-25.0%, -10.0%" in line and "+0.0%, +10.0%" in line and line.endswith("not met")
    runs["mal"]["1"] = _metrics(0.10, 0.45)
    assert ablation_report.verdict(ablation_report.summarize(runs)).endswith(
        "target (<= -10% moving, <= 0% all) met")


def test_mal_rows_are_also_compared_with_the_control():
    runs = {"baseline": {"0": _metrics(0.20, 0.40)},
            "baseline_scale0": {"0": _metrics(0.25, 0.50), "1": _metrics(0.30, 0.60)},
            "temporal": {"0": _metrics(0.20, 0.45), "1": _metrics(0.15, 0.30)}}
    summary = ablation_report.summarize(runs)
    # Against the baseline only seed 0 pairs up; against the control both seeds do.
    np.testing.assert_allclose(
        summary["temporal"]["teacher/moving/abs_rel_change_pct"]["per_seed"], [12.5])
    np.testing.assert_allclose(
        summary["temporal"]["teacher/moving/abs_rel_change_vs_control_pct"]["per_seed"],
        [-10.0, -50.0])
    assert summary["baseline_scale0"]["teacher/all/abs_rel_change_pct"]["mean"] == pytest.approx(
        25.0)
    assert "teacher/all/abs_rel_change_vs_control_pct" not in summary["baseline_scale0"]
    line = ablation_report.verdict(summary, row="temporal",
                                   suffix="abs_rel_change_vs_control_pct")
    assert line.startswith("temporal vs baseline_scale0") and line.endswith(" met")


def test_report_has_a_line_per_row_and_model():
    runs = {row.name: {"0": _metrics(0.2, 0.4)} for row in ablation_rows.ROWS}
    text = ablation_report.report(ablation_report.summarize(runs))
    for row in ablation_rows.ROWS:
        assert text.count(f"| {row.label} | ") == 2  # student and teacher tables
    assert ("| + loss balancing (MAL's published recipe) | 0.2000 ± 0.0000 | 0.4000 ± 0.0000 "
            "| +0.0% | +0.0% | +0.0% | +0.0% |") in text
    # Equal metrics everywhere: no change, so the target is not met (2 references x 2 models).
    assert text.count("target (<= -10% moving, <= 0% all) not met") == 4


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory):
    config = test_config.get_config()
    config.ablation = ablation_config.get_config().ablation
    config.ablation.seeds = (0, 1)
    config.ablation.pretrain_epochs = 1
    config.ablation.pretrain_num_train_samples = 4
    config.loss.velocity_weight = 1.0
    config.ablation.finetune_epochs = 1
    config.training.freeze_teacher_step = -1
    config.training.freeze_teacher_epoch = -1
    config.training.lr_decay_epoch = -1
    config.training.image_every_steps = 0
    workdir = str(tmp_path_factory.mktemp("ablation"))
    rows = (ablation_rows.ROWS[0], ablation_rows.ROWS[4])
    runs = ablation.run_ablation(config, workdir, rows)
    yield config, workdir, runs
    shutil.rmtree(workdir)  # ~5 GB of checkpoints (see tmp_path_retention_policy)


def test_tiny_ablation_fine_tunes_the_shared_pretraining(tiny_ablation):
    config, workdir, runs = tiny_ablation
    assert set(runs) == {ablation_rows.START, "baseline", "mal"}
    assert set(runs[ablation_rows.START]) == {"0"}  # pretrained once, with seed 0
    assert set(runs["baseline"]) == set(runs["mal"]) == {"0", "1"}
    assert not os.path.exists(os.path.join(workdir, "pretrain", "seed_1"))
    with open(os.path.join(workdir, "ablation_runs.json")) as handle:
        assert json.load(handle) == json.loads(json.dumps(runs))
    for row in ("baseline", "mal"):
        for seed in (0, 1):
            run_dir = os.path.join(workdir, row, f"seed_{seed}")
            with open(os.path.join(run_dir, "config.json")) as handle:
                saved = json.load(handle)
            assert saved["model"]["weights_folder"] == os.path.join(workdir, "pretrain",
                                                                    "seed_0")
            assert saved["training"]["seed"] == seed
            assert saved["mal"]["loss_balance"] == (row == "mal")
            with open(os.path.join(run_dir, "eval_results.json")) as handle:
                assert json.load(handle)["metrics"] == json.loads(json.dumps(runs[row][str(seed)]))
    # The balance weights of every logged step (configs/test.py logs each of the 4 steps);
    # the ManyDepth rows do not balance.
    with open(os.path.join(workdir, "ablation_balance.json")) as handle:
        balance = json.load(handle)
    for seed in ("0", "1"):
        trajectory = balance["mal"][seed]
        assert trajectory["step"] == [1, 2, 3, 4]
        weights = np.array([trajectory["w_original"], trajectory["w_distil"]])
        assert np.all(np.isfinite(weights)) and np.all(weights > 0)
        # The first update with both losses positive moves them from 1/2 (a step whose
        # samples all had matching augmentation has distillation loss 0 and leaves them; with
        # batch 2 that is 1 step in 4), and later updates never bring both back exactly.
        assert not np.allclose(weights[:, -1], 0.5)
        moved = ~np.all(np.isclose(weights, 0.5), axis=0)
        assert np.all(moved[np.argmax(moved):])
        assert balance["baseline"][seed] == {"step": [], "w_original": [], "w_distil": []}
    # The seeds fine-tune on different data orders and augmentations, so the results differ.
    assert runs["mal"]["0"] != runs["mal"]["1"]
    with open(os.path.join(workdir, "ablation_timing.json")) as handle:
        timing = json.load(handle)
    assert timing["mal"]["0"]["compiles"] and not timing["mal"]["1"]["compiles"]
    assert timing["mal"]["1"]["steps"] == 4  # 8 triplets, batch 2, one epoch
    # Run again: every run is found finished and evaluated, so nothing trains or changes.
    rows = (ablation_rows.ROWS[0], ablation_rows.ROWS[4])
    assert ablation.run_ablation(config, workdir, rows) == runs
    with open(os.path.join(workdir, "ablation_timing.json")) as handle:
        assert json.load(handle) == timing


def test_tiny_ablation_export(tiny_ablation, tmp_path):
    _, workdir, runs = tiny_ablation
    summary = ablation_report.summarize(runs)
    ablation_report.export(workdir, runs, summary, str(tmp_path), num_examples=1)
    with open(tmp_path / "ablation_summary.json") as handle:
        saved = json.load(handle)
    values = [runs["mal"][s]["teacher"]["moving"]["sq_rel"] for s in ("0", "1")]
    assert saved["mal"]["teacher/moving/sq_rel"]["half_range"] == pytest.approx(
        abs(values[0] - values[1]) / 2)
    with open(tmp_path / "ablation_balance.json") as handle:
        balance = json.load(handle)
    assert balance["mal"]["0"]["step"] == [1, 2, 3, 4]
    text = (tmp_path / "ablation.md").read_text()
    assert text == ablation_report.report(summary, balance)
    assert text.count("| + loss balancing (MAL's published recipe) | ") == 4  # 2 tables, 2 seeds
    assert not (tmp_path / "ablation_starts.json").exists()  # pretrained here, not loaded
    examples = sorted(os.listdir(tmp_path / "examples"))
    assert "0000_input.png" in examples and "mal_0000_student_disp.png" in examples
    assert len(examples) == 1 + 2 * 4  # input + rows x models x (disparity, error)


def test_ablation_from_a_start_workdir_equals_the_pretrained_start(tiny_ablation, tmp_path):
    """Loading the tiny ablation's pretraining as ``start_workdir`` gives the same start and the
    same fine-tuning as pretraining in the workdir: same weights, seed and data."""
    config, workdir, runs = tiny_ablation
    loaded = ablation_config.get_config().ablation
    config = ml_collections.ConfigDict(config.to_dict())
    config.ablation.seeds = (0,)
    config.ablation.start_workdir = os.path.join(workdir, "pretrain", "seed_{seed}")
    assert loaded.start_workdir == ""  # the default pretrains
    fresh = tmp_path / "not_made_yet"  # the ablation makes its workdir
    loaded_runs = ablation.run_ablation(config, str(fresh), (ablation_rows.ROWS[0],))
    assert loaded_runs[ablation_rows.START] == {"0": runs[ablation_rows.START]["0"]}
    assert loaded_runs["baseline"]["0"] == runs["baseline"]["0"]
    assert not os.path.exists(fresh / "pretrain")
    with open(fresh / "ablation_starts.json") as handle:
        starts = json.load(handle)
    assert starts == {"0": {"workdir": os.path.join(workdir, "pretrain", "seed_0"), "step": 2}}
    config.ablation.start_workdir = str(tmp_path / "missing_{seed}")
    with pytest.raises(FileNotFoundError, match="start_workdir"):
        ablation.run_ablation(config, str(tmp_path / "other"), (ablation_rows.ROWS[0],))
