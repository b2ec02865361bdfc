"""How a training example is varied: augmentation, and lesion-free crops of lesion scans.

Pure TensorFlow functions of one example, run inside tf.data (`input_pipeline`): each draws
its randomness from the seed it is given, so an epoch replays exactly after resuming.
"""
import ml_collections
import numpy as np
import tensorflow as tf

from data import classes


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


def _frame_crop(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                min_fraction: float = 0.4) -> tuple[tf.Tensor, tf.Tensor]:
  """A random strip-shaped window of the scan, resized back to the scan's size. The scan is
  square (model-sized, as `TrainInput` caches it): one `size` serves both axes.

  The window spans the whole height (or width) and a random `min_fraction`..1 of the other
  side, anywhere: it may hold the whole lesion, part of it or none of it, and the mask follows.
  Why: then a zoomed, stretched view says nothing about whether a lesion is in it, unlike
  training on lesion-free strips alone (`data.lesion_free_crops`), which the network learned
  to recognise as strips rather than as lesion-free tissue (docs/experiments.md, session 11).
  """
  size = tf.shape(image)[0]
  u = tf.random.stateless_uniform((3,), seed)
  length = tf.cast(tf.round((min_fraction + (1 - min_fraction) * u[0]) *
                            tf.cast(size, tf.float32)), tf.int32)
  offset = tf.minimum(tf.cast(u[1] * tf.cast(size - length + 1, tf.float32), tf.int32),
                      size - length)

  def crop(x):
    return tf.cond(u[2] < 0.5, lambda: x[:, offset:offset + length],
                   lambda: x[offset:offset + length, :])

  def resize(x, method):
    return tf.ensure_shape(tf.image.resize(x, tf.shape(image)[:2], method=method), image.shape)

  return resize(crop(image), 'bilinear'), resize(crop(mask), 'nearest')


def augment(example: dict[str, tf.Tensor], seed: tf.Tensor,
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
  if aug.frame_crop:
    image, mask = tf.cond(tf.random.stateless_uniform((), seeds[4]) < aug.frame_crop,
                          lambda: _frame_crop(image, mask, seeds[5]), lambda: (image, mask))
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


def lesion_free_crop(example: dict[str, tf.Tensor], margin: float = 0.05,
                     min_aspect: float = 0.4) -> dict[str, tf.Tensor]:
  """The largest strip of a lesion scan beside, above or below its lesions, as an empty scan.

  Strips span the whole image on one side of the lesions' bounding box grown by `margin` of
  the longer image side; a strip counts if its short side is at least `min_aspect` of its
  long side (the aspect range of whole BUSI scans, which are also resized to a square).
  Returns the example as a normal scan: `image` the strip, an all-zero `mask`, `label`
  normal, and `valid` (False: no strip qualifies).
  Why: these are real tissue from every scanner in the mix, lesion-like shadows and fat
  lobules included, with nothing to find; BUS-BRA has no normal scans at all.
  """
  image, mask = example['image'], example['mask'][..., 0] > 0
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  grow = tf.cast(margin * tf.cast(tf.maximum(height, width), tf.float32), tf.int32)
  rows = tf.cast(tf.where(tf.reduce_any(mask, axis=1))[:, 0], tf.int32)
  cols = tf.cast(tf.where(tf.reduce_any(mask, axis=0))[:, 0], tf.int32)
  top, bottom = rows[0] - grow, rows[-1] + grow + 1  # Lesion box rows: [top, bottom).
  left, right = cols[0] - grow, cols[-1] + grow + 1
  # (row offset, column offset, height, width) of the strips left, right, above and below.
  strips = tf.stack([
      tf.stack([0, 0, height, tf.maximum(left, 0)]),
      tf.stack([0, tf.minimum(right, width), height, tf.maximum(width - right, 0)]),
      tf.stack([0, 0, tf.maximum(top, 0), width]),
      tf.stack([tf.minimum(bottom, height), 0, tf.maximum(height - bottom, 0), width])])
  short = tf.minimum(strips[:, 2], strips[:, 3])
  long = tf.maximum(strips[:, 2], strips[:, 3])
  ok = (tf.cast(short, tf.float32) >= min_aspect * tf.cast(long, tf.float32)) & (short > 0)
  best = tf.argmax(tf.where(ok, strips[:, 2] * strips[:, 3], -1))
  y, x, h, w = tf.unstack(strips[best])
  valid = ok[best]
  # An invalid strip may be empty: crop one pixel instead (the example is filtered out).
  h, w = tf.where(valid, h, 1), tf.where(valid, w, 1)
  crop = image[y:y + h, x:x + w]
  return {**example, 'image': crop, 'mask': tf.zeros_like(crop),
          'label': tf.constant(classes.NORMAL, tf.int64), 'valid': valid}


def lesion_free_strips(raw_ds: tf.data.Dataset) -> tf.data.Dataset:
  """`lesion_free_crop` of every lesion scan of `raw_ds` that has one (normal scans have no
  lesion to cut away): what training mixes in, and what benchmarks/lesion_free_strips scores."""
  return (raw_ds.filter(lambda ex: ex['label'] != classes.NORMAL).map(lesion_free_crop)
          .filter(lambda ex: ex['valid']))
