"""MAL's ablation on the embedded dataset: a trained ManyDepth, fine-tuned six ways per seed.

The MAL paper fine-tunes a trained ManyDepth with its losses. At CPU scale this module does the
same on the embedded synthetic scenes, for every seed of ``config.ablation.seeds``:

1. *pretrain*: ManyDepth (no MAL part) from random initialisation with seed
   ``ablation.pretrain_seed`` (or, if that is -1, with each fine-tuning seed in turn), on the
   first ``ablation.pretrain_num_train_samples`` triplets for ``ablation.pretrain_epochs`` ->
   ``<workdir>/pretrain/seed_<p>``, evaluated as the starting point (:data:`START`);
2. each row of :data:`ROWS` fine-tunes that checkpoint for ``ablation.finetune_epochs`` with
   the seed (same data order and augmentation in every row) and its MAL parts switched on ->
   ``<workdir>/<row>/seed_<s>``; the baseline row fine-tunes with ManyDepth's own loss, so
   every row gets the same number of steps from the same weights;
3. each fine-tuned model is evaluated on the test split (``evaluation.protocol``: all and
   moving-object pixels, the student (multi-frame network) and the teacher).

Every phase keeps the config's ``loss.velocity_weight`` (configs/ablation.py says why).
Runs resume from their workdirs, so an interrupted ablation restarts where it stopped.
:func:`summarize` reduces the per-run results to the mean and half-range over seeds, and the
change of every row against the baseline of the same seed.

``python -m mal_jax.studies.ablation --config=configs/ablation.py --workdir=W
[--results_dir=results]``
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers

from mal_jax.eval.progress import track
from mal_jax.studies import run_scalars
from mal_jax.train import trainer as trainer_lib

# What a row reports: every metric of the evaluation, for both networks and both regions.
REPORTED = ("abs_rel", "sq_rel", "rmse", "a1")
MODELS = ("student", "teacher")
REGIONS = ("all", "moving")


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the ablation table: which MAL parts the fine-tuning uses."""

    name: str  # folder and JSON key
    label: str  # table label
    temporal: bool  # temporal hints for the teacher
    distil: bool  # distillation hints with the ensemble candidate
    loss_balance: bool  # balancing of original vs distillation loss
    student_hints: bool = False  # temporal hints for the student too (not in MAL's recipe)
    loss_scales: tuple[int, ...] | None = None  # ManyDepth's loss scales (None: the config's)


ROWS = (
    Row("baseline", "ManyDepth", temporal=False, distil=False, loss_balance=False),
    # Control: MAL's losses run at full resolution only (as the MAL code does), ManyDepth's at
    # four scales; this row is ManyDepth at full resolution only, so that the MAL rows can also
    # be read against a baseline that differs from them in MAL's parts alone.
    Row("baseline_scale0", "ManyDepth, full-resolution loss only", temporal=False,
        distil=False, loss_balance=False, loss_scales=(0,)),
    # MAL's parts added one by one up to its published recipe (teacher hints only).
    Row("temporal", "+ temporal hints (teacher)", temporal=True, distil=False, loss_balance=False),
    Row("distil", "+ distillation hints", temporal=True, distil=True, loss_balance=False),
    Row("mal", "+ loss balancing (MAL's published recipe)", temporal=True, distil=True,
        loss_balance=True),
    # Hints for the student too (--main_temporal, not in the published recipe).
    Row("mal_student_hints", "MAL + student hints", temporal=True, distil=True,
        loss_balance=True, student_hints=True),
)
BASELINE = ROWS[0].name
CONTROL = ROWS[1].name
# Key of the pretrained models every row starts from (evaluated too: the starting point).
START = "pretrained"
# The balance weights as the train step logs them (mal_jax.mal.loss_balance.weight_metrics).
BALANCE_TAGS = ("balance/w_original", "balance/w_distil")


def with_mal_parts(config: ml_collections.ConfigDict, row: Row) -> ml_collections.ConfigDict:
    """A copy of ``config`` with exactly ``row``'s MAL parts on."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mal.temporal = row.temporal
    config.mal.main_temporal = row.student_hints
    config.mal.distil = config.mal.ensemble = row.distil
    config.mal.loss_balance = row.loss_balance
    if row.loss_scales is not None:
        config.loss.scales = row.loss_scales
    return config


def balance_trajectory(workdir: str) -> dict:
    """A run's logged balance weights: ``{"step", "w_original", "w_distil"}`` lists."""
    by_step = run_scalars.logged_scalars(workdir, BALANCE_TAGS)
    steps = sorted(step for step, tags in by_step.items() if len(tags) == len(BALANCE_TAGS))
    return {"step": steps, **{tag.split("/")[1]: [by_step[step][tag] for step in steps]
                              for tag in BALANCE_TAGS}}


