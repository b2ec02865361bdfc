"""The train step, the optimizer setup, the NaN guard and checkpoint round trips."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from unet_flax import checkpointing
from unet_flax import model as model_lib
from unet_flax import sharding
from unet_flax import train

pytestmark = pytest.mark.slow  # Compiles and runs U-Net train steps.


def _config():
  config = synthetic.get_config()
  config.data.image_size = 32
  config.model.base_features = 4
  config.model.depth = 2
  config.train.warmup_epochs = 0
  config.train.learning_rate = 3e-2
  config.train.num_epochs = 100  # Long schedule: the rate stays near its peak in tests.
  return config


def _batch(size=32, n=4, seed=0):
  """Dark discs on a brighter, noisy background: real-shaped image/mask pairs."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  masks = []
  for _ in range(n):
    cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 7))]
    masks.append((yy - cy)**2 + (xx - cx)**2 <= r * r)
  masks = np.stack(masks)[..., None].astype(np.float32)
  images = (0.6 - 0.4 * masks) * rng.gamma(4.0, 0.25, masks.shape)
  return {'image': np.clip(images, 0, 1).astype(np.float32), 'mask': masks}


def _new_setup(config):
  model = model_lib.create_model(config.model)
  mesh = sharding.create_mesh()
  state = train.create_train_state(0, config, model, steps_per_epoch=10)
  return model, mesh, state, train.compile_train_step(config, mesh)


@pytest.fixture(scope='module')
def default_setup():
  """_new_setup(_config()), shared: its train step compiles once for all the tests that
  train the default config (a state with another optimizer object compiles it again)."""
  return _new_setup(_config())


@pytest.fixture
def setup(default_setup):
  """`setup(config)`: (model, mesh, initial state, compiled train step) of `config`; for the
  default config the shared step and a copy of the shared initial state (the step donates
  the state it is given), else new ones."""
  def make(config):
    if config.to_dict() != _config().to_dict():
      return _new_setup(config)
    model, mesh, state, step = default_setup
    return model, mesh, jax.tree.map(jnp.copy, state), step

  return make


def test_schedule_warms_up_then_decays_to_zero():
  config = _config()
  config.train.warmup_epochs = 2
  config.train.num_epochs = 10
  schedule = train.learning_rate_schedule(config.train, steps_per_epoch=5)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(config.train.learning_rate)
  assert float(schedule(50)) == pytest.approx(0.0, abs=1e-9)


def test_one_train_step_lowers_the_loss_on_a_fixed_batch(setup):
  config = _config()
  _, mesh, state, step = setup(config)
  batch = sharding.global_batch(_batch(), mesh)
  state, first = step(state, batch)
  state, second = step(state, batch)
  assert int(state.step) == 2
  assert float(second['loss']) < float(first['loss'])


def test_ema_warms_up_then_follows_the_configured_decay():
  params = {'w': jnp.zeros(3)}
  target = {'w': jnp.ones(3)}
  # Step 0: decay min(0.99, 1/10) = 0.1, so the average moves 90 % of the way at once.
  np.testing.assert_allclose(train.update_ema(params, target, 0, 0.99)['w'], 0.9)
  # Late: the configured decay; 0 gives the parameters themselves.
  np.testing.assert_allclose(train.update_ema(params, target, 10_000, 0.99)['w'], 0.01,
                             rtol=1e-5)
  np.testing.assert_allclose(train.update_ema(params, target, 5, 0.0)['w'], 1.0)


def test_evaluated_weights_are_the_average_of_the_trained_ones(setup):
  config = _config()
  config.train.ema_decay = 0.5
  _, mesh, state, step = setup(config)
  batch = sharding.global_batch(_batch(), mesh)
  history = [jax.device_get(state.params)]  # Host copies: the step donates the state.
  for _ in range(12):
    state, _ = step(state, batch)
    history.append(jax.device_get(state.params))
  expected = history[0]
  for t, params in enumerate(history[1:]):
    expected = train.update_ema(expected, params, t, 0.5)
  head_kernel = lambda tree: tree['head']['kernel']
  np.testing.assert_allclose(head_kernel(train.inference_variables(state)['params']),
                             head_kernel(expected), rtol=1e-5, atol=1e-7)
  assert not np.allclose(head_kernel(state.ema_params), head_kernel(state.params))


