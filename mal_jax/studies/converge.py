"""A converged ManyDepth on the embedded scenes: the start MAL fine-tunes, from random weights.

MAL fine-tunes a converged ManyDepth (the paper: released KITTI weights, AbsRel 0.098). No
such weights exist for the embedded scenes, so this study trains one per seed of
``config.converge.seeds`` and records how it gets there:

    python -m mal_jax.studies.converge --config=configs/converge.py --workdir=W \\
        [--results_dir=results]

The seeds train in turns of ``converge.chunk_steps`` steps (round robin, one compiled step
shared by all), so every seed's curve advances together and an interrupted study has the same
length of curve for each. Each run lives in ``W/seed_<s>`` and resumes from its newest
checkpoint: rerunning the command, in this session or a later one, continues where it stopped.
Every turn ends with an evaluation on the test split (``training.eval_every_steps`` =
``converge.chunk_steps``), and after each turn the curves (AbsRel of both networks on all
pixels, the depth bins) are written to ``<results_dir>/converge_curve.json``, a table to
``converge.md`` and a plot to ``converge_curve.png``.
"""

from __future__ import annotations

import json
import os

import ml_collections

from mal_jax.eval.evaluate import MODELS
from mal_jax.studies import run_scalars
from mal_jax.train import trainer as trainer_lib

# Logged scalars a curve point holds: test AbsRel per network on all pixels and on those of
# moving objects (the error MAL targets, a part of the all-pixel figure), and the adaptive
# bins.
REGIONS = ("all", "moving")
CURVE_TAGS = tuple(f"eval/{model}/{region}/abs_rel" for model in MODELS for region in REGIONS) + (
    "min_depth_bin", "max_depth_bin")


