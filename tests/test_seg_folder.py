"""The generic folder builder: pairing rules, odd file formats, CSV labels, splits, loud errors."""
import collections
import csv
import dataclasses
import pathlib
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import busi_fixtures
from data import classes
from data import scan_files
from data.seg_folder import BUS_UCLM, BUSBRA, Builder, FolderConfig, check
from data.seg_folder import folder_files
from data.seg_folder import seg_folder_dataset_builder

ROOT_DIR = pathlib.Path(__file__).resolve().parents[1]
REAL_BUSBRA = ROOT_DIR / '..' / 'shared' / 'data' / 'busbra' / 'BUSBRA'
REAL_BUS_UCLM = ROOT_DIR / '..' / 'shared' / 'data' / 'bus_uclm' / 'BUS-UCLM'
SHAPE = busi_fixtures.SHAPE
LESION = busi_fixtures.ellipse_mask(SHAPE, (20, 28), (6, 9))
SAME_FOLDER = FolderConfig(name='same_folder')  # Defaults: `x.png` + `x_mask.png`, one folder.


def _image(seed, shape=SHAPE):
  return busi_fixtures.smooth_image(seed, shape)


def _save(array_or_image, path):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = array_or_image
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  image.save(path)
  return path


def _write_csv(path, rows, columns=('ID', 'Case', 'Pathology')):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)


def _write_busbra(root, cases, order=None):
  """BUS-BRA layout: cases {case: (label, number of views)} -> Images/, Masks/, bus_data.csv."""
  rows = []
  for case, (label, views) in cases.items():
    for side in 'lrs'[:views]:
      stem = f'{case:04d}-{side}'
      rows.append((f'bus_{stem}', case, label))
  for image_id, case, _ in (rows if order is None else [rows[i] for i in order]):
    seed = case * 10 + ord(image_id[-1])
    _save(_image(seed), root / 'Images' / f'{image_id}.png')
    _save(busi_fixtures.encode_mask(LESION, '1'),
          root / 'Masks' / f'mask_{image_id.removeprefix("bus_")}.png')
  _write_csv(root / 'bus_data.csv', rows if order is None else [rows[i] for i in order])
  return rows


def _problems(error):
  return {(pathlib.Path(path).name, what) for path, what in error.value.problems}


# --- Pairing and decoding. ---


def test_odd_formats_in_one_folder_decode(tmp_path):
  gray16 = (_image(1).astype(np.uint16) * 257 + 100)
  colour = np.stack([_image(2), _image(3), _image(4)], -1)
  _save(Image.fromarray(gray16), tmp_path / 'a.png')  # 16-bit PNG.
  _save(busi_fixtures.encode_mask(LESION, '1'), tmp_path / 'a_mask.png')
  _save(colour, tmp_path / 'b.JPG')  # RGB JPEG, upper-case extension.
  _save(busi_fixtures.encode_mask(LESION, 'L255'), tmp_path / 'b_mask.png')
  _save(_image(5), tmp_path / 'c.bmp')
  _save(busi_fixtures.encode_mask(LESION, 'L01'), tmp_path / 'c_mask.bmp')
  _save(_image(6), tmp_path / 'd.tiff')
  _save(busi_fixtures.encode_mask(LESION, 'RGBA'), tmp_path / 'd_mask.tif')
  _save(_image(7), tmp_path / 'e.png')
  Image.fromarray(LESION.astype(np.uint8) * 255).save(tmp_path / 'e_mask.jpg', quality=90)
  _save(_image(8), tmp_path / 'f.png')
  _save(busi_fixtures.encode_mask(np.zeros(SHAPE, bool), 'RGB'), tmp_path / 'f_mask.png')
  (tmp_path / 'notes.txt').write_text('not an image')
  for ignored in ('.hidden.png', '__MACOSX/a.png', 'subfolder/g.png'):
    _save(_image(9), tmp_path / ignored)

  records = folder_files.read_all(tmp_path, SAME_FOLDER)
  assert [r.image.name for r in records] == ['a.png', 'b.JPG', 'c.bmp', 'd.tiff', 'e.png', 'f.png']
  decoded = {r.image_id: folder_files.decode(r) for r in records}
  expected_images = {
      'a': (gray16.astype(np.int64) + 128) // 257,
      'b': np.asarray(Image.open(tmp_path / 'b.JPG').convert('L')),
      'c': _image(5), 'd': _image(6), 'e': _image(7), 'f': _image(8)}
  for image_id, (image, mask) in decoded.items():
    assert image.dtype == mask.dtype == np.uint8 and image.shape == mask.shape == SHAPE + (1,)
    np.testing.assert_array_equal(image[..., 0], expected_images[image_id])
    expected_mask = np.zeros(SHAPE) if image_id == 'f' else LESION
    np.testing.assert_array_equal(mask[..., 0], expected_mask.astype(np.uint8))
  labels = {r.image_id: r.label for r in records}
  assert labels == {'a': 'unspecified', 'b': 'unspecified', 'c': 'unspecified',
                    'd': 'unspecified', 'e': 'unspecified', 'f': 'normal'}
  assert all(r.group == r.image_id and r.split == '' for r in records)


