"""Augmentation: seeded (an epoch replays after resuming) and geometric changes applied to the
image and its mask alike."""
import numpy as np
import tensorflow as tf

from configs import default
from data import augment


def _example(size=48):
  mask = np.zeros((size, size, 1), np.float32)
  mask[10:30, 14:34] = 1.0
  return {'image': tf.constant(0.1 + 0.8 * mask), 'mask': tf.constant(mask)}


def test_the_same_seed_gives_the_same_example_and_another_seed_another():
  aug = default.get_config().data.augment
  example = _example()
  first, again, other = (augment.augment(example, tf.constant(seed, tf.int64), aug)
                         for seed in ([3, 1], [3, 1], [4, 1]))
  np.testing.assert_array_equal(first['image'].numpy(), again['image'].numpy())
  np.testing.assert_array_equal(first['mask'].numpy(), again['mask'].numpy())
  assert not np.array_equal(first['image'].numpy(), other['image'].numpy())


def test_the_mask_follows_the_image_through_rotation_zoom_shift_and_flip():
  aug = default.get_config().data.augment
  with aug.unlocked():
    aug.max_rotation_deg, aug.max_scale, aug.max_shift = 30.0, 0.3, 0.2
    for key in ('brightness', 'contrast', 'gamma', 'speckle_std'):
      aug[key] = 0.0
  example = _example()
  moved = 0
  for i in range(20):
    out = augment.augment(example, tf.constant([i, 0], tf.int64), aug)
    image, mask = out['image'].numpy()[..., 0], out['mask'].numpy()[..., 0]
    assert set(np.unique(mask)) <= {0.0, 1.0}  # Nearest-neighbour: the mask stays binary.
    # The bright lesion is where the mask is (bilinear edges aside).
    assert image[mask > 0].mean() > 0.6 and image[mask == 0].mean() < 0.3
    moved += not np.array_equal(mask, example['mask'].numpy()[..., 0])
  assert moved >= 18
