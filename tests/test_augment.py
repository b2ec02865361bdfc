"""Lesion-free crops (the geometry of the strip, the strips scored as normal scans) and the
strip-shaped frame crop of training scans."""
import numpy as np
import tensorflow as tf

from configs import default
from data import augment
from data import classes
from data import synthetic


def test_lesion_free_crop_is_the_largest_well_shaped_strip_outside_the_grown_lesion_box():
  height, width = 100, 200
  mask = np.zeros((height, width, 1), np.uint8)
  mask[40:60, 20:50] = 1  # Grown by 5 % of 200 = 10 px: rows [30, 70), columns [10, 60).
  image = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], mask.shape)
  crop = augment.lesion_free_crop({'image': tf.constant(image), 'mask': tf.constant(mask)})
  # Left (10 x 100), above and below (30 x 200) are too thin; right is 140 x 100.
  assert bool(crop['valid'])
  np.testing.assert_array_equal(crop['image'].numpy(), image[:, 60:])
  assert not crop['mask'].numpy().any()
  everywhere = np.ones_like(mask)
  assert not bool(augment.lesion_free_crop({'image': tf.constant(image),
                                            'mask': tf.constant(everywhere)})['valid'])


def test_strips_of_a_split_are_its_lesion_scans_turned_normal():
  def scan(label, lesion):
    mask = np.zeros((60, 150, 1), np.uint8)
    if lesion:
      mask[20:40, 10:40] = 1
    return {'image': mask * 255, 'mask': mask, 'label': np.int64(label), 'image_id': 'x',
            'num_masks': np.int32(1), 'dup_group': 'x'}

  examples = [scan(0, True), scan(1, True), scan(classes.NORMAL, False)]
  raw = tf.data.Dataset.from_generator(lambda: iter(examples),
                                       output_signature=synthetic.output_signature())
  strips = list(augment.lesion_free_strips(raw).as_numpy_iterator())
  assert len(strips) == 2  # The normal scan has no lesion to cut away.
  for strip in strips:
    assert strip['label'] == classes.NORMAL
    assert strip['image'].shape == (60, 150 - 47, 1)  # Right of the grown box [3, 47).
    assert not strip['image'].any() and not strip['mask'].any()


def test_frame_crop_windows_hold_the_lesion_part_of_it_or_none_and_stay_aligned():
  size = 64
  mask = np.zeros((size, size, 1), np.float32)
  mask[4:20, 6:22] = 1.0  # Near a corner: some windows miss it, some cut it.
  image = tf.constant(0.1 + 0.8 * mask)  # The lesion is bright: alignment is visible.
  kinds = set()
  for i in range(60):
    crop_image, crop_mask = augment._frame_crop(image, tf.constant(mask),
                                                tf.constant([i, 7], tf.int64))
    crop_image, crop_mask = crop_image.numpy()[..., 0], crop_mask.numpy()[..., 0]
    assert crop_image.shape == crop_mask.shape == (size, size)
    assert set(np.unique(crop_mask)) <= {0.0, 1.0}
    if not crop_mask.any():
      kinds.add('none')
      continue
    # Bilinear image vs nearest mask differ only along the lesion's edge (values 0.1 / 0.9).
    assert crop_image[crop_mask > 0].mean() > 0.6 and crop_image[crop_mask == 0].mean() < 0.3
    # The lesion touches no border of the scan: in a window it does only where cut.
    border = np.concatenate([crop_mask[0], crop_mask[-1], crop_mask[:, 0], crop_mask[:, -1]])
    kinds.add('cut' if border.any() else 'whole')
  assert kinds == {'none', 'cut', 'whole'}


def test_frame_crop_replaces_its_share_of_examples_and_is_off_by_default():
  aug = default.get_config().data.augment
  assert aug.frame_crop == 0.0
  mask = np.zeros((32, 32, 1), np.float32)
  mask[8:24, 8:24] = 1.0
  example = {'image': tf.constant(0.5 * np.ones_like(mask) + 0.3 * mask),
             'mask': tf.constant(mask)}
  with aug.unlocked():
    for key in ('max_rotation_deg', 'max_scale', 'max_shift', 'brightness', 'contrast',
                'gamma', 'speckle_std'):
      aug[key] = 0.0
    aug.flip_left_right = False
  plain = [augment.augment(example, tf.constant([i, 0], tf.int64), aug)['mask'].numpy()
           for i in range(200)]
  assert all((m == mask).all() for m in plain)
  aug.frame_crop = 0.25
  framed = [augment.augment(example, tf.constant([i, 0], tf.int64), aug)['mask'].numpy()
            for i in range(200)]
  changed = np.mean([not (m == mask).all() for m in framed])
  assert 0.15 < changed < 0.35
