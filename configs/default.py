"""Default experiment: ManyDepth + MAL on the embedded synthetic driving scenes.

Sized to train on 2 CPU cores in under 30 minutes and end with depth learned from random
weights (README, Default run): 64x192, 32 bins, 1400 steps, the velocity loss and the starting
motion and depth of ``mal_jax.models.init_priors``. Every other config starts from this one
(the KITTI and Cityscapes configs set the paper's sizes and turn those aids off).
Override any field on the command line: ``--config.training.batch_size=4``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = _data_config()
    config.model = _model_config()
    config.loss = _loss_config()
    config.mal = _mal_config()
    config.training = _training_config()
    config.evaluation = _evaluation_config()
    return config


def _data_config() -> ml_collections.ConfigDict:
    """Which frames are read, at what size, and how they are augmented."""
    data = ml_collections.ConfigDict()
    data.dataset = "synthetic"  # synthetic | kitti | cityscapes (paper: kitti)
    data.root = ""  # dataset root folder (kitti/cityscapes; unused for synthetic)
    data.train_split_file = ""  # ManyDepth-format split file for training (kitti/cityscapes)
    data.eval_split_file = ""  # split file for evaluation (kitti/cityscapes)
    data.gt_depth_file = ""  # gt_depths.npz (kitti eval) or folder of .npy (cityscapes eval)
    data.masks_root = ""  # precomputed instance masks (data/README.md); "" = none on disk
    data.img_ext = ".png"  # image extension of the raw frames, .jpg or .png (paper: .jpg)
    data.height = 64  # training image height in pixels, multiple of 32 (paper: 192)
    data.width = 192  # training image width in pixels, multiple of 32 (paper: 640)
    data.max_instances = 8  # instance slots K per frame, static padding (MAL; Mask2Former top-k)
    data.num_train_samples = 2800  # synthetic: training triplets used (full split: 4400)
    data.num_eval_samples = 160  # synthetic: test samples evaluated (full split: 320)
    data.seed = 0  # seed of the synthetic scenes (splits use disjoint seeds internally)
    # Frames t-k, t, t+k of the synthetic scenes (paper: consecutive frames, k=1); a larger k
    # multiplies the motion between them and so the parallax the cost volume can match (README:
    # "Does the student read its cost volume?"). Synthetic data only; others refuse k != 1.
    data.frame_stride = 1
    data.augment = True  # colour jitter (p=0.5) and horizontal flip (p=0.5), as the reference
    # A frame -1/+1 missing at a sequence boundary (kitti; cityscapes evaluation): "black" or
    # "error". "black" (the default) is what the reference's KITTI loader does: a black frame,
    # whose cost-volume pose training zeroes and for which evaluation matches frame 0 against
    # itself (ManyDepth's --static_camera); each case is logged once. "error" refuses instead,
    # naming the file and split line: use it to check that a dataset copy is complete.
    data.missing_neighbour = "black"  # (ManyDepth: black)
    return data


def _model_config() -> ml_collections.ConfigDict:
    """The networks: sizes, depth range, starting weights and compute dtype."""
    model = ml_collections.ConfigDict()
    model.num_layers = 18  # ResNet depth of the student's matching encoder, 18 or 50 (paper: 18)
    model.num_depth_bins = 32  # cost-volume depth hypotheses (paper: 96; KITTI configs: 96)
    model.inverse_depth_bins = False  # bins linear in inverse depth (paper: linear, False)
    model.min_depth = 0.1  # metres; disparity-to-depth range of training (paper: 0.1)
    model.max_depth = 100.0  # metres (paper: 100)
    model.scales = (0, 1, 2, 3)  # decoder output scales (paper: 0..3)
    model.init_min_depth_bin = 0.1  # metres; adaptive-bin tracker start (paper: 0.1)
    model.init_max_depth_bin = 10.0  # metres; adaptive-bin tracker start (paper: 10.0)
    model.weights_folder = ""  # ManyDepth .pth folder to start from ("" = fresh init)
    # Starting points of freshly initialised decoders (mal_jax/models/init_priors.py): the pose
    # network's translation starts this far forward, metres per frame, and both depth
    # decoders' output at init_depth metres (0 = the reference's random init: a small
    # translation in a random direction, depth ~2 * min_depth). From random encoders the pose
    # network otherwise keeps a sideways direction for some seeds and their depth goes
    # constant (README, Default run). On here, for the embedded scenes trained from random
    # weights, whose camera drives 0.5-1.5 m per frame past surfaces at 3-80 m (paper: 0, 0,
    # ImageNet encoders; the KITTI and Cityscapes configs: 0, 0).
    model.init_forward_motion = 1.0  # metres per frame
    model.init_depth = 10.0  # metres
    model.imagenet_weights = ""  # torchvision ResNet .pth state_dict for the encoders ("" = none)
    # Dtype the networks compute in: "float32" or "bfloat16" (parameters, BatchNorm statistics,
    # cost volume, losses and Adam stay float32). Off (float32) by default: the reference is
    # float32, parity is checked in float32, and CPUs gain nothing from bfloat16; on GPU/TPU
    # "bfloat16" halves activation memory (paper: float32).
    model.compute_dtype = "float32"
    return model


def _loss_config() -> ml_collections.ConfigDict:
    """ManyDepth's losses, and the velocity loss the embedded scenes add."""
    loss = ml_collections.ConfigDict()
    loss.disparity_smoothness = 1e-3  # edge-aware smoothness weight (paper: 1e-3; MAL: 1e-3)
    # Decoder scales ManyDepth's loss averages over, a subset of model.scales (paper: 0..3).
    # With any MAL part on, both losses use scale 0 only (MAL's code) unless mal.multi_scale.
    loss.scales = (0, 1, 2, 3)
    loss.automasking = True  # identity-reprojection auto-mask for the teacher (paper: on)
    loss.motion_masking = True  # teacher-vs-cost-volume consistency mask (paper: on)
    loss.matching_augmentation = True  # 25% static camera, 25% zero pose (paper: on)
    # Weight of PackNet-SfM's velocity loss |(|t| - |t_true|)| (metres) on the pose network's
    # translation; needs the true poses (synthetic data only). Pins the scale that training from
    # random weights otherwise lets drift. Part of MAL's balanced "original" loss
    # (mal_jax/mal/loss_balance.py says why). On for the embedded scenes (paper: 0, off;
    # MAL: 0, off; the KITTI and Cityscapes configs: 0).
    loss.velocity_weight = 1.0
    # Each decoder scale's reprojection loss at that scale's own resolution (frames
    # box-downsampled, that level's intrinsics; Monodepth's first version) instead of every
    # scale's depth upsampled to the input resolution (ManyDepth, Monodepth2). An option for
    # training from random weights, where the full-resolution losses leave some seeds in a
    # near, far or constant depth optimum (README, Default run: it rescued 1 of 2 such seeds).
    # Irrelevant under MAL's scale-0 losses. Off everywhere. (paper: False; MAL: False)
    loss.own_resolution_scales = False
    return loss