def test_a_few_steps_overfit_a_tiny_batch(setup):
  config = _config()
  _, mesh, state, step = setup(config)
  batch = sharding.global_batch(_batch(n=4, seed=1), mesh)
  losses = []
  for _ in range(60):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.1 * losses[0]
  assert float(metrics['dice_loss']) < 0.15


def test_presence_head_is_trained_only_when_the_model_has_one(setup):
  config = _config()
  batch = _batch()
  batch['mask'][1] = 0.0  # A normal scan in the batch.
  for presence_head in (False, True):
    config.model.presence_head = presence_head
    _, mesh, state, step = setup(config)
    _, metrics = step(state, sharding.global_batch(batch, mesh))
    # Untrained head: BCE near log 2 when present, exactly zero (and not added) when absent.
    assert (float(metrics['presence_loss']) > 0.1) == presence_head
    assert np.isfinite(float(metrics['loss']))


def test_deep_supervision_loss_is_added_only_when_configured_and_is_trained(setup):
  config = _config()
  batch = _batch()
  for levels in (0, 1):
    config.model.deep_supervision = levels
    _, mesh, state, step = setup(config)
    batch_on_mesh = sharding.global_batch(batch, mesh)
    state, first = step(state, batch_on_mesh)
    assert (float(first['deep_supervision_loss']) > 0.1) == bool(levels)
    without_deep = first['dice_loss'] + first['bce_loss'] + (
        config.train.presence_weight * first['presence_loss'])
    assert float(first['loss']) == pytest.approx(
        float(without_deep + first['deep_supervision_loss']), rel=1e-5)
  for _ in range(5):
    state, metrics = step(state, batch_on_mesh)
  assert float(metrics['deep_supervision_loss']) < float(first['deep_supervision_loss'])


