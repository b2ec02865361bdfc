"""The synthetic demo data: deterministic, builder-shaped, and ultrasound-like."""
import numpy as np

from configs import default
from data import synthetic


def _config(num_train=6, num_validation=3, num_test=4):
  config = default.get_config().data
  config.synthetic.update(num_train=num_train, num_validation=num_validation, num_test=num_test)
  return config


def test_same_seed_same_examples_and_different_seed_different_examples():
  a, b = synthetic.make_examples(5, seed=7), synthetic.make_examples(5, seed=7)
  c = synthetic.make_examples(5, seed=8)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(x['image'].shape != z['image'].shape or (x['image'] != z['image']).any()
             for x, z in zip(a, c))


def test_features_match_the_busi_builder():
  examples = synthetic.make_examples(30, seed=0)
  for ex in examples:
    h, w, c = ex['image'].shape
    assert ex['image'].dtype == np.uint8 and c == 1
    assert synthetic.HEIGHTS[0] <= h <= synthetic.HEIGHTS[1]
    assert synthetic.WIDTHS[0] <= w <= synthetic.WIDTHS[1]
    assert ex['mask'].shape == (h, w, 1) and ex['mask'].dtype == np.uint8
    assert set(np.unique(ex['mask'])) <= {0, 1}
    assert ex['label'] in (0, 1, 2)
    assert ex['image_id'].startswith(synthetic.LABEL_NAMES[ex['label']] + ' (')
    # Normal scans, and only they, have an empty mask.
    assert (ex['label'] == synthetic.NORMAL) == (not ex['mask'].any())
    assert ex['num_masks'] in (1, 2)  # Mask files, as in BUSI: normals have one, empty.
  assert {ex['label'] for ex in examples} == {0, 1, 2}
  assert len({ex['image'].shape for ex in examples}) > 1  # Sizes vary, like BUSI.


def test_lesions_are_darker_than_the_tissue_around_them():
  for ex in synthetic.make_examples(20, seed=3):
    if not ex['mask'].any():
      continue
    image, mask = ex['image'][..., 0].astype(float), ex['mask'][..., 0].astype(bool)
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[max(ys.min() - 10, 0):ys.max() + 10, max(xs.min() - 10, 0):xs.max() + 10] = True
    assert image[mask].mean() < 0.6 * image[box & ~mask].mean()


def test_as_dataset_splits_are_sized_by_config_and_disjoint():
  config = _config()
  ids = {}
  for split, size in (('train', 6), ('validation', 3), ('test', 4)):
    examples = list(synthetic.as_dataset(split, config).as_numpy_iterator())
    assert len(examples) == size
    assert examples[0]['image'].dtype == np.uint8 and examples[0]['label'].dtype == np.int64
    ids[split] = {ex['image_id'] for ex in examples}
  assert not ids['train'] & ids['validation'] and not ids['train'] & ids['test']
