"""Child of test_multidevice.py: one train step on a 4-device mesh, a 1-device mesh, in bf16;
a training whose batch the 4 devices cannot split; and, given a workdir, the synthetic config
trained and evaluated there (main.py's training; one process for all, each start of JAX and
TensorFlow costs seconds).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (the device count is fixed when
JAX starts, hence a separate process). Prints one JSON line of the differences.
"""
import json
import os
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import Mesh

from configs import synthetic
from unet_flax import model as model_lib
from unet_flax import sharding
from unet_flax import train


def _config():
  config = synthetic.get_config()
  config.data.image_size = 32
  config.model.base_features = 4
  config.model.depth = 2
  config.model.deep_supervision = 1  # Its pooled targets must not depend on the sharding.
  config.model.dropout = 0.1  # Dropout masks must not depend on the sharding either.
  config.train.warmup_epochs = 0
  return config


def _batch(n=8, size=32):
  rng = np.random.default_rng(0)
  masks = (rng.random((n, size, size, 1)) < 0.3).astype(np.float32)
  images = np.clip(0.6 - 0.4 * masks + 0.1 * rng.standard_normal(masks.shape), 0, 1)
  return {'image': images.astype(np.float32), 'mask': masks}


def _step(config, mesh, half_precision=False):
  """One step on `mesh` from a fresh copy (the step donates it) of the same float32 init."""
  state = train.create_train_state(0, config, model_lib.create_model(config.model), 10)
  state = state.replace(apply_fn=model_lib.create_model(config.model, half_precision).apply)
  state = jax.device_put(state, sharding.replicated(mesh))
  state, metrics = train.compile_train_step(config, mesh)(
      state, sharding.global_batch(_batch(), mesh))
  return jax.device_get((state.params, state.batch_stats, metrics))


def _max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _refusal_of_batch_6() -> dict:
  """What train_and_evaluate (main.py's training) says of a batch of 6 on the 4 devices."""
  config = _config()
  config.train.batch_size = 6
  workdir = os.path.join(tempfile.mkdtemp(), 'run')
  try:
    train.train_and_evaluate(config, workdir)
  except ValueError as e:
    return {'error': f'{type(e).__name__}: {e}', 'wrote': os.path.exists(workdir)}
  return {'error': None, 'wrote': os.path.exists(workdir)}


def _train_synthetic(workdir: str) -> None:
  """What `main.py --config=configs/synthetic.py` with these overrides trains: 16 images in
  batches of 8 (2 per device), a test split of 6 (a short last batch on 4 devices)."""
  config = synthetic.get_config()
  config.update_from_flattened_dict({
      'train.num_epochs': 1, 'data.image_size': 32, 'model.base_features': 4,
      'model.depth': 1, 'data.synthetic.num_train': 16, 'data.synthetic.num_validation': 4,
      'data.synthetic.num_test': 6, 'train.log_every_steps': 1})
  train.train_and_evaluate(config, workdir)


def main():
  if len(sys.argv) > 1:
    _train_synthetic(sys.argv[1])
  config = _config()
  params_4, stats_4, metrics_4 = _step(config, sharding.create_mesh())
  params_1, stats_1, metrics_1 = _step(config, Mesh(np.array(jax.devices()[:1]),
                                                    (sharding.DATA_AXIS,)))
  params_bf16, stats_bf16, metrics_bf16 = _step(config, sharding.create_mesh(), True)
  print(json.dumps({
      'device_count': jax.device_count(),
      'loss_4': float(metrics_4['loss']), 'loss_1': float(metrics_1['loss']),
      'loss_bf16': float(metrics_bf16['loss']),
      'params_max_diff': _max_diff(params_4, params_1),
      'batch_stats_max_diff': _max_diff(stats_4, stats_1),
      'bf16_dtypes': sorted({str(x.dtype) for x in jax.tree.leaves((params_bf16, stats_bf16))}),
      'bf16_finite': bool(metrics_bf16['finite']),
      'batch_6': _refusal_of_batch_6(),
  }))


if __name__ == '__main__':
  main()
