"""The dataset and split names a user writes in a config or on the command line.

Free of TensorFlow, so that `main.py` checks them in a fraction of a second, before anything
heavy is imported; `input_pipeline` loads what they name.
"""
from collections.abc import Callable
import math
import re

SPLITS = ('train', 'validation', 'test')
# Dataset names that `data.source` accepts ('busi+busbra' trains on both). 'folder' is the
# user's own folder of images and masks, described by `data.folder`.
SOURCES = ('busi', 'busbra', 'bus_uclm', 'folder', 'synthetic')
# The config.data field holding each dataset's files (the synthetic one is generated).
DOWNLOAD_FIELDS = {'busi': 'manual_dir', 'busbra': 'busbra_dir', 'bus_uclm': 'bus_uclm_dir',
                   'folder': 'folder.dir'}

# One term of a TFDS split expression: a split name, optionally sliced ('test[:50%]').
_SPLIT_TERM = re.compile(r'(?P<name>[\w-]+)(?:\[(?P<slice>[^\]]*)\])?')
_SLICE = re.compile(r'(-?[\d_.]+(%|shard)?)?(:(-?[\d_.]+(%|shard)?)?)?')


class DataSettingError(Exception):
  """A data problem whose remedy is a config.data field the user sets.

  The data layer knows the fields, not the command line: `message(setting)` words the advice
  with `setting(field)`, how the caller lets the user set config.data.<field> (main.py: the
  flag of its mode); str() names the config overrides, --config.data.<field>.
  """

  def __init__(self, message: Callable[[Callable[[str], str]], str]):
    self.message = message
    super().__init__(message(lambda field: f'--config.data.{field}'))


class MissingDownloadError(DataSettingError, FileNotFoundError):
  """A dataset that is not built has no usable download where its config.data field points."""


def sources(data_config) -> tuple[str, ...]:
  """The dataset names of `data.source` ('busi+busbra' -> ('busi', 'busbra'))."""
  names = tuple(name.strip() for name in data_config.source.split('+'))
  unknown = [name for name in names if name not in SOURCES]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f'config.data.source={data_config.source!r}: expected one or more of '
                     f'{", ".join(SOURCES)}, joined by "+", each once.')
  return names


def mix_weights(data_config, datasets: tuple[str, ...] | None = None) -> dict[str, float]:
  """{dataset: weight} as `data.mix_weights` ('busi=1,busbra=1') gives them, unnormalised;
  {} when it is empty. Each of `datasets` (default: those of `data.source`) needs one
  positive weight, and no other dataset may have one."""
  if not data_config.mix_weights:
    return {}
  datasets = datasets or sources(data_config)
  weights = {}
  items = data_config.mix_weights.split(',')
  for item in items:
    name, _, value = item.partition('=')
    try:
      weights[name.strip()] = float(value)
    except ValueError:
      weights[name.strip()] = math.nan
  if (len(weights) != len(items) or set(weights) != set(datasets) or
      not all(0 < weight < math.inf for weight in weights.values())):
    raise ValueError(f'config.data.mix_weights={data_config.mix_weights!r} must give a '
                     f'positive weight to each of {", ".join(datasets)} (e.g. '
                     f'"{"=1,".join(datasets)}=1").')
  return weights


def check_split(expression: str, what: str, *, slices: bool = True) -> None:
  """Raises ValueError unless `expression` joins split names by '+', each optionally
  sliced as TFDS slices them (`slices=False`: the synthetic dataset, which TFDS does not
  load). `what` names where the expression came from, e.g. '--split'."""
  for term in expression.split('+'):
    match = _SPLIT_TERM.fullmatch(term.strip())
    if not (match and match['name'] in SPLITS and
            (match['slice'] is None or slices and _SLICE.fullmatch(match['slice']))):
      example = '"test[:50%]" or "train+validation"' if slices else '"train+validation"'
      raise ValueError(f'{what}={expression!r}: expected split names ({", ".join(SPLITS)}) '
                       f'joined by "+"{", each optionally sliced" if slices else ""}, e.g. '
                       f'{example}' + ('' if slices else
                                       ' (the synthetic dataset has no slices)') + '.')
