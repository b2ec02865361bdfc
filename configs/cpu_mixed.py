"""2-core CPU, BUSI and BUS-BRA together: one model for two hospitals and five scanners.

`configs/cpu.py`'s network and recipe, trained on BUSI (Egypt) and BUS-BRA (Brazil) at once.
Two of every three training examples come from BUSI: over the 20 epochs BUSI (with all the
normal scans, which BUS-BRA lacks) is seen as often as in a 40-epoch BUSI-only run, and
BUS-BRA about ten times. The checkpoint and the threshold are chosen on the mean of the two
validation splits' all-image Dice; test is reported per dataset. An epoch is one pass's worth
of both (75 batches of 16). docs/experiments.md has the 1:1 mix this replaced.
"""
from configs import cpu


def get_config():
  config = cpu.get_config()
  config.data.source = 'busi+busbra'
  config.data.mix_weights = 'busi=2,busbra=1'
  config.train.num_epochs = 20
  return config
