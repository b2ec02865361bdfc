"""Reads a folder of images and lesion masks, named in any consistent way, into checked pairs.

Pairing rule: an image file's *key* is its stem without `image_prefix` / `image_suffix`, a mask
file's key is its stem without `mask_prefix` / `mask_suffix`, and an image and a mask pair when
their keys are equal (extensions may differ). A file of the masks folder is a mask iff its stem
starts with `mask_prefix` and ends with `mask_suffix`; that is how masks are told apart from
images sharing their folder. Only .png .jpg .jpeg .bmp .tif .tiff files count (any case);
other files, hidden files and subfolders (e.g. `__MACOSX`) are ignored. An optional CSV adds a
label, a group (patient) and a split per image, keyed by the image file's stem (or its name:
a known image extension is dropped from the id column's values). Without a group column, a
`group_pattern` (a regular expression) can take the group from the image's stem. Labels come
from the CSV, or from the colour of the lesion in colour-coded masks (`label_colours`). Files
listed in `exclude` (image stems) are left out of the dataset; everything else must be usable.
Images and masks are read by `scan_files`, as every dataset's are.

Everything wrong is collected first and raised as one `scan_files.FormatError`, so a user fixes
a broken copy in one go and nothing is dropped silently. `config` is any object with the fields
of `seg_folder_dataset_builder.FolderConfig`: this module does not need TFDS.
"""
import collections
import csv
import dataclasses
import os
import pathlib
import re
from typing import Union

import numpy as np

from data import classes
from data import names
from data import scan_files

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Record:
  """One image and its mask, not yet decoded."""
  image_id: str  # The image file's stem, e.g. 'bus_0001-l'.
  image: pathlib.Path
  mask: pathlib.Path
  label: str  # A class name; '' until `read_all` has seen the mask (no label column).
  group: str  # Images of one group stay in one split; without a group column, image_id.
  split: str  # From the split column, or '' (the builder assigns one).


def _folders(manual_dir: PathLike, config) -> tuple[pathlib.Path, pathlib.Path, bool]:
  """(images folder, masks folder, whether they are the same folder)."""
  root = pathlib.Path(manual_dir)
  images_dir, masks_dir = root / config.images_subdir, root / config.masks_subdir
  return images_dir, masks_dir, images_dir.resolve() == masks_dir.resolve()


def check(manual_dir: PathLike, config) -> None:
  """Raises scan_files.FormatError for a bad config or a missing manual dir / images / masks
  folder.

  Cheap (no file is read), so callers can fail before any TFDS work.
  """
  problems = []
  images_dir, masks_dir, shared = _folders(manual_dir, config)
  if shared and not (config.mask_prefix or config.mask_suffix):
    problems.append(('mask_prefix, mask_suffix', 'both empty while images and masks share a '
                     'folder, so masks cannot be told from images; set one'))
  if config.csv and not config.id_column:
    problems.append(('id_column', f'empty, but a CSV ({config.csv}) is given'))
  for field in ('id_column', 'label_column', 'group_column', 'split_column'):
    if getattr(config, field) and not config.csv:
      problems.append((field, 'set, but no CSV is given (field csv)'))
  for field in ('label_map', 'label_colours'):
    for value, name in getattr(config, field):
      if name not in classes.CLASS_NAMES:
        problems.append((field, f'{value!r} maps to {name!r}, not one of '
                         f'{", ".join(classes.CLASS_NAMES)}'))
  for value, _ in config.label_colours:
    if not re.fullmatch(r'[0-9a-fA-F]{6}', value):
      problems.append(('label_colours', f'{value!r} is not a colour as RRGGBB hex (e.g. 00ff00)'))
  if config.group_pattern:
    if config.group_column:
      problems.append(('group_pattern, group_column', 'both set; the group comes from one'))
    try:
      re.compile(config.group_pattern)
    except re.error as e:
      problems.append(('group_pattern', f'{config.group_pattern!r} is not a regular '
                       f'expression ({e})'))
  if len(config.csv_delimiter) != 1:
    problems.append(('csv_delimiter', f'{config.csv_delimiter!r}; need one character'))
  v, t = config.validation_fraction, config.test_fraction
  if not (v > 0 and t > 0 and v + t < 1):
    problems.append(('validation_fraction, test_fraction',
                     f'{v} and {t}; need both > 0 with a sum < 1'))
  if problems:
    raise scan_files.FormatError(f'Bad seg_folder config {config.name!r}:', problems)
  root = pathlib.Path(manual_dir)
  if not root.is_dir():
    raise scan_files.FormatError(
        f'The manual dir {root} does not exist; it must be the folder holding the images of '
        f'{config.name!r}.')
  for folder, field in ((images_dir, 'images_subdir'), (masks_dir, 'masks_subdir')):
    if not folder.is_dir():
      subdir = getattr(config, field)
      nested = [str(d) for d in sorted(root.iterdir()) if subdir and (d / subdir).is_dir()]
      hint = f' A copy is in {nested[0]}: use that as the manual dir.' if nested else ''
      raise scan_files.FormatError(
          f'The {field.split("_")[0]} folder {folder} does not exist: it is the manual dir + '
          f'config field {field} ({subdir!r}); fix either.{hint}')


