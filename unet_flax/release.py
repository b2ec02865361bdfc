"""Release models: a trained model as one small folder that predicts with nothing else.

`export(workdir, folder)` writes, from the workdir's best checkpoint (the one evaluate and
predict use):

  variables.msgpack  the inference variables {'params', 'batch_stats'} as checkpointed (the
                     weight EMA), in float16 and flax's msgpack format:
                     `flax.serialization.msgpack_restore(open(path, 'rb').read())` is the
                     nested dict of numpy arrays that `unet_flax.model.create_model(
                     config.model)` applies once cast to float32 (as loading here does);
                     orbax, optimizer state and training code are not needed. float16 halves
                     the CPU config's 31 MB to 16 MB; on 203 scans of BUSI, BUS-BRA and
                     BUS-UCLM, rounding a CPU-config model's weights so changed 0.001 % of the
                     mask pixels (mask Dice to float32's: mean 0.9996, lowest 0.96) and no
                     scan's emptiness.
  config.json        the workdir's config (`checkpointing.load_config` reads it) with the
                     threshold chosen on validation, and the data locations of
                     configs/default.py: the training machine's paths mean nothing elsewhere.
  model.json         the sha256 of variables.msgpack, checked on every load; the threshold and
                     speck size; the checkpoint's epoch and validation scores; the git commit
                     at export and each training command the workdir recorded (with its
                     commit); the test summaries of the workdir's eval/*/test/.

Other files in the folder (a model card) are left alone. `load_model` reads a release folder
or a training workdir alike, so every mode and `train.init_from` take either.
"""
import glob
import hashlib
import json
import os
import re
import subprocess

from absl import logging
import flax.serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import configs
from configs import default
from unet_flax import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = configs.RELEASE_MODEL_DIR
VARIABLES_FILE = 'variables.msgpack'
MANIFEST_FILE = 'model.json'
# In a workdir: one JSON line per training run into it (its command and commit).
COMMANDS_FILE = 'commands.jsonl'
# The layout of model.json; a folder of another one is refused by name.
FORMAT_VERSION = 1
STORED_DTYPE = np.float16


class ChecksumError(ValueError):
  """A release file whose sha256 is not the one its model.json records."""


class ModelMismatchError(ValueError):
  """Variables that do not fit the model they are meant for (another architecture)."""


def source_commit() -> dict | None:
  """The repository's git commit and whether tracked files differ from it; None when the
  code is not a git checkout (a downloaded archive) or git is missing."""
  def git(*args):
    return subprocess.run(['git', '-C', ROOT, *args], capture_output=True, text=True,
                          check=True).stdout.strip()
  try:
    return {'commit': git('rev-parse', 'HEAD'),
            'uncommitted_changes': bool(git('status', '--porcelain', '--untracked-files=no'))}
  except (OSError, subprocess.CalledProcessError):
    return None


def _portable(arg: str) -> str:
  """A command-line argument with an absolute path made relative to the repository."""
  flag, equals, value = arg.partition('=') if arg.startswith('-') else ('', '', arg)
  if os.path.isabs(value):
    value = os.path.relpath(value, ROOT)
  return flag + equals + value


def record_command(workdir: str, argv: list[str]) -> None:
  """Appends the command that trains into `workdir`, and the code's commit, to its
  commands.jsonl (a resumed run adds a line). Absolute paths are written relative to the
  repository, so the record names no machine."""
  with open(os.path.join(workdir, COMMANDS_FILE), 'a') as f:
    f.write(json.dumps({'argv': ['python'] + [_portable(arg) for arg in argv],
                        'code': source_commit()}) + '\n')


def _training_commands(workdir: str) -> list[dict]:
  path = os.path.join(workdir, COMMANDS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith('\n')]


