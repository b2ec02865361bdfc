"""The lesion-free strips the false-positive benchmark scores: the geometry of a strip, and a
split's lesion scans turned into normal ones."""
import numpy as np
import tensorflow as tf

from benchmarks import lesion_free_strips
from data import classes
from data import synthetic


def test_lesion_free_crop_is_the_largest_well_shaped_strip_outside_the_grown_lesion_box():
  height, width = 100, 200
  mask = np.zeros((height, width, 1), np.uint8)
  mask[40:60, 20:50] = 1  # Grown by 5 % of 200 = 10 px: rows [30, 70), columns [10, 60).
  image = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], mask.shape)
  crop = lesion_free_strips.lesion_free_crop({'image': tf.constant(image), 'mask': tf.constant(mask)})
  # Left (10 x 100), above and below (30 x 200) are too thin; right is 140 x 100.
  assert bool(crop['valid'])
  np.testing.assert_array_equal(crop['image'].numpy(), image[:, 60:])
  assert not crop['mask'].numpy().any()
  everywhere = np.ones_like(mask)
  assert not bool(lesion_free_strips.lesion_free_crop({'image': tf.constant(image),
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
  strips = list(lesion_free_strips.lesion_free_strips(raw).as_numpy_iterator())
  assert len(strips) == 2  # The normal scan has no lesion to cut away.
  for strip in strips:
    assert strip['label'] == classes.NORMAL
    assert strip['image'].shape == (60, 150 - 47, 1)  # Right of the grown box [3, 47).
    assert not strip['image'].any() and not strip['mask'].any()
