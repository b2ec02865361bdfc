"""Release model folders: export, the checksum, predict without a workdir, init_from."""
import json
import os
import shutil
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
from PIL import Image
import pytest
from scipy import special

from configs import synthetic
from unet_flax import checkpointing
from unet_flax import imaging
from unet_flax import model as model_lib
from unet_flax import predict
from unet_flax import release
from unet_flax import sharding
from unet_flax import train

pytestmark = pytest.mark.slow  # Trains a tiny U-Net; runs main.py in subprocesses.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 2  # 8 training images, batches of 4.


def _config(**overrides):
  config = synthetic.get_config()
  config.update_from_flattened_dict({
      'data.image_size': 32, 'model.base_features': 4, 'model.depth': 2,
      'data.synthetic.num_train': 8, 'data.synthetic.num_validation': 4,
      'data.synthetic.num_test': 4, 'train.batch_size': 4, 'eval.batch_size': 4,
      'train.num_epochs': 1, 'train.warmup_epochs': 0, **overrides})
  return config


def _scans(folder) -> list[str]:
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for i, shape in enumerate([(45, 60), (60, 45), (33, 33)]):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f'scan{i}.png')
  return sorted(str(folder / name) for name in os.listdir(folder))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, release folder, scans): a one-epoch run and its export. The best checkpoint's
  threshold is set, as if validation had chosen it, to the median lesion probability on the
  scans, so that their masks are neither empty nor full."""
  root = tmp_path_factory.mktemp('release')
  workdir = str(root / 'run')
  train.train_and_evaluate(_config(**{'data.tfds_data_dir': str(root / 'tfds')}), workdir,
                           command=['main.py', '--config=configs/synthetic.py',
                                    f'--config.data.tfds_data_dir={root / "tfds"}'])
  scans = _scans(root / 'scans')
  config, model, variables, best = checkpointing.load_inference(workdir)
  images = np.stack([imaging.model_input(np.asarray(Image.open(p)), 32) for p in scans])
  logits = model_lib.inference_logits(model, variables, images, flip_tta=True)
  best['threshold'] = round(float(np.median(special.expit(logits))), 4)
  best['val_all_images_dice_by_threshold'][str(best['threshold'])] = best['val_all_images_dice']
  checkpoints = checkpointing.Checkpoints(workdir, keep=2)
  checkpoints.save_best(best['step'], variables, best)
  checkpoints.close()
  folder = str(root / 'busi-unet')
  result = _main('--mode=release', f'--workdir={workdir}', f'--output={folder}')
  assert result.returncode == 0 and f'Wrote {folder}: variables.msgpack' in result.stdout, (
      result.stderr[-3000:])
  return workdir, folder, scans


def _main(*args, model_dir=None):
  """main.py in a subprocess; `model_dir` replaces the repository's release model."""
  code = ('import sys; from unet_flax import release; release.MODEL_DIR = sys.argv.pop(1); '
          'import main; from absl import app; app.run(main.main, flags_parser=main._parse_flags)')
  return subprocess.run([sys.executable, '-c', code, str(model_dir), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _through_float16(variables):
  """What variables.msgpack restores to: each value rounded to float16, applied in float32."""
  return jax.tree.map(lambda x: np.asarray(x, np.float16).astype(np.float32),
                      jax.device_get(variables))


def _fatal_line(result) -> str:
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('FATAL ')]
  assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr[-2000:]
  return lines[0]


def test_export_writes_checksummed_inference_weights_config_and_provenance(trained):
  workdir, folder, _ = trained
  assert sorted(os.listdir(folder)) == ['config.json', 'model.json', 'variables.msgpack']
  manifest = json.loads(open(os.path.join(folder, 'model.json')).read())
  data = open(os.path.join(folder, 'variables.msgpack'), 'rb').read()
  assert manifest['variables']['sha256'] == release._sha256(data)
  assert manifest['variables']['bytes'] == len(data)
  # Plain flax reads the weights: the best checkpoint's EMA parameters and BN statistics,
  # in float16.
  _, _, variables, best = checkpointing.load_inference(workdir)
  restored = flax.serialization.msgpack_restore(data)
  assert set(restored) == {'params', 'batch_stats'}
  assert {x.dtype for x in jax.tree.leaves(restored)} == {np.dtype('float16')}
  jax.tree.map(np.testing.assert_array_equal, restored, _through_float16(variables))
  assert manifest['variables']['dtype'] == 'float16'
  assert manifest['best'] == best and manifest['threshold'] == best['threshold']
  assert manifest['min_lesion_fraction'] == 0.001
  # The training command is recorded with paths relative to the repository.
  [command] = manifest['training_commands']
  assert command['argv'][:3] == ['python', 'main.py', '--config=configs/synthetic.py']
  assert command['argv'][3] == ('--config.data.tfds_data_dir=' +
                                os.path.relpath(os.path.join(workdir, '..', 'tfds'), ROOT))
  assert manifest['test']['synthetic']['num_images'] == 4
  assert 0 <= manifest['test']['synthetic']['lesion_dice']['mean'] <= 1
  # The config carries the chosen threshold, and no data location of the training machine.
  config = checkpointing.load_config(folder)
  assert config.eval.threshold == best['threshold']
  assert config.data.tfds_data_dir == '' and config.model.to_dict() == _config().model.to_dict()
  with pytest.raises(checkpointing.WorkdirMismatchError, match='is a training workdir'):
    release.export(workdir, workdir)


def test_release_folder_gives_the_logits_of_the_workdir_in_float16(trained):
  workdir, folder, scans = trained
  config, model, variables, best = release.load_model(folder)
  expected_config, _, expected, expected_best = release.load_model(workdir)
  assert best == expected_best and config.to_dict() == {
      **expected_config.to_dict(), 'data': config.data.to_dict()}
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype('float32')}
  images = np.stack([imaging.model_input(np.asarray(Image.open(p)), 32) for p in scans])
  logits = model_lib.inference_logits(model, variables, images, True)
  np.testing.assert_array_equal(
      logits, model_lib.inference_logits(model, _through_float16(expected), images, True))
  # Rounding the weights moves a logit by far less than a lesion's margin.
  exact = model_lib.inference_logits(model, expected, images, True)
  assert 0 < np.abs(logits - exact).max() < 1e-2


