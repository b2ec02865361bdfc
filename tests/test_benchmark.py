"""--mode=benchmark end to end on the tiny synthetic config: fields present and positive."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Runs --mode=benchmark in a subprocess.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ('image_size', 'batch_size', 'base_features', 'depth', 'devices',
          'train_images_per_s', 'infer_images_per_s', 'pipeline_images_per_s', 'compile_s',
          'gflop_per_train_step', 'achieved_gflop_per_s')


def test_benchmark_prints_positive_json():
  cmd = [sys.executable, 'main.py', '--mode=benchmark', '--config=configs/synthetic.py',
         '--config.benchmark.steps=2', '--config.data.synthetic.num_train=16',
         '--config.data.image_size=32', '--config.model.depth=2']
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  for field in FIELDS:
    assert result[field] > 0, (field, result)
  assert result['norm'] == 'batch'
