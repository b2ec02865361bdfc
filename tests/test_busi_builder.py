"""The BUSI builder: Kaggle quirks, duplicate-aware deterministic splits, loud bad-input errors."""
import collections
import os
import pathlib
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import busi_fixtures
import data.busi  # Registers `busi`.
from data import scan_files
from data.busi import dataset_files
from data.busi import duplicates

ROOT_DIR = pathlib.Path(__file__).resolve().parents[1]
REAL_BUSI = ROOT_DIR / '..' / 'shared' / 'data' / 'busi'
SHAPE = busi_fixtures.SHAPE


def _read(dataset):
  """{image_id: (record, image, mask)} of a dataset folder or zip root."""
  return dataset_files.read_all(dataset, lambda r, image, mask: (r, image, mask))


def _tfds_build(manual_dir, data_dir):
  builder = data.busi.Builder(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


# --- Decoding the Kaggle quirks. ---


def test_image_modes_decode_to_luminance(tmp_path):
  gray = busi_fixtures.smooth_image(1)
  colour = np.stack([gray, gray, gray], -1)
  colour[5:10, 5:20] = (255, 200, 0)  # A yellow annotation burnt into the pixels.
  lesion = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('benign (1)', gray, [lesion]),
      busi_fixtures.Entry('benign (2)', busi_fixtures.smooth_image(2), [lesion], image_mode='RGB'),
      busi_fixtures.Entry('benign (3)', colour, [lesion]),
  ])
  decoded = _read(dataset)
  np.testing.assert_array_equal(decoded['benign (1)'][1][..., 0], gray)
  np.testing.assert_array_equal(decoded['benign (2)'][1][..., 0], busi_fixtures.smooth_image(2))
  expected = np.asarray(Image.fromarray(colour).convert('L'))
  np.testing.assert_array_equal(decoded['benign (3)'][1][..., 0], expected)
  for _, image, mask in decoded.values():
    assert image.dtype == np.uint8 and image.shape == SHAPE + (1,)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE + (1,)


@pytest.mark.parametrize('mode', ['1', 'L01', 'L255', 'RGB', 'RGBA'])
def test_mask_modes_decode_to_zero_one(tmp_path, mode):
  lesion = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('malignant (1)', busi_fixtures.smooth_image(1), [lesion], mask_mode=mode),
  ])
  _, _, mask = _read(dataset)['malignant (1)']
  np.testing.assert_array_equal(mask[..., 0], lesion.astype(np.uint8))


def test_rgba_mask_painted_in_alpha(tmp_path):
  lesion = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('benign (1)', busi_fixtures.smooth_image(1), [lesion])])
  # White everywhere, the lesion opaque on a transparent layer: only alpha tells them apart.
  rgba = np.full(SHAPE + (4,), 255, np.uint8)
  rgba[..., 3] = lesion * 255
  Image.fromarray(rgba, 'RGBA').save(dataset / 'benign' / 'benign (1)_mask.png')
  _, _, mask = _read(dataset)['benign (1)']
  np.testing.assert_array_equal(mask[..., 0], lesion.astype(np.uint8))


def test_rgba_scan_with_a_smaller_mask_names_the_mask_and_both_sizes(tmp_path):
  gray = busi_fixtures.smooth_image(1)
  lesion = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('benign (1)', gray, [lesion, lesion])])
  rgba = np.stack([gray] * 3 + [np.full(SHAPE, 128, np.uint8)], -1)
  Image.fromarray(rgba, 'RGBA').save(dataset / 'benign' / 'benign (1).png')
  np.testing.assert_array_equal(_read(dataset)['benign (1)'][1][..., 0], gray)  # Alpha dropped.
  small = dataset / 'benign' / 'benign (1)_mask_1.png'
  busi_fixtures.encode_mask(lesion[:30, :50], 'L255').save(small)
  with pytest.raises(scan_files.FormatError) as error:
    _read(dataset)
  assert error.value.problems == [
      (str(small), 'mask is 50x30 (WxH) but its image benign (1).png is 56x40')]


