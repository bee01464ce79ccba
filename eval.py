"""Evaluate a checkpoint: ``python eval.py --config=configs/default.py --workdir=DIR``.

Loads the latest checkpoint of a training ``--workdir``, or a converted ManyDepth .pth folder
given as ``--weights_folder``, evaluates the student (multi-frame) and the teacher under
``config.evaluation.protocol`` and writes ``eval_results.json`` / ``eval_results.md`` (plus
``eval_images/`` PNGs) into ``--out``; by default ``eval_<protocol>/`` inside the evaluated
folder, so the training run's own final results are never overwritten. The image size is the
checkpoint's training size; any config field can be overridden, e.g.
``--config.evaluation.protocol=kitti_eigen --config.data.dataset=kitti``. Runs from any
folder (``--config`` is also looked up relative to the repository).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import configs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", configs.DEFAULT, "Configuration (data and evaluation).", lock_config=True
)
flags.DEFINE_string("workdir", "", "Training workdir: its latest checkpoint is evaluated.")
flags.DEFINE_string("weights_folder", "", "ManyDepth .pth folder to evaluate instead.")
flags.DEFINE_string("out", "", "Where results go (default: eval_<protocol>/ inside the "
                    "--workdir or --weights_folder).")


def output_folder(checkpoint: str, out: str, protocol: str) -> str:
    """``out`` if given, else ``<checkpoint>/eval_<protocol>``."""
    return out or os.path.join(checkpoint, f"eval_{protocol}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkpoint = FLAGS.weights_folder or FLAGS.workdir
    if not checkpoint:
        raise app.UsageError("give --workdir (training run) or --weights_folder (ManyDepth .pth)")
    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache

    compilation_cache.enable()
    hide_gpus_from_tf()
    from mal_jax.data import registry
    from mal_jax.eval import evaluate
    from mal_jax.eval import inference as depth_inference

    try:
        registry.check_config(FLAGS.config, training=False)
        inference = depth_inference.load_inference(checkpoint)
        out_dir = output_folder(checkpoint, FLAGS.out, FLAGS.config.evaluation.protocol)
        evaluator = evaluate.Evaluator(FLAGS.config, height=inference.height, width=inference.width)
        evaluator.write(inference, evaluator.run(inference, checkpoint=checkpoint), out_dir)
    except (FileNotFoundError, ValueError, KeyError) as error:
        sys.exit(f"eval.py: {error}")


if __name__ == "__main__":
    from mal_jax import xla_cpu

    xla_cpu.restart_with_fast_allocator()  # CPU: tcmalloc or huge pages for XLA's per-step buffers
    app.run(main, argv=configs.resolve_config_argv(sys.argv))
