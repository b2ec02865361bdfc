"""2-core CPU setting: trains a useful BUSI model in under an hour (54 min on the 2-core machine of
the speed table; 2x slower 2-core machines exist, see README Speed).

192 x 192 input and a 16-feature U-Net keep one epoch of BUSI's training split (424 images)
at about 40 seconds on two cores; metrics are still computed at the original resolution.
Depth 5 (a 6 x 6 bottleneck) sees the whole breast section at once; it beat depth 4 on the
validation split (all-image Dice 0.695 vs 0.672 after 50 epochs), 70 epochs beat 50 (0.709),
and 78 epochs beat 70 (0.761 vs 0.750 with the default weight EMA, flip TTA and the threshold
chosen on validation, on the 1.1.0 validation split): 54 minutes in all, under the hour.
Deep supervision of decoder_1..3 (no extra time) beat that too (0.764 vs 0.761, within the
noise of 72 validation images; stronger geometric augmentation fell behind and was stopped).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 192
  config.model.base_features = 16
  config.model.depth = 5
  config.model.dropout = 0.1
  config.model.deep_supervision = 3
  config.train.batch_size = 16
  config.train.num_epochs = 78
  config.train.learning_rate = 2e-3
  config.train.warmup_epochs = 2
  config.train.eval_every_epochs = 2
  config.train.checkpoint_every_epochs = 2
  return config
