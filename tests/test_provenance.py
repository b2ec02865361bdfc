"""A dataset build is tied to its source files: a changed source is refused, not reused."""
import shutil

import pytest
from PIL import Image

from configs import default
from data import input_pipeline
from data import provenance
from test_datasets_end_to_end import _write_folder_dataset


def _folder_config(tmp_path, folder):
  config = default.get_config().data
  config.source = 'folder'
  config.folder.dir = str(folder)
  config.tfds_data_dir = str(tmp_path / 'tfds')
  return config


def test_a_build_is_refused_once_its_source_folder_changed(tmp_path):
  folder = _write_folder_dataset(str(tmp_path / 'scans'), num=9)
  config = _folder_config(tmp_path, folder)
  built = input_pipeline.count_examples(input_pipeline.load_split(config, 'train+validation+test'))
  assert built == 9
  # An identical copy elsewhere is the same data: the build serves it.
  copy = shutil.copytree(folder, tmp_path / 'copy')
  config.folder.dir = str(copy)
  assert input_pipeline.count_examples(input_pipeline.load_split(config, 'test')) > 0
  # One more scan in the folder: the build no longer shows what the folder holds.
  image = Image.open(tmp_path / 'copy' / 'scan_0.png')
  image.save(tmp_path / 'copy' / 'scan_9.png')
  Image.open(tmp_path / 'copy' / 'scan_0_mask.png').save(tmp_path / 'copy' / 'scan_9_mask.png')
  with pytest.raises(provenance.StaleBuildError) as error:
    input_pipeline.load_split(config, 'test')
  message = str(error.value)
  assert str(copy) in message and '9 files' not in message and '18 files' in message
  assert 'give it its own --config.data.tfds_data_dir' in message
  assert f'to use the build, set --config.data.folder.dir={folder}.' in message
  # A caller names the fields as it lets the user set them (main.py: the flags of its mode).
  assert error.value.message(str.upper) == message.replace(
      '--config.data.tfds_data_dir', 'TFDS_DATA_DIR').replace('--config.data.folder.dir',
                                                              'FOLDER.DIR')
  # Reading the same files with other pairing options is another dataset too.
  config.folder.dir = str(folder)
  config.folder.mask_suffix = '_MASK'
  with pytest.raises(provenance.StaleBuildError):
    input_pipeline.load_split(config, 'test')
