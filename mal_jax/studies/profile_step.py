"""Where the train step's time goes: per-HLO-op times from a profiler trace, grouped by part.

    python -m mal_jax.studies.bench --height 96 --width 320 --batch_size 4 --steps 5 --profile

(the benchmark calls ``profile_compiled`` after timing). The step is run under
``jax.profiler.trace``; every XLA op event of the compiled module is attributed to a part of
the model through the op's metadata in the compiled HLO: its name stack (flax module names,
``transpose(...)`` for the backward pass) and the Python stack it was traced from (file and
function names, e.g. ``geometry.grid_sample``). Ops that XLA runs in parallel on several cores
each count their own time, so the total can exceed the wall-clock step.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax

# Part of the model, by the functions on the op's Python stack (first match wins); then by
# the flax module on its name stack.
_BY_FUNCTION = (
    ("cost volume", {"_single_cost_volume", "cost_volume", "one_lookup"}),
    ("grid sampling", {"grid_sample", "_unnormalise"}),
    ("SSIM", {"ssim_dissimilarity", "_box3"}),
)
_BY_NETWORK = (  # (manydepth.py method, flax module) -> part
    (("pose", "ResnetEncoder"), "pose encoder"),
    (("pose", "PoseDecoder"), "pose decoder"),
    (("teacher", "ResnetEncoder"), "teacher encoder"),
    (("teacher", "DepthDecoder"), "teacher decoder"),
    (("student", "MatchingEncoder"), "student matching encoder"),
    (("student", "DepthDecoder"), "student decoder"),
)
# When the compiled HLO keeps only the innermost Python frame (flax's ``_Conv.__call__``: seen
# with jax 0.10, whose stack-frame tables do not chain up to this package), the flax module on
# the name stack still names the network; the teacher and pose encoders share one class.
_BY_MODULE = (
    ("MatchingEncoder", "student matching encoder (cost volume included)"),
    ("PoseDecoder", "pose decoder"),
    ("ResnetEncoder", "teacher and pose encoders"),
    ("DepthDecoder", "depth decoders (teacher and student)"),
)
# Ops XLA creates (layout copies of parameters, reversed kernels) carry no metadata.
NO_SOURCE = "copies and layout changes made by XLA"
# CPU time of the step outside every traced op event (bench.py adds this row).
UNTRACED = "not in any op's trace events (mostly convolutions run in Eigen's thread pool)"
_CONTROL_FLOW = {"while", "conditional", "call"}  # their events enclose their bodies' ops


def _tables(hlo_text: str) -> dict[str, dict[int, str]]:
    """The FileNames / FunctionNames / FileLocations / StackFrames tables of compiled HLO."""
    tables, current = {}, None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        match = re.match(r"^(\d+) (.*)$", line) if current is not None else None
        if match:
            current[int(match.group(1))] = match.group(2)
        elif line.strip() == "" or line.startswith("%") or line.startswith("ENTRY"):
            current = None if line.strip() else current
    return tables


def _stack(frame_id: int, tables: dict) -> list[tuple[str, str]]:
    """(file, function) of every frame from ``frame_id`` up to the root."""
    frames, locations = tables.get("StackFrames", {}), tables.get("FileLocations", {})
    files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
    out, seen = [], set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        fields = dict(re.findall(r"(\w+)=(\d+)", frames[frame_id]))
        location = dict(re.findall(r"(\w+)=(\d+)", locations.get(int(fields["file_location_id"]),
                                                                     "")))
        out.append((files.get(int(location.get("file_name_id", 0)), "").strip('"'),
                    functions.get(int(location.get("function_name_id", 0)), "").strip('"')))
        frame_id = int(fields.get("parent_frame_id", 0))
    return out


def part_of(op_name: str, stack: list[tuple[str, str]]) -> str:
    """The model part an op belongs to (see the module docstring)."""
    functions = {function for _, function in stack}
    for part, names in _BY_FUNCTION:
        if functions & names:
            return part
    if any("/mal/" in path for path, _ in stack):
        return "MAL (hints, distillation, balancing)"
    for (method, module), part in _BY_NETWORK:
        if method in functions and f"/{module}/" in f"/{op_name}/":
            return part
    for module, part in _BY_MODULE:
        if re.search(rf"\b{module}\b", op_name):
            return part
    if any(path.endswith("geometry.py") for path, _ in stack):
        return "projection and poses"
    if any(path.endswith(("losses.py", "objective.py")) for path, _ in stack):
        return "other losses (L1, masks, smoothness, resizing)"
    if "train_step" in functions:
        return "optimizer and state update"
    return "other"


def op_parts(hlo_text: str) -> dict[str, tuple[str, bool]]:
    """Instruction name -> (part, is_backward) for every op of compiled HLO text; control-flow
    ops (whose profiler events enclose their bodies) are left out."""
    tables = _tables(hlo_text)
    out = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(.*metadata=\{([^}]*)\}")
    for line in hlo_text.splitlines():
        match = pattern.match(line)
        if not match or match.group(2) in _CONTROL_FLOW:
            continue
        metadata = match.group(3)
        op_name = re.search(r'op_name="([^"]*)"', metadata)
        frame = re.search(r"stack_frame_id=(\d+)", metadata)
        op_name = op_name.group(1) if op_name else ""
        stack = _stack(int(frame.group(1)), tables) if frame else []
        out[match.group(1)] = (part_of(op_name, stack), "transpose(" in op_name)
    return out


def traced_op_seconds(call, steps: int) -> dict[str, float]:
    """Seconds per call spent in each HLO op while running ``call()`` ``steps`` times."""
    directory = tempfile.mkdtemp(prefix="mal_jax_profile_")
    with jax.profiler.trace(directory):
        for _ in range(steps):
            jax.block_until_ready(call())
    path = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[stats["hlo_op"]] += event.duration_ns * 1e-9 / steps
    return dict(totals)


def profile_compiled(compiled, call, steps: int) -> list[dict]:
    """Rows ``{part, forward_s, backward_s, total_s, share}`` per model part, largest first,
    for a compiled step (``compiled.as_text()`` gives the attribution) run by ``call()``."""
    parts = op_parts(compiled.as_text())
    seconds = traced_op_seconds(call, steps)
    rows = collections.defaultdict(lambda: [0.0, 0.0])
    for op, value in seconds.items():
        part, backward = parts.get(op, (NO_SOURCE, False))
        rows[part][int(backward)] += value
    total = sum(sum(pair) for pair in rows.values()) or 1.0
    table = [{"part": part, "forward_s": fwd, "backward_s": bwd, "total_s": fwd + bwd,
              "share": (fwd + bwd) / total} for part, (fwd, bwd) in rows.items()]
    return sorted(table, key=lambda row: -row["total_s"])


def with_untraced_time(rows: list[dict], cpu_s: float) -> list[dict]:
    """``rows`` plus a row for the process CPU time per step that no traced op accounts for,
    with shares of ``cpu_s``. On XLA:CPU that is mostly the convolutions' work in Eigen's
    thread pool: its tasks carry no op name in the trace."""
    traced = sum(row["total_s"] for row in rows)
    rows = rows + [{"part": UNTRACED, "forward_s": 0.0, "backward_s": 0.0,
                    "total_s": max(cpu_s - traced, 0.0)}]
    total = max(cpu_s, traced) or 1.0
    return sorted(({**row, "share": row["total_s"] / total} for row in rows),
                  key=lambda row: -row["total_s"])


def markdown_table(rows: list[dict]) -> str:
    """The README's profile table."""
    lines = ["| part | forward ms | backward ms | total ms | share |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['part']} | {1e3 * row['forward_s']:.0f} | "
                     f"{1e3 * row['backward_s']:.0f} | {1e3 * row['total_s']:.0f} | "
                     f"{100 * row['share']:.1f}% |")
    total = sum(row["total_s"] for row in rows)
    lines.append(f"| all (CPU time summed over threads) |  |  | {1e3 * total:.0f} | 100% |")
    return "\n".join(lines)
