"""Every shipped config trains: its network, loss and schedule run a few steps end to end.

The data are swapped for tiny synthetic images (the real datasets are not needed, and the
point is the config's network and recipe, not its numbers); the input is 64 x 64, the
smallest size a depth-5 U-Net divides.
"""
import importlib
import json

import pytest

import configs
from unet_flax import train

pytestmark = pytest.mark.slow  # Compiles each config's full-width U-Net.

SHIPPED = configs.shipped()


def test_every_config_file_is_tested():
  assert set(SHIPPED) == {'cpu', 'cpu_mixed', 'default', 'finetune', 'synthetic', 'tpu'}


@pytest.mark.parametrize('name', SHIPPED)
def test_config_trains_a_few_steps_and_reports(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config()
  recipe = (config.model.to_dict(), config.train.learning_rate, config.half_precision)
  config.update_from_flattened_dict({
      'data.source': 'synthetic', 'data.mix_weights': '', 'data.image_size': 64,
      'data.synthetic.num_train': 8, 'data.synthetic.num_validation': 4,
      'data.synthetic.num_test': 4, 'train.batch_size': 4, 'eval.batch_size': 4,
      'train.num_epochs': 1, 'train.warmup_epochs': 0, 'eval.threshold_candidates': (0.5,),
      'train.init_from': ''})  # Fine-tuning from a release model: tests/test_release.py.
  summaries = train.train_and_evaluate(config, str(tmp_path))

  assert summaries['synthetic']['num_images'] == 4
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert (saved['model'], saved['train']['learning_rate'], saved['half_precision']) == recipe
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]['epoch'] == 1 and rows[-1]['val_all_images_dice'] >= 0
