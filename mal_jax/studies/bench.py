"""Train-step and evaluation benchmark of the KITTI model (ResNet-18, 96 bins) on random frames.

    python -m mal_jax.studies.bench --height 96 --width 320 --batch_size 4 --steps 5 \\
        [--no_mal] [--compile_twice] [--profile] [--json FILE]

Prints the train step's compile time (with ``--compile_twice``: first in a child process with an
empty compilation cache, then again here from that cache), median step time, training and
evaluation images/s and peak memory (device allocator where it reports one, otherwise the
process's peak resident memory); ``--profile`` adds the table of where the step's time goes
(``mal_jax.studies.profile_step``), printed after the line ``step_s <median seconds>``. Frames are
random, with a few rectangular instances per frame that move between frames, so MAL's matching
and synthesis do real work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from configs import kitti_mal
from mal_jax import xla_cpu
from mal_jax.data.synthetic import intrinsics_pyramid
from mal_jax.eval.inference import make_batch_predictor
from mal_jax.studies import profile_step
from mal_jax.train import compilation_cache, distributed, trainer
from mal_jax.train.checkpointing import InferenceModel
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


def _process_usage() -> np.ndarray:
    """(user + system CPU s, system CPU s, minor page faults) of this process so far, all
    threads. System time and faults show what the step's fresh memory costs: XLA:CPU
    allocates the step's temporaries anew every call, and the kernel zeroes each new page."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt],
                    np.float64)


def peak_memory_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def _count_cache_hits() -> list[int]:
    """A one-element counter of persistent-cache hits from now on (JAX monitoring events)."""
    hits = [0]

    def listener(event: str, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits[0] += 1

    jax.monitoring.register_event_listener(listener)
    return hits


def build_step(height: int, width: int, batch_size: int, mal: bool):
    """(model, jitted step, state, batch, config) for the KITTI model on random frames."""
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
    mesh = distributed.make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    step = jax.jit(make_train_step(model, optimizer, schedule, settings, frozen=False),
                   in_shardings=(replicated, data, replicated), donate_argnums=0)
    state = jax.device_put(state, replicated)
    batch = distributed.shard_batch(random_batch(batch_size, height, width,
                                             config.data.max_instances), data)
    return model, step, state, batch, variables


def compile_step(step, state, batch) -> tuple:
    """(compiled step, seconds from tracing to executable, persistent-cache hits)."""
    hits = _count_cache_hits()
    tic = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.PRNGKey(1)).compile()
    return compiled, time.perf_counter() - tic, hits[0]


def eval_images_per_s(model, variables, height: int, width: int, batch_size: int,
                      steps: int) -> float:
    """Images/s of the jitted batched evaluation forward (both networks, as ``eval.py``)."""
    inference = InferenceModel(model, variables, 0.1, 10.0, height, width)
    predict = make_batch_predictor(inference, 1e-3, 80.0, batch_size)
    K, inv_K = intrinsics_pyramid(height, width)
    frames = np.random.default_rng(2).uniform(size=(batch_size, 2, height, width, 3))
    batch = {"frames": frames.astype(np.float32),
             "K": np.broadcast_to(K, (batch_size,) + K.shape),
             "inv_K": np.broadcast_to(inv_K, (batch_size,) + inv_K.shape)}
    predict(batch)  # compile
    tic = time.perf_counter()
    for _ in range(steps):
        predict(batch)
    return batch_size * steps / (time.perf_counter() - tic)


def benchmark(height: int, width: int, batch_size: int, steps: int, mal: bool):
    """The figures (dict) and a function that profiles the compiled step (table rows)."""
    model, step, state, batch, variables = build_step(height, width, batch_size, mal)
    compiled, compile_s, hits = compile_step(step, state, batch)
    rng = jax.random.PRNGKey(1)
    times, usage = [], np.zeros(3)
    for index in range(steps + 1):
        tic, usage_tic = time.perf_counter(), _process_usage()
        state, metrics = compiled(state, batch, jax.random.fold_in(rng, index))
        jax.block_until_ready((state, metrics))
        if index:  # the first call pays one-off allocation costs
            times.append(time.perf_counter() - tic)
            usage += _process_usage() - usage_tic
    median = float(np.median(times))
    cpu_seconds, sys_seconds, page_faults = usage / steps
    tic = time.perf_counter()
    distributed.shard_batch(random_batch(batch_size, height, width, 8), batch["frames"].sharding)
    result = {"compile_s": compile_s, "compile_cache_hits": hits, "step_s": median,
              "cpu_s_per_step": cpu_seconds, "sys_s_per_step": sys_seconds,
              "page_faults_per_step": page_faults,
              "images_per_s": batch_size / median,
              "batch_to_device_s": time.perf_counter() - tic,
              "loss": float(metrics["loss"]), "device": jax.devices()[0].device_kind,
              "num_devices": jax.device_count(), "malloc": xla_cpu.allocator_in_use()}
    result["eval_images_per_s"] = eval_images_per_s(model, variables, height, width,
                                                    batch_size, steps)
    result["peak_bytes"], result["peak_kind"] = peak_memory_bytes()
    holder = {"state": state}

    def call():
        holder["state"], out = compiled(holder["state"], batch, rng)
        return out

    return result, lambda: profile_step.with_untraced_time(
        profile_step.profile_compiled(compiled, call, steps), result["cpu_s_per_step"])


