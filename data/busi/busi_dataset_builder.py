"""TFDS builder for BUSI: Kaggle download in, duplicate-aware train/validation/test out."""
import numpy as np
import tensorflow_datasets as tfds

from data import names
from . import dataset_files
from . import duplicates

_CITATION = """\
@article{aldhabyani2020busi,
  title = {Dataset of breast ultrasound images},
  author = {Al-Dhabyani, Walid and Gomaa, Mohammed and Khaled, Hussien and Fahmy, Aly},
  journal = {Data in Brief},
  volume = {28},
  pages = {104863},
  year = {2020},
  doi = {10.1016/j.dib.2019.104863},
}"""


class Builder(tfds.core.GeneratorBasedBuilder):
  """Breast ultrasound images with lesion masks; duplicate groups never straddle splits."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Validation holds 20 % of the normal scans (was 10 %, taken from train); '
               'the test split is unchanged.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
BUSI ("Breast Ultrasound Images Dataset") needs a Kaggle login, so download it by hand:
{dataset_files.DOWNLOAD_STEPS}
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format='png'),
            'mask': tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(dataset_files.CLASSES)),
            'image_id': tfds.features.Text(),
            'num_masks': tfds.features.Scalar(dtype=np.int32),
            'dup_group': tfds.features.Text(),
        }),
        supervised_keys=('image', 'mask'),
        homepage=dataset_files.KAGGLE_URL,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dataset_files.locate(dl_manager.manual_dir)
    # One decoding pass validates every file (all problems reported at once) and fingerprints
    # the images; examples are decoded again while writing, to keep memory small.
    scanned = dataset_files.read_all(
        root, lambda record, image, mask: (record, duplicates.fingerprint(image)))
    records = {image_id: record for image_id, (record, _) in scanned.items()}
    groups = duplicates.group({image_id: fp for image_id, (_, fp) in scanned.items()})
    splits = duplicates.assign_splits(
        {image_id: record.label for image_id, record in records.items()}, groups)
    return {
        name: self._generate_examples(
            [records[i] for i in sorted(records) if splits[i] == name], groups)
        for name in names.SPLITS
    }

  def _generate_examples(self, records, groups):
    for record in records:
      image, mask = dataset_files.decode(record)
      yield record.image_id, {
          'image': image,
          'mask': mask,
          'label': record.label,
          'image_id': record.image_id,
          'num_masks': len(record.masks),
          'dup_group': groups[record.image_id],
      }