def _point_key(model: str, region: str) -> str:
    """A curve point's key for one network and region: ``student_abs_rel`` (all pixels),
    ``student_moving_abs_rel``."""
    return f"{model}_abs_rel" if region == "all" else f"{model}_{region}_abs_rel"


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The run of one seed: its seed, and an evaluation at the end of every turn."""
    run = ml_collections.ConfigDict(config.to_dict())
    run.training.seed = seed
    run.training.eval_every_steps = config.converge.chunk_steps
    return run


def curve(workdir: str) -> list[dict]:
    """``[{step, <model>_abs_rel..., <model>_moving_abs_rel..., min_depth_bin, max_depth_bin}]``
    at every evaluated step of a run, read back from its logged scalars (bins: the training
    step's values; None where the run logged no such value)."""
    scalars = run_scalars.logged_scalars(workdir, CURVE_TAGS)
    points = []
    for step in sorted(scalars):
        values = scalars[step]
        if f"eval/{MODELS[0]}/all/abs_rel" not in values:
            continue
        point = {"step": step}
        point.update({_point_key(model, region): values.get(f"eval/{model}/{region}/abs_rel")
                      for model in MODELS for region in REGIONS})
        point.update({k: values.get(k) for k in ("min_depth_bin", "max_depth_bin")})
        points.append(point)
    return points


def run_converge(config: ml_collections.ConfigDict, workdir: str,
                 results_dir: str = "") -> dict:
    """Train every seed in turns until each has ``num_epochs``; write the curves after every
    turn. Returns ``{seed: curve}``."""
    seeds = tuple(int(s) for s in config.converge.seeds)
    runs, first = {}, None
    for seed in seeds:
        runs[seed] = trainer_lib.Trainer(seed_config(config, seed),
                                         os.path.join(workdir, f"seed_{seed}"))
        if first is None:
            first = runs[seed]
        else:
            runs[seed].reuse_programs(first)
    chunk = int(config.converge.chunk_steps)
    while True:
        pending = [seed for seed in seeds
                   if (runs[seed].manager.latest_step() or 0) < runs[seed].num_steps]
        curves = {seed: curve(runs[seed].workdir) for seed in seeds}
        # Also when nothing is left to train: rerunning a finished study with another
        # --results_dir must write its files there.
        write_results(curves, config, results_dir or workdir)
        if not pending:
            return curves
        for seed in pending:
            run = runs[seed]
            done = run.manager.latest_step() or 0
            run.run(min((done // chunk + 1) * chunk, run.num_steps))


def markdown(curves: dict, config: ml_collections.ConfigDict) -> str:
    """Table of the curves: one line per evaluated step, both networks per seed on all pixels
    then on moving-object pixels, and the target check (all pixels) on the last common step."""
    seeds = sorted(curves)
    header = "| step | " + " | ".join(f"seed {s} {m} | seed {s} bins (m)" for s in seeds
                                       for m in MODELS[:1]) + " | " + " | ".join(
        f"seed {s} {MODELS[1]}" for s in seeds) + " | " + " | ".join(
        f"seed {s} {m} moving" for m in MODELS for s in seeds) + " |"
    lines = [header, "|" + "---:|" * (1 + 5 * len(seeds))]
    steps = sorted({p["step"] for s in seeds for p in curves[s]})
    by_seed = {s: {p["step"]: p for p in curves[s]} for s in seeds}
    for step in steps:
        cells = []
        for s in seeds:
            point = by_seed[s].get(step)
            cells.append(_fmt(point, f"{MODELS[0]}_abs_rel"))
            cells.append(f"{point['min_depth_bin']:.1f}-{point['max_depth_bin']:.1f}"
                         if point and point.get("min_depth_bin") is not None else "")
        cells += [_fmt(by_seed[s].get(step), f"{MODELS[1]}_abs_rel") for s in seeds]
        cells += [_fmt(by_seed[s].get(step), _point_key(m, "moving")) for m in MODELS
                  for s in seeds]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    target = float(config.converge.target_abs_rel)
    common = [step for step in steps if all(step in by_seed[s] for s in seeds)]
    if common:
        last = common[-1]
        worst = max(by_seed[s][last][f"{m}_abs_rel"] for s in seeds for m in MODELS)
        verdict = "met" if worst <= target else "not met"
        lines.append("")
        lines.append(f"Step {last}: worst AbsRel over seeds and networks {worst:.4f}; target "
                     f"<= {target} {verdict}.")
    return "\n".join(lines) + "\n"


def _fmt(point: dict | None, key: str) -> str:
    return f"{point[key]:.4f}" if point and point.get(key) is not None else ""


def write_results(curves: dict, config: ml_collections.ConfigDict, results_dir: str) -> None:
    """``converge_curve.json``, ``converge.md`` and ``converge_curve.png`` in ``results_dir``."""
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "converge_curve.json"), "w") as handle:
        json.dump({str(seed): points for seed, points in curves.items()}, handle, indent=1)
    with open(os.path.join(results_dir, "converge.md"), "w") as handle:
        handle.write(markdown(curves, config))
    plot(curves, os.path.join(results_dir, "converge_curve.png"))


def plot(curves: dict, path: str) -> None:
    """AbsRel against step, one line per seed and network."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 3.5))
    for seed, points in sorted(curves.items()):
        for model, style in zip(MODELS, ("-", "--"), strict=True):
            steps = [p["step"] for p in points if p.get(f"{model}_abs_rel") is not None]
            values = [p[f"{model}_abs_rel"] for p in points
                      if p.get(f"{model}_abs_rel") is not None]
            axis.plot(steps, values, style, marker="o", label=f"seed {seed} {model}")
    axis.set_xlabel("step")
    axis.set_ylabel("test AbsRel (all pixels)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv):
    del argv
    from absl import flags

    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache

    compilation_cache.enable()
    hide_gpus_from_tf()
    values = flags.FLAGS
    curves = run_converge(values.config, values.workdir, values.results_dir)
    print(markdown(curves, values.config))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from mal_jax import xla_cpu

    xla_cpu.restart_with_fast_allocator()  # CPU: tcmalloc or huge pages for XLA's per-step buffers

    config_flags.DEFINE_config_file("config", None, "e.g. configs/converge.py")
    flags.DEFINE_string("workdir", None, "folder of the per-seed runs (outside git)")
    flags.DEFINE_string("results_dir", "", "where the curve JSON, table and plot go "
                                           "(default: the workdir)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
