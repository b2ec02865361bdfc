"""Executes notebooks/colab.ipynb top to bottom on CPU (the synthetic demo path).

Cells tagged `colab-only` (install, Drive, Kaggle, download) are dropped; a cell after the
`parameters` cell makes the run tiny and points it at a temporary workdir.
"""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.train.num_epochs=1', '--config.data.image_size=32',
        '--config.model.base_features=4', '--config.model.depth=1',
        '--config.data.synthetic.num_train=16', '--config.data.synthetic.num_validation=4',
        '--config.data.synthetic.num_test=4', '--config.eval.batch_size=4']


def _tags(cell):
  return cell.metadata.get('tags', [])


def test_notebook_runs_on_cpu_and_shows_the_figures(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'colab.ipynb'), as_version=4)
  cells = []
  for cell in nb.cells:
    if 'colab-only' not in _tags(cell):
      cells.append(cell)
    if 'parameters' in _tags(cell):
      cells.append(nbformat.v4.new_code_cell(
          f'WORKDIR = {str(tmp_path / "run")!r}\nEXTRA_FLAGS = {TINY!r}'))
  nb.cells = cells
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()

  outputs = [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.outputs]
  text = ''.join(out.get('text', '') for out in outputs)
  assert 'configs/synthetic.py' in text and 'SYNTHETIC DEMO' in text
  assert 'Pointing game, bottleneck' in text
  images = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(images) >= 4  # Curves, predictions, layer comparison, an overlay.
  assert os.path.getsize(tmp_path / 'run.zip') > 0
