"""Orbax checkpoints: the latest K for resuming, and the best by validation all-image Dice.

Two `CheckpointManager`s under `<workdir>/checkpoints/`: `latest/` keeps the full train state
(parameters, BatchNorm statistics, optimizer state) of the last K epochs so that a re-run
resumes; `best/` keeps only the inference variables of the epoch with the highest validation
Dice. Orbax writes into a `*.orbax-checkpoint-tmp*` directory and renames it when complete, so
a run killed mid-save never resumes from a half-written checkpoint; the next training run
deletes such leftovers.
"""
import functools
import json
import os

from absl import logging as absl_logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from configs import default as default_config
from unet_flax import model as model_lib

CONFIG_FILE = 'config.json'


class UnreadableCheckpointError(RuntimeError):
  """A checkpoint directory exists but cannot be restored (corrupt, or another format)."""


def _manager(directory: str, max_to_keep: int | None) -> ocp.CheckpointManager:
  read_only = max_to_keep is None
  # Orbax warns that a read-only manager is read-only, twice per manager and so four times per
  # evaluate or predict; asked for, it is no news.
  verbosity = absl_logging.get_verbosity()
  if read_only:
    absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only, enable_async_checkpointing=False))
  finally:
    absl_logging.set_verbosity(verbosity)


def _restore(manager: ocp.CheckpointManager, step: int, **args):
  """manager.restore, with any failure turned into an error that names the directory."""
  path = os.path.join(str(manager.directory), str(step))
  try:
    return manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
    raise UnreadableCheckpointError(
        f'Cannot read the checkpoint {path} ({type(e).__name__}: {e}). Delete that directory '
        'to fall back to an older checkpoint, or use a new --workdir to start fresh.') from e


class Checkpoints:
  """The two managers of one workdir.

  `keep=None` opens them read-only: evaluate/predict may run beside a training run and must
  neither delete its in-progress save nor create directories.
  """

  def __init__(self, workdir: str, keep: int | None = None):
    root = os.path.join(workdir, 'checkpoints')
    self.latest = _manager(os.path.join(root, 'latest'), keep)
    self.best = _manager(os.path.join(root, 'best'), None if keep is None else 1)

  def save_latest(self, step: int, state, meta: dict) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, abstract_state):
    """Returns (state, meta) of the newest complete checkpoint, or (None, None)."""
    step = self.latest.latest_step()
    if step is None:
      return None, None
    restored = _restore(self.latest, step, state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore())
    return restored.state, restored.meta

  def save_best(self, step: int, variables, meta: dict) -> None:
    # A run killed between saving best and latest replays this step after resuming.
    if step in self.best.all_steps():
      self.best.delete(step)
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)

  def best_meta(self) -> dict | None:
    step = self.best.latest_step()
    if step is None:
      return None
    return _restore(self.best, step, meta=ocp.args.JsonRestore()).meta

  def restore_best(self, abstract_variables):
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f'No best checkpoint under {self.best.directory}: train first '
                              '(the best checkpoint is written after the first evaluation).')
    restored = _restore(self.best, step, variables=ocp.args.StandardRestore(abstract_variables),
                        meta=ocp.args.JsonRestore())
    return restored.variables, restored.meta

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def latest_step(workdir: str) -> int | None:
  """The step of the workdir's newest complete checkpoint, None if there is none to resume;
  creates nothing."""
  checkpoints = Checkpoints(workdir)
  try:
    return checkpoints.latest.latest_step()
  finally:
    checkpoints.close()


# The layout of config.json this code reads; bump it when a field's meaning changes or a field
# the model or evaluation needs is added. Workdirs of another layout are refused by name
# rather than silently read with today's defaults.
# 1: every workdir written before the version was recorded. 3: eval.min_lesion_fraction (specks
# removed from the mask) replaced eval.min_lesion_area (a pixel count used by the metric only).
FORMAT_VERSION = 3


class WorkdirMismatchError(ValueError):
  """A workdir whose config.json does not fit this run (another model, data or version)."""