def pretrain_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """ManyDepth from scratch with ``seed``: the starting point every row shares."""
    pretrain = with_mal_parts(config, ROWS[0])
    pretrain.training.seed = seed
    pretrain.data.num_train_samples = config.ablation.pretrain_num_train_samples
    pretrain.training.num_epochs = config.ablation.pretrain_epochs
    pretrain.training.learning_rate = config.ablation.pretrain_learning_rate
    pretrain.training.lr_decay_epoch = -1
    pretrain.training.freeze_teacher_epoch = -1
    pretrain.model.weights_folder = ""
    return pretrain


def pretrain_seed(config: ml_collections.ConfigDict, seed: int) -> int:
    """The pretraining that fine-tuning seed ``seed`` starts from."""
    shared = int(config.ablation.pretrain_seed)
    return seed if shared == -1 else shared


def finetune_config(config: ml_collections.ConfigDict, row: Row, seed: int,
                    pretrained: str) -> ml_collections.ConfigDict:
    """Row ``row`` fine-tuning the ``pretrained`` workdir with ``seed``."""
    finetune = with_mal_parts(config, row)
    finetune.training.seed = seed
    finetune.training.num_epochs = config.ablation.finetune_epochs
    finetune.model.weights_folder = pretrained
    return finetune


@dataclasses.dataclass
class _Programs:
    """Trainers whose compiled programs later runs of the same key reuse, and the keys whose
    program has already run (so compiled) in this process."""

    trainers: dict = dataclasses.field(default_factory=dict)
    executed: set = dataclasses.field(default_factory=set)

    def trainer(self, config, workdir: str, key: str) -> trainer_lib.Trainer:
        run = trainer_lib.Trainer(config, workdir)
        if key in self.trainers:
            run.reuse_programs(self.trainers[key])
        else:
            self.trainers[key] = run
        return run

    def release(self, key: str) -> None:
        """Drop the programs of ``key`` (no later run uses them): frees their memory."""
        if self.trainers.pop(key, None) is not None:
            gc.collect()
            jax.clear_caches()


def _pretrain_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, "pretrain", f"seed_{seed}")


def _finished_results(run: trainer_lib.Trainer) -> dict | None:
    """The saved evaluation of a run that already trained all its steps, if there is one."""
    path = os.path.join(run.workdir, "eval_results.json")
    if run.manager.latest_step() != run.num_steps or not os.path.exists(path):
        return None
    with open(path) as handle:
        results = json.load(handle)
    return results if results.get("checkpoint") == f"{run.workdir} step {run.num_steps}" else None


def _train_and_evaluate(config, workdir: str, programs: _Programs,
                        key: str) -> tuple[dict, dict | None]:
    """Train (or resume) one run, reusing the programs of ``key``; evaluate it.

    Returns the evaluation results and the run's timing: steps trained by this call and their
    wall-clock seconds (the first run of a key includes compiling its step). A run found
    finished and evaluated is not evaluated again (timing ``None``: nothing ran).
    """
    run = programs.trainer(config, workdir, key)
    finished = _finished_results(run)
    if finished is not None:
        return finished, None
    compiles = key not in programs.executed
    programs.executed.add(key)
    start_step = run.manager.latest_step() or 0
    tic = time.perf_counter()
    state = run.run()
    seconds = time.perf_counter() - tic
    steps = int(jax.device_get(state.step)) - start_step
    writer = metric_writers.create_default_writer(workdir, just_logging=True)
    results = run.evaluate(state, writer, int(jax.device_get(state.step)))
    return results, {"steps": steps, "train_s": round(seconds, 1), "compiles": compiles}


