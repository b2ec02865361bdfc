"""What each config field may hold, checked in one pass before any data or model work.

Pure Python (no JAX, no TensorFlow), so `main.py` refuses a mistyped value in a fraction of
a second with one line that names the field, the value and what is allowed, instead of after
the start-up or deep inside a library. The modules that use a field keep no second copy of
its rule; the choices of the string fields live here for that reason.
"""
import math
from numbers import Real

import ml_collections

from data import names

NORMS = ('batch', 'group', 'none')
UPSAMPLES = ('transpose', 'resize')
OPTIMIZERS = ('adam', 'adamw')


class ConfigError(ValueError):
  """A config field (or flag) holds a value the run cannot use; a usage error."""


def _interval(low: float, high: float, closed_low: bool, closed_high: bool):
  """(test, description) of a finite number in the interval."""
  def test(value):
    return (low <= value if closed_low else low < value) and (
        value <= high if closed_high else value < high)
  text = f'in {"[" if closed_low else "("}{low:g}, {high:g}{"]" if closed_high else ")"}'
  return test, text


_COUNT = (lambda value: value >= 1, 'an integer >= 1')
_POSITIVE = (lambda value: value > 0, '> 0')
_NON_NEGATIVE = (lambda value: value >= 0, '>= 0')
_FRACTION = _interval(0, 1, True, False)  # A share that must leave something else.
# A threshold on probabilities: 0 or 1 would mark every pixel, or none.
PROBABILITY = _interval(0, 1, False, False)

_RULES = {
    'data.shuffle_buffer': _COUNT,
    'data.normal_share': _FRACTION,
    'data.train_groups': _NON_NEGATIVE,
    'data.synthetic.num_train': _COUNT,
    'data.synthetic.num_validation': _COUNT,
    'data.synthetic.num_test': _COUNT,
    'data.augment.max_rotation_deg': _interval(0, 180, True, True),
    'data.augment.max_scale': _FRACTION,  # Zoom 1 +- max_scale must stay positive.
    'data.augment.max_shift': _interval(0, 1, True, True),
    'data.augment.brightness': _interval(0, 1, True, True),
    'data.augment.contrast': _interval(0, 1, True, True),  # 1 +- contrast keeps the sign.
    'data.augment.gamma': _NON_NEGATIVE,
    'data.augment.speckle_std': _NON_NEGATIVE,
    'model.base_features': _COUNT,
    'model.depth': _COUNT,
    'model.dropout': _FRACTION,
    'train.batch_size': _COUNT,
    'train.num_epochs': _COUNT,
    'train.learning_rate': _POSITIVE,
    'train.warmup_epochs': _NON_NEGATIVE,
    'train.weight_decay': _NON_NEGATIVE,
    'train.grad_clip_norm': _NON_NEGATIVE,
    'train.dice_weight': _NON_NEGATIVE,
    'train.bce_weight': _NON_NEGATIVE,
    'train.presence_weight': _NON_NEGATIVE,
    'train.ema_decay': _FRACTION,
    'train.log_every_steps': _COUNT,
    'train.eval_every_epochs': _COUNT,
    'train.checkpoint_every_epochs': _COUNT,
    'train.keep_checkpoints': _COUNT,
    'eval.batch_size': _COUNT,
    'eval.threshold': PROBABILITY,
    'eval.min_lesion_fraction': _FRACTION,
    'eval.min_sensitivity': _interval(0, 1, True, True),
    'benchmark.steps': _COUNT,
}
_CHOICES = {'model.norm': NORMS, 'model.upsample': UPSAMPLES, 'train.optimizer': OPTIMIZERS}


def _field(config: ml_collections.ConfigDict, name: str):
  value = config
  for key in name.split('.'):
    value = value[key]
  return value


def _is_number(value) -> bool:
  return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_range(name: str, value, rule) -> None:
  """Raises ConfigError unless `value` is a finite number that passes `rule`."""
  test, allowed = rule
  if not (_is_number(value) and test(value)):
    raise ConfigError(f'{name}={value!r} must be {allowed}.')


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first field that cannot run (see module docstring)."""
  for name, rule in _RULES.items():
    check_range(f'config.{name}', _field(config, name), rule)
  for name, choices in _CHOICES.items():
    if _field(config, name) not in choices:
      raise ConfigError(f'config.{name}={_field(config, name)!r} must be one of '
                        f'{", ".join(choices)}.')
  factor = 2**config.model.depth
  size = config.data.image_size
  if not (_is_number(size) and size >= factor and size % factor == 0):
    nearest = factor * max(1, round(size / factor)) if _is_number(size) else 8 * factor
    raise ConfigError(f'config.data.image_size={size!r} must be a positive multiple of '
                      f'2**model.depth = {factor} (e.g. {nearest}).')
  if not 0 <= config.model.deep_supervision < config.model.depth:
    raise ConfigError(f'config.model.deep_supervision={config.model.deep_supervision!r} '
                      f'must be in [0, model.depth - 1 = {config.model.depth - 1}].')
  if not config.train.dice_weight + config.train.bce_weight:
    raise ConfigError('config.train.dice_weight and config.train.bce_weight are both 0: the '
                      'mask would get no loss.')
  candidates = tuple(config.eval.threshold_candidates)
  if not all(_is_number(t) and PROBABILITY[0](t) for t in candidates):
    raise ConfigError(f'config.eval.threshold_candidates={candidates} must each be '
                      f'{PROBABILITY[1]}.')
  try:
    names.sources(config.data)
    names.mix_weights(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
