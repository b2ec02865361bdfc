"""The tf.data pipeline on builder-shaped examples: shapes, alignment, determinism, errors."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import busi_fixtures
from configs import default
from data import input_pipeline
from data import synthetic
from test_datasets_end_to_end import _write_folder_dataset
from unet_flax import imaging

SIZE = 32


def _config(**augment):
  config = default.get_config().data
  config.source = 'synthetic'
  config.image_size = SIZE
  config.shuffle_buffer = 64
  config.synthetic.update(num_train=20, num_validation=5, num_test=7)
  config.augment.update(augment)
  return config


def _raw(examples):
  """A tf.data dataset of raw examples, as the TFDS builder yields them."""
  return tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature=synthetic.output_signature())


def _bright_lesion_examples(num, seed=0):
  """Scans whose bright pixels ARE the mask, so misalignment would show."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(num):
    h, w = rng.integers(40, 90), rng.integers(40, 120)
    mask = np.zeros((h, w, 1), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y:y + h // 2, x:x + w // 2] = 1
    examples.append({'image': mask * 255, 'mask': mask, 'label': np.int64(0),
                     'image_id': f'benign ({i})', 'num_masks': np.int32(1),
                     'dup_group': str(i)})
  return examples


def _epoch(train_input, epoch):
  return list(train_input.epoch(epoch))


def test_train_batches_have_model_shapes_dtypes_and_ranges():
  config = _config()
  raw = input_pipeline.load_split(config, 'train')
  train = input_pipeline.TrainInput(raw, config, batch_size=8, seed=0)
  assert (train.num_examples, train.steps_per_epoch) == (20, 2)
  batches = _epoch(train, 0)
  assert len(batches) == 2  # drop_remainder: 20 // 8.
  for batch in batches:
    assert set(batch) == {'image', 'mask'}
    for key in ('image', 'mask'):
      assert batch[key].shape == (8, SIZE, SIZE, 1) and batch[key].dtype == np.float32
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert set(np.unique(batch['mask'])) <= {0.0, 1.0}


def test_geometric_augmentation_moves_image_and_mask_together():
  config = _config(max_rotation_deg=20.0, max_scale=0.2, max_shift=0.1, brightness=0.0,
                   contrast=0.0, gamma=0.0, speckle_std=0.0)
  raw = _raw(_bright_lesion_examples(16))
  train = input_pipeline.TrainInput(raw, config, batch_size=16, seed=1)
  [batch] = _epoch(train, 0)
  config.augment.enabled = False
  [plain] = _epoch(input_pipeline.TrainInput(raw, config, batch_size=16, seed=1), 0)
  assert set(np.unique(batch['mask'])) <= {0.0, 1.0}
  agreement = np.mean(batch['mask'] == (batch['image'] > 0.5), axis=(1, 2, 3))
  assert agreement.min() > 0.95
  # The augmentation did move things (otherwise the test above proves nothing).
  plain_masks = {m.tobytes() for m in plain['mask']}
  assert sum(m.tobytes() not in plain_masks for m in batch['mask']) > 8


def test_photometric_augmentation_keeps_image_in_range_and_mask_untouched():
  config = _config(brightness=0.5, contrast=0.5, gamma=0.5, speckle_std=0.3,
                   max_rotation_deg=0.0, max_scale=0.0, max_shift=0.0, flip_left_right=False)
  raw = _raw(_bright_lesion_examples(8))
  [batch] = _epoch(input_pipeline.TrainInput(raw, config, batch_size=8, seed=0), 0)
  config.augment.enabled = False
  [plain] = _epoch(input_pipeline.TrainInput(raw, config, batch_size=8, seed=0), 0)
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert not np.allclose(batch['image'], plain['image'], atol=0.05)
  # Shuffle order is the same with and without augmentation; the masks must be too.
  np.testing.assert_array_equal(batch['mask'], plain['mask'])


def test_epoch_is_reproducible_across_resumes_and_reshuffled_between_epochs():
  config = _config()
  raw = input_pipeline.load_split(config, 'train')
  ran = input_pipeline.TrainInput(raw, config, batch_size=4, seed=3)
  for epoch in range(2):
    _epoch(ran, epoch)
  resumed = input_pipeline.TrainInput(raw, config, batch_size=4, seed=3)
  for a, b in zip(_epoch(ran, 2), _epoch(resumed, 2), strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['mask'], b['mask'])
  config.augment.enabled = False
  plain = input_pipeline.TrainInput(raw, config, batch_size=4, seed=3)
  order = [np.concatenate([b['image'] for b in _epoch(plain, e)]).sum(axis=(1, 2, 3))
           for e in (0, 1)]
  assert not np.array_equal(order[0], order[1])
  np.testing.assert_allclose(np.sort(order[0]), np.sort(order[1]), rtol=1e-6)


def test_decoding_and_resizing_run_once_across_epochs():
  decoded = []

  def count(image):
    decoded.append(1)
    return image

  raw = _raw(synthetic.make_examples(6, seed=0)).map(lambda ex: {
      **ex, 'image': tf.ensure_shape(tf.py_function(count, [ex['image']], tf.uint8),
                                     (None, None, 1))})
  train = input_pipeline.TrainInput(raw, _config(), batch_size=2, seed=0)
  for epoch in range(3):
    _epoch(train, epoch)
  assert len(decoded) == 6


def test_excluding_normal_scans_removes_empty_masks():
  config = _config()
  examples = synthetic.make_examples(20, seed=5)
  num_lesion = sum(ex['label'] != synthetic.NORMAL for ex in examples)
  assert 0 < num_lesion < 20
  config.include_normal_in_train = False
  train = input_pipeline.TrainInput(_raw(examples), config, batch_size=1, seed=0)
  assert train.num_examples == num_lesion
  assert all(batch['mask'].any() for batch in _epoch(train, 0))


def test_eval_batches_keep_every_example_and_its_original_mask():
  config = _config()
  examples = synthetic.make_examples(7, seed=2)
  batches = input_pipeline.eval_batches(_raw(examples), config, batch_size=3)
  first, second = list(batches), list(batches)  # Re-iterable, same order both times.
  assert [len(b['label']) for b in first] == [3, 3, 1]
  for a, b in zip(first, second, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  i = 0
  for batch in first:
    assert batch['image'].shape[1:] == (SIZE, SIZE, 1) and batch['image'].dtype == np.float32
    assert batch['mask'].dtype == np.float32 and batch['label'].dtype == np.int32
    assert batch['orig_mask'].dtype == np.uint8 and batch['orig_mask'].ndim == 3
    for j in range(len(batch['label'])):
      ex = examples[i]
      h, w = batch['orig_height'][j], batch['orig_width'][j]
      assert (h, w) == ex['image'].shape[:2]
      np.testing.assert_array_equal(batch['orig_mask'][j, :h, :w], ex['mask'][..., 0])
      np.testing.assert_array_equal(batch['orig_image'][j, :h, :w], ex['image'][..., 0])
      assert not batch['orig_mask'][j, h:].any() and not batch['orig_mask'][j, :, w:].any()
      assert batch['label'][j] == ex['label']
      assert batch['image_id'][j] == ex['image_id'].encode()
      i += 1
  assert i == 7



def test_predict_feeds_the_network_what_evaluation_feeds_it():
  """`--mode=predict` resizes with PIL, the pipeline with TF: same pixels, or a user's own
  scan would be scored by a network that sees it differently from the reported metrics."""
  config = _config()
  config.image_size = 192
  rng = np.random.default_rng(0)
  # BUSI-sized speckle (about 470 x 560): the downscale where the antialiasing matters.
  examples = [dict(synthetic.make_examples(1, seed=0)[0],
                   image=rng.integers(0, 256, (h, w, 1), dtype=np.uint8),
                   mask=np.zeros((h, w, 1), np.uint8))
              for h, w in [(471, 562), (476, 431)]]
  batch = next(iter(input_pipeline.eval_batches(_raw(examples), config, batch_size=2)))
  for image, example in zip(batch['image'], examples, strict=True):
    np.testing.assert_allclose(image, imaging.model_input(example['image'][..., 0], 192),
                               atol=1e-4)
def test_synthetic_process_shards_are_disjoint_and_complete():
  config = _config()
  ids = [
      [ex['image_id'] for ex in input_pipeline.load_split(
          config, 'train+validation+test', process_index=p, process_count=2
      ).as_numpy_iterator()]
      for p in range(2)
  ]
  assert abs(len(ids[0]) - len(ids[1])) <= 1
  assert not set(ids[0]) & set(ids[1]) and len(ids[0]) + len(ids[1]) == 32
  assert input_pipeline.count_examples(input_pipeline.load_split(config, 'test')) == 7


def test_missing_busi_data_fails_fast_and_says_where_it_looked(tmp_path, monkeypatch):
  config = _config()
  config.source = 'busi'
  config.tfds_data_dir = str(tmp_path / 'tfds')
  config.manual_dir = str(tmp_path / 'downloads')
  os.makedirs(config.manual_dir)
  # Fast: it fails before any dataset work, which is what a wall-time bound measured only
  # loosely (and falsely failed under CPU contention). No TFDS build starts, no tf.data
  # pipeline is made, nothing is written.
  def dataset_work(*args, **kwargs):
    raise AssertionError('dataset work started although there is no data')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', dataset_work)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'as_dataset', dataset_work)
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.load_split(config, 'train')
  assert os.listdir(tmp_path) == ['downloads'] and not os.listdir(config.manual_dir)
  message = str(error.value)
  assert config.tfds_data_dir in message and config.manual_dir in message
  assert 'kaggle' in message.lower()
  assert '(--config.data.tfds_data_dir)' in message
  assert '(set --config.data.manual_dir)' in message
  # A caller names the fields as it lets the user set them (main.py: the flags of its mode).
  assert error.value.message(str.upper) == message.replace(
      '--config.data.tfds_data_dir', 'TFDS_DATA_DIR').replace('--config.data.manual_dir',
                                                              'MANUAL_DIR')


def test_busi_build_from_a_zip_path_is_sharded_over_processes(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path / 'extracted',
                                            busi_fixtures.default_spec(per_class=6))
  config = _config()
  config.source = 'busi'
  config.tfds_data_dir = str(tmp_path / 'tfds')
  config.manual_dir = str(busi_fixtures.zip_tree(dataset, tmp_path / 'archive.zip'))
  assert not input_pipeline.is_built(config)
  shards = [input_pipeline.load_split(config, 'train+validation+test', process_index=p,
                                      process_count=2) for p in range(2)]
  ids = [[b.decode() for batch in input_pipeline.eval_batches(shard, config, batch_size=4)
          for b in batch['image_id']] for shard in shards]
  assert abs(len(ids[0]) - len(ids[1])) <= 3  # Each of the three parts is split evenly.
  assert sorted(ids[0] + ids[1]) == sorted(e.image_id for e in busi_fixtures.default_spec(6))
  assert input_pipeline.is_built(config)
  splits = {name: input_pipeline.load_split(config, name) for name in input_pipeline.SPLITS}
  assert sum(input_pipeline.count_examples(ds) for ds in splits.values()) == 18
  batch = next(iter(input_pipeline.eval_batches(splits['train'], config, batch_size=2)))
  assert (batch['orig_height'][0], batch['orig_width'][0]) == busi_fixtures.SHAPE


def _dark_examples(num):
  """Normal scans, all black: told apart from `_bright_lesion_examples` by their maximum."""
  return [{'image': np.zeros((40, 50, 1), np.uint8), 'mask': np.zeros((40, 50, 1), np.uint8),
           'label': np.int64(2), 'image_id': f'normal ({i})', 'num_masks': np.int32(1),
           'dup_group': str(i)} for i in range(num)]


def _mixed(config, weights, seed=0):
  inputs = {'dark': input_pipeline.TrainInput(_raw(_dark_examples(40)), config, batch_size=8,
                                              seed=seed),
            'bright': input_pipeline.TrainInput(_raw(_bright_lesion_examples(8)), config,
                                                batch_size=8, seed=seed + 1)}
  return input_pipeline.MixedTrainInput(inputs, weights, batch_size=8, seed=seed)


def test_mixed_epochs_draw_each_dataset_at_its_weight_and_replay_on_resume():
  config = _config(enabled=False)
  mixed = _mixed(config, {'dark': 0.25, 'bright': 0.75})
  assert (mixed.num_examples, mixed.steps_per_epoch) == (48, 6)
  epochs = [_epoch(mixed, e) for e in range(4)]
  assert all(len(batches) == 6 for batches in epochs)
  bright = [np.mean([image.max() > 0.5 for b in batches for image in b['image']])
            for batches in epochs]
  # 0.75 of the draws although the bright dataset holds 8 of the 48 examples: it repeats.
  assert 0.6 < np.mean(bright) < 0.9
  resumed = _mixed(config, {'dark': 0.25, 'bright': 0.75})
  for a, b in zip(epochs[2], _epoch(resumed, 2), strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert not all(np.array_equal(a['image'], b['image'])
                 for a, b in zip(epochs[0], epochs[1]))


def test_a_repeated_dataset_is_augmented_anew_on_each_pass():
  mixed = _mixed(_config(), {'dark': 0.01, 'bright': 0.99})
  images = np.concatenate([b['image'] for b in _epoch(mixed, 0)])
  masks = np.concatenate([b['mask'] for b in _epoch(mixed, 0)])
  bright = masks.reshape(len(masks), -1).any(axis=1)
  # ~47 draws from 8 examples: with one augmentation per example there would be <= 8 masks.
  assert len({m.tobytes() for m in masks[bright]}) > 16
  assert len(images) == 48


def test_normal_share_draws_each_datasets_normal_scans_at_that_share_of_its_weight():
  config = _config(enabled=False)
  config.mix_weights, config.normal_share = 'mostly_normal=1,lesions_only=1', 0.25
  # 'mostly_normal': 30 normal scans (dark) and 10 lesion scans (bright); 'lesions_only': 8
  # lesion scans. As the data come, 3 of every 4 of the first dataset's draws are normal.
  raw = {'mostly_normal': _raw(_dark_examples(30) + _bright_lesion_examples(10)),
         'lesions_only': _raw(_bright_lesion_examples(8, seed=1))}
  mixed = input_pipeline.train_input(raw, config, batch_size=8, seed=0)
  assert mixed.weights == {'mostly_normal lesion': 0.375, 'mostly_normal normal': 0.125,
                           'lesions_only': 0.5}
  assert (mixed.num_examples, mixed.steps_per_epoch) == (48, 6)
  normal = [image.max() < 0.5 for e in range(6) for b in _epoch(mixed, e) for image in b['image']]
  assert 0.05 < np.mean(normal) < 0.2  # 0.125 expected; 0.375 as the data come.
  config.normal_share = 0.0
  plain = input_pipeline.train_input(raw, config, batch_size=8, seed=0)
  assert plain.weights == {'mostly_normal': 0.5, 'lesions_only': 0.5}


def test_normal_share_streams_are_the_label_parts_with_their_own_seeds_and_counts():
  """Batch for batch, `train_input` with a normal share is the mix built by hand: dataset i
  of n split into its lesion and normal scans at seeds seed + n + 2 i (+ 1), a dataset without
  normal scans drawn whole at seed + i, and weights by size from all of each one's scans."""
  config = _config()  # Augmented: a seed that changed would change the batches.
  config.normal_share = 0.25
  dark, bright = _dark_examples(12), _bright_lesion_examples(20)
  mixed_up = [example for pair in zip(dark, bright[:12]) for example in pair] + bright[12:]
  lesions_only = _bright_lesion_examples(6, seed=1)
  raw = {'mixed': _raw(mixed_up), 'lesions_only': _raw(lesions_only)}
  got = input_pipeline.train_input(raw, config, batch_size=4, seed=5)
  # Weights by size (no data.mix_weights): 32 and 6 scans.
  weights = {'mixed lesion': 32 / 38 * 0.75, 'mixed normal': 32 / 38 * 0.25,
             'lesions_only': 6 / 38}
  parts = {'mixed lesion': input_pipeline.TrainInput(_raw(bright), config, batch_size=4,
                                                     seed=5 + 2),
           'mixed normal': input_pipeline.TrainInput(_raw(dark), config, batch_size=4,
                                                     seed=5 + 2 + 1),
           'lesions_only': input_pipeline.TrainInput(_raw(lesions_only), config,
                                                     batch_size=4, seed=5 + 1)}
  want = input_pipeline.MixedTrainInput(parts, weights, batch_size=4, seed=5)
  assert list(got.weights) == list(want.weights)
  np.testing.assert_allclose(list(got.weights.values()), list(want.weights.values()),
                             rtol=1e-12)
  assert (got.num_examples, got.steps_per_epoch) == (want.num_examples, 9)
  for epoch in (0, 1):
    for a, b in zip(_epoch(got, epoch), _epoch(want, epoch), strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['mask'], b['mask'])


def test_training_on_a_few_patients_keeps_all_their_scans_and_nests_the_smaller_counts():
  examples = _bright_lesion_examples(12)
  for i, example in enumerate(examples):
    example['dup_group'] = f'patient {i // 3}'  # 4 patients of 3 scans each.
  raw = _raw(examples)
  two, three = (input_pipeline.chosen_groups(raw, n, seed=7) for n in (2, 3))
  assert len(set(two)) == 2 and set(two) < set(three)
  assert input_pipeline.chosen_groups(raw, 2, seed=7) == two  # The same seed, the same pick.
  assert {tuple(input_pipeline.chosen_groups(raw, 2, seed)) for seed in range(8)} != {tuple(two)}
  kept = list(input_pipeline.only_groups(raw, two).as_numpy_iterator())
  assert sorted(ex['dup_group'] for ex in kept) == sorted(3 * two)
  assert input_pipeline.chosen_groups(raw, 9, seed=0) == input_pipeline.chosen_groups(raw, 4, 0)


@pytest.mark.parametrize('source', ['busi', 'folder'])
def test_groups_only_reads_just_the_group_and_picks_the_same_patients(tmp_path, source):
  config = _config()
  config.source = source
  config.tfds_data_dir = str(tmp_path / 'tfds')
  if source == 'busi':
    config.manual_dir = str(busi_fixtures.write_kaggle_tree(
        tmp_path / 'busi', busi_fixtures.default_spec(per_class=6)))
    key = 'dup_group'
  else:
    config.folder.dir = _write_folder_dataset(str(tmp_path / 'scans'), num=15)
    config.folder.group_pattern = r'scan_(\d)'  # scan_1 and scan_1x: one patient.
    key = 'group'
  whole = input_pipeline.load_split(config, 'train')
  groups = input_pipeline.load_split(config, 'train', groups_only=True)
  assert set(groups.element_spec) == {key}
  assert [ex[key] for ex in groups.as_numpy_iterator()] == [
      ex[key] for ex in whole.as_numpy_iterator()]
  for count in (2, 3):
    assert input_pipeline.chosen_groups(groups, count, seed=4) == input_pipeline.chosen_groups(
        whole, count, seed=4)


def test_mix_weights_default_to_dataset_sizes_and_must_name_every_dataset():
  config = _config()
  assert input_pipeline.mix_weights(config, {'busi': 30, 'busbra': 90}) == {
      'busi': 0.25, 'busbra': 0.75}
  config.mix_weights = 'busi=1,busbra=1'
  assert input_pipeline.mix_weights(config, {'busi': 30, 'busbra': 90}) == {
      'busi': 0.5, 'busbra': 0.5}
  config.mix_weights = 'busi=1'
  with pytest.raises(ValueError, match='busbra'):
    input_pipeline.mix_weights(config, {'busi': 30, 'busbra': 90})


def test_sources_parse_and_reject_unknown_or_repeated_names():
  config = _config()
  config.source = 'busi + busbra'
  assert input_pipeline.sources(config) == ('busi', 'busbra')
  for bad in ('busi+kaggle', 'busi+busi'):
    config.source = bad
    with pytest.raises(ValueError, match='data.source'):
      input_pipeline.sources(config)
  config.source = 'synthetic+busi'
  with pytest.raises(ValueError, match='several datasets'):
    input_pipeline.load_split(config, 'train')
