"""2-core CPU setting: `configs/default.py`'s recipe at 192 x 192 and base width 16, so that
one epoch of BUSI's training split (424 images) takes about 40 s on two cores and the whole
run (78 epochs) under an hour on the machine of the README's speed table (2x slower 2-core
machines exist, see README Speed). Metrics are still computed at the original resolution.

Every part of the recipe (depth 5, deep supervision, presence head, EMA, 78 epochs, learning
rate, threshold choice) was adopted on BUSI's validation split in this setting; the runs are
in docs/experiments.md.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 192
  config.model.base_features = 16
  return config