def test_multiple_masks_are_ored(tmp_path):
  first = busi_fixtures.ellipse_mask(SHAPE, (10, 10), (5, 5))
  second = busi_fixtures.ellipse_mask(SHAPE, (30, 40), (5, 8))
  third = busi_fixtures.ellipse_mask(SHAPE, (12, 12), (4, 4))  # Overlaps the first.
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('benign (7)', busi_fixtures.smooth_image(7), [first, second, third]),
  ])
  record, _, mask = _read(dataset)['benign (7)']
  assert [p.name for p in record.masks] == [
      'benign (7)_mask.png', 'benign (7)_mask_1.png', 'benign (7)_mask_2.png']
  np.testing.assert_array_equal(mask[..., 0], (first | second | third).astype(np.uint8))


# --- Finding the dataset in the manual dir. ---


def test_locate_nested_folder_and_the_folder_itself(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path / 'downloads' / 'busi')
  assert dataset_files.locate(tmp_path) == dataset
  assert dataset_files.locate(dataset) == dataset
  renamed = dataset.rename(tmp_path / 'downloads' / 'my_copy')  # Any name, if it holds classes.
  assert dataset_files.locate(tmp_path) == renamed


def test_zip_reads_like_the_folder(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path / 'extracted')
  manual = tmp_path / 'manual'
  manual.mkdir()
  busi_fixtures.zip_tree(dataset, manual / 'archive.zip')
  root = dataset_files.locate(manual)
  assert str(root).endswith('archive.zip/Dataset_BUSI_with_GT/')
  from_zip, from_folder = _read(root), _read(dataset)
  assert sorted(from_zip) == sorted(from_folder) and len(from_zip) == 9
  for image_id, (_, image, mask) in from_folder.items():
    np.testing.assert_array_equal(from_zip[image_id][1], image)
    np.testing.assert_array_equal(from_zip[image_id][2], mask)


def test_extracted_folder_wins_over_zip(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path)
  busi_fixtures.zip_tree(dataset, tmp_path / 'archive.zip')
  assert dataset_files.locate(tmp_path) == dataset


def test_several_copies_is_an_error(tmp_path):
  first = busi_fixtures.write_kaggle_tree(tmp_path / 'a')
  second = busi_fixtures.write_kaggle_tree(tmp_path / 'b')
  with pytest.raises(scan_files.FormatError) as error:
    dataset_files.locate(tmp_path)
  assert str(first) in str(error.value) and str(second) in str(error.value)


def test_manual_dir_without_dataset_explains_the_download(tmp_path):
  (tmp_path / 'notes.txt').write_text('nothing here')
  (tmp_path / 'other.zip').write_bytes(b'not a zip')
  with pytest.raises(scan_files.FormatError) as error:
    dataset_files.locate(tmp_path)
  message = str(error.value)
  assert str(tmp_path) in message and 'other.zip' in message
  assert 'Dataset_BUSI_with_GT' in message and 'archive.zip' in message
  assert 'kaggle.com' in message


# --- Bad files: one error naming every one of them. ---


