"""Train ManyDepth (+ MAL): ``python train.py --config=configs/default.py --workdir=DIR``.

Resumes automatically from the latest checkpoint in ``--workdir``. Any config field can be
overridden, e.g. ``--config.training.batch_size=8``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdir/default", "Checkpoints, summaries and results go here.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize()
    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache
    from mal_jax.train.trainer import train_and_evaluate

    compilation_cache.enable()
    hide_gpus_from_tf()
    logging.info("JAX devices: %s", jax.devices())
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