def test_mask_painted_in_alpha_and_palette_masks(tmp_path):
  rgba = np.full(SHAPE + (4,), 255, np.uint8)
  rgba[..., 3] = LESION * 255  # White everywhere: only the varying alpha marks the lesion.
  np.testing.assert_array_equal(
      scan_files.read_mask(_save(Image.fromarray(rgba, 'RGBA'), tmp_path / 'a.png')), LESION)
  palette = Image.fromarray(LESION.astype(np.uint8)).convert('P')
  np.testing.assert_array_equal(scan_files.read_mask(_save(palette, tmp_path / 'p.png')),
                                LESION)
  sixteen = Image.fromarray(LESION.astype(np.uint16) * 65535)
  np.testing.assert_array_equal(scan_files.read_mask(_save(sixteen, tmp_path / 's.png')),
                                LESION)


def test_busbra_naming_with_csv_labels_and_groups(tmp_path):
  cases = {1: ('malignant', 2), 4: ('benign', 2), 7: ('benign', 1), 9: ('Malignant ', 3),
           12: ('benign', 2), 15: ('benign', 1), 20: ('malignant', 2)}
  rows = _write_busbra(tmp_path, cases)
  (tmp_path / 'Images' / 'Thumbs.db').write_text('junk')  # Ignored.
  records = folder_files.read_all(tmp_path, BUSBRA)
  assert [r.image_id for r in records] == sorted(row[0] for row in rows)
  by_id = {r.image_id: r for r in records}
  for image_id, case, label in rows:
    assert by_id[image_id].label == label.strip().lower()
    assert by_id[image_id].group == str(case)
    assert by_id[image_id].mask == tmp_path / 'Masks' / f'mask_{image_id[4:]}.png'
  splits = seg_folder_dataset_builder.assign_splits(records, BUSBRA)
  sides = collections.defaultdict(set)
  for record in records:
    sides[record.group].add(splits[record.image_id])
  assert all(len(s) == 1 for s in sides.values())
  assert set(splits.values()) == {'train', 'validation', 'test'}


# --- Bad input: one error naming everything. ---


def test_every_bad_file_is_reported_at_once(tmp_path):
  for n in range(1, 7):
    _save(_image(n), tmp_path / f'img{n}.png')
    _save(busi_fixtures.encode_mask(LESION, 'L255'), tmp_path / f'img{n}_mask.png')
  (tmp_path / 'img1_mask.png').unlink()  # Image without a mask.
  (tmp_path / 'img2.png').unlink()  # Mask without an image.
  _save(np.zeros((10, 12), np.uint8), tmp_path / 'img3_mask.png')  # Wrong size.
  (tmp_path / 'img4.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')  # Unreadable.
  _save(_image(50), tmp_path / 'img5_mask.png')  # A picture saved as the mask.
  _save(_image(51), tmp_path / 'img6.jpg')  # Two images with key img6.
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.read_all(tmp_path, SAME_FOLDER)
  message = str(error.value)
  bad = ['img1.png', 'img2_mask.png', 'img3_mask.png', 'img4.png', 'img5_mask.png',
         'img6.png', 'img6.jpg']
  assert {name for name, _ in _problems(error)} == set(bad)
  for name in bad:
    assert str(tmp_path / name) in message
  for what in ('image without a mask', 'mask without an image', 'mask is 12x10 (WxH) but its '
               'image img3.png is 56x40', 'unreadable or corrupt', 'not a binary mask',
               "2 images with key 'img6'"):
    assert what in message
  assert isinstance(error.value, ValueError)