def _mal_config() -> ml_collections.ConfigDict:
    """MAL's parts and constants; "(MAL: x)" is the published recipe's value."""
    # MAL's published recipe (its README, KITTI and Cityscapes):
    # --loss_blc --load_pretrained --temporal --distil, ensemble on (no --no_ens).
    mal = ml_collections.ConfigDict()
    mal.temporal = True  # temporal hints as extra teacher candidates (MAL: on, --temporal)
    # Temporal hints for the student too. An option, off: --main_temporal is not in the
    # published commands, so the reference forces the student's hints off (MAL: off).
    mal.main_temporal = False
    mal.distil = True  # distillation hints for the student (MAL: on, --distil)
    mal.ensemble = True  # teacher/student mean as a distillation candidate (MAL: on)
    mal.loss_balance = True  # balance original vs distillation losses (MAL: on, --loss_blc)
    mal.multi_scale = False  # MAL losses over loss.scales (MAL: off, scale 0 only)
    mal.score_threshold = 0.9  # min instance score in frame t to be matched (MAL: 0.9)
    # Objects moving < 3 px stay in place (MAL: off; its image synthesis passes replace=False
    # whatever --replace says).
    mal.replace = False
    # MAL's balanced loss is summed once per batch element, i.e. multiplied by the batch size
    # (MAL: on, implicitly). Off here: with Adam the factor changes little, but it makes the
    # loss scale depend on the batch size, which breaks comparisons across batch sizes.
    mal.batch_size_factor = False
    mal.balance_lambda_start = 3.0  # loss-balance lambda at epoch 0 (MAL: 3)
    mal.balance_lambda_step = -1.5  # lambda change per epoch (MAL: -1.5)
    mal.balance_lambda_min = -3.0  # lambda floor (MAL: -3)
    return mal


def _training_config() -> ml_collections.ConfigDict:
    """Optimizer, schedule, teacher freezing and the logging/checkpoint cadence."""
    training = ml_collections.ConfigDict()
    training.batch_size = 4  # global batch size, split over devices (paper: 12)
    training.num_epochs = 2  # epochs over num_train_samples (paper: 20)
    training.learning_rate = 1e-4  # Adam learning rate (paper: 1e-4)
    training.lr_decay_epoch = 15  # multiply the rate by lr_decay_factor from this epoch (paper: 15)
    training.lr_decay_factor = 0.1  # (paper: 0.1)
    training.freeze_teacher_epoch = 15  # teacher and pose stop training at this epoch (paper: 15)
    training.freeze_teacher_step = -1  # or at this step (>= 0 overrides the epoch)
    training.seed = 0  # rng seed: initialisation, augmentation, data order
    training.log_every_steps = 10  # scalar summaries
    training.image_every_steps = 200  # image summaries (0 = never)
    training.checkpoint_every_steps = 100  # orbax checkpoint interval
    training.keep_checkpoints = 3  # checkpoints kept
    training.eval_every_steps = 0  # evaluation during training (0 = only at the end)
    # Linear warmup of the learning rate over the first steps, from rate/warmup_steps to the
    # full rate (state.learning_rate_schedule). 0 = none, as MAL's KITTI recipe (--step_lr:
    # torch StepLR, no warmup), which this synthetic default follows; MAL's Cityscapes recipe
    # warms up over 500 steps (configs/cityscapes.py). (MAL, KITTI: 0)
    training.warmup_steps = 0
    # Fine-tuning from a training workdir (model.weights_folder): also restore that run's
    # Adam moments and count instead of starting a fresh Adam (MAL: off; its --load_pretrained
    # loads the weights only).
    training.carry_optimizer_state = False
    # A step whose loss or gradients are NaN/inf: False = stop (the last checkpoint stays the
    # latest), True = skip the update, count it (logged) and go on with the next batch.
    training.skip_nonfinite_steps = False
    return training


def _evaluation_config() -> ml_collections.ConfigDict:
    """Test protocol and evaluation output."""
    evaluation = ml_collections.ConfigDict()
    # synthetic | kitti_eigen | kitti_eigen_mal | cityscapes | cityscapes_mal (eval.presets.PRESETS)
    evaluation.protocol = "synthetic"
    evaluation.batch_size = 8  # evaluation batch size
    evaluation.write_images = 4  # colormapped depth/error PNGs written (0 = none)
    return evaluation
