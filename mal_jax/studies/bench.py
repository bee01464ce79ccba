"""Train-step benchmark of the KITTI model (ResNet-18, 96 bins) on random frames.

    python -m mal_jax.studies.bench --height 192 --width 640 --batch_size 12 --steps 10 [--no_mal]

Prints compile time, median step time, images/s and peak memory (device allocator where it
reports one, otherwise the process's peak resident memory); the last line is
``step_s <median seconds>``. Frames are random, with a few rectangular instances per frame
that move between frames, so MAL's matching and synthesis do real work.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import jax
import numpy as np

from configs import kitti_mal
from mal_jax.data.synthetic import intrinsics_pyramid
from mal_jax.train import trainer
from mal_jax.train.state import create_state, learning_rate_schedule, make_optimizer
from mal_jax.train.step import initial_balance, make_train_step, step_settings


def random_batch(batch_size: int, height: int, width: int, max_instances: int,
                 seed: int = 0) -> dict:
    """A training batch in the common format: noise frames, KITTI intrinsics, moving boxes."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(size=(batch_size, 3, height, width, 3)).astype(np.float32)
    ids = np.zeros((batch_size, 3, height, width), np.int32)
    classes = np.full((batch_size, 3, max_instances), -1, np.int32)
    scores = np.zeros((batch_size, 3, max_instances), np.float32)
    for b in range(batch_size):
        for slot in range(min(3, max_instances)):
            box_h, box_w = height // 6, width // 10
            top = rng.integers(0, height - box_h)
            left = rng.integers(width // 10, width - 2 * box_w)
            for f, shift in enumerate((-width // 80, 0, width // 80)):
                ids[b, f, top:top + box_h, left + shift:left + shift + box_w] = slot + 1
                classes[b, f, slot], scores[b, f, slot] = 0, 1.0
    K, inv_K = intrinsics_pyramid(height, width)
    return {
        "frames": frames, "frames_aug": frames,
        "K": np.broadcast_to(K, (batch_size,) + K.shape).copy(),
        "inv_K": np.broadcast_to(inv_K, (batch_size,) + inv_K.shape).copy(),
        "instance_ids": ids, "instance_class": classes, "instance_score": scores,
    }


def peak_memory_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def benchmark(height: int, width: int, batch_size: int, steps: int, mal: bool) -> dict:
    config = kitti_mal.get_config()
    config.data.height, config.data.width = height, width
    config.training.batch_size = batch_size
    if not mal:
        for part in ("temporal", "main_temporal", "distil", "ensemble", "loss_balance"):
            config.mal[part] = False
    model = trainer.build_model(config)
    settings = step_settings(config, steps_per_epoch=1000)
    schedule = learning_rate_schedule(1e-4, 0, 1.0)
    optimizer = make_optimizer(schedule)
    variables = jax.jit(lambda key: model.init(key, height, width))(jax.random.PRNGKey(0))
    state = jax.tree.map(np.array, create_state(variables, optimizer, 0.1, 10.0,
                                                initial_balance(settings), 0))
    mesh = trainer.make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    step = jax.jit(make_train_step(model, optimizer, schedule, settings, frozen=False),
                   in_shardings=(replicated, data, replicated), donate_argnums=0)
    state = jax.device_put(state, replicated)
    batch = trainer.shard_batch(random_batch(batch_size, height, width,
                                             config.data.max_instances), data)
    rng = jax.random.PRNGKey(1)
    tic = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - tic
    times = []
    for index in range(steps + 1):
        tic = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.fold_in(rng, index))
        jax.block_until_ready((state, metrics))
        if index:  # the first call pays one-off allocation costs
            times.append(time.perf_counter() - tic)
    peak, peak_kind = peak_memory_bytes()
    median = float(np.median(times))
    return {"compile_s": compile_s, "step_s": median, "images_per_s": batch_size / median,
            "peak_bytes": peak, "peak_kind": peak_kind, "loss": float(metrics["loss"]),
            "device": jax.devices()[0].device_kind, "num_devices": jax.device_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no_mal", action="store_true", help="plain ManyDepth losses")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.height % 32 or args.width % 32:
        parser.error(f"--height/--width must be multiples of 32, got {args.height}x{args.width}")
    result = benchmark(args.height, args.width, args.batch_size, args.steps, not args.no_mal)
    print(f"device: {result['num_devices']} x {result['device']}")
    print(f"model: ResNet-18, 96 bins, {'ManyDepth' if args.no_mal else 'ManyDepth+MAL'}, "
          f"{args.batch_size}x{args.height}x{args.width}")
    print(f"compile_s {result['compile_s']:.1f}")
    print(f"images_per_s {result['images_per_s']:.2f}")
    print(f"peak_memory_gib {result['peak_bytes'] / 2**30:.2f} ({result['peak_kind']})")
    print(f"step_s {result['step_s']:.4f}")
    if args.json:
        settings = {"height": args.height, "width": args.width, "batch_size": args.batch_size,
                    "steps": args.steps, "mal": not args.no_mal}
        with open(args.json, "w") as handle:
            json.dump({**settings, **result}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
