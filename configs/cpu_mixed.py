"""2-core CPU, BUSI and BUS-BRA together: one model for two hospitals and five scanners.

`configs/cpu.py`'s network and recipe, trained on BUSI (Egypt) and BUS-BRA (Brazil) at once.
Each training example is drawn from BUSI or BUS-BRA with equal probability, so BUSI (about a
third of the images, and all the normal scans) is not drowned by BUS-BRA: its normal scans keep
half of their share of the stream, where sampling by size would leave a third. The checkpoint
and the threshold are chosen on the mean of the two validation splits' all-image Dice; test is
reported per dataset. An epoch is one pass's worth of both (about 75 batches of 16).
"""
from configs import cpu


def get_config():
  config = cpu.get_config()
  config.data.source = 'busi+busbra'
  config.data.mix_weights = 'busi=1,busbra=1'
  config.train.num_epochs = 20
  return config
