"""End to end through main.py on the synthetic demo config (no BUSI needed)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # Trains and runs main.py end to end in subprocesses.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, check=True):
  result = subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f'main.py {args} failed:\n{result.stdout}\n{result.stderr[-4000:]}')
  return result


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  _main('--config=configs/synthetic.py', f'--workdir={workdir}',
        '--config.train.num_epochs=3', '--config.train.eval_every_epochs=1',
        '--config.model.base_features=6')
  return workdir


def test_train_writes_config_logs_checkpoints_report_and_figures(trained_workdir):
  with open(os.path.join(trained_workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['base_features'] == 6 and config['train']['num_epochs'] == 3
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['epoch'] for r in rows if 'val_dice' in r] == [1, 2, 3]
  steps = [r['step'] for r in rows]
  assert steps == sorted(steps)
  for path in ['eval/synthetic/test/summary.json', 'eval/synthetic/test/per_image.csv',
               'eval/synthetic/test/predictions.png', 'training_curves.png']:
    assert os.path.getsize(os.path.join(trained_workdir, path)) > 0, path
  assert os.listdir(os.path.join(trained_workdir, 'tensorboard'))
  with open(os.path.join(trained_workdir, 'eval/synthetic/test/summary.json')) as f:
    summary = json.load(f)
  assert 'SYNTHETIC DEMO' in summary['protocol'] and 'ORIGINAL resolution' in summary['protocol']
  assert summary['num_images'] == 24


def test_config_override_reaches_the_model(trained_workdir):
  from unet_flax import checkpointing
  _, model, variables, _ = checkpointing.load_inference(trained_workdir)
  assert model.base_features == 6
  assert variables['params']['encoder_0']['conv_0']['kernel'].shape == (3, 3, 1, 6)


def test_threshold_chosen_on_validation_travels_with_the_checkpoint(trained_workdir):
  from unet_flax import checkpointing
  config, _, _, best = checkpointing.load_inference(trained_workdir)
  by_threshold = best['val_all_images_dice_by_threshold']
  assert [float(t) for t in by_threshold] == list(config.eval.threshold_candidates)
  assert best['threshold'] == config.eval.threshold
  from unet_flax import metrics
  points = {name: {float(t): p for t, p in by_t.items()}
            for name, by_t in best['val_operating_points'].items()}
  assert best['threshold'] == metrics.choose_threshold(points, best['min_sensitivity'], 0.5)
  with open(os.path.join(trained_workdir, 'eval/synthetic/test/summary.json')) as f:
    protocol = json.load(f)['protocol']
  assert (f"threshold {best['threshold']}, regions under 0.1 % of the image removed); "
          'checkpoint') in protocol
  assert f"threshold {best['threshold']} chosen on validation" in protocol


@pytest.fixture(scope='module')
def evaluated(trained_workdir):
  """(stdout, per_image.csv rows) of `--mode=evaluate --split=validation+test` at the
  checkpoint's own threshold."""
  result = _main('--mode=evaluate', f'--workdir={trained_workdir}', '--split=validation+test')
  with open(os.path.join(trained_workdir, 'eval/synthetic/validation+test/per_image.csv')) as f:
    return result.stdout, list(csv.DictReader(f))


def test_evaluate_mode_needs_no_config_and_writes_per_image_rows(trained_workdir, evaluated):
  from unet_flax import checkpointing
  stdout, rows = evaluated
  assert 'ORIGINAL resolution' in stdout
  threshold = checkpointing.load_inference(trained_workdir)[3]['threshold']
  assert f'threshold {threshold}, regions under 0.1 % of the image removed); ' in stdout
  assert len(rows) == 16 + 24
  assert set(rows[0]) == {'image_id', 'label', 'dice', 'iou', 'gt_area', 'pred_area', 'hd95',
                          'assd', 'sensitivity', 'precision', 'lesion_probability'}
  lesion = [r for r in rows if r['label'] != 'normal']
  for name in ('dice', 'sensitivity'):
    values = np.array([float(r[name]) for r in lesion])
    assert np.all((values >= 0) & (values <= 1)), name
  # Distances exist exactly where something was predicted on a lesion, and are not negative.
  hd95 = np.array([float(r['hd95']) for r in lesion])
  predicted = np.array([int(r['pred_area']) > 0 for r in lesion])
  np.testing.assert_array_equal(np.isfinite(hd95), predicted)
  assert np.all(hd95[predicted] >= 0)


def test_evaluate_at_a_threshold_of_ones_own_says_so_and_marks_more(trained_workdir,
                                                                   evaluated):
  low_out = _main('--mode=evaluate', f'--workdir={trained_workdir}', '--split=validation',
                  '--threshold=0.05').stdout
  with open(os.path.join(trained_workdir, 'eval/synthetic/validation/per_image.csv')) as f:
    low_rows = list(csv.DictReader(f))
  # The same validation images at the checkpoint's own threshold: the run without the flag.
  own_out, own_rows = evaluated
  own_areas = {row['image_id']: int(row['pred_area']) for row in own_rows}
  assert len(low_rows) == 16 and {row['image_id'] for row in low_rows} <= own_areas.keys()
  low_area = sum(int(row['pred_area']) for row in low_rows)
  own_area = sum(own_areas[row['image_id']] for row in low_rows)
  assert 'evaluated at threshold 0.05, given on the command line' in low_out
  assert 'threshold 0.05, regions under' in low_out  # The threshold the masks were made at.
  assert 'given on the command line' not in own_out
  assert low_area >= own_area  # This tiny model's probabilities are near 0 or 1.


