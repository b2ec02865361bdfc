"""Crash safety, determinism, the NaN guard and config guard rails (see docs/reliability.md).

The kill tests SIGKILL a real `main.py` training run at chosen moments, re-run the same
command, and require the end state of an uninterrupted run: same step, same parameters and
optimizer state, and the same metrics.jsonl rows (timings aside).
"""
import json
import os
import shutil
import subprocess
import signal
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import synthetic
from unet_flax import checkpointing
from unet_flax import train

pytestmark = pytest.mark.slow  # Each test trains real runs in subprocesses (and kills them).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 epochs of 4 steps; best/ can be written at every epoch, latest/ at epochs 2 and 4, so a
# kill can fall between the two.
OVERRIDES = {
    'data.image_size': 32, 'model.base_features': 4, 'model.depth': 2,
    'data.synthetic.num_train': 16, 'data.synthetic.num_validation': 4,
    'data.synthetic.num_test': 4, 'train.batch_size': 4, 'eval.batch_size': 4,
    'train.num_epochs': 4, 'train.eval_every_epochs': 1, 'train.checkpoint_every_epochs': 2,
    'train.log_every_steps': 1,
}
TOTAL_STEPS = 16
TIMING = ('epoch_seconds',)


def _config(**overrides):
  config = synthetic.get_config()
  config.update_from_flattened_dict({**OVERRIDES, **overrides})
  return config


def _command(workdir):
  return [sys.executable, 'main.py', '--config=configs/synthetic.py', f'--workdir={workdir}',
          *[f'--config.{name}={value}' for name, value in OVERRIDES.items()]]


def _start(workdir, **kwargs):
  return subprocess.Popen(_command(workdir), cwd=ROOT, text=True, **kwargs)


