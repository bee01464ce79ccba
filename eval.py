"""Evaluate a checkpoint: ``python eval.py --config=configs/default.py --workdir=DIR``.

Loads the latest checkpoint of a training ``--workdir``, or a converted ManyDepth .pth folder
given as ``--weights_folder``, evaluates the multi-frame model and the teacher under
``config.evaluation.protocol`` and writes ``eval_results.json`` / ``eval_results.md`` (plus
``eval_images/`` PNGs) into ``--out`` (default: the workdir). The image size is the
checkpoint's training size; any config field can be overridden, e.g.
``--config.evaluation.protocol=kitti_eigen --config.data.dataset=kitti``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Configuration (data and evaluation).", lock_config=True
)
flags.DEFINE_string("workdir", "", "Training workdir: its latest checkpoint is evaluated.")
flags.DEFINE_string("weights_folder", "", "ManyDepth .pth folder to evaluate instead.")
flags.DEFINE_string("out", "", "Where results go (default: --workdir, else --weights_folder).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkpoint = FLAGS.weights_folder or FLAGS.workdir
    if not checkpoint:
        raise app.UsageError("give --workdir (training run) or --weights_folder (ManyDepth .pth)")
    out_dir = FLAGS.out or FLAGS.workdir or FLAGS.weights_folder
    from mal_jax.data.pipeline import hide_gpus_from_tf
    from mal_jax.train import compilation_cache

    compilation_cache.enable()
    hide_gpus_from_tf()
    from mal_jax.eval import evaluate
    from mal_jax.eval import inference as depth_inference

    try:
        inference = depth_inference.load_inference(checkpoint)
        evaluate.evaluate(inference, FLAGS.config, out_dir, checkpoint=checkpoint)
    except (FileNotFoundError, ValueError, KeyError) as error:
        sys.exit(f"eval.py: {error}")


if __name__ == "__main__":
    app.run(main)