def _test_summaries(workdir: str) -> dict:
  """{dataset: key numbers} of each test report under `workdir`/eval/."""
  summaries = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'eval', '*', 'test', 'summary.json'))):
    with open(path) as f:
      summary = json.load(f)
    lesion = summary['lesion']
    # The protocol names the evaluated workdir as typed; the folder's name says enough.
    protocol = re.sub(r'best of (\S+),', lambda m: f'best of {os.path.basename(m[1])},',
                      summary['protocol'])
    summaries[os.path.basename(os.path.dirname(os.path.dirname(path)))] = {
        'protocol': protocol, 'num_images': summary['num_images'],
        **{f'lesion_{metric}': {key: lesion[metric][key] for key in ('mean', 'ci95', 'n')}
           for metric in ('dice', 'iou', 'hd95')},
        'pooled_dice': summary['pooled_dice'],
        'normal_empty_rate': summary['normal']['empty_rate'],
        'normal_images': summary['normal']['n'],
        'all_images_dice': summary['all_images_dice'],
        'image_level': summary.get('image_level')}
  return summaries


def _with_default_locations(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every data location (data.*_dir, data.folder.dir) of configs/default.py."""
  defaults = default.get_config().data
  config = ml_collections.ConfigDict(config.to_dict())
  for name in config.data:
    if name.endswith('_dir') and name in defaults:
      config.data[name] = defaults[name]
  config.data.folder.dir = defaults.folder.dir
  return config


def _strict_json(value):
  """`value` with NaN (a metric undefined on that data) as null, so model.json is JSON that
  any reader parses, not Python's NaN extension."""
  if isinstance(value, dict):
    return {key: _strict_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict_json(item) for item in value]
  return None if isinstance(value, float) and value != value else value


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _write(path: str, data: bytes) -> None:
  """Write-then-rename: a killed export leaves the old file or the new one, never a torn one."""
  with open(path + '.tmp', 'wb') as f:
    f.write(data)
  os.replace(path + '.tmp', path)


def stored_variables(variables) -> dict:
  """`variables` as variables.msgpack holds them (numpy, `STORED_DTYPE`)."""
  stored = jax.tree.map(lambda x: np.asarray(x, STORED_DTYPE), jax.device_get(variables))
  if not all(np.isfinite(x).all() for x in jax.tree.leaves(stored)):
    raise ValueError(f'The variables exceed the range of {np.dtype(STORED_DTYPE).name}.')
  return stored


def export(workdir: str, folder: str) -> dict:
  """Writes the release folder of `workdir`'s best checkpoint (module docstring); returns
  the model.json it wrote."""
  if os.path.isdir(os.path.join(folder, 'checkpoints')):
    raise checkpointing.WorkdirMismatchError(
        f'{folder} is a training workdir; export the model into a folder of its own.')
  config, _, variables, best = checkpointing.load_inference(workdir)
  stored = stored_variables(variables)
  data = flax.serialization.to_bytes(stored)
  manifest = {
      'format_version': FORMAT_VERSION,
      'variables': {'file': VARIABLES_FILE, 'sha256': _sha256(data), 'bytes': len(data),
                    'dtype': np.dtype(STORED_DTYPE).name,
                    'parameters': sum(x.size for x in jax.tree.leaves(variables['params']))},
      'threshold': config.eval.threshold,
      'min_lesion_fraction': config.eval.min_lesion_fraction,
      'best': best,
      'exported_from': {'workdir': os.path.basename(os.path.normpath(workdir)),
                        'code': source_commit()},
      'training_commands': _training_commands(workdir),
      'test': _test_summaries(workdir)}
  os.makedirs(folder, exist_ok=True)
  _write(os.path.join(folder, VARIABLES_FILE), data)
  checkpointing.write_config(_with_default_locations(config), folder)
  # Last: until it is written, the folder's checksum does not match and loading refuses it.
  _write(os.path.join(folder, MANIFEST_FILE),
         json.dumps(_strict_json(manifest), indent=2, sort_keys=True,
                    allow_nan=False).encode() + b'\n')
  return manifest


def is_release(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, MANIFEST_FILE))


def _manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST_FILE)
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get('format_version') != FORMAT_VERSION:
    raise checkpointing.WorkdirMismatchError(
        f'{path} has release format {manifest.get("format_version")}; this busi-unet reads '
        f'format {FORMAT_VERSION}. Use the busi-unet release that exported it.')
  return manifest


