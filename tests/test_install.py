"""The notebook's install on an image that already has TensorFlow, as Colab has it.

A fresh virtual environment gets the full `tensorflow` package first, then the notebook's
install cell (read from notebooks/colab.ipynb, so the two cannot drift) runs with that
environment's Python. Then TensorFlow, JAX and the project must import and build a small
BUSI, with one TensorFlow distribution, no test-only package and no broken requirement.
Downloads about 1 GB and takes minutes: runs only with BUSI_UNET_INSTALL_TEST=1.
"""
import json
import os
import pathlib
import re
import subprocess
import venv

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX = re.search(r'^jax==(\S+)', (pathlib.Path(ROOT) / 'requirements-colab.txt').read_text(),
                re.M)[1]
NOT_FOR_RUNNING = {'tensorflow-cpu', 'pytest', 'nbclient', 'nbformat', 'ipykernel',
                   'apache-beam', 'mlcroissant'}
# Imports what the notebook's runs need and builds BUSI (TFDS, without the `tfds build` CLI's
# extras) from a tiny Kaggle-layout copy.
SMOKE = """
import pathlib, sys
import flax, jax, orbax.checkpoint, tensorflow, tensorflow_datasets
import main
from unet_flax import train
from configs import default
from data import input_pipeline
sys.path.insert(0, 'tests')
import busi_fixtures

tmp = pathlib.Path(sys.argv[1])
config = default.get_config().data
config.manual_dir = str(busi_fixtures.write_kaggle_tree(tmp / 'busi'))
config.tfds_data_dir = str(tmp / 'tfds')
split = input_pipeline.load_split(config, 'train+validation+test')
print(jax.numpy.ones(3).sum(), input_pipeline.count_examples(split))
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get('BUSI_UNET_INSTALL_TEST') != '1',
                       reason='downloads ~1 GB; set BUSI_UNET_INSTALL_TEST=1'),
]


def _install_cell() -> str:
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'colab.ipynb'), as_version=4)
  [cell] = [c for c in nb.cells if 'install' in c.metadata.get('tags', [])]
  return cell.source


# Colab's TensorFlow is whatever Colab ships: often older than the pins, whose dependencies
# then want a protobuf it cannot run with; or the version of requirements.txt.
@pytest.mark.parametrize('preinstalled', ['tensorflow==2.19.0', 'tensorflow==2.21.0'])
def test_the_notebook_install_keeps_a_preinstalled_tensorflow(tmp_path, preinstalled):
  venv.create(tmp_path / 'venv', with_pip=True)
  python = str(tmp_path / 'venv' / 'bin' / 'python')

  def run(*args):
    return subprocess.run([python, *args], cwd=ROOT, check=True, stdout=subprocess.PIPE,
                          text=True).stdout

  run('-m', 'pip', 'install', '-q', '--upgrade', 'pip')
  run('-m', 'pip', 'install', '-q', preinstalled)
  run('-c', _install_cell())

  assert run('-c', SMOKE, str(tmp_path)).split()[-2:] == ['3.0', '9']
  versions = {d['name'].lower(): d['version']
              for d in json.loads(run('-m', 'pip', 'list', '--format=json'))}
  assert versions['tensorflow'] == preinstalled.split('==')[1]
  assert not NOT_FOR_RUNNING & versions.keys()
  assert versions['jax'] == versions['jaxlib'] == JAX
  run('-m', 'pip', 'check')  # No installed package's requirement is broken.
