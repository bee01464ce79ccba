"""Devices and processes: the data mesh, host-local batches to global arrays, multi-host
start-up, and the startup line saying where training runs.

Multi-host runs (several processes, e.g. one per GPU node or TPU host) call
:func:`initialize` before anything touches a device. Every process runs the same program on
its own shard of the data; outputs fetched to the host are replicated, so ``device_get`` works
on every process; files are written by process 0 (``mal_jax.train.workdir``).
"""

from __future__ import annotations

import glob
import logging
import shutil

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
    """``jax.distributed.initialize`` with explicit settings where given; the rest (all, on
    TPU pods, SLURM or Open MPI clusters) is detected from the environment by JAX."""
    kwargs = {}
    if coordinator_address:
        kwargs["coordinator_address"] = coordinator_address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    # Collectives between CPU processes need an implementation (CPU clusters, the tests);
    # the setting touches only the CPU backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # No persistent compilation cache across processes: with executables of the train step
    # already in the cache, the two CPU processes of tests/test_multihost.py aborted in gloo
    # with mismatched collective sizes (3 runs of 3, 2026-12-06), while a run that found the
    # cache empty passed. Every process compiles its own programs instead.
    jax.config.update("jax_enable_compilation_cache", False)
    jax.distributed.initialize(**kwargs)


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU (driver device files or nvidia-smi)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def describe_devices() -> str:
    """One line: which devices this run uses, over how many processes."""
    devices = jax.devices()
    kinds = sorted({device.device_kind for device in devices})
    return (f"training on {len(devices)} {jax.default_backend()} device(s) ({', '.join(kinds)}),"
            f" {jax.local_device_count()} local to process {jax.process_index()} of "
            f"{jax.process_count()}")


def report_devices() -> None:
    """Log the device line; warn when a GPU is visible but JAX runs on the CPU (the CPU
    jaxlib is installed, or the CUDA plugin failed to load)."""
    logging.info("%s", describe_devices())
    if jax.default_backend() == "cpu" and gpu_visible():
        logging.warning("a GPU is visible on this machine but JAX runs on the CPU: install the "
                        "CUDA build with pip install -e '.[cuda]' (README, Quick start), and "
                        "check that JAX_PLATFORMS does not force cpu")


def make_mesh(devices=None) -> Mesh:
    """A one-axis ``"data"`` mesh over ``devices`` (default: all, of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def shard_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch -> global array split over the mesh's data axis."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in batch.items()}


def local_copy(tree):
    """Replicated global arrays -> this process's copy on its first local device (for
    single-device programs run by one process: no collectives, nothing to agree on)."""
    return jax.tree.map(lambda leaf: leaf.addressable_shards[0].data, tree)


def replicate(tree, sharding: NamedSharding):
    """Host values (equal on every process) -> global arrays replicated over ``sharding``.
    Distinct buffers per leaf: the step donates the state, and a leaf shared by two fields
    (e.g. one zeros array) cannot be donated twice."""

    def put(leaf):
        host = np.array(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