def test_csv_problems_are_reported_with_the_rest(tmp_path):
  rows = _write_busbra(tmp_path, {1: ('benign', 2), 2: ('malignant', 1), 3: ('benign', 1)})
  rows[0] = ('bus_0001-l', 1, 'borderline')  # Unknown label.
  rows[2] = ('bus_0099-l', 2, 'malignant')  # Row without an image; bus_0002-l has no row.
  _write_csv(tmp_path / 'bus_data.csv', rows)
  (tmp_path / 'Masks' / 'mask_0003-l.png').unlink()  # And a plain pairing problem.
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.scan(tmp_path, BUSBRA)
  message = str(error.value)
  assert "unknown label 'borderline'" in message and 'accepted: benign, malignant' in message
  assert "line 4: no image file for 'bus_0099-l'" in message
  assert f'{tmp_path / "Images" / "bus_0002-l.png"}: no row in bus_data.csv' in message
  assert f'{tmp_path / "Images" / "bus_0003-l.png"}: image without a mask' in message


def test_csv_missing_or_lacking_a_column(tmp_path):
  _write_busbra(tmp_path, {1: ('benign', 2)})
  _write_csv(tmp_path / 'bus_data.csv', [('bus_0001-l', 1, 'benign')], ('ID', 'Patient', 'X'))
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.scan(tmp_path, BUSBRA)
  assert "no column 'Pathology', 'Case'; its columns: ID, Patient, X" in str(error.value)
  (tmp_path / 'bus_data.csv').unlink()
  with pytest.raises(scan_files.FormatError, match='CSV file not found'):
    folder_files.scan(tmp_path, BUSBRA)


def test_normal_label_with_a_lesion_is_an_error(tmp_path):
  _write_busbra(tmp_path, {1: ('normal', 1), 2: ('benign', 1)})
  config = dataclasses.replace(BUSBRA, name='with_normal', label_map=())
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.read_all(tmp_path, config)
  assert _problems(error) == {('mask_0001-l.png', 'labelled normal, but the mask marks a lesion')}


def test_check_fails_fast_on_missing_folders_and_bad_configs(tmp_path):
  with pytest.raises(scan_files.FormatError, match='manual dir .* does not exist'):
    check(tmp_path / 'nowhere', BUSBRA)
  (tmp_path / 'download' / 'BUSBRA' / 'Images').mkdir(parents=True)
  with pytest.raises(scan_files.FormatError) as error:
    check(tmp_path / 'download', BUSBRA)
  assert 'images_subdir' in str(error.value)
  assert f'A copy is in {tmp_path / "download" / "BUSBRA"}' in str(error.value)
  with pytest.raises(scan_files.FormatError, match='masks_subdir'):
    check(tmp_path / 'download' / 'BUSBRA', BUSBRA)
  with pytest.raises(scan_files.FormatError, match='mask_prefix, mask_suffix: both empty'):
    check(tmp_path, FolderConfig(name='bad', mask_suffix=''))
  with pytest.raises(scan_files.FormatError, match='label_map'):
    check(tmp_path, FolderConfig(name='bad', csv='x.csv', id_column='id', label_column='y',
                                 label_map=(('b', 'bening'),)))


# --- Splits. ---


