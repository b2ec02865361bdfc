"""How a training example is varied: seeded geometric and ultrasound-like photometric jitter.

Pure TensorFlow functions of one example, run inside tf.data (`input_pipeline`): each draws
its randomness from the seed it is given, so an epoch replays exactly after resuming.
"""
import ml_collections
import numpy as np
import tensorflow as tf


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


def augment(example: dict[str, tf.Tensor], seed: tf.Tensor,
            aug: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """Geometric (shared by image and mask) and ultrasound-like photometric jitter."""
  seeds = tf.random.split(seed, 4)
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
