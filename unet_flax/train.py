"""Training: TrainState, jit-compiled train/eval steps, and the epoch loop.

`train_and_evaluate(config, workdir)` is the whole job: it resumes from the workdir's latest
checkpoint, evaluates on the validation split at the original resolution to choose the best
checkpoint (all-image Dice: lesion scans by Dice, normal scans by predicting nothing), and
at the end evaluates that best checkpoint once on the test split.
"""
import functools
import itertools
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from data import input_pipeline
from unet_flax import checkpointing
from unet_flax import config_checks
from unet_flax import evaluate
from unet_flax import losses
from unet_flax import model as model_lib
from unet_flax import progress as progress_lib
from unet_flax import release
from unet_flax import sharding
from unet_flax import visualize


class TrainState(train_state.TrainState):
  batch_stats: Any
  dropout_rng: jax.Array
  ema_params: Any  # Exponential moving average of `params`: what is evaluated and saved.


def learning_rate_schedule(train_config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up, then cosine decay to zero at the last step."""
  total = train_config.num_epochs * steps_per_epoch
  warmup = min(train_config.warmup_epochs * steps_per_epoch, total - 1)
  return optax.warmup_cosine_decay_schedule(0.0, train_config.learning_rate, warmup, total)


def create_optimizer(train_config, schedule) -> optax.GradientTransformation:
  if train_config.optimizer == 'adam':
    opt = optax.adam(schedule)
  elif train_config.optimizer == 'adamw':
    opt = optax.adamw(schedule, weight_decay=train_config.weight_decay)
  else:
    raise ValueError(f'train.optimizer must be one of {config_checks.OPTIMIZERS}, got '
                     f'{train_config.optimizer!r}')
  if train_config.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(train_config.grad_clip_norm), opt)
  return opt


def create_train_state(seed: int, config, model, steps_per_epoch: int) -> TrainState:
  variables = model_lib.init_variables(model, seed, config.data.image_size)
  schedule = learning_rate_schedule(config.train, steps_per_epoch)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=create_optimizer(config.train, schedule), dropout_rng=jax.random.key(seed),
      # A copy: the train step donates the state, and one buffer cannot be donated twice.
      ema_params=jax.tree.map(jnp.copy, variables['params']))


def inference_variables(state: TrainState) -> dict:
  return {'params': state.ema_params, 'batch_stats': state.batch_stats}


def update_ema(ema_params, params, step, decay: float):
  """One step of the parameter EMA, with TensorFlow's warm-up: the effective decay is
  min(decay, (1 + step) / (10 + step)), so early averages are not dominated by the random
  initialisation. decay=0 makes the EMA the parameters themselves.

  Why: with ~50 validation lesion images the raw weights' validation Dice jumps by +-0.02
  between neighbouring epochs; averaged weights move less, so the checkpoint chosen on
  validation is more representative of the model.
  """
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def train_step(state: TrainState, batch, *, dice_weight: float, bce_weight: float,
               presence_weight: float, ema_decay: float):
  """One optimizer step. A non-finite loss or gradient changes nothing but the step count.

  The returned metrics carry `finite`, so the loop can stop with the step's number (or skip
  the batch); the state is never poisoned by a NaN, and neither is any checkpoint written
  from it. The step still advances so that it keeps counting batches, which resuming needs.
  """
  dropout_rng = jax.random.fold_in(state.dropout_rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats', 'aux'], rngs={'dropout': dropout_rng})
    loss, (dice, bce) = losses.dice_bce_loss(logits, batch['mask'], dice_weight, bce_weight)
    aux = updates.get('aux', {})
    presence = deep = jnp.zeros(())
    if 'presence_logits' in aux:  # The model has a presence head.
      presence = losses.presence_loss(aux['presence_logits'][0], batch['mask'])
    if 'deep_logits' in aux:  # The model has deep-supervision heads.
      deep = losses.deep_supervision_loss(aux['deep_logits'], batch['mask'], dice_weight,
                                          bce_weight)
    loss += presence_weight * presence + deep
    return loss, (updates, dice, bce, presence, deep)

  (loss, (updates, dice, bce, presence, deep)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=updates.get('batch_stats', {}))
  new_state = new_state.replace(
      ema_params=update_ema(state.ema_params, new_state.params, state.step, ema_decay))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {'loss': loss, 'dice_loss': dice, 'bce_loss': bce, 'presence_loss': presence,
             'deep_supervision_loss': deep,
             'grad_norm': grad_norm, 'finite': finite}
  return new_state, metrics


def compile_train_step(config, mesh):
  """jit with explicit shardings: batch split over devices, state replicated and donated."""
  step = functools.partial(train_step, dice_weight=config.train.dice_weight,
                           bce_weight=config.train.bce_weight,
                           presence_weight=config.train.presence_weight,
                           ema_decay=config.train.ema_decay)
  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.data_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


class MetricsLog:
  """`metrics.jsonl` plus TensorBoard, written by process 0 only.

  On resume, lines from steps after the restored checkpoint are dropped, so the log continues
  without duplicate steps; so is a line torn by a kill mid-write.
  """

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not self.enabled:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.endswith('\n') and json.loads(line)['step'] <= resume_step]
    with open(self.path, 'w') as f:
      f.writelines(kept)
    self.tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, **scalars) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    for name, value in scalars.items():
      # NaN is "undefined here" (the normal-empty rate of a dataset without normal scans) or
      # a skipped step: metrics.jsonl keeps it; TensorBoard would warn at every write.
      if np.isfinite(value):
        self.tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()


def _stop_on_nonfinite(metrics: dict, step: int) -> None:
  if not bool(metrics['finite']):
    raise FloatingPointError(
        f'Non-finite loss or gradient at step {step} (loss={float(metrics["loss"])}); the '
        'update was not applied and no checkpoint after the last good one was written. '
        'Lower train.learning_rate, enable train.grad_clip_norm, or set '
        'train.skip_nonfinite_updates=True to skip such batches.')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects configs that cannot train, before any data is loaded or anything compiled."""
  config_checks.check(config)
  sharding.check_batch_size(config.train.batch_size)
  sharding.check_batch_size(config.eval.batch_size, 'eval.batch_size')


