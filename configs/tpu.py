"""Cloud TPU (Colab TPU, a TPU VM or a pod slice): bfloat16 compute, a bigger global batch.

The global batch is split over all TPU cores, so it must be a multiple of their count (8 on
a v2-8/v3-8, 4 on a v4-8/v5e-4, ...). On a pod slice add `--config.distributed=True`.
Twice default.py's batch at its learning rate: not tuned on a TPU (none was available).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.half_precision = True
  config.train.batch_size = 32
  config.eval.batch_size = 32
  return config