def _listing(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in scan_files.IMAGE_EXTENSIONS
                and not p.name.startswith('.') and p.is_file())


def _key(stem: str, prefix: str, suffix: str):
  """The stem without prefix and suffix, or None if it lacks them."""
  if stem.startswith(prefix) and stem.endswith(suffix) and len(stem) >= len(prefix + suffix):
    return stem[len(prefix):len(stem) - len(suffix)]
  return None


def _pair(manual_dir: PathLike, config):
  """Returns ({key: image path}, {key: mask path}, problems); clashing keys are left out."""
  images_dir, masks_dir, shared = _folders(manual_dir, config)
  mask_pattern = f'{config.mask_prefix}*{config.mask_suffix}'
  image_pattern = f'{config.image_prefix}*{config.image_suffix}'
  found = {'image': collections.defaultdict(list), 'mask': collections.defaultdict(list)}
  problems = []
  for path in _listing(masks_dir):
    key = _key(path.stem, config.mask_prefix, config.mask_suffix)
    if key is not None:
      found['mask'][key].append(path)
    elif not shared:
      problems.append((str(path), f'not named like a mask ({mask_pattern})'))
  for path in _listing(images_dir):
    if shared and _key(path.stem, config.mask_prefix, config.mask_suffix) is not None:
      continue
    key = _key(path.stem, config.image_prefix, config.image_suffix)
    if key is None:
      also = f' or a mask ({mask_pattern})' if shared else ''
      problems.append((str(path), f'not named like an image ({image_pattern}){also}'))
    else:
      found['image'][key].append(path)
  unique = {}
  for kind, by_key in found.items():
    unique[kind] = {}
    for key, paths in by_key.items():
      if len(paths) > 1:
        problems += [(str(p), f'{len(paths)} {kind}s with key {key!r}: '
                      f'{", ".join(q.name for q in paths)}; keep one') for p in paths]
      else:
        unique[kind][key] = paths[0]
  images, masks = unique['image'], unique['mask']
  for key in sorted(set(images) - set(found['mask'])):
    problems.append((str(images[key]), f'image without a mask (expected '
                     f'{masks_dir / (config.mask_prefix + key + config.mask_suffix)}.*)'))
  for key in sorted(set(masks) - set(found['image'])):
    problems.append((str(masks[key]), f'mask without an image (expected '
                     f'{images_dir / (config.image_prefix + key + config.image_suffix)}.*)'))
  return images, masks, problems


def _without_extension(name: str) -> str:
  """'ALWI_000.png' -> 'ALWI_000': an id column may hold the file's name or its stem."""
  stem, extension = os.path.splitext(name)
  return stem if extension.lower() in scan_files.IMAGE_EXTENSIONS else name