def test_a_damaged_weights_file_gives_one_error_naming_file_and_checksums(trained, tmp_path):
  _, folder, scans = trained
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(folder, damaged)
  path = os.path.join(damaged, 'variables.msgpack')
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 1
  open(path, 'wb').write(bytes(data))
  expected = json.loads(open(os.path.join(folder, 'model.json')).read())['variables']['sha256']
  message = (f'{path} is damaged or was replaced: its sha256 is {release._sha256(data)}, '
             f'but {os.path.join(damaged, "model.json")} expects {expected}.')
  with pytest.raises(release.ChecksumError) as error:
    release.load_model(damaged)
  assert str(error.value).startswith(message) and '\n' not in str(error.value)
  fatal = _fatal_line(_main('--mode=predict', f'--model={damaged}', f'--input={scans[0]}',
                            f'--output={tmp_path / "out"}'))
  assert fatal.startswith(f'FATAL {message}')


def test_predict_without_workdir_writes_the_masks_of_the_workdir(trained, tmp_path):
  """The masks of predict with the workdir's weights as the release stores them (float16)."""
  workdir, folder, scans = trained
  result = _main('--mode=predict', f'--input={os.path.dirname(scans[0])}',
                 f'--output={tmp_path / "release"}', model_dir=folder)
  assert result.returncode == 0, result.stderr[-3000:]
  config, model, variables, _ = checkpointing.load_inference(workdir)
  assert predict.predict_files(model, _through_float16(variables), config, scans,
                               str(tmp_path / 'workdir'), overlays=False) == 0
  masks = 0
  for path in scans:
    name = f'{predict._stem(path)}_mask.png'
    mask = np.asarray(Image.open(tmp_path / 'release' / name))
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / 'workdir' / name)))
    masks += 0 < mask.mean() < 255
  assert masks, 'every mask is empty or full: the comparison would prove little'
  assert (tmp_path / 'release' / 'predictions.csv').read_text() == (
      tmp_path / 'workdir' / 'predictions.csv').read_text()
  # A copy without the release model says so, and what to give instead.
  fatal = _fatal_line(_main('--mode=predict', f'--input={scans[0]}',
                            f'--output={tmp_path / "none"}', model_dir=tmp_path / 'missing'))
  assert 'No release model in' in fatal and '--workdir' in fatal and '--model' in fatal


