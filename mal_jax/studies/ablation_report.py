"""The report of MAL's ablation: the mean and half-range over seeds of every row, the paired
AbsRel changes against ManyDepth and the full-resolution control, the tables, the issue's
verdict line, and the small files for the repository (``mal_jax.studies.ablation`` writes them
after its runs)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from mal_jax.studies.ablation_rows import BASELINE, CONTROL, MODELS, REGIONS, REPORTED, ROWS, START

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


# The start's label in the tables: pretrained by the ablation, or its ``start_workdir`` run.
PRETRAINED_LABEL = "start: pretrained ManyDepth"
START_WORKDIR_LABEL = "start: ManyDepth of ablation.start_workdir"


def markdown_table(summary: dict, model: str, start_label: str = PRETRAINED_LABEL) -> str:
    """One model's table: AbsRel/SqRel/RMSE/a1 on all and moving pixels, mean ± half-range
    over seeds, and the paired AbsRel changes against the baseline and the control."""
    labels = {row.name: row.label for row in ROWS}
    labels[START] = start_label
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


def balance_table(balance: dict, fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
                  ) -> str:
    """The balance weight of the original loss along each balancing run: ``w_original`` at
    the logged steps nearest to each fraction of the run (``w_distil`` = 1 - ``w_original``).
    ``balance``: ``{row: {seed: balance_trajectory()}}``; rows that never balance are left out.
    """
    header = "| row | seed | " + " | ".join(f"{f:.0%} of the run" for f in fractions) + " |"
    lines = [header, "|---|---:" + "|---:" * len(fractions) + "|"]
    labels = {row.name: row.label for row in ROWS}
    for row, by_seed in balance.items():
        for seed, trajectory in sorted(by_seed.items()):
            steps, weights = trajectory["step"], trajectory["w_original"]
            if not steps:
                continue
            picks = [min(range(len(steps)), key=lambda i: abs(steps[i] - f * steps[-1]))
                     for f in fractions]
            cells = [f"{weights[i]:.3f} (step {steps[i]})" for i in picks]
            lines.append(f"| {labels.get(row, row)} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_balance(workdir: str) -> dict:
    """The balance-weight trajectories an ablation wrote to ``<workdir>/ablation_balance.json``."""
    with open(os.path.join(workdir, "ablation_balance.json")) as handle:
        return json.load(handle)


def export(workdir: str, runs: dict, summary: dict, results_dir: str,
           example_rows: tuple[str, ...] = (BASELINE, "mal"), num_examples: int = 3,
           start_label: str = PRETRAINED_LABEL) -> None:
    """Small files for the repository: the per-run metrics, timings, balance weights and (if
    the ablation loaded its start) the start's step, the summary, the report, and the first
    seed's example PNGs (input frame, disparity, AbsRel error) of ``example_rows``."""
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "ablation_runs.json"), "w") as handle:
        json.dump(runs, handle, indent=1)
    with open(os.path.join(results_dir, "ablation_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(results_dir, "ablation.md"), "w") as handle:
        handle.write(report(summary, load_balance(workdir), start_label))
    for file_name in ("ablation_timing.json", "ablation_balance.json", "ablation_starts.json"):
        if os.path.exists(os.path.join(workdir, file_name)):
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


def report(summary: dict, balance: dict | None = None,
           start_label: str = PRETRAINED_LABEL) -> str:
    """Both networks' tables, the verdict lines, and the balance weights if given."""
    parts = []
    for model, title in (("student", "Student (multi-frame)"), ("teacher", "Teacher")):
        parts += [f"### {title}", "", markdown_table(summary, model, start_label), ""]
    if "mal" in summary:
        parts += ["- " + verdict(summary, model=model, suffix=suffix)
                  for suffix, _ in REFERENCES for model in MODELS
                  if f"{model}/all/{suffix}" in summary["mal"]]
    if balance:
        parts += ["", "### Balance weight of the original loss (w_original)", "",
                  balance_table(balance)]
    return "\n".join(parts) + "\n"