def compile_in_child(args, cache_dir: str) -> dict:
    """Compile the step in a fresh process with ``cache_dir``; its figures and cache entry."""
    before = set(os.listdir(cache_dir))
    command = [sys.executable, "-m", "mal_jax.studies.bench", "--compile_only",
               "--cache_dir", cache_dir, "--height", str(args.height), "--width",
               str(args.width), "--batch_size", str(args.batch_size)]
    command += ["--no_mal"] if args.no_mal else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench: the compile-only child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["new_cache_entries"] = sorted(set(os.listdir(cache_dir)) - before)
    return result


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no_mal", action="store_true", help="plain ManyDepth losses")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("--cache_dir", default="",
                        help="compilation cache directory (default: $MAL_JAX_CACHE or "
                             "~/.cache/mal_jax_xla)")
    parser.add_argument("--compile_twice", action="store_true",
                        help="compile first in a child process with an empty cache, then here "
                             "from that cache (compile_first_s, compile_s)")
    parser.add_argument("--compile_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true",
                        help="also print where the step's time goes, per model part")
    args = parser.parse_args(argv)
    if args.height % 32 or args.width % 32:
        parser.error(f"--height/--width must be multiples of 32, got {args.height}x{args.width}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    first = None
    if args.compile_twice:
        args.cache_dir = tempfile.mkdtemp(prefix="mal_jax_bench_cache_")
        first = compile_in_child(args, args.cache_dir)
    compilation_cache.enable(args.cache_dir or None)
    if args.compile_only:
        *_, compile_s, hits = compile_step(*build_step(args.height, args.width,
                                                       args.batch_size, not args.no_mal)[1:4])
        print(json.dumps({"compile_s": compile_s, "compile_cache_hits": hits}))
        return 0
    result, profile = benchmark(args.height, args.width, args.batch_size, args.steps,
                                not args.no_mal)
    if first is not None:
        result["compile_first_s"] = first["compile_s"]
        result["cache_entries_written_by_first"] = first["new_cache_entries"]
    print(f"device: {result['num_devices']} x {result['device']}; malloc: {result['malloc']}")
    print(f"model: ResNet-18, 96 bins, {'ManyDepth' if args.no_mal else 'ManyDepth+MAL'}, "
          f"{args.batch_size}x{args.height}x{args.width}")
    if first is not None:
        print(f"compile_first_s {first['compile_s']:.1f} (empty cache, child process)")
    print(f"compile_s {result['compile_s']:.1f} (persistent-cache hits: "
          f"{result['compile_cache_hits']})")
    print(f"images_per_s {result['images_per_s']:.2f}")
    print(f"eval_images_per_s {result['eval_images_per_s']:.2f}")
    print(f"peak_memory_gib {result['peak_bytes'] / 2**30:.2f} ({result['peak_kind']})")
    print(f"cpu_s_per_step {result['cpu_s_per_step']:.3f} (process CPU time, all threads; "
          f"system {result['sys_s_per_step']:.3f} s, "
          f"{result['page_faults_per_step']:.0f} minor page faults)")
    print(f"step_s {result['step_s']:.4f}", flush=True)
    if args.profile:  # after the figures: tracing a long step takes a while
        result["profile"] = profile()
        print(profile_step.markdown_table(result["profile"]))
    if args.json:
        settings = {"height": args.height, "width": args.width, "batch_size": args.batch_size,
                    "steps": args.steps, "mal": not args.no_mal}
        with open(args.json, "w") as handle:
            json.dump({**settings, **result}, handle, indent=1)
    return 0


if __name__ == "__main__":
    xla_cpu.restart_with_fast_allocator()  # as train.py: the step is timed as training runs it
    sys.exit(main())
