"""MAL's ablation on the embedded dataset: a trained ManyDepth, fine-tuned six ways per seed.

The MAL paper fine-tunes a trained ManyDepth with its losses. At CPU scale this module does the
same on the embedded synthetic scenes, for every seed of ``config.ablation.seeds``:

1. *the start*: either ManyDepth (no MAL part) pretrained here from random initialisation
   with seed ``ablation.pretrain_seed`` (or, if that is -1, with each fine-tuning seed in
   turn), on the first ``ablation.pretrain_num_train_samples`` triplets for
   ``ablation.pretrain_epochs`` -> ``<workdir>/pretrain/seed_<p>``; or, when
   ``ablation.start_workdir`` names one, the latest checkpoint of a run trained elsewhere (the
   converged ManyDepth of ``mal_jax.studies.converge``; ``{seed}`` in it stands for the start
   seed ``p``). Either is evaluated as the starting point (:data:`START`);
2. each row of :data:`ROWS` fine-tunes that checkpoint for ``ablation.finetune_epochs`` with
   the seed (same data order and augmentation in every row) and its MAL parts switched on ->
   ``<workdir>/<row>/seed_<s>``; the baseline row fine-tunes with ManyDepth's own loss, so
   every row gets the same number of steps from the same weights;
3. each fine-tuned model is evaluated on the test split (``evaluation.protocol``: all and
   moving-object pixels, the student (multi-frame network) and the teacher).

Every phase keeps the config's ``loss.velocity_weight`` (configs/ablation.py says why).
Runs resume from their workdirs, so an interrupted ablation restarts where it stopped.
:func:`summarize` reduces the per-run results to the mean and half-range over seeds, and the
change of every row against the baseline of the same seed (``mal_jax.studies.ablation_report``).

``python -m mal_jax.studies.ablation --config=configs/ablation.py --workdir=W
[--results_dir=results]``
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time

import jax
import ml_collections
from clu import metric_writers

from mal_jax.eval.progress import track
from mal_jax.studies import run_scalars
from mal_jax.studies.ablation_report import (
    PRETRAINED_LABEL,
    START_WORKDIR_LABEL,
    export,
    load_balance,
    report,
    summarize,
)
from mal_jax.studies.ablation_rows import BALANCE_TAGS, ROWS, START, Row, with_mal_parts
from mal_jax.train import checkpointing
from mal_jax.train import trainer as trainer_lib


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
    """The seed of the start (pretraining or ``start_workdir`` run) that fine-tuning seed
    ``seed`` starts from."""
    shared = int(config.ablation.pretrain_seed)
    return seed if shared == -1 else shared


def start_dir(config: ml_collections.ConfigDict, workdir: str, start_seed: int) -> str:
    """The workdir whose latest checkpoint the rows of start seed ``start_seed`` fine-tune:
    ``ablation.start_workdir`` with ``{seed}`` replaced, or the pretraining made here."""
    template = config.ablation.start_workdir
    if not template:
        return os.path.join(workdir, "pretrain", f"seed_{start_seed}")
    return template.replace("{seed}", str(start_seed))


def start_config(config: ml_collections.ConfigDict, seed: int,
                 start: str) -> ml_collections.ConfigDict:
    """The start of ``start_workdir``, loaded and not trained (zero epochs): its evaluation
    under this ablation's protocol is the :data:`START` row."""
    loaded = finetune_config(config, ROWS[0], seed, start)
    loaded.training.num_epochs = 0
    return loaded


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


def _finished_results(run: trainer_lib.Trainer) -> dict | None:
    """The saved evaluation of a run that already trained all its steps, if there is one."""
    path = os.path.join(run.workdir, "eval_results.json")
    if (run.manager.latest_step() or 0) != run.num_steps or not os.path.exists(path):
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
    os.makedirs(workdir, exist_ok=True)  # the JSONs below go there before any run makes it
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
    # a row share them); the starts come first.
    starts = {seed: pretrain_seed(config, seed) for seed in seeds}
    _run_starts(config, workdir, tuple(dict.fromkeys(starts.values())), programs, record)
    for row in track(rows, len(rows), "ablation rows"):
        for seed in seeds:
            run_dir = os.path.join(workdir, row.name, f"seed_{seed}")
            record(row.name, seed, run_dir, _train_and_evaluate(
                finetune_config(config, row, seed, start_dir(config, workdir, starts[seed])),
                run_dir, programs, row.name))
        programs.release(row.name)
    return runs


def _run_starts(config, workdir: str, start_seeds: tuple[int, ...], programs: _Programs,
                record) -> None:
    """Pretrain and evaluate each start here, or evaluate each ``start_workdir`` run (its step
    goes to ``<workdir>/ablation_starts.json``: a start that is still training shows)."""
    if not config.ablation.start_workdir:
        for start_seed in start_seeds:
            run_dir = start_dir(config, workdir, start_seed)
            record(START, start_seed, run_dir, _train_and_evaluate(
                pretrain_config(config, start_seed), run_dir, programs, START))
        programs.release(START)
        return
    dirs = {str(s): start_dir(config, workdir, s) for s in start_seeds}
    starts = {s: {"workdir": d, "step": checkpointing.latest_step(d)} for s, d in dirs.items()}
    for start in starts.values():
        if start["step"] is None:
            raise FileNotFoundError(f"config.ablation.start_workdir="
                                    f"{config.ablation.start_workdir}: {start['workdir']} has no "
                                    "checkpoint (it must name a training workdir)")
    with open(os.path.join(workdir, "ablation_starts.json"), "w") as handle:
        json.dump(starts, handle, indent=1)
    for start_seed in start_seeds:
        run_dir = os.path.join(workdir, "start", f"seed_{start_seed}")
        record(START, start_seed, run_dir, _train_and_evaluate(
            start_config(config, start_seed, starts[str(start_seed)]["workdir"]), run_dir,
            programs, START))
    programs.release(START)


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
    label = START_WORKDIR_LABEL if config.ablation.start_workdir else PRETRAINED_LABEL
    if values.results_dir:
        export(values.workdir, runs, summary, values.results_dir, start_label=label)
    print(report(summary, load_balance(values.workdir), label))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from mal_jax import xla_cpu

    xla_cpu.restart_with_fast_allocator()  # CPU: tcmalloc or huge pages for XLA's per-step buffers

    config_flags.DEFINE_config_file("config", None, "ablation config, e.g. configs/ablation.py")
    flags.DEFINE_string("workdir", None, "folder of the pretraining and fine-tuning runs")
    flags.DEFINE_string("results_dir", "", "also write the JSONs, tables and example PNGs here")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
