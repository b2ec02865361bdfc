"""Fine-tuning the release model to your own scanner: a few dozen annotated scans, minutes.

Starts from the repository's release model (models/busi-unet, trained with
`configs/cpu_mixed.py`, whose network this config keeps) on a folder of your images and
masks (data/seg_folder/README.md), at a learning rate a few times lower than training from
scratch, for a short schedule; validation is scored every epoch and, as always, chooses the
checkpoint and the threshold. `--config.train.init_from=` (empty) trains the same recipe from
random weights, the comparison that says what the release model is worth on your data:

  python main.py --config=configs/finetune.py --workdir=runs/finetune \\
      --config.data.folder.dir=my_scans/
"""
import configs
from configs import cpu_mixed


def get_config():
  config = cpu_mixed.get_config()
  config.data.source = 'folder'
  config.data.mix_weights = ''
  config.data.normal_share = 0.0
  config.train.init_from = configs.RELEASE_MODEL_DIR
  config.train.learning_rate = 3e-4
  config.train.num_epochs = 15
  config.train.warmup_epochs = 1
  config.train.eval_every_epochs = 1
  config.train.checkpoint_every_epochs = 1
  return config