def test_splits_ignore_listing_order_and_keep_groups_whole(tmp_path):
  cases = {c: ('benign' if c % 3 else 'malignant', 1 + c % 3) for c in range(1, 17)}
  order = list(range(sum(views for _, views in cases.values())))
  random.Random(3).shuffle(order)
  _write_busbra(tmp_path / 'a', cases)
  _write_busbra(tmp_path / 'b', cases, order)  # Files and CSV rows written in another order.
  first = folder_files.scan(tmp_path / 'a', BUSBRA)
  second = folder_files.scan(tmp_path / 'b', BUSBRA)
  random.Random(4).shuffle(second)
  splits = seg_folder_dataset_builder.assign_splits(first, BUSBRA)
  assert splits == seg_folder_dataset_builder.assign_splits(second, BUSBRA)
  sides = collections.defaultdict(set)
  for record in first:
    sides[record.group].add(splits[record.image_id])
  assert all(len(s) == 1 for s in sides.values())
  assert set(splits.values()) == {'train', 'validation', 'test'}


def test_user_split_column_is_honoured(tmp_path):
  names = [f'x{n}' for n in range(6)]
  wanted = dict(zip(names, ['train', 'TEST', 'validation', 'train', 'test', 'train']))
  for n, name in enumerate(names):
    _save(_image(n), tmp_path / f'{name}.png')
    _save(busi_fixtures.encode_mask(LESION, '1'), tmp_path / f'{name}_mask.png')
  _write_csv(tmp_path / 'meta.csv', list(wanted.items()), ('file', 'fold'))
  config = FolderConfig(name='mine', csv='meta.csv', id_column='file', split_column='fold')
  records = folder_files.scan(tmp_path, config)
  assert seg_folder_dataset_builder.assign_splits(records, config) == {
      name: split.lower() for name, split in wanted.items()}
  _write_csv(tmp_path / 'meta.csv', [(n, 'train') for n in names[:5]] + [('x5', 'dev')],
             ('file', 'fold'))
  with pytest.raises(scan_files.FormatError, match="bad split 'dev'"):
    folder_files.scan(tmp_path, config)


def test_too_few_groups_for_three_splits(tmp_path):
  _write_busbra(tmp_path, {1: ('benign', 2), 2: ('malignant', 2)})
  with pytest.raises(scan_files.FormatError, match='2 group\\(s\\) cannot fill'):
    seg_folder_dataset_builder.assign_splits(folder_files.scan(tmp_path, BUSBRA), BUSBRA)


# --- BUS-UCLM's layout: ';' CSV with a BOM, colour masks, patient in the file name. ---

_COLOURS = {'Benign': (0, 255, 0), 'Malignant': (255, 0, 0), 'Normal': (0, 0, 0)}


def _write_bus_uclm(root, scans, mismatched=()):
  """scans [(stem, label)] as published: RGB images (RGBA for the `mismatched` ones, which are
  also smaller than their masks), colour-coded RGB masks, INFO.csv ';'-separated with a BOM."""
  rows = []
  for n, (stem, label) in enumerate(scans):
    gray = _image(n)
    shape = (SHAPE[0] - 6, SHAPE[1] - 4) if stem in mismatched else SHAPE
    image = np.stack([gray[:shape[0], :shape[1]]] * 3 + ([np.full(shape, 255, np.uint8)]
                                                         if stem in mismatched else []), -1)
    _save(image, root / 'images' / f'{stem}.png')
    mask = np.zeros(SHAPE + (3,), np.uint8)
    mask[LESION] = _COLOURS[label]
    _save(mask, root / 'masks' / f'{stem}.png')
    rows.append(f'{stem}.png;{SHAPE[1]}x{SHAPE[0]};{label};No;No;No')
  text = 'Image;Resolution;Label;Doppler;Marks;Combined\n' + '\n'.join(rows) + '\n'
  (root / 'INFO.csv').write_bytes(b'\xef\xbb\xbf' + text.encode())


_UCLM_SCANS = [(f'{patient}_{i:03d}', label) for patient, labels in (
    ('ALWI', ('Benign', 'Normal')), ('ANAT', ('Normal', 'Normal')), ('CHVI', ('Malignant',)),
    ('CODE', ('Malignant', 'Normal')), ('POFR', ('Benign', 'Normal')),
    ('VITR', ('Normal', 'Benign'))) for i, label in enumerate(labels)]


