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


def _run_on_4_devices(*args):
  env = {**os.environ, 'PYTHONPATH': ROOT,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('run')


@pytest.fixture(scope='module')
def one_step(trained_workdir):
  """The child's JSON line; it also trains the synthetic config into `trained_workdir`."""
  result = _run_on_4_devices(os.path.join('tests', 'multidevice_step.py'),
                             str(trained_workdir))
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


def test_synthetic_config_trains_and_evaluates_on_four_devices(one_step, trained_workdir):
  assert one_step['device_count'] == 4
  with open(trained_workdir / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if 'train_loss' in r] == [1, 2]  # 16 images / batch 8.
  assert 'val_dice' in rows[-1]
  with open(trained_workdir / 'eval' / 'synthetic' / 'test' / 'summary.json') as f:
    assert json.load(f)['num_images'] == 6  # The short last batch was padded, then cut.


def test_batch_not_divisible_by_the_devices_fails_clearly(one_step):
  """Training refuses it (main.py prints a ConfigError as one FATAL line, exit status 2:
  test_usage_errors.py), before anything is written."""
  refusal = one_step['batch_6']
  assert refusal['error'].startswith('ConfigError: config.train.batch_size=6 is not divisible '
                                     'by the 4 devices'), refusal
  assert not refusal['wrote']


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
