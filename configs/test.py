"""Tiny configuration used by the tests: seconds per step on a CPU, the published recipe's
code paths on (student hints, an option, are tested in tests/test_mal_losses.py)."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.height = 64  # pixels (multiple of 32)
    config.data.width = 96  # pixels (multiple of 32)
    config.data.max_instances = 4  # instance slots
    config.data.num_train_samples = 8  # triplets: 4 steps per epoch at batch 2
    config.data.num_eval_samples = 4  # test samples
    config.model.num_depth_bins = 16  # cost-volume bins (paper: 96)
    config.training.batch_size = 2
    config.training.num_epochs = 1
    config.training.freeze_teacher_step = 3  # exercise both step variants
    config.training.lr_decay_epoch = 1  # exercise the schedule (decays after the last step)
    config.training.log_every_steps = 1
    config.training.image_every_steps = 2
    config.training.checkpoint_every_steps = 2
    config.training.keep_checkpoints = 2
    config.evaluation.batch_size = 2
    config.evaluation.write_images = 1
    return config
