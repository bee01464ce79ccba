"""Does the multi-frame student use its cost volume? Three measurements per trained run.

MAL's student-side parts assume a student whose errors on moving objects come from its cost
volume (matching assumes a static world). On the embedded scenes that premise can be checked:

* **bin sensitivity**: the student's test AbsRel with the cost-volume depth range it was
  trained with, and with that range divided and multiplied by ``RANGE_FACTOR``. A student that
  reads its cost volume changes with the range; one that has learned to ignore it does not.
* **trust**: on training batches (train-mode forward, as a step sees them), the fraction of
  pixels the cost volume covers (``confidence``), where its arg-min depth is within 2x of the
  teacher's (``agreement``), and where the student's reprojection loss applies (``trusted``,
  their product). Everywhere else ManyDepth trains the student by its consistency loss: an L1
  to the teacher's depth, in metres.
* **depth in the cost volume**: on the same batches, the median-scaled AbsRel and a1 against
  the ground truth (the evaluation's protocol) of the cost volume's arg-min depth, of the
  teacher's and of the student's depth. An arg-min that beats the teacher holds depth the
  student could read; if the student then matches the teacher, not the arg-min, it does not.
* **parallax** (oracle, no network): with ground-truth depth and camera motion, how far (in
  pixels of the 1/4-resolution matching grid) a frame-t pixel moves in the lookup frame t-1
  when its depth doubles. Below one pixel the cost volume cannot tell d from 2d there; and
  between the run's nearest and farthest bin, below one pixel its costs are flat. With it,
  ManyDepth's plane sweep run on raw pixel patches with the true pose, at the matching grid's
  resolution and at full resolution (:mod:`mal_jax.studies.plane_sweep`): how much depth the
  frames let a cost volume find at this size and motion, and how much they hold.

    python -m mal_jax.studies.cost_volume_use --config=configs/ablation.py \
        --runs=start=/work/runs/converge/seed_0,control=... [--num_batches 10] \
        [--num_samples 64] [--parallax_sizes 96x320,192x640] [--parallax_strides 2,3] \
        [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core import losses, network_losses
from mal_jax.data import pipeline, registry
from mal_jax.eval import evaluate, presets
from mal_jax.studies import plane_sweep
from mal_jax.train import forward, step

RANGE_FACTOR = 4.0  # the alternative cost-volume ranges: the run's, divided and multiplied by this


def variants(min_bin: float, max_bin: float) -> dict[str, tuple[float, float, bool]]:
    """``{name: (min_bin, max_bin, without_lookup)}``: the cost volume's depth range divided
    and multiplied by ``RANGE_FACTOR``, and no lookup frame at all (ManyDepth's single-frame
    mode: frame t matched against itself)."""
    return {f"/{RANGE_FACTOR:g}": (min_bin / RANGE_FACTOR, max_bin / RANGE_FACTOR, False),
            f"x{RANGE_FACTOR:g}": (min_bin * RANGE_FACTOR, max_bin * RANGE_FACTOR, False),
            "no lookup": (min_bin, max_bin, True)}


def log_change(disparity: np.ndarray, reference: np.ndarray) -> float:
    """Mean ``|log(disparity / reference)|`` over all pixels: 0.01 is a 1% change."""
    return float(np.mean(np.abs(np.log(disparity / reference))))


def cost_volume_sensitivity(inference, evaluator: evaluate.Evaluator) -> dict:
    """How the student's test predictions change under each of :func:`variants`
    (``change``: :func:`log_change` against its own predictions), and its AbsRel (all and
    moving pixels) with its own range and without a lookup frame."""
    scores = {"own": evaluator.run(inference, keep_predictions=True)}
    own = scores["own"].pop("predictions")["student"]
    rows = {}
    for name, (low, high, without_lookup) in variants(inference.min_depth_bin,
                                                      inference.max_depth_bin).items():
        varied = dataclasses.replace(inference, min_depth_bin=low, max_depth_bin=high)
        if without_lookup:  # scored too: one pass gives its predictions and its AbsRel
            scores[name] = evaluator.run(varied, without_lookup=True, keep_predictions=True)
            student = scores[name].pop("predictions")["student"]
        else:
            student = evaluator.predictions(varied)["student"]
        rows[name] = {"bins": [float(low), float(high)], "change": log_change(student, own)}
    for name, results in scores.items():
        student = results["metrics"]["student"]
        rows.setdefault(name, {}).update(
            {f"student_{region}_abs_rel": float(student[region]["abs_rel"])
             for region in student})
    return rows


def trust_fractions(outputs: dict) -> dict[str, float]:
    """Pixel fractions of one training forward's outputs: ``confidence`` (every bin projects
    into the lookup frame), ``agreement`` (cost-volume arg-min within 2x of the teacher) and
    ``trusted`` (the consistency mask: where the student's reprojection loss applies)."""
    agreement = losses.compute_matching_mask(outputs["teacher_depth"][0], outputs["lowest_cost"])
    return {"confidence": float(jnp.mean(outputs["confidence"])),
            "agreement": float(jnp.mean(agreement)),
            "trusted": float(jnp.mean(outputs["consistency_mask"]))}


def depth_accuracy(outputs: dict, depth_gt, protocol) -> dict[str, float]:
    """``<depth>_abs_rel`` and ``<depth>_a1`` (batch means, median-scaled per image under the
    evaluation ``protocol``) of the cost volume's arg-min depth (``matching``), the teacher's
    and the student's scale-0 depth, against ``depth_gt`` (B, H, W)."""
    disparities = {"matching": outputs["lowest_cost"][..., 0],
                   "teacher": 1.0 / outputs["teacher_depth"][0][..., 0],
                   "student": 1.0 / outputs["student_depth"][0][..., 0]}
    scores = {}
    for name, disparity in disparities.items():
        errors = evaluate.score_depth(jnp.asarray(depth_gt), disparity, protocol)[0]["all"]
        scores[f"{name}_abs_rel"] = float(jnp.mean(errors["abs_rel"]))
        scores[f"{name}_a1"] = float(jnp.mean(errors["a1"]))
    return scores


def measure_trust(config, inference, num_batches: int, seed: int = 0) -> dict[str, float]:
    """Mean :func:`trust_fractions` and :func:`depth_accuracy` over ``num_batches`` training
    batches of ``config``, and the student's scale-0 loss terms there: ``reproj_loss`` (over
    the trusted pixels) and ``consistency_loss`` (metres, averaged over all pixels)."""
    settings = step.step_settings(config, steps_per_epoch=1).loss
    protocol = presets.get_preset(config.evaluation.protocol).protocol
    source = registry.train_source(config)
    batches = pipeline.train_batches(source, batch_size=config.training.batch_size, seed=seed)

    @jax.jit
    def measured(variables, batch, min_bin, max_bin):
        outputs = forward.train_forward(inference.model, variables, batch, min_bin, max_bin,
                                        settings=settings)[0]
        parts = network_losses.student_loss(outputs, batch, settings)[1]
        return outputs, {name: parts[f"{name}/0"]
                         for name in ("reproj_loss", "consistency_loss")}

    totals = []
    for batch in itertools.islice(batches, num_batches):
        outputs, parts = measured(inference.variables, batch,
                                  jnp.float32(inference.min_depth_bin),
                                  jnp.float32(inference.max_depth_bin))
        totals.append({**trust_fractions(outputs),
                       **depth_accuracy(outputs, batch["depth_gt"], protocol),
                       **{f"student_{name}": float(value) for name, value in parts.items()}})
    return {key: float(np.mean([t[key] for t in totals])) for key in totals[0]}


def run_study(config, runs: dict[str, str], num_batches: int, num_samples: int,
              parallax_sizes: tuple[tuple[int, int], ...] = (),
              parallax_strides: tuple[int, ...] = ()) -> dict:
    """Every measurement for each ``{name: workdir}``; parallax over the first run's bins at
    the config's image size and at each of ``parallax_sizes`` (the same scenes rendered
    larger: the same motion in metres, more pixels)."""
    from mal_jax.train import checkpointing

    evaluator = evaluate.Evaluator(config)
    results, first_bins = {"runs": {}}, None
    for name, workdir in runs.items():
        inference = checkpointing.load_inference(workdir)
        first_bins = first_bins or (float(inference.min_depth_bin),
                                    float(inference.max_depth_bin))
        results["runs"][name] = {"workdir": workdir,
                                 "sensitivity": cost_volume_sensitivity(inference, evaluator),
                                 "trust": measure_trust(config, inference, num_batches)}
    size, stride = (config.data.height, config.data.width), config.data.frame_stride
    settings = dict.fromkeys([(size, stride), *((other, stride) for other in parallax_sizes),
                              *((size, other) for other in parallax_strides)])
    results["parallax"] = {
        parallax_name(*setting): plane_sweep.measure_parallax(
            setting[0], first_bins, num_samples, config.data.max_instances, setting[1],
            num_bins=config.model.num_depth_bins)
        for setting in settings}
    return results


def parallax_name(size: tuple[int, int], stride: int) -> str:
    """``"64x192"``, or ``"64x192, frame stride 3"`` for frames more than one apart."""
    name = f"{size[0]}x{size[1]}"
    return name if stride == 1 else f"{name}, frame stride {stride}"


def markdown(results: dict) -> str:
    """One row per run: the student's prediction change under each variant, its AbsRel with
    and without a lookup frame, the trust fractions and its loss terms; then the parallax
    lines."""
    lines = ["| run | change, range /4 | change, range x4 | change, no lookup | student AbsRel "
             "| AbsRel, no lookup | confidence | agreement | trusted | student reprojection "
             "loss | student consistency loss (m) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in results["runs"].items():
        rows, trust = run["sensitivity"], run["trust"]
        cells = [f"{rows[key]['change']:.2%}" for key in variants(1.0, 2.0)]
        cells += [f"{rows[key]['student_all_abs_rel']:.4f}" for key in ("own", "no lookup")]
        cells += [f"{trust[key]:.2f}" for key in ("confidence", "agreement", "trusted")]
        cells += [f"{trust[key]:.3f}" for key in ("student_reproj_loss",
                                                   "student_consistency_loss")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Depth on the training batches (median-scaled against the ground truth): "
              "the cost volume's arg-min, the teacher, the student.", "",
              "| run | arg-min AbsRel | arg-min a1 | teacher AbsRel | teacher a1 "
              "| student AbsRel | student a1 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, run in results["runs"].items():
        trust = run["trust"]
        cells = [f"{trust[f'{depth}_{metric}']:.3f}"
                 for depth in ("matching", "teacher", "student") for metric in ("abs_rel", "a1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for size, p in results["parallax"].items():
        lines.append(f"Parallax at {size} (ground truth, {p['num_pixels']} test pixels): "
                     f"doubling the depth moves the match by < 1 matching pixel for "
                     f"{p['depth_doubling_below_1px']:.0%} of pixels (< 0.5 px: "
                     f"{p['depth_doubling_below_half_px']:.0%}; median "
                     f"{p['depth_doubling_median_px']:.2f} px); costs flat across "
                     f"{p['bins'][0]:.1f}-{p['bins'][1]:.1f} m for {p['flat_across_bins']:.0%}"
                     + "".join(_sweep_text(p, name) for name in plane_sweep.SWEEPS
                               if f"{name}_a1" in p) + ".")
    return "\n".join(lines)


_SWEEP_NAMES = {"patch_matching": "the plane sweep on 4x4 pixel blocks at the matching grid's "
                "resolution with the true pose",
                "pixel_matching": "at full resolution on 3x3 neighbourhoods"}


def _sweep_text(result: dict, name: str) -> str:
    """``"; <sweep>: AbsRel x, a1 y; its a1 ..."`` for one sweep of a parallax result."""
    return (f"; {_SWEEP_NAMES[name]}: AbsRel {result[f'{name}_abs_rel']:.3f}, a1 "
            f"{result[f'{name}_a1']:.3f}"
            f"{_by_parallax_text(result.get(f'{name}_a1_by_parallax', []))}")


def _by_parallax_text(classes: list[dict]) -> str:
    """``"; its a1 where ...: 0-0.5 px (38%) 0.20, ..."`` (empty for no classes)."""
    if not classes:
        return ""
    cells = []
    for cls in classes:
        low, high = cls["doubling_px"]
        span = f"{low:g}-{high:g} px" if np.isfinite(high) else f">= {low:g} px"
        cells.append(f"{span} ({cls['share']:.0%}) {cls['a1']:.2f}")
    return ("; its a1 where the true depth lies inside the bins, by the parallax of a depth "
            "doubling (share of those pixels): " + ", ".join(cells))


def parse_runs(items: list[str]) -> dict[str, str]:
    """``["name=workdir", ...]`` as a dict; an item without a name or path is one clear error."""
    runs = {}
    for item in items:
        name, _, workdir = item.partition("=")
        if not name or not workdir:
            raise ValueError(f"--runs item {item!r}: expected name=workdir")
        runs[name] = workdir
    return runs


def parse_size(text: str) -> tuple[int, int]:
    """``"96x320"`` as ``(96, 320)``; anything else is one clear error."""
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise ValueError(f"--parallax_sizes item {text!r}: expected HEIGHTxWIDTH, e.g. 96x320")
    return int(height), int(width)


def main(argv):
    del argv
    from absl import flags

    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache

    compilation_cache.enable()
    hide_gpus_from_tf()
    values = flags.FLAGS
    runs = parse_runs(values.runs)
    sizes = tuple(parse_size(size) for size in values.parallax_sizes)
    strides = tuple(int(stride) for stride in values.parallax_strides)
    results = run_study(values.config, runs, values.num_batches, values.num_samples, sizes,
                        strides)
    table = markdown(results)
    if values.json:
        pathlib.Path(values.json).write_text(json.dumps(results, indent=1) + "\n")
    if values.markdown:
        pathlib.Path(values.markdown).write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "the runs' config, e.g. configs/ablation.py")
    flags.DEFINE_list("runs", None, "name=workdir pairs, comma-separated")
    flags.DEFINE_integer("num_batches", 10, "training batches for the trust fractions")
    flags.DEFINE_integer("num_samples", 64, "test samples for the parallax")
    flags.DEFINE_list("parallax_sizes", [], "more image sizes for the parallax, e.g. 192x640")
    flags.DEFINE_list("parallax_strides", [], "more frame strides for the parallax, e.g. 2,3")
    flags.DEFINE_string("json", "", "write the results here")
    flags.DEFINE_string("markdown", "", "write the table here")
    flags.mark_flags_as_required(["config", "runs"])
    app.run(main)