def _lookup(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for key in dotted.split('.'):
    value = value[key]
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


# What the checkpoints of a workdir depend on: another value cannot resume or read them.
_CHECKPOINT_FIELDS = ('model', 'data.image_size', 'half_precision')


def check_workdir(config: ml_collections.ConfigDict, workdir: str,
                  fields: tuple[str, ...] = _CHECKPOINT_FIELDS + ('data.source',)) -> None:
  """Refuses a workdir trained with other values of `fields` than `config` has.

  Resuming it would either crash inside orbax or, worse, silently train a different
  experiment than the one configured; reading it with another model cannot work either.
  The checkpoints are fine for their own config, so the advice is never to delete them.
  """
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return
  saved = load_config(workdir)
  for name in fields:
    old, new = _lookup(saved, name), _lookup(config, name)
    if old != new:
      raise WorkdirMismatchError(
          f'{os.path.join(workdir, CONFIG_FILE)} was written for config.{name}={old}, but '
          f'this run asks for {new}: its checkpoints belong to another experiment. Use a new '
          '--workdir for this config (or run this workdir with its own config.json).')


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json (with `FORMAT_VERSION`), after `check_workdir`."""
  check_workdir(config, workdir)
  write_config(config, workdir)


def write_config(config: ml_collections.ConfigDict, folder: str) -> None:
  """`folder`/config.json with `FORMAT_VERSION`, whatever was there before."""
  os.makedirs(folder, exist_ok=True)
  saved = {'format_version': FORMAT_VERSION,
           **json.loads(config.to_json_best_effort(sort_keys=True))}
  path = os.path.join(folder, CONFIG_FILE)
  # Write-then-rename: a kill mid-write must not leave a torn config.json that blocks resuming.
  with open(path + '.tmp', 'w') as f:
    json.dump(saved, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


# Fields added to configs/default.py without a format change: their defaults keep what a
# workdir of this format did (where a download lives, folder options off), so a config.json
# written without them reads with the defaults (eval.min_sensitivity acts only where training
# chooses a threshold, so a trained workdir keeps its own).
_ADDED_FIELDS = ('data.bus_uclm_dir', 'data.folder.csv_delimiter', 'data.folder.group_pattern',
                 'data.folder.label_colours', 'data.folder.exclude', 'eval.min_sensitivity',
                 'data.normal_share', 'data.train_groups')


# Options measured, not adopted and removed (docs/experiments.md), with the value that meant
# "off": a workdir trained with one off reads as if it never had it; one that used it is
# refused, since this code would run another model or data than it trained. A field no code
# ever read (None: eval.split, where evaluate takes --split) goes whatever it holds.
_REMOVED_FIELDS = {'data.normal_fraction': 0.0, 'data.lesion_free_crops': 0.0,
                   'data.augment.frame_crop': 0.0, 'model.attention_gates': False,
                   'eval.split': None}


def _node(config: ml_collections.ConfigDict, dotted: str):
  """(the ConfigDict holding field `dotted`, the field's name)."""
  *parents, field = dotted.split('.')
  return functools.reduce(lambda c, key: c[key], parents, config), field


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config.json; one of another `FORMAT_VERSION` is refused with its version."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir!r} a training workdir?')
  with open(path) as f:
    saved = json.load(f)
  version = saved.pop('format_version', 1)
  if version != FORMAT_VERSION:
    raise WorkdirMismatchError(
        f'{path} has config format {version}; this busi-unet reads format {FORMAT_VERSION}. '
        'Use the busi-unet release that trained it, or retrain into a new --workdir.')
  config = ml_collections.ConfigDict(saved)
  defaults = default_config.get_config()
  for name in _ADDED_FIELDS:
    node, field = _node(config, name)
    if field not in node:
      node[field] = _lookup(defaults, name)
  for name, off in _REMOVED_FIELDS.items():
    node, field = _node(config, name)
    if field in node:
      if off is not None and node[field] != off:
        raise WorkdirMismatchError(
            f'{path} was trained with config.{name}={node[field]}, an option this busi-unet '
            'no longer has (docs/experiments.md says why). Use the busi-unet release that '
            'trained it.')
      del node[field]
  return config


def with_chosen_threshold(config: ml_collections.ConfigDict, meta: dict):
  """`config` with `eval.threshold` set to the one chosen on validation for this checkpoint
  (`meta['threshold']`), unless the config asks for none to be chosen."""
  if not config.eval.threshold_candidates or 'threshold' not in meta:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.threshold = meta['threshold']
  return config


def inference_model(folder: str, config: ml_collections.ConfigDict | None = None):
  """(config, model, abstract variables) for the model saved in `folder` (its config.json,
  or `config` if it fits the saved one), so its variables can be restored."""
  if config is None:
    config = load_config(folder)
  else:
    check_workdir(config, folder, _CHECKPOINT_FIELDS)
  model = model_lib.create_model(config.model, config.half_precision)
  abstract = jax.eval_shape(
      lambda: model_lib.init_variables(model, 0, config.data.image_size))
  return config, model, abstract


def load_inference(workdir: str, config: ml_collections.ConfigDict | None = None):
  """(config, model, variables, meta) of a workdir's best checkpoint, for evaluate/predict.

  `meta` says which epoch it is and the validation score that chose it, for the protocol
  sentence; the returned config carries the threshold chosen with it (`with_chosen_threshold`).
  """
  config, model, abstract = inference_model(workdir, config)
  checkpoints = Checkpoints(workdir)
  try:
    variables, meta = checkpoints.restore_best(abstract)
  finally:
    checkpoints.close()
  return with_chosen_threshold(config, meta), model, variables, meta