def _verified_bytes(folder: str, manifest: dict) -> bytes:
  path = os.path.join(folder, manifest['variables']['file'])
  with open(path, 'rb') as f:
    data = f.read()
  expected, actual = manifest['variables']['sha256'], _sha256(data)
  if actual != expected:
    raise ChecksumError(
        f'{path} is damaged or was replaced: its sha256 is {actual}, but '
        f'{os.path.join(folder, MANIFEST_FILE)} expects {expected}. Restore the file (e.g. '
        'git checkout, or download it again) or export the model again.')
  return data


def differences(expected, actual) -> list[str]:
  """Where two variable trees differ: missing or unexpected arrays, or other shapes."""
  want = traverse_util.flatten_dict(expected, sep='/')
  got = traverse_util.flatten_dict(actual, sep='/')
  return ([f'{name} missing' for name in want if name not in got] +
          [f'{name} unexpected' for name in got if name not in want] +
          [f'{name} has shape {got[name].shape}, not {want[name].shape}'
           for name in want if name in got and got[name].shape != want[name].shape])


def load_release(folder: str, config: ml_collections.ConfigDict | None = None):
  """(config, model, variables, best meta) of a release folder, as
  `checkpointing.load_inference` gives them for a workdir; the checksum is checked first."""
  manifest = _manifest(folder)
  data = _verified_bytes(folder, manifest)
  config, model, abstract = checkpointing.inference_model(folder, config)
  variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                           flax.serialization.msgpack_restore(data))
  problems = differences(abstract, variables)
  if problems:
    raise ModelMismatchError(
        f'{os.path.join(folder, VARIABLES_FILE)} does not fit the model of its config.json '
        f'({"; ".join(problems[:3])}): export the model again.')
  best = manifest['best']
  return checkpointing.with_chosen_threshold(config, best), model, variables, best


def load_model(path: str, config: ml_collections.ConfigDict | None = None,
               threshold: float | None = None):
  """`load_release` for a release folder, else `checkpointing.load_inference` (a workdir);
  `threshold`, if given, replaces the config's (the one chosen on validation)."""
  load = load_release if is_release(path) else checkpointing.load_inference
  config, model, variables, best = load(path, config)
  if threshold is not None:
    config.eval.threshold = threshold
  return config, model, variables, best


def default_model() -> str:
  """`MODEL_DIR`, if this copy of the repository has the release model."""
  if not is_release(MODEL_DIR):
    raise FileNotFoundError(
        f'No release model in {MODEL_DIR} ({MANIFEST_FILE} is missing): give '
        '--workdir=<a training run> or --model=<a folder written by --mode=release>.')
  return MODEL_DIR


def _differing_fields(source: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict) -> list[str]:
  """'config.<field> (<source value> there, <value> here)' for each model field, and the
  input size, in which the two configs differ."""
  there = {f'model.{k}': v for k, v in source.model.items()}
  here = {f'model.{k}': v for k, v in config.model.items()}
  there['data.image_size'], here['data.image_size'] = (source.data.image_size,
                                                       config.data.image_size)
  return [f'config.{name} ({there.get(name)} there, {here.get(name)} here)'
          for name in sorted(set(there) | set(here)) if there.get(name) != here.get(name)]


def initial_variables(config: ml_collections.ConfigDict, expected) -> tuple[dict, dict]:
  """(variables, best meta) of `config.train.init_from` (a release folder or a workdir) to
  start training from; `expected` holds this config's variables (only shapes are read).

  The parameter shapes must be equal; settings that keep them (the input size, dropout,
  half precision) may differ, and are logged: fine-tuning at another input size is allowed,
  as convolutions apply at any size.
  """
  path = config.train.init_from
  if not os.path.isdir(path):
    raise FileNotFoundError(f'config.train.init_from={path}: no such folder (give a release '
                            'model folder or a training workdir).')
  source, _, variables, best = load_model(path)
  fields = _differing_fields(source, config)
  problems = differences(expected, variables)
  if problems:
    raise ModelMismatchError(
        f'config.train.init_from={path} holds another architecture than this config: '
        f'{", ".join(fields) or "; ".join(problems[:3])}. Set those fields as in '
        f'{os.path.join(path, checkpointing.CONFIG_FILE)}, or train from scratch with '
        '--config.train.init_from=')
  if fields:
    logging.warning('train.init_from=%s was trained with other settings: %s.', path,
                    ', '.join(fields))
  return variables, best