def run_ablation(config: ml_collections.ConfigDict, workdir: str,
                 rows: tuple[Row, ...] = ROWS) -> dict:
    """Pretrain, then fine-tune and evaluate every row for every seed; returns the per-run
    metrics ``{row: {seed: evaluate() metrics}}``, with the pretrained starting points under
    :data:`START` (keyed by their pretraining seed). ``<workdir>/ablation_runs.json`` is
    rewritten after every run, so an interrupted ablation leaves what it finished;
    ``ablation_timing.json`` beside it holds each run's steps and training seconds, and
    ``ablation_balance.json`` each run's balance-weight trajectory (:func:`balance_trajectory`)."""
    seeds = [int(seed) for seed in config.ablation.seeds]
    programs = _Programs()
    names = (START, *(row.name for row in rows))
    runs: dict = {name: {} for name in names}
    timing: dict = {name: {} for name in names}

    timing_path = os.path.join(workdir, "ablation_timing.json")
    if os.path.exists(timing_path):  # a resumed ablation keeps the timings of earlier calls
        with open(timing_path) as handle:
            timing.update(json.load(handle))

    balance: dict = {name: {} for name in names}

    def record(name: str, seed: int, run_dir: str, outcome: tuple[dict, dict | None]) -> None:
        runs[name][str(seed)] = outcome[0]["metrics"]
        balance[name][str(seed)] = balance_trajectory(run_dir)
        if outcome[1] is not None:
            timing.setdefault(name, {})[str(seed)] = outcome[1]
        for file_name, content in (("ablation_runs.json", runs),
                                   ("ablation_timing.json", timing),
                                   ("ablation_balance.json", balance)):
            with open(os.path.join(workdir, file_name), "w") as handle:
                json.dump(content, handle, indent=1)

    # Row after row, so that only one row's compiled programs are held at a time (the seeds of
    # a row share them); the pretrainings come first.
    starts = {seed: pretrain_seed(config, seed) for seed in seeds}
    for start_seed in dict.fromkeys(starts.values()):
        start_dir = _pretrain_dir(workdir, start_seed)
        record(START, start_seed, start_dir, _train_and_evaluate(
            pretrain_config(config, start_seed), start_dir, programs, START))
    programs.release(START)
    for row in track(rows, len(rows), "ablation rows"):
        for seed in seeds:
            run_dir = os.path.join(workdir, row.name, f"seed_{seed}")
            record(row.name, seed, run_dir, _train_and_evaluate(
                finetune_config(config, row, seed, _pretrain_dir(workdir, starts[seed])),
                run_dir, programs, row.name))
        programs.release(row.name)
    return runs


# Paired AbsRel changes reported per row: (summary key suffix, reference row).
REFERENCES = (("abs_rel_change_pct", BASELINE), ("abs_rel_change_vs_control_pct", CONTROL))


def _paired_change(runs: dict, row: str, reference: str, model: str, region: str) -> dict:
    """Per-seed relative AbsRel change of ``row`` against ``reference`` (seeds of both)."""
    seeds = sorted(set(runs[row]) & set(runs[reference]))
    base = np.array([runs[reference][s][model][region]["abs_rel"] for s in seeds])
    ours = np.array([runs[row][s][model][region]["abs_rel"] for s in seeds])
    change = 100.0 * (ours - base) / base
    return {"mean": float(np.mean(change)), "per_seed": [float(c) for c in change]}


def summarize(runs: dict) -> dict:
    """Mean and half-range over seeds per row/model/region/metric, and each row's relative
    change of AbsRel against the baseline of the same seed (paired: same start, same data);
    the MAL rows also against the full-resolution control (:data:`CONTROL`).

    ``runs``: ``{row: {seed: {model: {region: {metric: value}}}}}`` as :func:`run_ablation`
    returns. Relative changes are in percent, negative = lower error than the reference.
    """
    summary: dict = {}
    for row, by_seed in runs.items():
        if not by_seed:
            continue
        seeds = sorted(by_seed)
        entry: dict = {"seeds": seeds}
        for model in MODELS:
            for region in REGIONS:
                for metric in REPORTED:
                    values = np.array([by_seed[s][model][region][metric] for s in seeds])
                    entry[f"{model}/{region}/{metric}"] = {
                        "mean": float(np.mean(values)),
                        "half_range": float((values.max() - values.min()) / 2),
                        "per_seed": [float(v) for v in values],
                    }
                for suffix, reference in REFERENCES:
                    compared = row not in (START, BASELINE, reference)
                    if compared and set(by_seed) & set(runs.get(reference, {})):
                        entry[f"{model}/{region}/{suffix}"] = _paired_change(
                            runs, row, reference, model, region)
        summary[row] = entry
    return summary


def _cell(entry: dict, key: str) -> str:
    value = entry[key]
    return f"{value['mean']:.4f} ± {value['half_range']:.4f}"