def test_bus_uclm_layout_reads_labels_colours_and_patients(tmp_path):
  _write_bus_uclm(tmp_path, _UCLM_SCANS)
  records = folder_files.read_all(tmp_path, dataclasses.replace(BUS_UCLM, exclude=()))
  assert [(r.image_id, r.label, r.group) for r in records] == [
      (stem, label.lower(), stem[:4]) for stem, label in _UCLM_SCANS]
  image, mask = folder_files.decode(records[0])
  np.testing.assert_array_equal(image[..., 0], _image(0))  # RGB with R=G=B -> that gray.
  np.testing.assert_array_equal(mask[..., 0], LESION)
  splits = seg_folder_dataset_builder.assign_splits(records, BUS_UCLM)
  by_patient = collections.defaultdict(set)
  for record in records:
    by_patient[record.group].add(splits[record.image_id])
  assert all(len(s) == 1 for s in by_patient.values())


def test_labels_from_mask_colours_alone_and_against_the_csv(tmp_path):
  _write_bus_uclm(tmp_path, _UCLM_SCANS)
  colours_only = dataclasses.replace(BUS_UCLM, csv='', id_column='', label_column='',
                                     label_map=(), exclude=())
  assert [r.label for r in folder_files.read_all(tmp_path, colours_only)] == [
      label.lower() for _, label in _UCLM_SCANS]
  rows = (tmp_path / 'INFO.csv').read_bytes().replace(b'CHVI_000.png;56x40;Malignant',
                                                      b'CHVI_000.png;56x40;Benign')
  (tmp_path / 'INFO.csv').write_bytes(rows)
  mask = np.zeros(SHAPE + (3,), np.uint8)
  mask[LESION] = (0, 0, 255)  # Blue: a colour the config does not list.
  _save(mask, tmp_path / 'masks' / 'POFR_000.png')
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.read_all(tmp_path, dataclasses.replace(BUS_UCLM, exclude=()))
  assert _problems(error) == {
      ('CHVI_000.png', 'labelled benign (CSV), but its lesion colour says malignant'),
      ('POFR_000.png', 'lesion colour(s) #0000ff not in label_colours (#00ff00=benign, '
                       '#ff0000=malignant)')}


def test_a_size_mismatch_stops_a_strict_build_and_a_listed_one_is_left_out(tmp_path):
  _write_bus_uclm(tmp_path, _UCLM_SCANS, mismatched={'ALWI_000', 'ANAT_001'})
  strict = dataclasses.replace(BUS_UCLM, exclude=())
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.read_all(tmp_path, strict)
  assert _problems(error) == {
      ('ALWI_000.png', "mask is 56x40 (WxH) but its image ALWI_000.png is 52x34 (list "
                       "'ALWI_000' in exclude to leave the pair out)"),
      ('ANAT_001.png', "mask is 56x40 (WxH) but its image ANAT_001.png is 52x34 (list "
                       "'ANAT_001' in exclude to leave the pair out)")}
  listed = dataclasses.replace(BUS_UCLM, exclude=('ALWI_000', 'ANAT_001', 'NOT_THERE'))
  records = folder_files.read_all(tmp_path, listed)
  assert len(records) == len(_UCLM_SCANS) - 2
  assert folder_files.excluded(tmp_path, listed) == ['ALWI_000', 'ANAT_001']


def test_group_pattern_problems(tmp_path):
  _write_bus_uclm(tmp_path, _UCLM_SCANS[:3])
  _save(_image(9), tmp_path / 'images' / 'x1.png')
  _save(np.zeros(SHAPE + (3,), np.uint8), tmp_path / 'masks' / 'x1.png')
  config = dataclasses.replace(BUS_UCLM, csv='', id_column='', label_column='', exclude=())
  with pytest.raises(scan_files.FormatError) as error:
    folder_files.read_all(tmp_path, config)
  assert _problems(error) == {('x1.png', "file name does not match group_pattern '(....)_'")}
  with pytest.raises(scan_files.FormatError, match="group_pattern: '\(' is not a regular"):
    check(tmp_path, dataclasses.replace(config, group_pattern='('))
  with pytest.raises(scan_files.FormatError, match='group_pattern, group_column: both set'):
    check(tmp_path, dataclasses.replace(BUS_UCLM, group_column='Image'))


