"""What the MAL paper does: fine-tune released ManyDepth weights with MAL on KITTI.

Set ``--config.model.weights_folder`` to a ManyDepth checkpoint folder (six .pth files, e.g.
the released KITTI_MR); its depth-bin range is loaded with it. Teacher and pose keep training.
"""

from ml_collections import config_dict

from configs import kitti_mal


def get_config():
    config = kitti_mal.get_config()
    # Required: the ManyDepth .pth folder; reading the config without it fails naming the field.
    config.model.weights_folder = config_dict.placeholder(str, required=True)
    config.training.num_epochs = 5  # fine-tuning length (chosen here; the MAL code fixes none)
    config.training.lr_decay_epoch = -1  # constant rate while fine-tuning
    config.training.freeze_teacher_epoch = -1  # teacher and pose still train, as in MAL
    return config