def _check_steps_per_epoch(steps_per_epoch: int, num_examples: int, batch_size: int) -> None:
  if steps_per_epoch < 1:
    raise config_checks.ConfigError(
        f'config.train.batch_size={batch_size} is larger than the training split '
        f'({num_examples} examples per process): an epoch would have no step. Use a batch '
        f'size of at most {num_examples}.')


def _training_data(config, local_batch: int):
  """(train input, {dataset: validation batches}, {dataset: raw test split}).

  Each process trains on its share of 'train' but evaluates the whole validation and test
  splits, so all compute the same metrics and take the same (collective) checkpoint steps.
  Several datasets (`data.source='busi+busbra'`) are mixed at `data.mix_weights`
  (`input_pipeline.train_input`).
  """
  names = input_pipeline.sources(config.data)
  train, validation, test = {}, {}, {}
  for name in names:
    train[name] = input_pipeline.load_split(config.data, 'train', source=name,
                                            process_index=jax.process_index(),
                                            process_count=jax.process_count())
    if config.data.train_groups:
      groups = input_pipeline.chosen_groups(
          input_pipeline.load_split(config.data, 'train', source=name, groups_only=True),
          config.data.train_groups, config.seed)
      logging.info('Training on %d patients (groups) of %s.', len(groups), name)
      train[name] = input_pipeline.only_groups(train[name], groups)
    validation[name] = input_pipeline.eval_batches(
        input_pipeline.load_split(config.data, 'validation', source=name), config.data,
        batch_size=config.eval.batch_size)
    test[name] = input_pipeline.load_split(config.data, 'test', source=name)
  train_input = input_pipeline.train_input(train, config.data, batch_size=local_batch,
                                           seed=config.seed)
  if isinstance(train_input, input_pipeline.MixedTrainInput):
    logging.info('Training on %s', train_input.describe())
  return train_input, validation, test


