"""No result depends on the user's home: what they built or downloaded there stays unseen.

conftest.py points HOME and TFDS_DATA_DIR at temporary folders. Here the suite is started
from a home that holds a BUSI build and a ~/busi download, and a test that relies on the
defaults must still pass, without writing there.
"""
import os
import subprocess
import sys

import pytest
from tensorflow_datasets.core import constants

import busi_fixtures
from configs import default
from data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inside(path, folder):
  return os.path.commonpath([os.path.abspath(path), folder]) == folder


def test_the_defaults_resolve_into_the_tests_own_home(tmp_path_factory, user_home):
  home = os.environ['HOME']
  assert home != user_home and os.path.dirname(home) == str(tmp_path_factory.getbasetemp())
  assert not os.listdir(home)  # Fresh: nothing another test (or the user) built.
  config = default.get_config().data
  for path in (input_pipeline._tfds_data_dir(config),  # pylint: disable=protected-access
               os.path.expanduser(config.manual_dir), os.path.expanduser(config.busbra_dir)):
    assert _inside(path, home), path
  # TFDS read its default folder at import, before any test: the session's, not the user's.
  assert not _inside(constants.DATA_DIR, user_home)


@pytest.mark.slow  # Builds a small BUSI, then runs pytest, which runs main.py.
def test_a_users_busi_build_and_download_change_no_result(tmp_path):
  user = tmp_path / 'user'
  config = default.get_config().data
  config.manual_dir = str(busi_fixtures.write_kaggle_tree(user / 'busi'))
  config.tfds_data_dir = str(user / 'tensorflow_datasets')
  input_pipeline.load_split(config, 'train')
  assert input_pipeline.is_built(config)  # The user's default TFDS folder serves BUSI.
  before = sorted(user.rglob('*'))
  env = {name: value for name, value in os.environ.items() if name != 'TFDS_DATA_DIR'}
  # Seeing that home, the missing-data run would find the user's BUSI and train. The defaults
  # test runs there too, now with that home as the user's.
  result = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
       f'--basetemp={tmp_path / "basetemp"}',
       'tests/test_main.py::test_missing_busi_fails_fast_with_download_steps',
       'tests/test_isolation.py::test_the_defaults_resolve_into_the_tests_own_home'],
      cwd=ROOT, env={**env, 'HOME': str(user)}, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and '2 passed' in result.stdout, result.stdout[-4000:]
  assert sorted(user.rglob('*')) == before  # Nothing written into that home.