def _read_csv(manual_dir: PathLike, config):
  """Returns ({id: (line number, row)} or None if unusable, csv path, problems)."""
  path = pathlib.Path(manual_dir) / config.csv
  columns = [getattr(config, f) for f in ('id_column', 'label_column', 'group_column',
                                           'split_column') if getattr(config, f)]
  rows, problems = {}, []  # Duplicate rows are problems; the first row counts.
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f, delimiter=config.csv_delimiter)
      reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
      missing = [c for c in columns if c not in reader.fieldnames]
      if missing:
        return None, path, [(str(path), f'no column {", ".join(map(repr, missing))}; its columns: '
                           f'{", ".join(reader.fieldnames) or "none"}')]
      for row in reader:
        row = {k: (v or '').strip() for k, v in row.items() if k is not None}
        image_id = _without_extension(row[config.id_column])
        if image_id in rows:
          problems.append((str(path), f'line {reader.line_num}: a second row for {image_id!r} '
                           f'(first on line {rows[image_id][0]})'))
        else:
          rows[image_id] = (reader.line_num, row)
  except FileNotFoundError:
    return None, path, [(str(path), f'CSV file not found (config field csv = {config.csv!r})')]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    return None, path, [(str(path), f'unreadable CSV ({type(e).__name__}: {e})')]
  return rows, path, problems


def _annotate(path: pathlib.Path, line: int, row: dict, config):
  """(label, group, split, problems) of one image from its CSV row."""
  problems = []
  where = f'(CSV line {line}, column'
  label = group = split = ''
  if config.label_column:
    mapping = ({k.strip().lower(): v for k, v in config.label_map}
               or {name: name for name in classes.CLASS_NAMES})
    value = row[config.label_column]
    label = mapping.get(value.lower(), '')
    if not label:
      problems.append((str(path), f'unknown label {value!r} {where} {config.label_column!r}); '
                       f'accepted: {", ".join(sorted(mapping))}'))
  if config.group_column:
    group = row[config.group_column]
    if not group:
      problems.append((str(path), f'empty group {where} {config.group_column!r})'))
  if config.split_column:
    split = row[config.split_column].lower()
    if split not in names.SPLITS:
      problems.append((str(path), f'bad split {row[config.split_column]!r} {where} '
                       f'{config.split_column!r}); accepted: {", ".join(names.SPLITS)}'))
  return label, group, split, problems


def _scan(manual_dir: PathLike, config):
  """Returns (records, [(reader, path)] of the files no record holds, problems)."""
  check(manual_dir, config)
  images, masks, problems = _pair(manual_dir, config)
  excluded = {key for key, path in images.items() if path.stem in config.exclude}
  images = {key: path for key, path in images.items() if key not in excluded}
  masks = {key: path for key, path in masks.items() if key not in excluded}
  if config.csv:
    images_dir = _folders(manual_dir, config)[0]
    rows, csv_path, csv_problems = _read_csv(manual_dir, config)
    problems += csv_problems
    stems = {p.stem for p in _listing(images_dir)}
    for image_id, (line, _) in (rows or {}).items():
      if image_id not in stems:
        problems.append((str(csv_path), f'line {line}: no image file for {image_id!r} (column '
                         f'{config.id_column!r}) in {images_dir}'))
  records = []
  for key in sorted(set(images) & set(masks), key=lambda k: images[k].stem):
    image_id = images[key].stem
    label = group = split = ''
    if config.csv:
      if rows is None:  # Reported once above, not for every image.
        continue
      if image_id not in rows:
        problems.append((str(images[key]), f'no row in {csv_path.name} (column '
                         f'{config.id_column!r})'))
        continue
      label, group, split, row_problems = _annotate(images[key], *rows[image_id], config)
      if row_problems:
        problems += row_problems
        continue
    if config.group_pattern:
      match = re.match(config.group_pattern, image_id)
      if not match:
        problems.append((str(images[key]), f'file name does not match group_pattern '
                         f'{config.group_pattern!r}'))
        continue
      group = match.group(1) if match.re.groups else match.group(0)
    records.append(Record(image_id, images[key], masks[key], label, group or image_id, split))
  held = {r.image for r in records} | {r.mask for r in records}
  others = ([(scan_files.read_scan, p) for p in images.values() if p not in held]
            + [(scan_files.read_mask, p) for p in masks.values() if p not in held])
  return records, others, problems