def test_every_bad_file_is_reported_at_once(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path)
  benign, malignant = dataset / 'benign', dataset / 'malignant'
  (benign / 'benign (1)_mask.png').unlink()  # Image without a mask.
  (malignant / 'malignant (1).png').unlink()  # Mask without its image.
  Image.new('1', (10, 10)).save(benign / 'benign (2)_mask_1.png')  # Wrong mask size.
  (benign / 'benign (3).png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')  # Corrupt image.
  data_ = (malignant / 'malignant (2)_mask.png').read_bytes()
  (malignant / 'malignant (2)_mask.png').write_bytes(data_[:len(data_) // 2])  # Truncated.
  (dataset / 'normal' / 'normal 4.png').write_bytes(b'')  # Not a BUSI name.
  with pytest.raises(scan_files.FormatError) as error:
    _read(dataset)
  bad = [benign / 'benign (1).png', malignant / 'malignant (1)_mask.png',
         benign / 'benign (2)_mask_1.png', benign / 'benign (3).png',
         malignant / 'malignant (2)_mask.png', dataset / 'normal' / 'normal 4.png']
  message = str(error.value)
  assert {pathlib.Path(path) for path, _ in error.value.problems} == set(bad)
  for path in bad:
    assert str(path) in message
  for what in ('without a mask', 'without its image', '10x10', 'corrupt', 'unexpected file'):
    assert what in message
  assert isinstance(error.value, ValueError)


def test_missing_class_folder_and_misplaced_file(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path)
  shutil.rmtree(dataset / 'normal')
  (dataset / 'benign' / 'benign (1).png').rename(dataset / 'benign' / 'malignant (9).png')
  with pytest.raises(scan_files.FormatError) as error:
    dataset_files.scan(dataset)
  message = str(error.value)
  assert f'{dataset / "normal"}: missing class folder' in message
  assert str(dataset / 'benign' / 'malignant (9).png') in message
  assert str(dataset / 'benign' / 'benign (1)_mask.png') in message  # Now an orphan mask.


def test_tfds_build_reports_bad_files(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path / 'manual')
  (dataset / 'benign' / 'benign (1)_mask.png').unlink()
  (dataset / 'normal' / 'normal (2).png').unlink()
  with pytest.raises(scan_files.FormatError) as error:
    _tfds_build(tmp_path / 'manual', tmp_path / 'data')
  assert str(dataset / 'benign' / 'benign (1).png') in str(error.value)
  assert str(dataset / 'normal' / 'normal (2)_mask.png') in str(error.value)


# --- Duplicates and splits. ---


def _duplicate_spec():
  """Default images plus an exact cross-class copy and a shifted, resized near copy."""
  spec = busi_fixtures.default_spec(per_class=4)
  lesion = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
  spec.append(busi_fixtures.Entry(  # Same pixels as benign (1), stored as RGB.
      'malignant (20)', spec[0].image, [lesion], image_mode='RGB'))
  field = busi_fixtures.smooth_image(77, (180, 220))
  spec.append(busi_fixtures.Entry('benign (30)', field[:170, :200],
                                  [np.ones((170, 200), bool)]))
  spec.append(busi_fixtures.Entry('benign (31)', field[3:171, 2:205],
                                  [np.ones((168, 203), bool)]))
  return spec


def test_exact_and_near_duplicates_are_grouped(tmp_path):
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, _duplicate_spec())
  fingerprints = dataset_files.read_all(dataset, lambda r, image, m: duplicates.fingerprint(image))
  groups = duplicates.group(fingerprints)
  assert groups['malignant (20)'] == groups['benign (1)'] == 'benign (1)'
  assert groups['benign (31)'] == groups['benign (30)'] == 'benign (30)'
  singles = set(groups) - {'benign (1)', 'malignant (20)', 'benign (30)', 'benign (31)'}
  assert all(groups[i] == i for i in singles)


def test_fingerprint_ignores_storage_but_not_content():
  image = busi_fixtures.smooth_image(5)
  assert duplicates.fingerprint(image).digest == duplicates.fingerprint(image[..., None]).digest
  changed = image.copy()
  changed[0, 0] ^= 1
  assert duplicates.fingerprint(changed).digest != duplicates.fingerprint(image).digest


def _synthetic_groups(num_images=600, seed=0):
  """Labels and duplicate groups shaped like BUSI's, without any pixels."""
  rng = random.Random(seed)
  labels, groups = {}, {}
  counters = collections.Counter()
  while len(labels) < num_images:
    label = rng.choices(['benign', 'malignant', 'normal'], [56, 27, 17])[0]
    members = []
    for _ in range(rng.choices([1, 2, 3, 5], [60, 30, 8, 2])[0]):
      counters[label] += 1
      members.append(f'{label} ({counters[label]})')
    for image_id in members:
      labels[image_id] = label
      groups[image_id] = min(members)
  return labels, groups


def test_splits_keep_groups_whole_and_hit_fractions():
  labels, groups = _synthetic_groups()
  splits = duplicates.assign_splits(labels, groups)
  assert set(splits) == set(labels)
  sides = collections.defaultdict(set)
  for image_id, split in splits.items():
    sides[groups[image_id]].add(split)
  assert all(len(s) == 1 for s in sides.values())
  for label in ('benign', 'malignant', 'normal'):
    ids = [i for i in labels if labels[i] == label]
    counts = collections.Counter(splits[i] for i in ids)
    for name, fraction in duplicates.split_fractions(label):
      assert abs(counts[name] / len(ids) - fraction) < 0.03, (label, name, counts)


def test_larger_normal_validation_leaves_test_unchanged(monkeypatch):
  labels, groups = _synthetic_groups()
  splits = duplicates.assign_splits(labels, groups)
  monkeypatch.setattr(duplicates, 'CLASS_SPLIT_FRACTIONS', {})
  uniform = duplicates.assign_splits(labels, groups)
  assert {i for i in splits if splits[i] == 'test'} == {i for i in uniform if uniform[i] == 'test'}
  moved = {i for i in splits if splits[i] != uniform[i]}
  assert moved and all(labels[i] == 'normal' and uniform[i] == 'train' for i in moved)
  assert all(splits[i] == 'validation' for i in moved)


def test_splits_ignore_listing_order():
  labels, groups = _synthetic_groups()
  expected = duplicates.assign_splits(labels, groups)
  ids = list(labels)
  random.Random(1).shuffle(ids)
  shuffled = duplicates.assign_splits({i: labels[i] for i in ids}, {i: groups[i] for i in ids})
  assert shuffled == expected


def test_tiny_datasets_get_every_split():
  labels = {'benign (1)': 'benign', 'benign (2)': 'benign', 'normal (1)': 'normal'}
  splits = duplicates.assign_splits(labels, {i: i for i in labels})
  assert sorted(splits.values()) == ['test', 'train', 'validation']


def test_splits_identical_for_a_copy_listed_in_another_order(tmp_path):
  spec = _duplicate_spec()
  first = busi_fixtures.write_kaggle_tree(tmp_path / 'one', spec)
  second = busi_fixtures.write_kaggle_tree(tmp_path / 'two' / 'elsewhere', spec[::-1])

  def splits_of(dataset):
    scanned = dataset_files.read_all(
        dataset, lambda r, image, m: (r.label, duplicates.fingerprint(image)))
    groups = duplicates.group({i: fp for i, (_, fp) in scanned.items()})
    return duplicates.assign_splits({i: label for i, (label, _) in scanned.items()}, groups)

  splits = splits_of(first)
  assert splits == splits_of(second)
  assert splits['benign (1)'] == splits['malignant (20)']
  assert splits['benign (30)'] == splits['benign (31)']


# --- The TFDS build. ---


def test_tfds_build_from_zip(tmp_path):
  spec = _duplicate_spec()
  spec[1].masks = [spec[1].masks[0], busi_fixtures.ellipse_mask(SHAPE, (5, 5), (3, 3))]
  dataset = busi_fixtures.write_kaggle_tree(tmp_path / 'extracted', spec)
  (tmp_path / 'manual').mkdir()
  busi_fixtures.zip_tree(dataset, tmp_path / 'manual' / 'archive.zip')
  builder = _tfds_build(tmp_path / 'manual', tmp_path / 'data')

  assert builder.info.name == 'busi' and str(builder.info.version) == '1.1.0'
  by_id = {}
  for split in builder.info.splits:
    for example in _examples(builder, split):
      by_id[example['image_id'].decode()] = (split, example)
  assert len(by_id) == len(spec)
  for entry in spec:
    split, example = by_id[entry.image_id]
    assert example['image'].dtype == np.uint8
    assert example['image'].shape == entry.image.shape[:2] + (1,)
    np.testing.assert_array_equal(example['image'][..., 0], entry.image)
    expected_mask = np.logical_or.reduce(entry.masks).astype(np.uint8)
    np.testing.assert_array_equal(example['mask'][..., 0], expected_mask)
    assert example['num_masks'] == len(entry.masks)
    assert builder.info.features['label'].int2str(example['label']) == entry.label
    group_split, _ = by_id[example['dup_group'].decode()]
    assert split == group_split  # The group's representative sits on the same side.
  assert by_id['malignant (20)'][1]['dup_group'] == b'benign (1)'

  # `tfds.load` by name works once `data.busi` is imported, and reuses the built data.
  loaded = tfds.load('busi', split='train+validation+test', data_dir=str(tmp_path / 'data'),
                     download=False)
  assert sum(1 for _ in loaded) == len(spec)


def test_tfds_build_of_the_default_fixture(tmp_path):
  """The tree other tests reuse builds, with every split non-empty."""
  busi_fixtures.write_kaggle_tree(tmp_path / 'manual')
  builder = _tfds_build(tmp_path / 'manual', tmp_path / 'data')
  sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
  assert set(sizes) == {'train', 'validation', 'test'} and all(sizes.values())
  assert sum(sizes.values()) == 9


# --- The real data, when this machine has it. ---


@pytest.fixture(scope='session')
def real_build(tmp_path_factory):
  if not REAL_BUSI.is_dir():
    pytest.skip(f'no real BUSI copy at {REAL_BUSI}')
  builder = _tfds_build(REAL_BUSI, tmp_path_factory.mktemp('busi_tfds'))
  return {split: _examples(builder, split) for split in builder.info.splits}


@pytest.mark.slow  # Builds the real BUSI copy.
def test_real_counts_and_masks(real_build):
  examples = [e for split in real_build.values() for e in split]
  labels = collections.Counter(dataset_files.CLASSES[e['label']] for e in examples)
  assert labels == {'benign': 347, 'malignant': 166, 'normal': 107}
  assert len({e['image_id'] for e in examples}) == 620
  for e in examples:
    lesion = e['mask'].any()
    assert lesion == (dataset_files.CLASSES[e['label']] != 'normal'), e['image_id']
    assert set(np.unique(e['mask'])) <= {0, 1}
    assert e['image'].shape == e['mask'].shape


@pytest.mark.slow  # Builds the real BUSI copy.
def test_real_multi_mask_images_are_the_or_of_their_files(real_build):
  root = dataset_files.locate(REAL_BUSI)
  multi = [e for split in real_build.values() for e in split if e['num_masks'] > 1]
  assert len(multi) == 12
  for e in multi:
    label, number = e['image_id'].decode().split(' ')
    files = sorted((root / label).glob(f'{label} {number}_mask*.png'))
    assert len(files) == e['num_masks']
    expected = np.logical_or.reduce([scan_files.read_mask(f) for f in files])
    np.testing.assert_array_equal(e['mask'][..., 0], expected.astype(np.uint8))


@pytest.mark.slow  # Builds the real BUSI copy.
def test_real_duplicate_groups_stay_in_one_split(real_build):
  sides = collections.defaultdict(set)
  groups = {}
  for split, examples in real_build.items():
    for e in examples:
      sides[e['dup_group']].add(split)
      groups[e['image_id'].decode()] = e['dup_group'].decode()
  assert all(len(s) == 1 for s in sides.values())
  for pair in [('benign (1)', 'benign (318)'), ('benign (2)', 'benign (319)'),
               ('benign (131)', 'malignant (51)')]:
    assert groups[pair[0]] == groups[pair[1]], pair
  sizes = collections.Counter(groups.values())
  assert max(sizes.values()) <= 8  # No runaway chaining of unrelated images.
  assert 150 <= sum(n for n in sizes.values() if n > 1) <= 320
  for label in range(len(dataset_files.CLASSES)):
    total = sum(e['label'] == label for split in real_build.values() for e in split)
    for name, fraction in duplicates.split_fractions(dataset_files.CLASSES[label]):
      count = sum(e['label'] == label for e in real_build[name])
      assert abs(count / total - fraction) < 0.04, (label, name, count)


@pytest.mark.slow  # A `tfds build` subprocess.
def test_tfds_build_command_builds_the_dataset(tmp_path):
  """The documented `PYTHONPATH=. tfds build data/busi` command, as a user runs it."""
  manual = busi_fixtures.write_kaggle_tree(tmp_path / 'manual')
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  result = subprocess.run(
      [tfds_cli, 'build', 'data/busi', f'--manual_dir={manual.parent}',
       f'--data_dir={tmp_path / "data"}'], cwd=ROOT_DIR, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH='.'), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  built = tfds.builder('busi', data_dir=str(tmp_path / 'data'))
  assert sum(s.num_examples for s in built.info.splits.values()) == 9
