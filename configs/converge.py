"""A converged ManyDepth on the embedded scenes, from random weights (``mal_jax.studies.converge``).

The start MAL fine-tunes (issue #10, part 2): ManyDepth alone (every MAL part off), trained
from random weights on the embedded training split at the ablation's size, with the velocity
loss pinning the metric scale (configs/ablation.py says why). Each seed of ``converge.seeds``
is its own run; the study trains them in turns and writes the AbsRel-vs-step curves.
"""

import ml_collections

from configs import ablation


def get_config():
    config = ablation.get_config()  # 64x192, 32 bins, velocity loss, teacher keeps training
    del config["ablation"]
    for part in ("temporal", "main_temporal", "distil", "ensemble", "loss_balance"):
        config.mal[part] = False  # ManyDepth alone (paper: ManyDepth's own training)
    config.data.num_train_samples = 4400  # the whole embedded training split (triplets)
    config.data.num_eval_samples = 320  # the whole embedded test split
    # Epochs of 1100 steps at batch 4 (paper: 20 on KITTI). Measured (2026-12-06/08): test AbsRel
    # plateaus at 0.14-0.21 from step ~2200 at the full rate, so the rate drops after epoch 4
    # (ManyDepth: after 15 of 20); that takes both networks of both seeds to 0.149-0.159 within
    # 550 steps. The four epochs at 1e-5 after it do not descend further (seed 0 0.144-0.151,
    # seed 1 0.150-0.165; README, The converged start): they are kept as the start's schedule.
    config.training.num_epochs = 8
    config.training.learning_rate = 1e-4  # Adam (paper: 1e-4)
    config.training.lr_decay_epoch = 4
    # Linear warmup of the rate over the first steps (paper: none). Measured on seed 1
    # (2026-12-06): 500 steps only delay the depth-scale jump that sends the teacher to the
    # far end (from step ~50 to ~230), so it stays off; see the README, Default run.
    config.training.warmup_steps = 0
    config.training.checkpoint_every_steps = 550  # steps; one turn of the study
    config.training.keep_checkpoints = 2
    config.evaluation.write_images = 3  # example PNGs of the latest evaluation

    converge = config.converge = ml_collections.ConfigDict()
    converge.seeds = (0, 1)  # runs from random weights (issue: every seed, same basin)
    converge.chunk_steps = 550  # steps each seed trains per turn; evaluated after each turn
    converge.target_abs_rel = 0.15  # issue #10: both networks, all pixels, every seed
    return config
