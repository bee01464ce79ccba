"""ManyDepth without MAL on the embedded scenes, same budget and seed as default.py.

The comparison baseline for MAL's ablations; the losses run over ManyDepth's four scales.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.mal.temporal = False  # no temporal hints
    config.mal.main_temporal = False
    config.mal.distil = False  # no distillation hints
    config.mal.ensemble = False
    config.mal.loss_balance = False
    return config