def validate(predictor, variables, validation_batches: dict, eval_config) -> dict:
  """Validation scalars; `val_all_images_dice` is what chooses the checkpoint.

  With several datasets every one is scored on its own (`val_<dataset>_...`), and the
  criterion is the mean of their all-image Dice, so each dataset counts equally whatever its
  size, and a dataset with normal scans keeps its say on empty predictions.
  """
  per_dataset = {}
  for name, batches in validation_batches.items():
    summary = predictor.evaluate(variables, batches, eval_config,
                                 desc=f'validation {name}')[1]
    per_dataset[name] = {'dice': summary['lesion']['dice']['mean'],
                         'iou': summary['lesion']['iou']['mean'],
                         'normal_empty_rate': summary['normal']['empty_rate'],
                         'all_images_dice': summary['all_images_dice']}
  scalars = {f'val_{key}': float(np.nanmean([d[key] for d in per_dataset.values()]))
             if any(np.isfinite(d[key]) for d in per_dataset.values()) else float('nan')
             for key in ('dice', 'iou', 'normal_empty_rate', 'all_images_dice')}
  if len(per_dataset) > 1:
    scalars.update({f'val_{name}_{key}': value for name, d in per_dataset.items()
                    for key, value in d.items()})
  return scalars


def _validation_line(epoch: int, scalars: dict, best: dict) -> str:
  line = (f'epoch {epoch}: loss {scalars["epoch_loss"]:.4f}, validation lesion Dice '
          f'{scalars["val_dice"]:.4f}, normal empty rate {scalars["val_normal_empty_rate"]:.3f}, '
          f'all-image Dice {scalars["val_all_images_dice"]:.4f}')
  per_dataset = [f'{key[4:-16]} {value:.4f}' for key, value in scalars.items()
                 if key.endswith('_all_images_dice') and key != 'val_all_images_dice']
  if per_dataset:
    line += f' ({", ".join(per_dataset)})'
  return line + f' (best {best["val_all_images_dice"]:.4f} at epoch {best["epoch"]})'


# The crash tests (docs/reliability.md) set this to N: the run SIGKILLs itself right after
# train step N, so each kill point is exact instead of a race against a polling test.
KILL_AFTER_STEP_ENV = 'BUSI_UNET_KILL_AFTER_STEP'


def _kill_if_asked(step: int) -> None:
  if os.environ.get(KILL_AFTER_STEP_ENV) == str(step):
    os.kill(os.getpid(), signal.SIGKILL)


def _steps_per_epoch(train_input, local_batch: int) -> int:
  """Processes may hold a batch more or less of the split; all must take the same steps."""
  steps = int(multihost_utils.process_allgather(np.int32(train_input.steps_per_epoch)).min())
  _check_steps_per_epoch(steps, train_input.num_examples, local_batch)
  return steps


def _init_from(config, model, workdir: str):
  """(variables, best meta) of `train.init_from` to start from, or None: none is set, or the
  workdir has a checkpoint to resume (a resumed run continues its own). Called before
  anything is written, so a source that does not fit this config leaves the workdir as it
  was."""
  if not config.train.init_from or checkpointing.latest_step(workdir) is not None:
    return None
  return release.initial_variables(config, jax.eval_shape(
      lambda: model_lib.init_variables(model, 0, config.data.image_size)))


def _initialized_from(state: TrainState, start, source: str, mesh) -> TrainState:
  """`state` with the parameters and BatchNorm statistics of `start` (`_init_from` of
  `source`); the EMA starts from those parameters, the optimizer state and the step stay
  fresh."""
  variables, best = start
  logging.info('Starting from the weights of %s (%s).', source, evaluate.best_note(best))
  return state.replace(params=sharding.replicate(variables['params'], mesh),
                       batch_stats=sharding.replicate(variables.get('batch_stats', {}), mesh),
                       ema_params=sharding.replicate(variables['params'], mesh))