def _train(*workdirs):
  """Trains each workdir to the end, all at once; returns their stderr."""
  processes = [_start(w, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for w in workdirs]
  errors = [p.communicate(timeout=300)[1] for p in processes]
  for process, error in zip(processes, errors):
    assert process.returncode == 0, error[-4000:]
  return errors


def _train_until_killed(workdir, step):
  """Trains until the run SIGKILLs itself right after `step` (train.KILL_AFTER_STEP_ENV):
  no handler, no cleanup, like a recycled runtime, at an exact point."""
  process = _start(workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env={**os.environ, train.KILL_AFTER_STEP_ENV: str(step)})
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == -signal.SIGKILL, stderr[-4000:]


def _listdir(path):
  return os.listdir(path) if os.path.isdir(path) else []


def _checkpoint_dir(workdir, kind):
  return os.path.join(workdir, 'checkpoints', kind)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _final_state(workdir):
  """(step, state tree) of the newest latest/ checkpoint, read without the model code."""
  manager = ocp.CheckpointManager(os.path.abspath(_checkpoint_dir(workdir, 'latest')),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return step, jax.tree.map(np.asarray, jax.tree.map(_key_data, state))


def _key_data(x):
  return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _assert_same_run(workdir, reference):
  step, state = _final_state(workdir)
  ref_step, ref_state = _final_state(reference)
  assert step == ref_step == TOTAL_STEPS
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)
  assert _metrics(workdir) == _metrics(reference)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Two identical, uninterrupted runs, trained side by side."""
  workdirs = [str(tmp_path_factory.mktemp(name)) for name in ('reference', 'twin')]
  _train(*workdirs)
  return workdirs


@pytest.fixture
def reference(runs):
  return runs[0]


def test_two_identical_runs_give_identical_parameters_and_metrics(runs):
  reference, twin = runs
  _assert_same_run(twin, reference)
  rows = _metrics(reference)
  assert [r['step'] for r in rows if 'train_loss' in r] == list(range(1, TOTAL_STEPS + 1))
  assert [r['epoch'] for r in rows if 'epoch_loss' in r] == [1, 2, 3, 4]


def _leave_a_half_written_checkpoint(workdir, reference, step):
  """What a kill during orbax's save of `step` leaves: the files in a temporary directory
  that was never renamed (here the finished checkpoint of the reference run)."""
  shutil.copytree(os.path.join(_checkpoint_dir(reference, 'latest'), str(step)),
                  os.path.join(_checkpoint_dir(workdir, 'latest'),
                               f'{step}.orbax-checkpoint-tmp-1795900000000000'))


def test_sigkill_at_several_points_then_rerun_ends_like_an_uninterrupted_run(reference,
                                                                            tmp_path):
  workdir = str(tmp_path)
  latest, best = _checkpoint_dir(workdir, 'latest'), _checkpoint_dir(workdir, 'best')
  _train_until_killed(workdir, 5)  # From scratch: best/ saved at step 4, latest/ not yet.
  assert _listdir(best) == ['4'] and not _listdir(latest)
  _train_until_killed(workdir, 10)  # From scratch again: latest/ at 8, killed mid-epoch.
  assert _listdir(latest) == ['8']
  assert max(row['step'] for row in _metrics(workdir)) > 8
  _train_until_killed(workdir, 16)  # Resumed from 8, killed while saving step 16.
  _leave_a_half_written_checkpoint(workdir, reference, 16)

  (stderr,) = _train(workdir)
  assert 'Resumed from step 8 ' in stderr
  assert sorted(_listdir(latest)) == ['16', '8']  # The half-written one is cleaned up.
  _assert_same_run(workdir, reference)


def _inject_nan(monkeypatch, epoch, index):
  """Makes batch `index` of epoch `epoch` contain a NaN pixel."""
  from data import input_pipeline
  original = input_pipeline.TrainInput.epoch

  def epoch_with_nan(self, e):
    for i, batch in enumerate(original(self, e)):
      if (e, i) == (epoch, index):
        batch['image'][0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(input_pipeline.TrainInput, 'epoch', epoch_with_nan)


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(x.dtype, np.floating))


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path):
  _inject_nan(monkeypatch, epoch=2, index=1)  # Step 2 * 4 + 2 = 10, after the step-8 save.
  with pytest.raises(FloatingPointError, match='at step 10'):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert _listdir(_checkpoint_dir(str(tmp_path), 'latest')) == ['8']
  step, state = _final_state(str(tmp_path))
  assert step == 8 and _all_finite(state)


def test_nan_update_is_skipped_and_counted_when_configured(monkeypatch, tmp_path):
  _inject_nan(monkeypatch, epoch=0, index=1)
  train.train_and_evaluate(_config(**{'train.skip_nonfinite_updates': True,
                                      'train.num_epochs': 2}), str(tmp_path))
  step, state = _final_state(str(tmp_path))
  assert step == 8 and _all_finite(state)
  rows = _metrics(str(tmp_path))
  assert [r['skipped_steps'] for r in rows if 'epoch_loss' in r] == [1, 0]
  assert 2 not in [r['step'] for r in rows if 'train_loss' in r]


@pytest.mark.parametrize('overrides, message', [
    ({'data.image_size': 34}, r'image_size=34 must be a positive multiple of 2\*\*model.depth = 4'),
    ({'train.batch_size': 0}, 'train.batch_size=0 must be an integer >= 1'),
    ({'train.checkpoint_every_epochs': 0}, 'checkpoint_every_epochs=0 must be an integer >= 1'),
    ({'eval.min_lesion_fraction': -0.001}, r'min_lesion_fraction=-0.001 must be in \[0, 1\)'),
])
def test_impossible_config_is_refused_before_anything_is_written(tmp_path, overrides, message):
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(**overrides), workdir)
  assert not os.path.exists(workdir)


def test_eval_batch_not_divisible_by_devices_is_refused(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  with pytest.raises(ValueError, match='eval.batch_size=6 is not divisible by the 4 devices'):
    train.check_config(_config(**{'train.batch_size': 8, 'eval.batch_size': 6}))


def test_batch_larger_than_the_training_split_names_both(tmp_path):
  with pytest.raises(ValueError, match='batch_size=32 is larger than the training split '
                     r'\(16 examples'):
    train.train_and_evaluate(_config(**{'train.batch_size': 32}), str(tmp_path))


def test_resuming_with_another_model_shape_points_to_a_new_workdir_not_deletion(reference):
  with pytest.raises(checkpointing.WorkdirMismatchError,
                     match='config.model=.*Use a new --workdir') as error:
    checkpointing.save_config(_config(**{'model.base_features': 8}), reference)
  assert 'delete' not in str(error.value).lower()


def test_resuming_with_another_batch_size_is_refused(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  with pytest.raises(checkpointing.WorkdirMismatchError,
                     match='ends epoch 4 at step 16, but this config has 2 steps') as error:
    train.train_and_evaluate(_config(**{'train.batch_size': 8}), workdir)
  assert 'delete' not in str(error.value).lower()


def test_evaluate_or_predict_without_a_checkpoint_says_train_first(tmp_path):
  with pytest.raises(FileNotFoundError, match='is .* a training workdir'):
    checkpointing.load_inference(str(tmp_path))
  checkpointing.save_config(_config(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='No best checkpoint .* train first'):
    checkpointing.load_inference(str(tmp_path))
  assert os.listdir(tmp_path) == ['config.json']  # Read-only: nothing created.


def test_corrupt_checkpoint_is_reported_with_its_path(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  best = _checkpoint_dir(workdir, 'best')
  (step,) = _listdir(best)
  for folder, _, files in os.walk(os.path.join(best, step, 'variables')):
    for name in files:
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(b'not a checkpoint')
  with pytest.raises(checkpointing.UnreadableCheckpointError,
                     match=f'Cannot read the checkpoint {os.path.join(best, step)}'):
    checkpointing.load_inference(workdir)