def markdown_table(summary: dict, model: str) -> str:
    """One model's table: AbsRel/SqRel/RMSE/a1 on all and moving pixels, mean ± half-range
    over seeds, and the paired AbsRel changes against the baseline and the control."""
    labels = {row.name: row.label for row in ROWS}
    labels[START] = "start: pretrained ManyDepth"
    header = ("| row | AbsRel all | AbsRel moving | Δ all vs ManyDepth | Δ moving vs ManyDepth "
              "| Δ all vs control | Δ moving vs control | SqRel all | SqRel moving | RMSE all "
              "| RMSE moving | δ<1.25 all | δ<1.25 moving |")
    lines = [header, "|---" + "|---:" * 12 + "|"]
    for row, entry in summary.items():
        changes = []
        for suffix, _ in REFERENCES:
            for region in REGIONS:
                key = f"{model}/{region}/{suffix}"
                changes.append(f"{entry[key]['mean']:+.1f}%" if key in entry else "")
        cells = [_cell(entry, f"{model}/all/abs_rel"), _cell(entry, f"{model}/moving/abs_rel"),
                 *changes]
        for metric in ("sq_rel", "rmse", "a1"):
            cells += [_cell(entry, f"{model}/{region}/{metric}") for region in REGIONS]
        lines.append(f"| {labels.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict, row: str = "mal", model: str = "student",
            suffix: str = "abs_rel_change_pct") -> str:
    """The issue's target in one line: moving-pixel AbsRel down >= 10% in every seed while the
    all-pixel AbsRel does not rise (against the reference that ``suffix`` names)."""
    moving = summary[row][f"{model}/moving/{suffix}"]["per_seed"]
    every = summary[row][f"{model}/all/{suffix}"]["per_seed"]
    # Compared at the 0.1% the line prints: -10.0% (say 0.45 vs 0.50) counts as met.
    met = all(round(c, 1) <= -10.0 for c in moving) and all(round(c, 1) <= 0.0 for c in every)
    reference = dict((s, r) for s, r in REFERENCES)[suffix]
    return (f"{row} vs {reference} ({model}): moving AbsRel change per seed "
            f"{', '.join(f'{c:+.1f}%' for c in moving)}; all-pixel "
            f"{', '.join(f'{c:+.1f}%' for c in every)}; target (<= -10% moving, <= 0% all) "
            f"{'met' if met else 'not met'}")


def export(workdir: str, runs: dict, summary: dict, results_dir: str,
           example_rows: tuple[str, ...] = (BASELINE, "mal"), num_examples: int = 3) -> None:
    """Small files for the repository: the per-run metrics, timings and balance weights, the
    summary, the tables,
    and the first seed's example PNGs (input frame, disparity, AbsRel error) of ``example_rows``."""
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "ablation_runs.json"), "w") as handle:
        json.dump(runs, handle, indent=1)
    with open(os.path.join(results_dir, "ablation_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(results_dir, "ablation.md"), "w") as handle:
        handle.write(report(summary))
    for file_name in ("ablation_timing.json", "ablation_balance.json"):
        shutil.copy(os.path.join(workdir, file_name), results_dir)
    examples = os.path.join(results_dir, "examples")
    os.makedirs(examples, exist_ok=True)
    for row in example_rows:
        seed = min(runs[row], key=int)
        images = os.path.join(workdir, row, f"seed_{seed}", "eval_images")
        for index in range(num_examples):
            names = [f"{index:04d}_{model}_{kind}.png" for model in MODELS
                     for kind in ("disp", "abs_rel_error")]
            for name in names:
                shutil.copy(os.path.join(images, name), os.path.join(examples, f"{row}_{name}"))
            shutil.copy(os.path.join(images, f"{index:04d}_input.png"),
                        os.path.join(examples, f"{index:04d}_input.png"))


def report(summary: dict) -> str:
    parts = []
    for model, title in (("student", "Student (multi-frame)"), ("teacher", "Teacher")):
        parts += [f"### {title}", "", markdown_table(summary, model), ""]
    if "mal" in summary:
        parts += ["- " + verdict(summary, model=model, suffix=suffix)
                  for suffix, _ in REFERENCES for model in MODELS
                  if f"{model}/all/{suffix}" in summary["mal"]]
    return "\n".join(parts) + "\n"


def main(argv):
    del argv
    from absl import flags

    from mal_jax.data.pipeline import hide_gpus_from_tf

    hide_gpus_from_tf()
    values = flags.FLAGS
    config = values.config
    runs = run_ablation(config, values.workdir)
    summary = summarize(runs)
    with open(os.path.join(values.workdir, "ablation_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    if values.results_dir:
        export(values.workdir, runs, summary, values.results_dir)
    print(report(summary))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ablation config, e.g. configs/ablation.py")
    flags.DEFINE_string("workdir", None, "folder of the pretraining and fine-tuning runs")
    flags.DEFINE_string("results_dir", "", "also write the JSONs, tables and example PNGs here")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