def _initial_state(config, model, mesh, steps_per_epoch: int, checkpoints, workdir: str,
                   start=None) -> TrainState:
  """The workdir's latest checkpoint if there is one (it must fit this config), else a new
  state, with the weights of `start` (`_init_from`) if given. Built as replicated global
  arrays, since no process can device_put onto another's devices."""
  state = jax.jit(lambda: create_train_state(config.seed, config, model, steps_per_epoch),
                  out_shardings=sharding.replicated(mesh))()
  restored, meta = checkpoints.restore_latest(state)
  if restored is None:
    return _initialized_from(state, start, config.train.init_from, mesh) if start else state
  if int(restored.step) != meta['epoch'] * steps_per_epoch:
    raise checkpointing.WorkdirMismatchError(
        f'The latest checkpoint in {workdir} ends epoch {meta["epoch"]} at step '
        f'{int(restored.step)}, but this config has {steps_per_epoch} steps per epoch (was '
        'train.batch_size or the training data changed?). Resuming would replay another data '
        'order: use a new --workdir for this config.')
  logging.info('Resumed from step %d (epoch %d)%s.', int(restored.step), meta['epoch'],
               ', not from train.init_from' if config.train.init_from else '')
  return restored


def _train_epoch(state: TrainState, p_train_step, batches, mesh, train_config,
                 log: MetricsLog, progress, epoch: int):
  """One epoch of train steps; returns (state, the epoch's scalars for metrics.jsonl)."""
  epoch_start = time.time()
  step = int(state.step)
  running, skipped = [], 0
  for batch in batches:
    state, metrics = p_train_step(state, sharding.global_batch(batch, mesh))
    step += 1
    progress.update(1)
    _kill_if_asked(step)
    metrics = jax.device_get(metrics)
    if not metrics['finite'] and train_config.skip_nonfinite_updates:
      skipped += 1
      logging.warning('Skipped step %d: non-finite loss or gradient.', step)
      continue
    _stop_on_nonfinite(metrics, step)
    running.append(float(metrics['loss']))
    progress.set_postfix(epoch=epoch + 1, loss=f'{np.mean(running[-20:]):.4f}',
                         refresh=False)
    if step % train_config.log_every_steps == 0:
      log.write(step, epoch=epoch + 1, train_loss=float(np.mean(running[-20:])),
                dice_loss=float(metrics['dice_loss']), bce_loss=float(metrics['bce_loss']),
                presence_loss=float(metrics['presence_loss']),
                deep_supervision_loss=float(metrics['deep_supervision_loss']),
                grad_norm=float(metrics['grad_norm']))
  return state, {'epoch': epoch + 1, 'epoch_loss': float(np.mean(running or np.nan)),
                 'skipped_steps': skipped, 'epoch_seconds': time.time() - epoch_start}