def excluded(manual_dir: PathLike, config) -> list[str]:
  """The stems of the images present that `config.exclude` leaves out, sorted."""
  images_dir = _folders(manual_dir, config)[0]
  return sorted({p.stem for p in _listing(images_dir)} & set(config.exclude))


def scan(manual_dir: PathLike, config) -> list[Record]:
  """Pairs the files and reads the CSV without decoding any image; sorted by image_id.

  Raises:
    scan_files.FormatError: listing every naming, pairing and CSV problem.
  """
  records, _, problems = _scan(manual_dir, config)
  if problems:
    raise scan_files.FormatError(f'The {config.name!r} folder {manual_dir} is malformed:',
                                 problems)
  return records


def colour_label(path: pathlib.Path, label_colours) -> str:
  """The class of a colour-coded mask: the listed colour covering most lesion pixels, or
  'normal' for an all-black mask.

  Raises:
    scan_files.FormatError: if lesion pixels have a colour that is not listed.
  """
  rgb = np.asarray(scan_files.open_image(path).convert('RGB')).reshape(-1, 3)
  lesion = rgb[rgb.any(axis=1)]
  if not lesion.size:
    return classes.CLASS_NAMES[classes.NORMAL]
  colours = {tuple(bytes.fromhex(value)): name for value, name in label_colours}
  found, counts = np.unique(lesion, axis=0, return_counts=True)
  unknown = [f'#{bytes(c.tolist()).hex()}' for c in found if tuple(c.tolist()) not in colours]
  if unknown:
    listed = ', '.join(f'#{value.lower()}={name}' for value, name in label_colours)
    raise scan_files.FormatError('', [(str(path), f'lesion colour(s) {", ".join(unknown[:5])} '
                                                  f'not in label_colours ({listed})')])
  return colours[tuple(found[np.argmax(counts)].tolist())]


def decode(record: Record) -> tuple[np.ndarray, np.ndarray]:
  """The (H, W, 1) uint8 image and (H, W, 1) uint8 {0, 1} mask.

  Raises:
    scan_files.FormatError: listing the unreadable files of the record, or the size mismatch.
  """
  return scan_files.read_example(
      record.image, [record.mask], record.image_id,
      hint=f' (list {record.image_id!r} in exclude to leave the pair out)')


def read_all(manual_dir: PathLike, config) -> list[Record]:
  """Decodes every file once; returns `scan`'s records with every label set.

  Without a label column an image is 'normal' if its mask is empty, else 'unspecified'.

  Raises:
    scan_files.FormatError: after looking at every file, listing all problems.
  """
  records, others, problems = _scan(manual_dir, config)
  for reader, path in others:  # Unpaired or unlabelled files: report their corruption too.
    try:
      reader(path)
    except scan_files.FormatError as e:
      problems += e.problems
  labelled = []
  for record in records:
    try:
      _, mask = decode(record)
    except scan_files.FormatError as e:
      problems += e.problems
      continue
    normal = classes.CLASS_NAMES[classes.NORMAL]
    label = record.label or ('unspecified' if mask.any() else normal)
    if config.label_colours:
      try:
        coloured = colour_label(record.mask, config.label_colours)
      except scan_files.FormatError as e:
        problems += e.problems
        continue
      if record.label and record.label != coloured:
        problems.append((str(record.mask), f'labelled {record.label} (CSV), but its lesion '
                         f'colour says {coloured}'))
      label = coloured
    if label == normal and mask.any():
      problems.append((str(record.mask), 'labelled normal, but the mask marks a lesion'))
    labelled.append(dataclasses.replace(record, label=label))
  if problems:
    raise scan_files.FormatError(
        f'The {config.name!r} folder {manual_dir} has {len(set(problems))} problem(s); fix '
        'them all, then build again:', problems)
  return labelled