def _initial_state(config, workdir):
  model = model_lib.create_model(config.model)
  start = train._init_from(config, model, workdir)
  checkpoints = checkpointing.Checkpoints(workdir, config.train.keep_checkpoints)
  try:
    return train._initial_state(config, model, sharding.create_mesh(), STEPS_PER_EPOCH,
                                checkpoints, workdir, start)
  finally:
    checkpoints.close()


@pytest.mark.parametrize('source', ['release', 'workdir'])
def test_init_from_starts_from_the_source_weights_with_a_fresh_optimizer(trained, tmp_path,
                                                                        source):
  workdir, folder, _ = trained
  path = folder if source == 'release' else workdir
  _, _, expected, _ = release.load_model(path)
  state = _initial_state(_config(**{'train.init_from': path}), str(tmp_path))
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(expected['params']))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params),
               jax.device_get(expected['params']))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats),
               jax.device_get(expected['batch_stats']))
  fresh = train.create_train_state(0, _config(), model_lib.create_model(_config().model),
                                   STEPS_PER_EPOCH)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state),
               jax.device_get(fresh.opt_state))


def test_init_from_another_architecture_fails_with_one_line_naming_the_fields(trained):
  _, folder, _ = trained

  def expected_variables(config):
    model = model_lib.create_model(config.model)
    return jax.eval_shape(lambda: model_lib.init_variables(model, 0, config.data.image_size))

  config = _config(**{'train.init_from': folder, 'model.base_features': 8})
  with pytest.raises(release.ModelMismatchError) as error:
    release.initial_variables(config, expected_variables(config))
  message = str(error.value)
  assert message.startswith(f'config.train.init_from={folder} holds another architecture '
                            'than this config: config.model.base_features (4 there, 8 here).')
  assert '\n' not in message and '--config.train.init_from=' in message
  # The input size does not change a parameter's shape: fine-tuning at another one is allowed.
  config = _config(**{'train.init_from': folder, 'data.image_size': 64})
  variables, _ = release.initial_variables(config, expected_variables(config))
  assert variables['params']['head']['kernel'].shape == (1, 1, 4, 1)
  with pytest.raises(FileNotFoundError, match='config.train.init_from=nowhere: no such folder'):
    release.initial_variables(_config(**{'train.init_from': 'nowhere'}),
                              expected_variables(config))


def test_init_from_that_does_not_fit_leaves_no_workdir(trained, tmp_path):
  _, folder, _ = trained
  workdir = tmp_path / 'run'
  with pytest.raises(release.ModelMismatchError, match='holds another architecture'):
    train.train_and_evaluate(_config(**{'train.init_from': folder, 'model.base_features': 8}),
                             str(workdir), command=['main.py'])
  assert not workdir.exists()  # No config.json, commands.jsonl or checkpoint folders.


def test_a_workdir_with_a_checkpoint_resumes_instead_of_using_init_from(trained):
  workdir, folder, _ = trained
  config = _config(**{'train.init_from': folder})
  state = _initial_state(config, workdir)
  assert int(state.step) == STEPS_PER_EPOCH  # The end of the run's epoch, not a new start.
  checkpoints = checkpointing.Checkpoints(workdir)
  restored, _ = checkpoints.restore_latest(state)
  checkpoints.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(restored.params))


def test_fine_tuning_from_a_release_records_its_source(trained, tmp_path):
  _, folder, _ = trained
  summaries = train.train_and_evaluate(_config(**{'train.init_from': folder}), str(tmp_path))
  assert summaries['synthetic']['num_images'] == 4
  assert checkpointing.load_config(str(tmp_path)).train.init_from == folder


def test_evaluate_a_release_model_writes_its_report_under_output(trained, tmp_path):
  _, folder, _ = trained
  result = _main('--mode=evaluate', f'--model={folder}', f'--output={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'eval' / 'synthetic' / 'test' / 'summary.json').read_text())
  threshold = json.loads(open(os.path.join(folder, 'model.json')).read())['threshold']
  assert summary['num_images'] == 4 and f'checkpoint: best of {folder}, epoch 1' in (
      summary['protocol']) and f'threshold {threshold},' in summary['protocol']