def test_nonfinite_batch_leaves_state_unchanged_and_is_reported(setup):
  config = _config()
  _, mesh, state, step = setup(config)
  before = jax.device_get(state.params)
  bad = _batch()
  bad['image'][0, 0, 0, 0] = np.nan
  state, metrics = step(state, sharding.global_batch(bad, mesh))
  assert not bool(metrics['finite'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
  with pytest.raises(FloatingPointError, match='step 7'):
    train._stop_on_nonfinite(jax.device_get(metrics), 7)


def test_checkpoint_round_trip_gives_identical_predictions(setup, tmp_path, caplog):
  config = _config()
  model, mesh, state, step = setup(config)
  for _ in range(3):
    state, _ = step(state, sharding.global_batch(_batch(), mesh))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=2)
  checkpoints.save_latest(3, state, {'epoch': 1})
  checkpoints.save_best(3, train.inference_variables(state), {'val_dice': 0.5, 'epoch': 1})
  checkpoints.close()
  checkpointing.save_config(config, str(tmp_path))

  fresh = train.create_train_state(1, config, model, 10)
  restored, meta = checkpointing.Checkpoints(str(tmp_path), keep=2).restore_latest(fresh)
  assert meta == {'epoch': 1} and int(restored.step) == 3
  caplog.clear()
  _, _, variables, meta = checkpointing.load_inference(str(tmp_path))
  assert meta == {'val_dice': 0.5, 'epoch': 1}
  # Reading is quiet: orbax's "directory is read only" warnings are not shown.
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  images = jnp.asarray(_batch(seed=5)['image'])
  expected = model.apply(train.inference_variables(state), images)
  np.testing.assert_array_equal(model.apply(variables, images), expected)
  np.testing.assert_array_equal(model.apply(train.inference_variables(restored), images),
                                expected)


def test_workdir_with_another_model_shape_is_refused(tmp_path):
  config = _config()
  checkpointing.save_config(config, str(tmp_path))
  config.model.base_features = 8
  with pytest.raises(ValueError, match='config.model=.*Use a new --workdir'):
    checkpointing.save_config(config, str(tmp_path))


def test_config_round_trips_and_a_workdir_of_another_format_is_refused_by_name(tmp_path):
  config = _config()
  checkpointing.save_config(config, str(tmp_path))
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['format_version'] == checkpointing.FORMAT_VERSION
  assert checkpointing.load_config(str(tmp_path)).to_dict() == json.loads(
      config.to_json_best_effort())
  del saved['format_version']  # As every workdir written before the version was recorded.
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(checkpointing.WorkdirMismatchError,
                     match=f'config.json has config format 1; this busi-unet reads format '
                     f'{checkpointing.FORMAT_VERSION}'):
    checkpointing.load_config(str(tmp_path))


def test_a_workdir_from_before_added_and_removed_fields_reads_unless_it_used_one(tmp_path):
  config = _config()
  checkpointing.save_config(config, str(tmp_path))
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['data']['bus_uclm_dir'], saved['data']['folder']['group_pattern']
  saved['model']['attention_gates'] = False  # A removed option, off.
  saved['data']['normal_fraction'] = 0.0
  saved['eval']['split'] = 'validation'  # Removed, and never read: any value reads.
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert checkpointing.load_config(str(tmp_path)).to_dict() == json.loads(
      config.to_json_best_effort())
  saved['data']['normal_fraction'] = 0.25  # A removed option, used: another training stream.
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(checkpointing.WorkdirMismatchError,
                     match='trained with config.data.normal_fraction=0.25, an option'):
    checkpointing.load_config(str(tmp_path))


def test_evaluating_a_workdir_with_another_model_config_names_the_difference(tmp_path):
  checkpointing.save_config(_config(), str(tmp_path))
  other = _config()
  other.model.depth = 3
  with pytest.raises(checkpointing.WorkdirMismatchError, match='config.model=.*depth.*'):
    checkpointing.load_inference(str(tmp_path), other)


def test_chosen_threshold_applies_unless_the_config_asks_for_none():
  config = _config()
  config.eval.threshold_candidates = (0.5, 0.7)
  chosen = checkpointing.with_chosen_threshold(config, {'epoch': 3, 'threshold': 0.7})
  assert chosen.eval.threshold == 0.7 and config.eval.threshold == 0.5  # A copy.
  assert checkpointing.with_chosen_threshold(config, {'epoch': 3}) is config  # Older meta.
  config.eval.threshold_candidates = ()
  assert checkpointing.with_chosen_threshold(config, {'threshold': 0.7}).eval.threshold == 0.5


def test_undefined_metrics_stay_in_the_log_and_out_of_tensorboard(tmp_path, caplog):
  log = train.MetricsLog(str(tmp_path), resume_step=0)
  log.write(2, val_dice=0.5, val_busbra_normal_empty_rate=float('nan'))
  log.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    row = json.loads(f.read())
  assert row['val_dice'] == 0.5 and np.isnan(row['val_busbra_normal_empty_rate'])
  assert 'NaN' not in caplog.text  # tensorboardX warns on every NaN it is given.
  assert os.listdir(tmp_path / 'tensorboard')


def test_training_data_of_a_few_patients_holds_only_their_scans():
  config = _config()
  config.data.train_groups = 5  # Synthetic scans are each their own group.
  train_input, _, _ = train._training_data(config, local_batch=1)
  assert train_input.num_examples == 5
  config.data.train_groups = 0
  assert train._training_data(config, local_batch=1)[0].num_examples == (
      config.data.synthetic.num_train)
