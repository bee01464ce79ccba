"""How far bfloat16 compute moves the networks' outputs, on a golden file of the reference.

    python -m mal_jax.studies.mixed_precision ../shared/golden/manydepth_mal_96x320.npz

Runs the teacher and the student (multi-frame network; evaluation mode, the golden file's converted
weights and frames) with ``compute_dtype`` float32 and bfloat16 and prints, per output, the
largest absolute difference from the reference's float32 output. These are the tolerances
a bfloat16 run supports (the float32 parity check uses 1e-4 for disparities).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.port.context import EVAL_BINS, Context
from mal_jax.port.golden import EVAL_DISPARITIES, GoldenFile, nchw_to_nhwc


def disparity_errors(ctx: Context, compute_dtype: str) -> dict[str, float]:
    """Max |ours - reference| of the eval-mode disparities, per network and scale."""
    model = dataclasses.replace(ctx.model, compute_dtype=compute_dtype)
    golden = ctx.golden
    pose = jnp.asarray(golden["eval/relative_pose/-1"])
    K2 = ctx.batch["K"][:, 2]

    @jax.jit
    def outputs(variables, colors):
        (teacher, _), _ = model.teacher(variables, colors[0], train=False)
        student = model.student(variables, colors[0], colors[-1][:, None], pose[:, None], K2,
                                jnp.linalg.inv(K2), *EVAL_BINS, train=False)[0][0]
        return {"teacher": teacher, "student": student}

    disparities = jax.device_get(outputs(ctx.variables, ctx.colors))
    errors = {}
    for name in ("teacher", "student"):
        disps = disparities[name]
        for scale in range(4):
            reference = nchw_to_nhwc(golden[f"{EVAL_DISPARITIES[name]}/{scale}"])
            errors[f"{name}/disp_{scale}"] = float(np.max(np.abs(disps[scale] - reference)))
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="golden .npz file (layout: shared/golden/README.md)")
    parser.add_argument("--json", default="", help="also write the errors to this JSON file")
    args = parser.parse_args(argv)
    ctx = Context(GoldenFile(args.path))
    result = {dtype: disparity_errors(ctx, dtype) for dtype in ("float32", "bfloat16")}
    print("max |disparity - reference|   float32   bfloat16")
    for key in result["float32"]:
        print(f"{key:28s} {result['float32'][key]:9.2e} {result['bfloat16'][key]:10.2e}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
