"""Executes notebooks/colab.ipynb top to bottom on CPU (the synthetic demo path).

Cells tagged `colab-only` (code download, install, Drive, Kaggle, TensorBoard, upload and
download) are dropped; a cell after the `parameters` cell makes the run tiny, points it at a
temporary workdir and at two scans standing in for the user's upload.
"""
import glob
import os
import re
import shutil
import subprocess
import zipfile

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from data import synthetic
from unet_flax import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab.ipynb')
# 32 training steps (64 images, batch 2): enough to see whether progress prints per step.
TINY = ['--config.train.num_epochs=1', '--config.data.image_size=32',
        '--config.model.base_features=4', '--config.model.depth=2',
        '--config.train.batch_size=2', '--config.data.synthetic.num_train=64',
        '--config.data.synthetic.num_validation=4', '--config.data.synthetic.num_test=4',
        '--config.eval.batch_size=4']


def _tags(cell):
  return cell.metadata.get('tags', [])


def _cell(nb, marker):
  """The one code cell whose source contains `marker`."""
  [cell] = [c for c in nb.cells if c.cell_type == 'code' and marker in c.source]
  return cell


def _text(cell):
  return ''.join(out.get('text', '') for out in cell.outputs)


def _elapsed_seconds(bar_line):
  """The elapsed time a tqdm line shows, e.g. `[01:05<00:10, ...]`."""
  hours, minutes, seconds = re.search(r'\[(?:(\d+):)?(\d+):(\d+)<', bar_line).groups()
  return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)


def _write_uploads(folder):
  """Two scans as a user would upload them: a PNG, and a JPEG with its BUSI-style mask."""
  os.makedirs(folder)
  scan_a, scan_b = (synthetic.make_example((7, i), label=0, image_id='') for i in range(2))
  Image.fromarray(scan_a['image'][..., 0]).save(os.path.join(folder, 'scan_a.png'))
  Image.fromarray(scan_b['image'][..., 0]).save(os.path.join(folder, 'scan_b.jpg'))
  Image.fromarray(scan_b['mask'][..., 0] * 255).save(os.path.join(folder, 'scan_b_mask.png'))


@pytest.mark.slow  # Trains, evaluates and predicts through the notebook's subprocesses.
def test_notebook_runs_on_cpu_and_shows_the_figures(tmp_path):
  uploads = str(tmp_path / 'uploads')
  _write_uploads(uploads)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  cells = []
  for cell in nb.cells:
    if 'colab-only' not in _tags(cell):
      cells.append(cell)
    if 'parameters' in _tags(cell):
      cells.append(nbformat.v4.new_code_cell(
          f'WORKDIR = {str(tmp_path / "run")!r}\nEXTRA_FLAGS = {TINY!r}\n'
          f'UPLOADS = {uploads!r}'))
  nb.cells = cells
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()

  outputs = [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs]
  text = ''.join(out.get('text', '') for out in outputs)
  assert 'configs/synthetic.py' in text and 'SYNTHETIC DEMO' in text
  assert 'Pointing game, decoder_1' in text
  images = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(images) >= 6  # Curves, predictions, layer comparison, overlays.
  with zipfile.ZipFile(tmp_path / 'run.zip') as archive:  # The best model, not the resume state.
    names = archive.namelist()
  assert any(name.startswith('checkpoints/best/') for name in names)
  assert 'config.json' in names and not any(name.startswith('checkpoints/latest') for name in names)

  # Through the notebook's pipe the training bar prints a line every few seconds at most
  # (and its last line), not one per step.
  bar_lines = re.findall(r'^train: +\d+%.*', _text(_cell(nb, "f'--config={CONFIG}'")), re.M)
  if bar_lines:
    elapsed = _elapsed_seconds(bar_lines[-1])
    assert len(bar_lines) <= 2 + elapsed / progress.PIPE_INTERVAL_SECONDS, bar_lines

  # The uploaded scans are segmented and their overlays shown; the mask is ground truth.
  predict = _cell(nb, "'--mode=predict'")
  shown = [out for out in predict.outputs if 'image/png' in out.get('data', {})]
  assert len(shown) == 2
  assert sorted(name for name in os.listdir(tmp_path / 'run' / 'predictions')
                if name.endswith('_overlay.png')) == ['scan_a_overlay.png', 'scan_b_overlay.png']


def _run_cell(cell, **variables):
  """Executes one notebook cell's source (plain Python) with `variables` defined."""
  exec(compile(cell.source, NOTEBOOK, 'exec'), variables)  # pylint: disable=exec-used


def test_the_first_cell_stops_at_an_unset_repository_url():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  first = next(cell for cell in nb.cells if cell.cell_type == 'code')
  with pytest.raises(ValueError, match='Set REPO_URL'):
    _run_cell(first)


@pytest.mark.parametrize('dataset, source, workdir, mounts', [
    ('busi', 'kaggle', '/content/runs/busi', False),
    ('synthetic', 'drive', '/content/runs/busi', False),  # The demo reads no data.
    ('busi', 'drive', '/content/runs/busi', True),
    ('synthetic', 'kaggle', '/content/drive/MyDrive/runs/demo', True),
])
def test_drive_is_mounted_only_when_a_setting_uses_it(dataset, source, workdir, mounts):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [cell] = [c for c in nb.cells if 'drive' in _tags(c)]
  settings = dict(DATASET=dataset, DATA_SOURCE=source, WORKDIR=workdir,
                  BUSI_DIR='/content/data/busi', UPLOADS='/content/uploads')
  if mounts:  # It imports google.colab, which exists only on Colab.
    with pytest.raises(ImportError, match='google'):
      _run_cell(cell, **settings)
  else:
    _run_cell(cell, **settings)


def test_a_gpu_runtime_whose_jax_runs_on_the_cpu_stops_loudly(monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  probe = _cell(nb, 'PROBE = ')
  cpu = '{"backend": "cpu", "count": 1, "kind": "cpu", "compute_capability": null}'
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(a, 0, cpu))
  monkeypatch.setattr(shutil, 'which', lambda name: '/usr/bin/nvidia-smi')
  with pytest.raises(RuntimeError, match='has a GPU, but JAX runs on the CPU'):
    _run_cell(probe)
  monkeypatch.setattr(shutil, 'which', lambda name: None)  # No accelerator: the demo runs.
  monkeypatch.setattr(glob, 'glob', lambda pattern, **k: [])
  monkeypatch.setattr(os.path, 'isdir', lambda path: False)
  _run_cell(probe)