# --- The TFDS build. ---


def test_tfds_build_of_a_user_folder(tmp_path):
  manual = tmp_path / 'manual'
  expected = {}
  for n in range(7):
    lesion = LESION if n % 3 else np.zeros(SHAPE, bool)
    _save(_image(n), manual / 'scans' / f'p{n}.png')
    _save(busi_fixtures.encode_mask(lesion, 'L255'), manual / 'labels' / f'p{n}_seg.png')
    expected[f'p{n}'] = (_image(n), lesion, 'unspecified' if n % 3 else 'normal')
  config = FolderConfig(name='mydata', images_subdir='scans', masks_subdir='labels',
                        mask_suffix='_seg', description='A test folder.')
  builder = Builder(config=config, data_dir=str(tmp_path / 'data'))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert builder.info.full_name == 'seg_folder/mydata/1.0.0'
  assert builder.info.features['label'].names == list(classes.CLASS_NAMES)
  seen = {}
  for split in ('train', 'validation', 'test'):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      image_id = example['image_id'].decode()
      image, lesion, label = expected[image_id]
      assert example['image'].shape == example['mask'].shape == SHAPE + (1,)
      assert example['image'].dtype == example['mask'].dtype == np.uint8
      np.testing.assert_array_equal(example['image'][..., 0], image)
      np.testing.assert_array_equal(example['mask'][..., 0], lesion.astype(np.uint8))
      assert classes.CLASS_NAMES[example['label']] == label
      assert example['group'].decode() == image_id
      seen[image_id] = split
  assert sorted(seen) == sorted(expected) and set(seen.values()) == {'train', 'validation',
                                                                      'test'}


# --- The real data, when this machine has it. ---


@pytest.mark.slow  # Reads the real BUS-BRA copy.
def test_real_busbra_pairs_labels_and_patient_splits():
  if not REAL_BUSBRA.is_dir():
    pytest.skip(f'no real BUS-BRA copy at {REAL_BUSBRA}')
  records = folder_files.scan(REAL_BUSBRA, BUSBRA)
  assert len(records) == 1127
  assert collections.Counter(r.label for r in records) == {'benign': 760, 'malignant': 367}
  splits = seg_folder_dataset_builder.assign_splits(records, BUSBRA)
  sides = collections.defaultdict(set)
  for record in records:
    sides[record.group].add(splits[record.image_id])
  assert len(sides) == 638 and all(len(s) == 1 for s in sides.values())


@pytest.mark.slow  # Reads the real BUS-UCLM copy.
def test_real_bus_uclm_labels_exclusions_and_patient_splits():
  if not REAL_BUS_UCLM.is_dir():
    pytest.skip(f'no real BUS-UCLM copy at {REAL_BUS_UCLM}')
  records = folder_files.read_all(REAL_BUS_UCLM, BUS_UCLM)
  assert len(records) == 437  # 450 minus the 13 listed HESN scans.
  assert collections.Counter(r.label for r in records) == {'normal': 272, 'benign': 102,
                                                            'malignant': 63}
  assert folder_files.excluded(REAL_BUS_UCLM, BUS_UCLM) == [f'HESN_{i:03d}' for i in range(13)]
  splits = seg_folder_dataset_builder.assign_splits(records, BUS_UCLM)
  patients = collections.defaultdict(set)
  for record in records:
    patients[record.group].add(splits[record.image_id])
  assert len(patients) == 25 and all(len(s) == 1 for s in patients.values())
  assert collections.Counter(splits.values()) == {'train': 275, 'validation': 66, 'test': 96}
