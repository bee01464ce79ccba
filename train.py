"""Train ManyDepth (+ MAL): ``python train.py --config=configs/default.py --workdir=DIR``.

Resumes automatically from the newest intact checkpoint in ``--workdir``. Any config field can
be overridden, e.g. ``--config.training.batch_size=8``. Runs from any folder (``--config`` is
also looked up relative to the repository). Several hosts: start the same command on each with
``--distributed`` (TPU pods, SLURM and Open MPI are detected) or with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", configs.DEFAULT, "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdir/default", "Checkpoints, summaries and results go here "
                    "(a local path or gs://bucket/path).")
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize(); "
                  "settings not given below are detected from the environment.")
flags.DEFINE_string("coordinator_address", "", "Multi-host: HOST:PORT of process 0's "
                    "coordinator (implies --distributed).")
flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes (0 = detect).")
flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index (-1 = detect).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mal_jax.train import distributed

    if FLAGS.distributed or FLAGS.coordinator_address:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache
    from mal_jax.train.trainer import train_and_evaluate

    compilation_cache.enable()
    hide_gpus_from_tf()
    distributed.report_devices()
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (FileNotFoundError, ValueError) as error:
        logging.error("%s", error)
        sys.exit(f"train.py: {error}")


if __name__ == "__main__":
    from mal_jax import xla_cpu

    xla_cpu.restart_with_fast_allocator()  # CPU: tcmalloc or huge pages for XLA's per-step buffers
    app.run(main, argv=configs.resolve_config_argv(sys.argv))
