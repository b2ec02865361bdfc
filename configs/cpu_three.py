"""2-core CPU, three hospitals: BUSI (Egypt), BUS-BRA (Brazil) and BUS-UCLM (Spain) at once.

The shipped model's recipe: `configs/cpu.py`'s network on three datasets and six scanners.
BUS-UCLM brings what the other two lack, many normal (lesion-free) scans from another scanner
(169 of its 275 training scans). Half of the training examples come from BUSI (with its own 64
normal scans), a quarter each from BUS-BRA and BUS-UCLM. An epoch is one pass's worth of all
three (92 batches of 16); 16 epochs train in under 90 minutes on two cores. Checkpoint and
threshold are chosen on the mean of the three validation splits' all-image Dice.

It clears more normal scans than `cpu_mixed.py` but gives BUS-UCLM's lesion scans too few
masks (image-level sensitivity 0.53 on its test split): docs/experiments.md. A model trained
on BUS-UCLM is for non-commercial use only (its licence, CC BY-NC 4.0).
"""
from configs import cpu


def get_config():
  config = cpu.get_config()
  config.data.source = 'busi+busbra+bus_uclm'
  config.data.mix_weights = 'busi=2,busbra=1,bus_uclm=1'
  config.train.num_epochs = 16
  return config
