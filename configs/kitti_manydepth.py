"""ManyDepth on KITTI raw (Eigen-Zhou split), the paper's setting.

Set ``--config.data.root``, ``--config.data.train_split_file`` (ManyDepth's
splits/eigen_zhou/train_files.txt), ``--config.data.eval_split_file`` and
``--config.data.gt_depth_file`` (from ``python -m mal_jax.data.kitti_gt``).
"""

from configs import manydepth_baseline


def get_config():
    config = manydepth_baseline.get_config()
    config.data.dataset = "kitti"
    config.data.img_ext = ".jpg"  # ManyDepth trains on jpg (its --png flag off)
    config.data.height = 192  # pixels (paper: 192)
    config.data.width = 640  # pixels (paper: 640)
    config.data.max_instances = 16  # slots (unused without MAL; keeps one batch signature)
    config.model.num_depth_bins = 96  # (paper: 96)
    # The paper's start: the reference's initialisation (ImageNet encoders through
    # --config.model.imagenet_weights); the embedded scenes' aids off (paper: 0, 0, 0).
    config.model.init_forward_motion = 0.0  # metres per frame
    config.model.init_depth = 0.0  # metres
    config.loss.velocity_weight = 0.0  # needs true poses, which KITTI has not
    config.training.batch_size = 12  # (paper: 12)
    config.training.num_epochs = 20  # (paper: 20)
    config.training.learning_rate = 1e-4  # (paper: 1e-4)
    config.training.lr_decay_epoch = 15  # x0.1 from epoch 15 (paper: scheduler_step_size 15)
    config.training.freeze_teacher_epoch = 15  # (paper: 15)
    config.training.log_every_steps = 250
    config.training.image_every_steps = 2000
    config.training.checkpoint_every_steps = 2000
    config.evaluation.protocol = "kitti_eigen"  # Garg crop, median scaling, depth range 0.1-100
    config.evaluation.batch_size = 16
    return config
