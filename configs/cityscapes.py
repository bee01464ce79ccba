"""ManyDepth + MAL on Cityscapes (ManyDepth's preprocessed triplets), 512x192.

Set ``--config.data.root``, ``train_split_file`` (splits/cityscapes_preprocessed/train_files.txt),
``eval_split_file`` (splits/cityscapes/test_files.txt), ``gt_depth_file`` (folder of ManyDepth's
gt_depths .npy) and ``masks_root``. Turn MAL off with ``--config.mal.temporal=False`` etc.
"""

from configs import kitti_mal


def get_config():
    config = kitti_mal.get_config()
    config.data.dataset = "cityscapes"
    config.data.height = 192  # pixels (paper: 192)
    config.data.width = 512  # pixels (paper: 512)
    config.training.freeze_teacher_epoch = 5  # (paper, Cityscapes: 5)
    # MAL's Cityscapes command has no --step_lr, so its WarmupStepLRScheduler runs: linear
    # warmup from 1e-10 over 500 steps to 1e-4 (MAL, Cityscapes: 500 steps).
    config.training.warmup_steps = 500
    config.evaluation.protocol = "cityscapes_mal"  # ManyDepth's crop, MAL's depth range
    return config
