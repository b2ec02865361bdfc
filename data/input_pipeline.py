"""tf.data from raw dataset examples (BUSI, BUS-BRA, a user's folder, synthetic) to numpy
batches for JAX.

Decoding and resizing happen once and are cached in memory; per-epoch work (shuffle,
augmentation) runs on top of that cache with seeds derived from (seed, epoch, example index),
so epoch e sees the same data whether or not training was resumed in between. Several
datasets train together through `MixedTrainInput`, which samples them with fixed weights.

TensorFlow only feeds the host; a program that also runs JAX hides the GPUs from TF before
its first op, as main.py does.
"""
from collections.abc import Iterable, Iterator, Mapping
import os

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data import augment
from data import classes
from data import names as names_lib
from data import provenance
from data import synthetic
from data.names import SPLITS, sources  # pylint: disable=unused-import


def _tfds_data_dir(data_config: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(
      data_config.tfds_data_dir or os.environ.get('TFDS_DATA_DIR') or
      tfds.core.constants.DATA_DIR)


def is_built(data_config: ml_collections.ConfigDict) -> bool:
  """Whether the BUSI TFDS build of this version exists where the config points (no data is
  read, nothing is built)."""
  from data import busi  # pylint: disable=g-import-not-at-top,unused-import  # Registers it.
  return tfds.builder('busi', data_dir=_tfds_data_dir(data_config)).is_prepared()


def _load_busi(data_config: ml_collections.ConfigDict, split,
               groups_only: bool = False) -> tf.data.Dataset:
  """The BUSI builder's split; fails fast, before any TFDS work, when there is no data."""
  # Importing the builder package registers 'busi' with TFDS.
  from data.busi import dataset_files  # pylint: disable=g-import-not-at-top
  data_dir = _tfds_data_dir(data_config)
  source = manual_dir = os.path.abspath(os.path.expanduser(data_config.manual_dir))
  # TFDS wants a folder as manual dir; an archive given by path is found in its folder.
  if os.path.isfile(manual_dir):
    manual_dir = os.path.dirname(manual_dir)
  builder = tfds.builder('busi', data_dir=data_dir)
  return _prepare(builder, data_dir, manual_dir, dataset_files.locate, '',
                  'manual_dir', source).as_dataset(split=split, shuffle_files=False,
                                                   decoders=_decoders(builder, groups_only))


def _prepare(builder: tfds.core.DatasetBuilder, data_dir: str, manual_dir: str,
             can_build, reading: str, field: str, source: str = ''):
  """Builds `builder` (in the TFDS `data_dir`) from `manual_dir` once; refuses a build made
  from other files than `source` (default: the manual dir) holds now. `field` is the
  config.data field that names the manual dir.

  `can_build(manual_dir)` raises the builder's format error (a ValueError) when the manual
  dir cannot build the dataset: that is reported before any TFDS work starts.
  """
  source = source or manual_dir
  if builder.is_prepared():
    provenance.check(builder.data_dir, source, reading, field, exclude=data_dir)
    return builder
  name = builder.builder_config.name if builder.builder_config else builder.name
  try:
    can_build(manual_dir)
  except ValueError as e:
    reason = str(e)
    raise names_lib.MissingDownloadError(lambda setting: (
        f'{name} is not built in the TFDS data dir {data_dir} ({setting("tfds_data_dir")}), '
        f'and {manual_dir} cannot build it (set {setting(field)}): {reason}')) from None
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  provenance.record(builder.data_dir, source, reading, exclude=data_dir)
  return builder


def _folder_config(data_config: ml_collections.ConfigDict, source: str):
  """(builder config, manual dir) of BUS-BRA, BUS-UCLM or the user's folder dataset."""
  from data import seg_folder  # pylint: disable=g-import-not-at-top
  named = {config.name: config for config in seg_folder.Builder.BUILDER_CONFIGS}
  if source in named:
    return named[source], data_config[names_lib.DOWNLOAD_FIELDS[source]]
  folder = data_config.folder
  if not folder.dir:
    raise names_lib.MissingDownloadError(lambda setting: (
        f'The folder dataset has no folder: {setting("folder.dir")}=<your images and masks>.'))
  def pairs(text):  # 'a=b,c=d' -> (('a', 'b'), ('c', 'd'))
    return tuple(tuple(item.split('=')) for item in text.split(',') if item)

  return seg_folder.FolderConfig(
      name=folder.name, images_subdir=folder.images_subdir, masks_subdir=folder.masks_subdir,
      image_prefix=folder.image_prefix, image_suffix=folder.image_suffix,
      mask_prefix=folder.mask_prefix, mask_suffix=folder.mask_suffix, csv=folder.csv,
      csv_delimiter=folder.csv_delimiter, id_column=folder.id_column,
      label_column=folder.label_column, group_column=folder.group_column,
      group_pattern=folder.group_pattern, split_column=folder.split_column,
      label_map=pairs(folder.label_map), label_colours=pairs(folder.label_colours),
      exclude=tuple(stem for stem in folder.exclude.split(',') if stem),
      validation_fraction=folder.validation_fraction,
      test_fraction=folder.test_fraction), folder.dir


def _load_folder(data_config: ml_collections.ConfigDict, source: str, split,
                 groups_only: bool = False) -> tf.data.Dataset:
  """The `seg_folder` builder (BUS-BRA, BUS-UCLM or the user's folder); fails fast without
  data."""
  from data import seg_folder  # pylint: disable=g-import-not-at-top
  builder_config, manual_dir = _folder_config(data_config, source)
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  data_dir = _tfds_data_dir(data_config)
  builder = seg_folder.Builder(config=builder_config, data_dir=data_dir)
  return _prepare(builder, data_dir, manual_dir,
                  lambda folder: seg_folder.check(folder, builder_config), repr(builder_config),
                  names_lib.DOWNLOAD_FIELDS[source]).as_dataset(
                      split=split, shuffle_files=False, decoders=_decoders(builder, groups_only))


def _group(example) -> tf.Tensor:
  """The example's patient (folder datasets) or duplicate group (BUSI, synthetic)."""
  return example['group'] if 'group' in example else example['dup_group']


def _decoders(builder: tfds.core.DatasetBuilder, groups_only: bool):
  """TFDS decoders: with `groups_only`, each example is parsed down to its group feature
  (the one `_group` reads), so no scan or mask is decoded."""
  if not groups_only:
    return None
  key = 'group' if 'group' in builder.info.features else 'dup_group'
  return tfds.decode.PartialDecoding({key: True})


def chosen_groups(raw: tf.data.Dataset, count: int, seed: int) -> list[bytes]:
  """`count` of the groups (patients) of `raw`, drawn by `seed`: the first `count` of one
  seeded shuffle of them, so a smaller count picks a subset of a larger one's. Pass the
  whole split (not a process's share): every process must pick the same patients. Only the
  group is read: `load_split(..., groups_only=True)` reads no more."""
  groups = sorted({group.numpy() for group in raw.map(_group)})
  order = np.random.default_rng(seed).permutation(len(groups))
  return [groups[i] for i in order[:count]]


def only_groups(raw: tf.data.Dataset, groups: list[bytes]) -> tf.data.Dataset:
  """The examples of `raw` whose group is one of `groups`."""
  keep = tf.constant(groups, tf.string)
  return raw.filter(lambda example: tf.reduce_any(tf.equal(_group(example), keep)))


def dataset_name(data_config: ml_collections.ConfigDict, source: str) -> str:
  """What reports call a source: the folder dataset goes by its own name."""
  return data_config.folder.name if source == 'folder' else source


def load_split(data_config: ml_collections.ConfigDict, split_expr: str, *,
               source: str | None = None, process_index: int = 0,
               process_count: int = 1, groups_only: bool = False) -> tf.data.Dataset:
  """Raw examples of a split expression (e.g. 'train+validation'): this process's share.

  `source` picks one dataset of `data.source`; it may be left out when there is only one.
  `groups_only`: a TFDS dataset's examples hold only their group (patient or duplicate
  group), read without decoding any image: enough for `chosen_groups`, at a fraction of the
  cost. Synthetic examples stay whole (they are generated, not decoded).
  """
  if source is None:
    names = sources(data_config)
    if len(names) > 1:
      raise ValueError(f'config.data.source={data_config.source!r} names several datasets: '
                       'say which one to load.')
    source = names[0]
  if source == 'synthetic':
    parts = [synthetic.as_dataset(name.strip(), data_config) for name in split_expr.split('+')]
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds.shard(process_count, process_index)
  split = tfds.even_splits(split_expr, n=process_count)[process_index]
  if source == 'busi':
    return _load_busi(data_config, split, groups_only)
  return _load_folder(data_config, source, split, groups_only)


def mix_weights(data_config: ml_collections.ConfigDict,
                sizes: Mapping[str, int]) -> dict[str, float]:
  """Sampling weight of each training dataset, summing to 1.

  `data.mix_weights` ('busi=1,busbra=1') sets them; empty, each dataset counts by its size.
  """
  weights = names_lib.mix_weights(data_config, tuple(sizes)) or dict(sizes)
  total = sum(weights.values())
  return {name: weights[name] / total for name in sizes}


def count_examples(ds: tf.data.Dataset) -> int:
  """Known cardinality when TF has it, else one pass over the data."""
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def _as_numpy(ds: tf.data.Dataset):
  """`tfds.as_numpy`, with tf.data's autotuning off.

  Deleting an autotuned iterator waits out its tuning thread's current sleep, which doubles
  up to a minute: a training epoch leaves its iterator unfinished (the last partial batch is
  never asked for), and that cost 0.8-41 s per epoch on 2 cores (py-spy: the main thread in
  the iterator's destructor). Untuned, AUTOTUNE gets a fixed parallelism, which still
  augments a BUSI epoch (424 images) in 0.3 s on 2 cores: over 100 times faster than the
  train step consumes them.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return tfds.as_numpy(ds.with_options(options))


def _resize(example: dict[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
  """Model-sized image in [0, 1] (antialiased) and binary mask (nearest: stays {0, 1})."""
  image = tf.image.resize(tf.cast(example['image'], tf.float32) / 255.0, (size, size),
                          method='bilinear', antialias=True)
  mask = tf.image.resize(example['mask'], (size, size), method='nearest')
  return {'image': tf.clip_by_value(image, 0.0, 1.0), 'mask': tf.cast(mask, tf.float32)}


def _epoch_seed(seed: int, epoch: int) -> int:
  """A well-mixed 31-bit seed that depends only on (seed, epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


class TrainInput:
  """Training batches, one epoch at a time, over a cache of decoded, resized examples.

  Build it once per raw dataset (the cache lives in this object) and call `epoch(e)` for
  every epoch e. The first complete pass fills the cache: epoch 0 normally, or the count
  here when filtering out normal scans hides the size from TF. An epoch stopped early does
  not fill it (the next complete one does).
  """

  def __init__(self, raw_ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, *,
               batch_size: int, seed: int):
    self._config = data_config
    self._batch_size = batch_size
    self._seed = seed
    if not data_config.include_normal_in_train:
      raw_ds = raw_ds.filter(lambda ex: ex['label'] != classes.NORMAL)
    # The index travels with each example so its augmentation does not depend on the order.
    ds = raw_ds.enumerate().map(
        lambda i, ex: (i, _resize(ex, data_config.image_size)),
        num_parallel_calls=tf.data.AUTOTUNE)
    self._ds = ds.cache() if data_config.cache else ds
    self.num_examples = count_examples(self._ds)
    self.steps_per_epoch = self.num_examples // batch_size

  def _augmented(self, ds: tf.data.Dataset, seed: tf.Tensor) -> tf.data.Dataset:
    """(index, example) -> example, augmented with a seed from (`seed`, index)."""
    aug = self._config.augment
    if not aug.enabled:
      return ds.map(lambda index, example: example)

    @tf.autograph.experimental.do_not_convert  # Plain TF ops; silences AutoGraph warnings.
    def vary(index, example):
      return augment.augment(example, tf.stack([seed, index]), aug)

    return ds.map(vary, num_parallel_calls=tf.data.AUTOTUNE)

  def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch: `image`, `mask` float32 (B, S, S, 1); incomplete last batch dropped."""
    epoch_seed = _epoch_seed(self._seed, epoch)
    ds = self._ds.shuffle(self._config.shuffle_buffer, seed=epoch_seed)
    ds = self._augmented(ds, tf.constant(epoch_seed, tf.int64))
    ds = ds.batch(self._batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(_as_numpy(ds))

  def stream(self, epoch: int) -> tf.data.Dataset:
    """Endless augmented examples for epoch `epoch` of a mix: pass after pass over the data,
    each pass shuffled and augmented with its own seeds (from seed, epoch and pass)."""
    epoch_seed = tf.constant(_epoch_seed(self._seed, epoch), tf.int64)

    def one_pass(number):
      seed = tf.random.stateless_uniform((), tf.stack([epoch_seed, number]), minval=0,
                                         maxval=2**62, dtype=tf.int64)
      return self._augmented(self._ds.shuffle(self._config.shuffle_buffer, seed=seed), seed)

    return tf.data.Dataset.counter().flat_map(one_pass)


class MixedTrainInput:
  """Training batches that draw each example from one of several datasets at fixed weights.

  An epoch is as many batches as the datasets' sizes add up to, whatever the weights; a
  dataset whose weight exceeds its share of the examples is repeated within the epoch (each
  pass with new shuffling and augmentation). Epoch e depends only on (seed, e), as with
  `TrainInput`, so resuming replays the same data.
  """

  def __init__(self, inputs: Mapping[str, TrainInput], weights: Mapping[str, float], *,
               batch_size: int, seed: int):
    self._inputs = dict(inputs)
    self.weights = {name: float(weights[name]) for name in self._inputs}
    self._batch_size = batch_size
    self._seed = seed
    self.num_examples = sum(train.num_examples for train in self._inputs.values())
    self.steps_per_epoch = self.num_examples // batch_size

  def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """Like `TrainInput.epoch`: `image`, `mask` float32 (B, S, S, 1)."""
    streams = [train.stream(epoch) for train in self._inputs.values()]
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=list(self.weights.values()),
                                              seed=_epoch_seed(self._seed, epoch))
    ds = ds.batch(self._batch_size, drop_remainder=True).take(self.steps_per_epoch)
    return iter(_as_numpy(ds.prefetch(tf.data.AUTOTUNE)))

  def describe(self) -> str:
    """'busi lesion (352 examples, weight 0.500), ...' for the training log."""
    return ', '.join(f'{name} ({train.num_examples} examples, weight {self.weights[name]:.3f})'
                     for name, train in self._inputs.items())


def _by_label(raw: tf.data.Dataset) -> dict[str, tf.data.Dataset]:
  """{'lesion': its lesion scans, 'normal': its normal scans}."""
  return {'lesion': raw.filter(lambda ex: ex['label'] != classes.NORMAL),
          'normal': raw.filter(lambda ex: ex['label'] == classes.NORMAL)}


def train_input(raw_splits: Mapping[str, tf.data.Dataset],
                data_config: ml_collections.ConfigDict, *, batch_size: int,
                seed: int) -> TrainInput | MixedTrainInput:
  """The training batches of one dataset, or of several mixed at `data.mix_weights`.

  With `data.normal_share`, each dataset that has normal scans is drawn as two streams, its
  lesion and its normal scans, the normal ones at that share of the dataset's weight: where
  one dataset is mostly normal scans and another has none, the look of a scanner would
  otherwise predict "no lesion".

  Seeds: dataset i (in `raw_splits` order) drawn whole gets `seed + i`; its lesion and normal
  streams get `seed + n + 2 i` and `seed + n + 2 i + 1` (n datasets).
  """
  if data_config.normal_share:
    return _train_input_by_label(raw_splits, data_config, batch_size=batch_size, seed=seed)
  parts = {name: TrainInput(raw, data_config, batch_size=batch_size, seed=seed + i)
           for i, (name, raw) in enumerate(raw_splits.items())}
  if len(parts) == 1:
    return next(iter(parts.values()))
  weights = mix_weights(data_config, {name: part.num_examples for name, part in parts.items()})
  return MixedTrainInput(parts, weights, batch_size=batch_size, seed=seed)


def _train_input_by_label(raw_splits: Mapping[str, tf.data.Dataset],
                          data_config: ml_collections.ConfigDict, *, batch_size: int,
                          seed: int) -> MixedTrainInput:
  """`train_input` with `data.normal_share`: each dataset as its lesion and normal streams.

  Only the streams are built (counting one fills its cache): a dataset's size (for weights by
  size) is their counts added up. A dataset without normal scans (in training) is drawn from
  its lesion stream, already counted and cached, which is then all of it: at the whole
  dataset's seed, that stream is the whole dataset's `TrainInput`, batch for batch.
  """
  share = data_config.normal_share
  streams, sizes = {}, {}
  for i, (name, raw) in enumerate(raw_splits.items()):
    by_label = _by_label(raw)
    normal = TrainInput(by_label['normal'], data_config, batch_size=batch_size,
                        seed=seed + len(raw_splits) + 2 * i + 1)
    if normal.num_examples:
      lesion = TrainInput(by_label['lesion'], data_config, batch_size=batch_size,
                          seed=seed + len(raw_splits) + 2 * i)
      streams[name] = {f'{name} lesion': (lesion, 1 - share),
                       f'{name} normal': (normal, share)}
    else:
      whole = TrainInput(by_label['lesion'], data_config, batch_size=batch_size, seed=seed + i)
      streams[name] = {name: (whole, 1.0)}
    sizes[name] = sum(part.num_examples for part, _ in streams[name].values())
  weights = mix_weights(data_config, sizes)
  parts = {key: part for name in streams for key, (part, _) in streams[name].items()}
  part_weights = {key: weights[name] * fraction
                  for name in streams for key, (_, fraction) in streams[name].items()}
  return MixedTrainInput(parts, part_weights, batch_size=batch_size, seed=seed)


def eval_batches(raw_ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, *,
                 batch_size: int) -> Iterable[dict[str, np.ndarray]]:
  """Deterministic, unaugmented batches, with the originals for full-resolution metrics.

  Returns a re-iterable: keep it and iterate it at every evaluation to reuse the cache.
  Each batch: `image`, `mask` float32 (B, S, S, 1); `label` int32 (B,); `image_id` bytes (B,);
  `orig_image`, `orig_mask` uint8 (B, Hmax, Wmax) zero-padded, valid in
  [:orig_height[i], :orig_width[i]]; the last batch may be smaller.
  """
  @tf.autograph.experimental.do_not_convert  # Plain TF ops; silences AutoGraph warnings.
  def prepare(ex):
    out = _resize(ex, data_config.image_size)
    shape = tf.shape(ex['image'])
    out.update(
        label=tf.cast(ex['label'], tf.int32),
        image_id=ex['image_id'],
        orig_image=ex['image'][..., 0],
        orig_mask=ex['mask'][..., 0],
        orig_height=shape[0],
        orig_width=shape[1])
    return out

  ds = raw_ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if data_config.cache:
    ds = ds.cache()
  return _as_numpy(ds.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE))