def untrained_workdir(workdir, **overrides):
  """A workdir of the synthetic config (with `overrides`) whose best checkpoint is the
  initial model: what evaluate, compare and release read, without a training run."""
  from configs import synthetic
  from unet_flax import checkpointing
  from unet_flax import model as model_lib
  config = synthetic.get_config()
  config.update_from_flattened_dict(overrides)
  model = model_lib.create_model(config.model)
  checkpointing.save_config(config, workdir)
  checkpoints = checkpointing.Checkpoints(workdir, keep=1)
  checkpoints.save_best(1, model_lib.init_variables(model, 0, config.data.image_size),
                        {'epoch': 1, 'step': 1, 'val_all_images_dice': 0.0, 'threshold': 0.5,
                         'val_all_images_dice_by_threshold': {'0.5': 0.0}})
  checkpoints.close()
  return workdir


def _release_of_another_size(folder, tmp_path):
  """A release folder like the repository's (a model of its own input size, width and depth:
  32 px, 4 features, depth 2 against the trained 64, 6, 3), exported from an untrained
  checkpoint: evaluating the shipped 192-px model instead costs far more and shows nothing
  more about the comparison."""
  from unet_flax import release
  workdir = untrained_workdir(str(tmp_path / 'untrained'), **{
      'data.image_size': 32, 'model.base_features': 4, 'model.depth': 2})
  release.export(workdir, folder)
  return folder


def test_comparison_with_a_release_model_leaves_its_folder_as_shipped(trained_workdir,
                                                                     tmp_path):
  shipped = _release_of_another_size(str(tmp_path / 'busi-unet'), tmp_path)
  before = {name: open(os.path.join(shipped, name), 'rb').read()
            for name in os.listdir(shipped)}
  result = _main('--mode=evaluate', f'--workdir={trained_workdir}', '--split=test',
                 f'--compare_to={shipped}')
  assert 'Paired comparison' in result.stdout
  assert {name: open(os.path.join(shipped, name), 'rb').read()
          for name in os.listdir(shipped)} == before
  with open(os.path.join(trained_workdir, 'eval/synthetic/test/comparison.json')) as f:
    compared = json.load(f)['b']
  assert compared.startswith(os.path.join(trained_workdir, 'compared', 'busi-unet'))


def test_rerun_of_a_finished_run_resumes_instead_of_retraining(trained_workdir):
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    before = f.read()
  result = _main('--config=configs/synthetic.py', f'--workdir={trained_workdir}',
                 '--config.train.num_epochs=3', '--config.train.eval_every_epochs=1',
                 '--config.model.base_features=6')
  assert 'Resumed from step' in result.stderr
  with open(os.path.join(trained_workdir, 'metrics.jsonl')) as f:
    assert f.read() == before


def test_expected_user_errors_end_in_one_fatal_line_that_names_the_flag(trained_workdir,
                                                                        tmp_path):
  result = _main('--mode=evaluate', f'--workdir={tmp_path / "not_a_run"}', check=False)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('FATAL ')
  assert 'is' in result.stderr and 'a training workdir' in result.stderr
  result = _main('--mode=evaluate', f'--workdir={trained_workdir}', '--dataset=busbra',
                 f'--manual_dir={tmp_path / "no_busbra"}', check=False)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  fatal = result.stderr[result.stderr.index('FATAL '):]
  # In evaluate mode the folder comes from --manual_dir, and the message says so.
  assert 'no_busbra' in fatal and '--manual_dir' in fatal and '--config.data' not in fatal


def _fatal_message(result):
  """The text from the one FATAL line on (a missing download adds how to get it)."""
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert result.stderr.count('FATAL ') == 1, result.stderr[-2000:]
  return result.stderr[result.stderr.index('FATAL '):]


def test_train_errors_end_in_one_fatal_line_and_leave_the_workdir_as_it_was(trained_workdir,
                                                                            tmp_path):
  fatal = _fatal_message(_main('--config=configs/no_such.py', f'--workdir={tmp_path}',
                            check=False))
  assert 'configs/no_such.py (no such file)' in fatal and 'configs/cpu.py' in fatal

  # A workdir trained with another model: refused, pointing to a new workdir, never to deletion.
  config_json = os.path.join(trained_workdir, 'config.json')
  before = open(config_json).read()
  fatal = _fatal_message(_main('--config=configs/synthetic.py', f'--workdir={trained_workdir}',
                            '--config.model.base_features=8', check=False))
  assert 'config.model=' in fatal and 'new --workdir' in fatal and 'delete' not in fatal
  assert open(config_json).read() == before


def test_missing_busi_fails_fast_with_download_steps(tmp_path):
  # No tfds_data_dir: the default TFDS folder is the test's own (conftest), which has no BUSI.
  # Were it the user's, their BUSI build would serve: the tiny model and one epoch then end
  # that run soon, failing the asserts below, instead of training for hours.
  workdir = tmp_path / 'run'
  fatal = _fatal_message(_main('--config=configs/cpu.py', f'--workdir={workdir}',
                               f'--config.data.manual_dir={tmp_path / "nowhere"}',
                               '--config.data.image_size=32', '--config.model.base_features=4',
                               '--config.model.depth=4', '--config.train.num_epochs=1',
                               '--config.train.batch_size=2', check=False))
  assert 'nowhere' in fatal and '--config.data.manual_dir' in fatal
  assert os.environ['TFDS_DATA_DIR'] in fatal and 'kaggle' in fatal.lower()
  assert not workdir.exists()  # No workdir (no config.json) is left behind.
