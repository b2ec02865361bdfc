"""DEMO: generated ultrasound-like images, so a fresh machine with no BUSI download can run
train -> evaluate -> predict end to end in a few minutes. Its numbers say nothing about BUSI.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'synthetic'
  config.data.image_size = 64
  config.model.base_features = 8
  config.model.depth = 3
  config.model.deep_supervision = 0  # Three side heads need depth >= 4.
  config.model.dropout = 0.0
  config.train.batch_size = 8
  config.train.num_epochs = 12
  config.train.learning_rate = 3e-3
  config.train.warmup_epochs = 1
  config.train.log_every_steps = 4
  config.train.eval_every_epochs = 3
  config.train.checkpoint_every_epochs = 3
  config.eval.batch_size = 8
  return config
