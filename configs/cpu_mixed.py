"""2-core CPU, three hospitals: BUSI (Egypt), BUS-BRA (Brazil) and BUS-UCLM (Spain) at once.

`configs/cpu.py`'s network on three datasets and six scanners (the shipped model was trained
by this config with `data.normal_share=0`).
Half of the training examples come from BUSI, a quarter each from BUS-BRA and BUS-UCLM. Each
dataset's normal (lesion-free) scans are drawn at a quarter of its weight (`normal_share`):
BUS-UCLM's training split is 61 % normal, BUSI's 15 % and BUS-BRA has none, so without it the
look of one scanner predicts "no lesion" and that scanner's lesions are missed. An epoch is
one pass's worth of all three (92 batches of 16); 16 epochs took 76 min on a 2-core AMD EPYC,
102 min on a 2-core Intel Xeon with other work beside it. Checkpoint and threshold are chosen
on the three validation splits: the threshold keeps image-level sensitivity >= 0.92 on each,
then maximizes their mean all-image Dice.

A model trained on BUS-UCLM is for non-commercial use only (its licence, CC BY-NC 4.0).
The runs behind each choice are in docs/experiments.md.
"""
from configs import cpu


def get_config():
  config = cpu.get_config()
  config.data.source = 'busi+busbra+bus_uclm'
  config.data.mix_weights = 'busi=2,busbra=1,bus_uclm=1'
  config.data.normal_share = 0.25
  config.train.num_epochs = 16
  return config
