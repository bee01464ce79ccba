"""How much does the photometric loss say about the depth of objects, with and without MAL's
temporal hints?

The oracle of :mod:`mal_jax.studies.oracle` (ground-truth depth and poses) is run with the
depth of one region multiplied by each factor of ``scales``, everything else exact. Regions:
the pixels of moving objects, and those of static objects (parked cars: instances too, so MAL's
matching and shifting act on them as well). Training lowers depth error where the loss rises
when depth is wrong, so for both losses (2 warped candidates; those plus MAL's 2 synthesized
ones) the sweep reports the region's mean minimum reprojection error per factor and its *depth
signal*, the mean rise over the factors other than 1. The hints only add candidates, so the
minimum can only fall; where a shifted copy lines up an object that a wrong depth put in the
wrong place, they hide the wrong depth as well as the object's motion.

    python -m mal_jax.studies.oracle_depth [--num_samples N] [--height 64 --width 192]
                                   [--scales 0.5,0.7,1,1.4,2] [--json PATH]

Last line: ``static_objects depth_signal baseline=<x> mal=<y>``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mal_jax.core.frames import frame
from mal_jax.data import synthetic
from mal_jax.studies import oracle

REGIONS = ("moving_objects", "static_objects")


def region_mask(batch: dict, region: str) -> np.ndarray:
    """Frame-t pixels (B, H, W) with depth that belong to ``region`` of :data:`REGIONS`."""
    valid = batch["depth_gt"] > 0
    if region == "moving_objects":
        return valid & batch["moving_mask"]
    if region == "static_objects":
        return valid & ~batch["moving_mask"] & (frame(batch["instance_ids"], 0) > 0)
    raise ValueError(f"oracle_depth: unknown region {region!r}, expected one of {REGIONS}")


def scale_depth(batch: dict, where: np.ndarray, scale: float) -> dict:
    """``batch`` with the ground-truth depth multiplied by ``scale`` where ``where`` is set."""
    depth = np.where(where, batch["depth_gt"] * scale, batch["depth_gt"])
    return dict(batch, depth_gt=depth.astype(batch["depth_gt"].dtype))


@jax.jit
def _region_sums(batch: dict, where: jax.Array) -> jax.Array:
    """(B, 3): pixels of ``where`` and their summed baseline and MAL errors."""
    maps = oracle.oracle_maps(batch)
    return jnp.stack([jnp.sum(jnp.where(where, value, 0.0), axis=(1, 2))
                      for value in (1.0, maps["baseline"], maps["mal"])], axis=-1)


def depth_signal(errors, scales) -> float:
    """Mean rise of ``errors`` (one per factor of ``scales``) over the error at factor 1."""
    scales = [float(s) for s in scales]
    reference = errors[scales.index(1.0)]
    return float(np.mean([e - reference for s, e in zip(scales, errors, strict=True) if s != 1.0]))


def depth_sweep(scales, split: str = "test", num_samples: int | None = None, *,
                height: int = 64, width: int = 192, batch_size: int = 8) -> dict:
    """Per region: mean baseline and MAL errors per factor of ``scales``, and depth signals."""
    scales = [float(s) for s in scales]
    if 1.0 not in scales or len(scales) < 2 or min(scales) <= 0:
        raise ValueError(f"oracle_depth: scales must be positive and hold 1 and another "
                         f"factor, got {scales}")
    split = synthetic.canonical_split(split)
    count = synthetic.DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
    totals = np.zeros((len(REGIONS), len(scales), 3))
    for batch, real in oracle.iter_batches(split, count, batch_size, height=height,
                                           width=width):
        for r, region in enumerate(REGIONS):
            where = region_mask(batch, region)
            for s, scale in enumerate(scales):
                sums = jax.device_get(_region_sums(scale_depth(batch, where, scale), where))
                totals[r, s] += np.asarray(sums, np.float64)[:real].sum(0)
    result = {"scales": scales, "num_samples": count, "split": split,
              "height": height, "width": width}
    for r, region in enumerate(REGIONS):
        pixels = totals[r, :, 0]
        errors = {loss: (totals[r, :, k] / pixels).tolist()
                  for k, loss in ((1, "baseline"), (2, "mal"))}
        result[region] = {
            "pixels": int(pixels[0]),
            **errors,
            **{f"depth_signal_{loss}": depth_signal(values, scales)
               for loss, values in errors.items()},
        }
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="first N samples of the split (default: the whole split)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--scales", default="0.5,0.7,1,1.4,2",
                        help="comma-separated factors on the region's depth")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    sweep = depth_sweep([float(s) for s in args.scales.split(",")], args.split,
                        args.num_samples, height=args.height, width=args.width)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(sweep, indent=2, sort_keys=True) + "\n")
    print(f"oracle_depth split={sweep['split']} size={args.height}x{args.width} "
          f"samples={sweep['num_samples']}")
    for region in REGIONS:
        numbers = sweep[region]
        for scale, base, mal in zip(sweep["scales"], numbers["baseline"], numbers["mal"],
                                    strict=True):
            print(f"{region} depth x{scale:g}: baseline={base:.5f} mal={mal:.5f}")
    for region in REGIONS:
        numbers = sweep[region]
        print(f"{region} depth_signal baseline={numbers['depth_signal_baseline']:.5f} "
              f"mal={numbers['depth_signal_mal']:.5f}")


if __name__ == "__main__":
    main()
