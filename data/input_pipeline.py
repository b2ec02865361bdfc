"""tf.data from raw BUSI (or synthetic) examples to numpy batches for JAX.

Decoding and resizing happen once and are cached in memory; per-epoch work (shuffle,
augmentation) runs on top of that cache with seeds derived from (seed, epoch, example index),
so epoch e sees the same data whether or not training was resumed in between.
"""
from collections.abc import Iterable, Iterator
import os

import ml_collections
import numpy as np
import tensorflow as tf

# TF only feeds the host; keep it off the accelerators JAX needs.
tf.config.set_visible_devices([], 'GPU')

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from data import synthetic  # pylint: disable=g-import-not-at-top

SPLITS = ('train', 'validation', 'test')
NORMAL_LABEL = 2


def _tfds_data_dir(data_config: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(
      data_config.tfds_data_dir or os.environ.get('TFDS_DATA_DIR') or
      tfds.core.constants.DATA_DIR)


def is_built(data_config: ml_collections.ConfigDict) -> bool:
  """Whether the BUSI TFDS build exists where the config points (no data is read)."""
  busi = os.path.join(_tfds_data_dir(data_config), 'busi')
  return os.path.isdir(busi) and any(
      os.path.isfile(os.path.join(busi, version, 'dataset_info.json'))
      for version in os.listdir(busi))


def _load_busi(data_config: ml_collections.ConfigDict, split) -> tf.data.Dataset:
  """tfds.load of the builder; fails fast, before any TFDS work, when there is no data."""
  # Importing the builder package registers 'busi' with TFDS.
  from data.busi import dataset_files  # pylint: disable=g-import-not-at-top
  data_dir = _tfds_data_dir(data_config)
  manual_dir = os.path.abspath(os.path.expanduser(data_config.manual_dir))
  # TFDS wants a folder as manual dir; an archive given by path is found in its folder.
  if os.path.isfile(manual_dir):
    manual_dir = os.path.dirname(manual_dir)
  if not is_built(data_config):
    try:
      dataset_files.locate(manual_dir)
    except dataset_files.BusiFormatError as e:
      raise FileNotFoundError(
          f'BUSI is not built in the TFDS data dir {data_dir} (config.data.tfds_data_dir), '
          'and the manual dir cannot build it (set --config.data.manual_dir to the '
          f'download, archive.zip or the extracted folder): {e}') from None
  return tfds.load(
      'busi', split=split, data_dir=data_dir, shuffle_files=False,
      download_and_prepare_kwargs={
          'download_config': tfds.download.DownloadConfig(manual_dir=manual_dir)})


def load_split(data_config: ml_collections.ConfigDict, split_expr: str, *,
               process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """Raw examples of a split expression (e.g. 'train+validation'): this process's share."""
  if data_config.source == 'busi':
    split = tfds.even_splits(split_expr, n=process_count)[process_index]
    return _load_busi(data_config, split)
  if data_config.source == 'synthetic':
    parts = [synthetic.as_dataset(name.strip(), data_config) for name in split_expr.split('+')]
    ds = parts[0]
    for part in parts[1:]:
      ds = ds.concatenate(part)
    return ds.shard(process_count, process_index)
  raise ValueError(f'Unknown data.source {data_config.source!r}.')


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


def _affine(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
            aug: ml_collections.ConfigDict) -> tuple[tf.Tensor, tf.Tensor]:
  """The same random rotation/scale/shift for image (bilinear) and mask (nearest)."""
  size = tf.cast(tf.shape(image)[0], tf.float32)
  u = tf.random.stateless_uniform((4,), seed, minval=-1.0, maxval=1.0)
  angle = u[0] * aug.max_rotation_deg * np.pi / 180
  scale = 1.0 + u[1] * aug.max_scale
  shift = u[2:] * aug.max_shift * size
  # Output pixel -> input pixel: inverse rotation and zoom about the centre, then the shift.
  cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
  c = (size - 1) / 2
  transform = tf.stack([
      cos, sin, c - cos * (c + shift[0]) - sin * (c + shift[1]),
      -sin, cos, c + sin * (c + shift[0]) - cos * (c + shift[1]),
      0.0, 0.0])[None]

  def warp(x, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=tf.shape(x)[:2],
        fill_value=0.0, interpolation=interpolation, fill_mode='CONSTANT')[0]

  return warp(image, 'BILINEAR'), warp(mask, 'NEAREST')


def _augment(example: dict[str, tf.Tensor], seed: tf.Tensor,
             aug: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """Geometric (shared by image and mask) and ultrasound-like photometric jitter."""
  seeds = tf.random.split(seed, 6)
  image, mask = example['image'], example['mask']
  flip = tf.random.stateless_uniform((2,), seeds[0]) < 0.5
  if aug.flip_left_right:
    image, mask = tf.cond(flip[0], lambda: (image[:, ::-1], mask[:, ::-1]),
                          lambda: (image, mask))
  if aug.flip_up_down:
    image, mask = tf.cond(flip[1], lambda: (image[::-1], mask[::-1]), lambda: (image, mask))
  if aug.max_rotation_deg or aug.max_scale or aug.max_shift:
    image, mask = _affine(image, mask, seeds[1], aug)
  u = tf.random.stateless_uniform((3,), seeds[2], minval=-1.0, maxval=1.0)
  # image ** gamma, written as exp(gamma * log(image)): 3x faster on CPU; log(0) -> 0 still.
  image = tf.exp(tf.exp(u[0] * aug.gamma) * tf.math.log(image))
  image = (image - tf.reduce_mean(image)) * (1 + u[1] * aug.contrast) + tf.reduce_mean(image)
  image += u[2] * aug.brightness
  if aug.speckle_std:
    noise = tf.random.stateless_normal(tf.shape(image), seeds[3], stddev=aug.speckle_std)
    image *= tf.maximum(1.0 + noise, 0.0)
  return {'image': tf.clip_by_value(image, 0.0, 1.0), 'mask': mask}


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
      raw_ds = raw_ds.filter(lambda ex: ex['label'] != NORMAL_LABEL)
    # The index travels with each example so its augmentation does not depend on the order.
    ds = raw_ds.enumerate().map(
        lambda i, ex: (i, _resize(ex, data_config.image_size)),
        num_parallel_calls=tf.data.AUTOTUNE)
    self._ds = ds.cache() if data_config.cache else ds
    self.num_examples = count_examples(self._ds)
    self.steps_per_epoch = self.num_examples // batch_size

  def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch: `image`, `mask` float32 (B, S, S, 1); incomplete last batch dropped."""
    epoch_seed = _epoch_seed(self._seed, epoch)
    aug = self._config.augment
    ds = self._ds.shuffle(self._config.shuffle_buffer, seed=epoch_seed)

    @tf.autograph.experimental.do_not_convert  # Plain TF ops; silences AutoGraph warnings.
    def augment(index, example):
      return _augment(example, tf.stack([tf.constant(epoch_seed, tf.int64), index]), aug)

    if aug.enabled:
      ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
      ds = ds.map(lambda index, example: example)
    ds = ds.batch(self._batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(_as_numpy(ds))


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
