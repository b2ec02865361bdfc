"""Data parallelism on 4 simulated CPU devices, and bfloat16 mixed precision.

The device count is fixed when JAX starts, so every check runs in a child process started
with XLA_FLAGS=--xla_force_host_platform_device_count=4.
"""
import json
import os
import subprocess
import sys

import jax
import pytest

from configs import synthetic
from unet_flax import distributed

pytestmark = pytest.mark.slow  # Runs training on 4 simulated devices in subprocesses.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config=configs/synthetic.py', '--config.train.num_epochs=1',
        '--config.data.image_size=32', '--config.model.base_features=4',
        '--config.model.depth=1', '--config.data.synthetic.num_train=16',
        '--config.data.synthetic.num_validation=4', '--config.data.synthetic.num_test=6',
        '--config.train.log_every_steps=1']


def _run_on_4_devices(*args):
  env = {**os.environ, 'PYTHONPATH': ROOT,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope='module')
def one_step():
  result = _run_on_4_devices(os.path.join('tests', 'multidevice_step.py'))
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device_on_the_same_global_batch(one_step):
  assert one_step['device_count'] == 4
  assert one_step['loss_4'] == pytest.approx(one_step['loss_1'], rel=1e-5)
  assert one_step['params_max_diff'] < 1e-5
  # BatchNorm statistics come from the whole global batch, not from each device's shard.
  assert one_step['batch_stats_max_diff'] < 1e-5


def test_bfloat16_step_keeps_float32_state_and_a_close_loss(one_step):
  assert one_step['bf16_finite']
  assert one_step['bf16_dtypes'] == ['float32']
  assert one_step['loss_bf16'] != one_step['loss_4']  # bf16 compute really happened.
  assert one_step['loss_bf16'] == pytest.approx(one_step['loss_4'], rel=2e-2)


def test_synthetic_config_trains_and_evaluates_on_four_devices(tmp_path):
  result = _run_on_4_devices('main.py', f'--workdir={tmp_path}', *TINY)
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if 'train_loss' in r] == [1, 2]  # 16 images / batch 8.
  assert 'val_dice' in rows[-1]
  with open(tmp_path / 'eval' / 'synthetic' / 'test' / 'summary.json') as f:
    assert json.load(f)['num_images'] == 6  # The short last batch was padded, then cut.


def test_batch_not_divisible_by_the_devices_fails_clearly(tmp_path):
  result = _run_on_4_devices('main.py', f'--workdir={tmp_path}', *TINY,
                             '--config.train.batch_size=6')
  assert result.returncode != 0
  assert 'config.train.batch_size=6 is not divisible by the 4 devices' in result.stderr


def test_multi_host_runtime_starts_only_when_configured(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda: calls.append(1))
  config = synthetic.get_config()
  distributed.maybe_initialize(config)
  distributed.maybe_initialize(None)  # Modes that take the workdir's saved config.
  assert not calls
  config.distributed = True
  distributed.maybe_initialize(config)
  assert calls == [1]
