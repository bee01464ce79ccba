"""ManyDepth + MAL on KITTI raw (Eigen-Zhou split), trained from scratch.

Needs precomputed instance masks (``--config.data.masks_root``, format in data/README.md).
"""

from configs import default, kitti_manydepth


def get_config():
    config = kitti_manydepth.get_config()
    config.mal = default.get_config().mal  # MAL's published recipe (teacher hints, distil, balance)
    config.evaluation.protocol = "kitti_eigen_mal"  # MAL evaluates with depth range 1e-3-80
    return config
