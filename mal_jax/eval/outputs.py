"""What evaluation and prediction write to disk: JSON results, a Markdown table, colour PNGs.

Colour maps come from matplotlib's colormap registry (no pyplot figure is created). Disparity
images follow ManyDepth's ``test_simple`` convention: magma, normalised from the minimum to the
95th percentile, so near things are bright. Error images use plasma on a fixed [0, vmax] range
so that images of one run can be compared with each other.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image

from mal_jax.eval.metrics import METRIC_NAMES

MODEL_LABELS = {"student": "student (multi-frame)", "teacher": "teacher (frame 0 only)"}
REGION_TITLES = {"all": "All valid pixels", "moving": "Moving-object pixels"}
# Columns where lower is better get an arrow down, accuracies an arrow up (the papers' style).
_HEADERS = {
    "abs_rel": "AbsRel ↓",
    "sq_rel": "SqRel ↓",
    "rmse": "RMSE ↓",
    "rmse_log": "RMSElog ↓",
    "a1": "δ<1.25 ↑",
    "a2": "δ<1.25² ↑",
    "a3": "δ<1.25³ ↑",
}


def colorize(
    values: np.ndarray,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a matplotlib colormap; invalid pixels black."""
    import matplotlib

    values = np.asarray(values, np.float64)
    if valid is None:
        valid = np.isfinite(values)
    valid = valid & np.isfinite(values)
    finite = values[valid]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    span = max(vmax - vmin, 1e-12)
    unit = np.clip((np.where(valid, values, vmin) - vmin) / span, 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](unit)[..., :3]
    rgb = np.where(valid[..., None], rgb, 0.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def disparity_image(disparity: np.ndarray, cmap: str = "magma") -> np.ndarray:
    """Colour image of a disparity map, ``test_simple`` style (vmax = 95th percentile)."""
    disparity = np.asarray(disparity, np.float64)
    return colorize(disparity, cmap, float(disparity.min()), float(np.percentile(disparity, 95)))


def error_image(error: np.ndarray, valid: np.ndarray, vmax: float = 0.5) -> np.ndarray:
    """Colour image of a per-pixel absolute relative error; pixels without GT are black."""
    return colorize(error, "plasma", 0.0, vmax, valid=valid)


def save_png(path: str, rgb: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def _table(metrics: dict, region: str) -> list[str]:
    header = "| model | images | " + " | ".join(_HEADERS[m] for m in METRIC_NAMES) + " |"
    rule = "|---|---:|" + "---:|" * len(METRIC_NAMES)
    rows = [header, rule]
    for model, label in MODEL_LABELS.items():
        if model not in metrics or region not in metrics[model]:
            continue
        block = metrics[model][region]
        cells = " | ".join(_cell(block[m]) for m in METRIC_NAMES)
        rows.append(f"| {label} | {block['num_images']} | {cells} |")
    return rows


def markdown_report(results: dict) -> str:
    """Markdown tables of ``results`` (as ``mal_jax.eval.evaluate`` builds it), one block per
    region."""
    preset = results["preset"]
    lines = [
        f"# Depth evaluation: {results['protocol']}",
        "",
        f"- checkpoint: `{results.get('checkpoint') or 'n/a'}`",
        f"- images: {results['num_images']} at {results['height']}x{results['width']}",
        f"- disparity-to-depth range: {preset['min_depth']} to {preset['max_depth']} m; "
        f"GT counted in ({preset['gt_min']}, {preset['gt_max']}) m; "
        f"{'per-image median scaling' if preset['median_scaling'] else 'no median scaling'}; "
        f"predictions clamped to [{preset['clamp_min']}, {preset['clamp_max']}] m",
        f"- cost-volume depth bins: {results['min_depth_bin']:.4g} to "
        f"{results['max_depth_bin']:.4g} m",
        f"- samples with frame -1 missing (static-camera fallback): "
        f"{results['static_fallback_images']}",
    ]
    for region in results["regions"]:
        lines += ["", f"## {REGION_TITLES.get(region, region)}", ""]
        lines += _table(results["metrics"], region)
    ratios = [
        f"{MODEL_LABELS[m]} median {block['all']['ratio_median']:.3f} "
        f"(std/median {block['all']['ratio_std']:.3f})"
        for m, block in results["metrics"].items()
        if block["all"].get("ratio_median") is not None
    ]
    if ratios:
        lines += ["", "Median-scaling ratios: " + "; ".join(ratios) + "."]
    if "moving" in results["regions"]:
        lines += [
            "",
            "Moving-object pixels use each image's all-pixel scaling ratio; images without a "
            "valid moving pixel are left out of that block.",
        ]
    return "\n".join(lines) + "\n"


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; "no value" reads better than a string
    return value


def write_results(results: dict, out_dir: str) -> tuple[str, str]:
    """Write ``eval_results.json`` and ``eval_results.md`` into ``out_dir``; return both paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "eval_results.json")
    md_path = os.path.join(out_dir, "eval_results.md")
    with open(json_path, "w") as handle:
        json.dump(_json_ready(results), handle, indent=2, sort_keys=True)
        handle.write("\n")
    with open(md_path, "w") as handle:
        handle.write(markdown_report(results))
    return json_path, md_path


def write_sample_images(
    out_dir: str, prefix: str, disparity: np.ndarray, gt: np.ndarray, pred: np.ndarray, valid
) -> list[str]:
    """``<prefix>_disp.png`` (network output) and ``<prefix>_abs_rel_error.png`` (GT size);
    returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    disp_path = os.path.join(out_dir, f"{prefix}_disp.png")
    error_path = os.path.join(out_dir, f"{prefix}_abs_rel_error.png")
    save_png(disp_path, disparity_image(disparity))
    error = np.abs(gt - pred) / np.where(valid, gt, 1.0)
    save_png(error_path, error_image(error, valid))
    return [disp_path, error_path]
