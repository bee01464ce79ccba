"""MAL's ablation on the embedded scenes (``python -m mal_jax.studies.ablation``), sized for a CPU.

One ManyDepth is pretrained from random weights (or, with ``ablation.start_workdir``, the
converged ManyDepth of ``mal_jax.studies.converge`` is loaded), then for every seed the six
rows of ``mal_jax.studies.ablation_rows.ROWS`` fine-tune it with the MAL parts of that row, as
the MAL paper fine-tunes a trained ManyDepth. The image size and bin count are reduced from the
paper's so that the whole ablation (two seeds: one pretraining, twelve fine-tunings, thirteen
evaluations) fits in about 2.5 hours on 2 CPU cores; the fine-tuning part (rate, teacher kept
training, MAL settings) is MAL's published recipe (its README commands; rows switch its parts).

No ImageNet weights can be downloaded here, and from random weights the photometric loss
leaves the depth/translation scale free: it drifts until depth saturates at ``min_depth`` and
the gradients vanish (measured: bins 0.1-0.4 m after 340 steps). Every run therefore adds
PackNet-SfM's velocity loss on the pose network (``loss.velocity_weight``), the same in every
row; it touches only the translation length, not the moving objects MAL is about.
"""

import ml_collections

from configs import default


def get_config():
    config = default.get_config()  # MAL parts: set per row by mal_jax.studies.ablation
    config.data.height = 64  # pixels (paper: 192)
    config.data.width = 192  # pixels (paper: 640)
    config.data.num_train_samples = 600  # fine-tuning triplets (embedded split: 4400)
    config.data.num_eval_samples = 320  # the whole embedded test split
    config.model.num_depth_bins = 32  # cost-volume hypotheses (paper: 96)
    config.loss.velocity_weight = 1.0  # velocity loss, every phase and row (paper: 0, off)
    # Fresh pose network driving forward, fresh depth at 10 m (paper: 0, 0 = random init):
    # without them the pose network of some seeds settled sideways and their depth went
    # constant (README, Default run). The embedded camera drives 0.5-1.5 m per frame.
    config.model.init_forward_motion = 1.0  # metres per frame
    config.model.init_depth = 10.0  # metres
    config.training.image_every_steps = 0  # no image summaries: keeps the runs fast
    config.training.checkpoint_every_steps = 150  # steps (one epoch at 600 triplets, batch 4)
    config.training.lr_decay_epoch = -1  # constant rate while fine-tuning, as mal_finetune.py
    config.training.freeze_teacher_epoch = -1  # teacher and pose keep training, as in MAL
    config.evaluation.write_images = 3  # example PNGs per run (input, disparity, error)

    ablation = config.ablation = ml_collections.ConfigDict()
    ablation.seeds = (0, 1)  # fine-tuning seeds: data order, augmentation (issue: >= 2)
    # The start every seed fine-tunes (-1: each seed its own): one start shared, like the MAL
    # paper's start from released ManyDepth. (Before the starting priors above, seeds 1 and 2
    # of the pretraining drifted to the far end; README, Default run.)
    ablation.pretrain_seed = 0
    # A training workdir to fine-tune instead of pretraining here ("" = pretrain; "{seed}"
    # stands for the start seed above): the converged ManyDepth of the converge study,
    # W/seed_{seed}, as MAL fine-tunes a converged model (README, The comparison rerun).
    ablation.start_workdir = ""
    ablation.pretrain_num_train_samples = 1800  # pretraining triplets (the first of the split)
    ablation.pretrain_epochs = 2  # ManyDepth from random weights, epochs of those triplets
    ablation.pretrain_learning_rate = 1e-4  # Adam rate of the pretraining (paper: 1e-4)
    ablation.finetune_epochs = 2  # fine-tuning epochs per row (MAL's lambda: 3, then 1.5)
    return config
