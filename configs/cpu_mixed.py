"""2-core CPU, three hospitals: BUSI (Egypt), BUS-BRA (Brazil) and BUS-UCLM (Spain) at once.

`configs/cpu.py`'s network and recipe on three datasets and six scanners. BUS-UCLM brings
what the other two lack: many normal (lesion-free) scans from another scanner, 169 of its 275
training scans. Half of the training examples come from BUSI (with its own 64 normal scans),
a quarter each from BUS-BRA and BUS-UCLM, so that BUSI is seen about as often as in a 40-epoch
BUSI-only run. An epoch is one pass's worth of all three (92 batches of 16 on the copies this
was developed on); 16 epochs keep the run under 90 minutes on two cores. The checkpoint and the
threshold are chosen on the mean of the three validation splits' all-image Dice, in which a
normal scan left empty counts as much as a lesion's Dice, each dataset counting equally
whatever its size. Test is reported per dataset. A model trained on BUS-UCLM is for
non-commercial use (its licence, CC BY-NC 4.0).
"""
from configs import cpu


def get_config():
  config = cpu.get_config()
  config.data.source = 'busi+busbra+bus_uclm'
  config.data.mix_weights = 'busi=2,busbra=1,bus_uclm=1'
  config.train.num_epochs = 16
  return config
