"""TFDS builder `seg_folder`: any folder of images + lesion masks, described by a FolderConfig.

BUS-BRA and BUS-UCLM are the predefined configs `busbra` and `bus_uclm`; a user's own dataset
is built with
`Builder(config=FolderConfig(name='mydata', ...), data_dir=...)`. Pairing, decoding and
validation live in `folder_files` (see its docstring for the pairing rule).
"""
import collections
import dataclasses
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data import classes
from data import names
from data import scan_files
from data.busi import duplicates
from . import folder_files

# Changing this reshuffles which group lands in which split.
_SPLIT_SALT = 'seg-folder-split-v1'
BUSBRA_URL = 'https://doi.org/10.5281/zenodo.8231412'
_BUSBRA_CITATION = """\
@article{gomezflores2024busbra,
  title = {{BUS-BRA}: A breast ultrasound dataset for assessing computer-aided diagnosis systems},
  author = {G{\\'o}mez-Flores, Wilfrido and Gregorio-Calas, Maria Julia and
            Coelho de Albuquerque Pereira, Wagner},
  journal = {Medical Physics},
  volume = {51},
  number = {4},
  pages = {3110--3123},
  year = {2024},
  doi = {10.1002/mp.16812},
}"""


# TFDS's BuilderConfig is a mutable dataclass, and a frozen dataclass cannot extend it.
@dataclasses.dataclass(eq=False, kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
  """Where the images and masks are, how their names pair, and where labels come from.

  Paths are relative to the manual dir. See data/seg_folder/README.md for every field.
  """
  images_subdir: str = ''
  masks_subdir: str = ''
  image_prefix: str = ''
  image_suffix: str = ''
  mask_prefix: str = ''
  mask_suffix: str = '_mask'
  csv: str = ''
  csv_delimiter: str = ','  # A UTF-8 byte-order mark is skipped whatever the delimiter.
  id_column: str = ''  # The image file's stem or name, e.g. 'bus_0001-l' or 'ALWI_000.png'.
  label_column: str = ''
  group_column: str = ''  # e.g. the patient: a group never straddles splits.
  # Without a group column: a regular expression matched at the start of the image's stem;
  # its first group (or the whole match) is the group, e.g. '(....)_' for 'ALWI_000' -> ALWI.
  group_pattern: str = ''
  split_column: str = ''  # Values train / validation / test: the user's own splits.
  label_map: tuple[tuple[str, str], ...] = ()  # (CSV value, lowercased; class name) pairs.
  # Colour-coded masks: (RRGGBB hex, class name) pairs; the colour covering most of the lesion
  # gives the label (checked against the label column when there is one).
  label_colours: tuple[tuple[str, str], ...] = ()
  # Image stems left out of the dataset (known-defective files), reported at build time.
  exclude: tuple[str, ...] = ()
  exclude_reason: str = ''
  validation_fraction: float = 0.1
  test_fraction: float = 0.2
  citation: str = ''
  homepage: str = ''


BUSBRA = FolderConfig(
    name='busbra',
    description='BUS-BRA (Gomez-Flores et al. 2024): breast ultrasound with one biopsy-proven '
                'lesion per image, benign or malignant; split by patient (CSV column Case).',
    images_subdir='Images',
    masks_subdir='Masks',
    image_prefix='bus_',
    mask_prefix='mask_',
    mask_suffix='',
    csv='bus_data.csv',
    id_column='ID',
    label_column='Pathology',
    group_column='Case',
    label_map=(('benign', 'benign'), ('malignant', 'malignant')),
    citation=_BUSBRA_CITATION,
    homepage=BUSBRA_URL,
)


BUS_UCLM_URL = 'https://doi.org/10.17632/7fvgj4jsp7.3'
_BUS_UCLM_CITATION = """\
@article{vallez2025busuclm,
  title = {{BUS-UCLM}: Breast ultrasound lesion segmentation dataset},
  author = {Vallez, Noelia and Bueno, Gloria and Deniz, Oscar and Rienda, Miguel Angel and
            Pastor, Carlos},
  journal = {Scientific Data},
  volume = {12},
  pages = {242},
  year = {2025},
}"""

BUS_UCLM = FolderConfig(
    name='bus_uclm',
    description='BUS-UCLM (Vallez et al. 2025): breast ultrasound from one Siemens ACUSON S2000, '
                'normal scans and benign / malignant lesions with colour-coded masks; split by '
                'patient (the first four letters of the file name). Licence CC BY-NC 4.0.',
    images_subdir='images',
    masks_subdir='masks',
    mask_suffix='',
    csv='INFO.csv',
    csv_delimiter=';',
    id_column='Image',
    label_column='Label',
    group_pattern='(....)_',
    label_map=(('normal', 'normal'), ('benign', 'benign'), ('malignant', 'malignant')),
    label_colours=(('00ff00', 'benign'), ('ff0000', 'malignant')),
    # As published, the 13 scans of patient HESN are 608-792 x 468-489 px but their masks
    # 856 x 606: the lesion outlines of HESN_002..005 cannot be placed on their images.
    exclude=tuple(f'HESN_{i:03d}' for i in range(13)),
    exclude_reason='image smaller than its 856x606 mask, as published: they do not align',
    # 26 patients in the copy this was developed on: a fifth each leaves validation and test
    # several patients and most of their normal scans.
    validation_fraction=0.2,
    test_fraction=0.2,
    citation=_BUS_UCLM_CITATION,
    homepage=BUS_UCLM_URL,
)


def assign_splits(records: Sequence[folder_files.Record],
                  config: FolderConfig) -> dict[str, str]:
  """{image_id: split}: the CSV's split column, else stratified by label with whole groups.

  Uses BUSI's hash-ordered assignment, so the same files give the same splits on any machine
  and in any listing order.

  Raises:
    scan_files.FormatError: if a split would be empty (user splits, or fewer than 3 groups).
  """
  if config.split_column:
    splits = {r.image_id: r.split for r in records}
  else:
    v, t = config.validation_fraction, config.test_fraction
    splits = duplicates.assign_splits(
        {r.image_id: r.label for r in records}, {r.image_id: r.group for r in records},
        fractions=(('train', 1 - v - t), ('validation', v), ('test', t)), salt=_SPLIT_SALT)
  empty = [name for name in names.SPLITS if name not in splits.values()]
  if empty:
    groups = len({r.group for r in records})
    reason = (f'the column {config.split_column!r} names no image for it' if config.split_column
              else f'{groups} group(s) cannot fill train, validation and test')
    raise scan_files.FormatError(
        f'Split(s) {", ".join(empty)} of {config.name!r} would be empty: {reason}. '
        'Training needs all three.')
  return splits


class Builder(tfds.core.GeneratorBasedBuilder):
  """Images with lesion masks from a folder; groups (patients) never straddle splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [BUSBRA, BUS_UCLM]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
busbra: download BUS-BRA from Zenodo record 8231412 ({BUSBRA_URL}), extract it, and use as
  manual dir the folder holding Images/, Masks/ and bus_data.csv.
bus_uclm: download BUS-UCLM from Mendeley Data ({BUS_UCLM_URL}), extract it, and use as
  manual dir the folder holding images/, masks/ and INFO.csv.
Your own data: put images and masks in one folder (or two subfolders), describe their names
  with a FolderConfig (see data/seg_folder/README.md), and use that folder as manual dir.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    image = tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format='png')
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': image,
            'mask': image,
            'label': tfds.features.ClassLabel(names=list(classes.CLASS_NAMES)),
            'image_id': tfds.features.Text(),
            'group': tfds.features.Text(),
        }),
        supervised_keys=('image', 'mask'),
        homepage=self.builder_config.homepage or None,
        citation=self.builder_config.citation or None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    # One decoding pass validates every file (all problems at once) and labels maskless
    # images; examples are decoded again while writing, to keep memory small.
    records = folder_files.read_all(dl_manager.manual_dir, config)
    left_out = folder_files.excluded(dl_manager.manual_dir, config)
    if left_out:
      logging.info('seg_folder/%s: %d listed file(s) left out (%s): %s', config.name,
                   len(left_out), config.exclude_reason or 'config field exclude',
                   ', '.join(left_out))
    splits = assign_splits(records, config)
    by_split = {name: [r for r in records if splits[r.image_id] == name]
                for name in names.SPLITS}
    for name, members in by_split.items():
      counts = collections.Counter(r.label for r in members)
      logging.info('seg_folder/%s %s: %d images (%s)', config.name, name, len(members),
                   ', '.join(f'{label} {n}' for label, n in sorted(counts.items())))
    return {name: self._generate_examples(members) for name, members in by_split.items()}

  def _generate_examples(self, records):
    for record in records:
      image, mask = folder_files.decode(record)
      yield record.image_id, {
          'image': image,
          'mask': mask,
          'label': record.label,
          'image_id': record.image_id,
          'group': record.group,
      }