def _fit(state: TrainState, config, mesh, train_input, steps_per_epoch: int, predictor,
         validation_batches: dict, checkpoints, workdir: str) -> TrainState:
  """The epoch loop, from wherever `state` is: validates every `eval_every_epochs` and keeps
  the best checkpoint by validation all-image Dice; keeps the latest every
  `checkpoint_every_epochs`. Returns the final state."""
  p_train_step = compile_train_step(config, mesh)
  start_step = int(state.step)
  best = checkpoints.best_meta() or {}
  log = MetricsLog(workdir, start_step)
  progress = progress_lib.progress_bar(
      total=config.train.num_epochs * steps_per_epoch, initial=start_step, desc='train',
      unit='step', disable=jax.process_index() != 0, dynamic_ncols=True)
  for epoch in range(start_step // steps_per_epoch, config.train.num_epochs):
    batches = itertools.islice(train_input.epoch(epoch), steps_per_epoch)
    state, scalars = _train_epoch(state, p_train_step, batches, mesh, config.train, log,
                                  progress, epoch)
    step, last_epoch = int(state.step), epoch + 1 == config.train.num_epochs
    if (epoch + 1) % config.train.eval_every_epochs == 0 or last_epoch:
      scalars.update(validate(predictor, inference_variables(state), validation_batches,
                              config.eval))
      score = scalars['val_all_images_dice']
      if score > best.get('val_all_images_dice', -1.0):
        best = {'val_all_images_dice': score, 'epoch': epoch + 1, 'step': step}
        checkpoints.save_best(step, inference_variables(state), best)
      progress.write(_validation_line(epoch + 1, scalars, best))
    log.write(step, **scalars)
    if (epoch + 1) % config.train.checkpoint_every_epochs == 0 or last_epoch:
      checkpoints.save_latest(step, state, {'epoch': epoch + 1})
  progress.close()
  log.close()
  if jax.process_index() == 0:
    visualize.training_curves(log.path, os.path.join(workdir, 'training_curves.png'))
  return state


def _best_with_threshold(predictor, checkpoints, state: TrainState, validation_batches: dict,
                         eval_config):
  """(variables, meta) of the best checkpoint, with the threshold chosen on validation saved
  beside it (unless the config lists no candidates)."""
  variables, best = checkpoints.restore_best(
      jax.eval_shape(lambda: inference_variables(state)))
  if eval_config.threshold_candidates:
    threshold, points = predictor.choose_threshold(variables, validation_batches, eval_config)
    candidates = next(iter(points.values()))
    best = {**best, 'threshold': threshold, 'min_sensitivity': eval_config.min_sensitivity,
            'val_all_images_dice_by_threshold': {
                str(t): float(np.mean([p[t]['all_images_dice'] for p in points.values()]))
                for t in candidates},
            'val_operating_points': {name: {str(t): v for t, v in p.items()}
                                     for name, p in points.items()}}
    checkpoints.save_best(best['step'], variables, best)
  return variables, best


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       command: list[str] | None = None) -> dict:
  """Trains, keeps the best checkpoint by validation all-image Dice, evaluates it on test once.

  `command` (main.py's argv) is recorded in the workdir, for `release.export`. Returns
  {dataset: test summary} (see `metrics.summarize`).
  """
  check_config(config)
  checkpointing.check_workdir(config, workdir)
  model = model_lib.create_model(config.model, config.half_precision)
  start = _init_from(config, model, workdir)
  local_batch = config.train.batch_size // jax.process_count()
  train_input, validation_batches, test_splits = _training_data(config, local_batch)
  steps_per_epoch = _steps_per_epoch(train_input, local_batch)
  # Only now: a run whose init_from does not fit, or whose data are missing, leaves no workdir.
  if jax.process_index() == 0:
    checkpointing.save_config(config, workdir)
    if command:
      release.record_command(workdir, command)
  if config.data.source == 'synthetic':
    logging.warning('DEMO RUN on synthetic ultrasound-like images: the numbers say nothing '
                    'about BUSI.')

  mesh = sharding.create_mesh()
  predictor = evaluate.Predictor(model, mesh, config.eval.batch_size, config.eval.flip_tta)
  checkpoints = checkpointing.Checkpoints(workdir, config.train.keep_checkpoints)
  state = _initial_state(config, model, mesh, steps_per_epoch, checkpoints, workdir, start)
  state = _fit(state, config, mesh, train_input, steps_per_epoch, predictor,
               validation_batches, checkpoints, workdir)
  variables, best = _best_with_threshold(predictor, checkpoints, state, validation_batches,
                                         config.eval)
  checkpoints.close()

  logging.info('Evaluating the best checkpoint (%s) on test.', evaluate.best_note(best))
  config = checkpointing.with_chosen_threshold(config, best)
  return {name: evaluate.evaluate_and_report(predictor, variables, config, name, split, 'test',
                                             workdir, checkpoint_note=evaluate.best_note(best))
          for name, split in test_splits.items()}
