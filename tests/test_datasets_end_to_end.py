"""Two datasets end to end through main.py: a mix in training, each validated and tested on
its own, any model evaluated on any dataset, and the paired comparison of two models."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from test_main import _main
from test_main import untrained_workdir

pytestmark = pytest.mark.slow  # Builds datasets and trains through main.py.


def _write_folder_dataset(folder, num=24):
  """A user's folder: `scan_N.png` beside `scan_N_mask.png` (synthetic pixels, 0/255 masks)."""
  os.makedirs(folder)
  for i, example in enumerate(synthetic.make_examples(num, seed=7)):
    Image.fromarray(example['image'][..., 0]).save(os.path.join(folder, f'scan_{i}.png'))
    Image.fromarray(example['mask'][..., 0] * 255).save(
        os.path.join(folder, f'scan_{i}_mask.png'))
  return folder


def _image_ids(report):
  with open(os.path.join(report, 'per_image.csv')) as f:
    return sorted(row['image_id'] for row in csv.DictReader(f))


@pytest.fixture(scope='module')
def mixed_workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp('mixed')
  folder = _write_folder_dataset(str(root / 'my_scans'))
  workdir = str(root / 'run')
  _main('--config=configs/synthetic.py', f'--workdir={workdir}',
        '--config.data.source=synthetic+folder', f'--config.data.folder.dir={folder}',
        '--config.data.folder.name=clinic', f'--config.data.tfds_data_dir={root / "tfds"}',
        '--config.data.mix_weights=synthetic=1,folder=3', '--config.train.num_epochs=2',
        '--config.train.eval_every_epochs=1', '--config.model.base_features=4')
  return workdir


def test_mixed_training_validates_each_dataset_and_tests_each_once(mixed_workdir):
  with open(os.path.join(mixed_workdir, 'metrics.jsonl')) as f:
    evals = [json.loads(line) for line in f if 'val_all_images_dice' in line]
  assert [r['epoch'] for r in evals] == [1, 2]
  for row in evals:
    # The criterion is the mean of the two datasets' all-image Dice.
    assert row['val_all_images_dice'] == pytest.approx(
        (row['val_synthetic_all_images_dice'] + row['val_folder_all_images_dice']) / 2)
  for dataset in ('synthetic', 'clinic'):
    with open(os.path.join(mixed_workdir, 'eval', dataset, 'test', 'summary.json')) as f:
      summary = json.load(f)
    assert summary['protocol'].split(',')[0] in ('SYNTHETIC DEMO data', 'clinic (folder dataset')
    assert 'trained on synthetic+folder' in summary['protocol']
    assert {'hd95', 'assd', 'sensitivity', 'precision'} <= set(summary['lesion'])


def test_a_model_is_evaluated_on_another_dataset_and_compared_pairwise(mixed_workdir, tmp_path):
  # A synthetic-only model: its initial weights do (what it was trained on is its config).
  other = untrained_workdir(str(tmp_path / 'synthetic_only'), **{'model.base_features': 4})
  folder = os.path.join(os.path.dirname(mixed_workdir), 'my_scans')
  result = _main('--mode=evaluate', f'--workdir={other}', '--dataset=folder',
                 f'--manual_dir={folder}', '--split=test', f'--compare_to={mixed_workdir}')
  # The synthetic-only model scored the clinic's test images, both models on the same ones.
  # The folder flag gives the default folder description, hence the default name.
  reports = [os.path.join(workdir, 'eval', 'my_scans', 'test') for workdir in (other,
                                                                               mixed_workdir)]
  ours, theirs = [_image_ids(report) for report in reports]
  assert ours == theirs and all(i.startswith('scan_') for i in ours)
  for report, trained_on in zip(reports, ('synthetic;', 'synthetic+folder;')):
    with open(os.path.join(report, 'summary.json')) as f:
      assert f'model trained on {trained_on}' in json.load(f)['protocol']
  with open(os.path.join(reports[0], 'comparison.json')) as f:
    comparison = json.load(f)
  dice = comparison['dice']
  assert dice['n'] == sum(1 for _ in ours) - (comparison['normal_empty'] or {'n': 0})['n']
  assert dice['mean_difference'] == pytest.approx(dice['mean_a'] - dice['mean_b'])
  assert dice['ci95'][0] <= dice['mean_difference'] <= dice['ci95'][1]
  assert 'Paired comparison' in result.stdout and '95% CI' in result.stdout
  assert np.isfinite(dice['mean_a'])
