"""--mode=benchmark: steady-state speed of the jit train step, inference and the input pipeline.

The model, train state, jit train step and predictor are built exactly as training builds
them; the train and inference steps run on random inputs of the configured shape, so no
data is needed. Times are medians over `config.benchmark.steps` steps after compilation and
warm-up (medians, because a shared machine is noisy). Prints a table and one JSON line.
"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data import input_pipeline
from unet_flax import evaluate
from unet_flax import gradcam
from unet_flax import model as model_lib
from unet_flax import sharding
from unet_flax import train

WARMUP_STEPS = 2


def median_seconds(fn, steps: int) -> float:
  for _ in range(WARMUP_STEPS):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_gflop_per_s(n: int = 2048, repeats: int = 5) -> float:
  """float32 matmul speed of this machine: the roof the U-Net is measured against."""
  a = jnp.ones((n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  best = min(median_seconds(lambda: dot(a, a).block_until_ready(), 1)
             for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def pipeline_images_per_s(config, epochs: int = 2) -> tuple[float, str]:
  """Images/s of `TrainInput.epoch` once its cache is warm (epoch 0 fills it).

  Uses the config's data when it is a synthetic source or an already built BUSI; otherwise
  (BUSI absent or not built yet: building is not a benchmark's job) the synthetic source.
  """
  data_config = config.data.copy_and_resolve_references()
  if data_config.source == 'busi' and not input_pipeline.is_built(data_config):
    logging.warning('BUSI is not built: timing the input pipeline on synthetic data.')
    data_config.source = 'synthetic'
  raw = input_pipeline.load_split(data_config, 'train')
  pipeline = input_pipeline.TrainInput(raw, data_config, batch_size=config.train.batch_size,
                                       seed=config.seed)
  for _ in pipeline.epoch(0):  # Fills the cache.
    pass
  images, start = 0, time.perf_counter()
  for epoch in range(1, 1 + epochs):
    for batch in pipeline.epoch(epoch):
      images += len(batch['image'])
  return images / (time.perf_counter() - start), data_config.source


def eval_images(config) -> np.ndarray:
  """A random float32 batch of the eval shape: speed does not depend on the pixels."""
  size = config.data.image_size
  return np.random.default_rng(config.seed).random((config.eval.batch_size, size, size, 1),
                                                   dtype=np.float32)


def inference_images_per_s(model, variables, config, mesh) -> float:
  """Images/s of one forward pass (no flip TTA) at `eval.batch_size`, as evaluate runs it."""
  predictor = evaluate.Predictor(model, mesh, config.eval.batch_size)
  images = eval_images(config)
  return config.eval.batch_size / median_seconds(lambda: predictor.logits(variables, images),
                                                 config.benchmark.steps)


def gradcam_images_per_s(model, variables, config, layer: str) -> float:
  """Images/s of Seg-Grad-CAM of `layer` (a forward and a backward pass) at
  `eval.batch_size`, as predict runs it."""
  images = eval_images(config)
  region = images[..., 0] > 0.5
  return config.eval.batch_size / median_seconds(
      lambda: gradcam.seg_grad_cam(model, variables, images, layer, region=region),
      config.benchmark.steps)


def run(config) -> dict:
  mesh = sharding.create_mesh()
  sharding.check_batch_size(config.train.batch_size)
  size, batch_size = config.data.image_size, config.train.batch_size
  steps = config.benchmark.steps
  model = model_lib.create_model(config.model, config.half_precision)
  state = train.create_train_state(config.seed, config, model,
                                   steps_per_epoch=100)
  state = jax.device_put(state, sharding.replicated(mesh))
  rng = np.random.default_rng(config.seed)
  images = rng.random((batch_size, size, size, 1), dtype=np.float32)
  batch = sharding.global_batch(
      {'image': images, 'mask': (images > 0.8).astype(np.float32)}, mesh)

  start = time.perf_counter()
  train_step = train.compile_train_step(config, mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(train_step)

  def one_train_step():
    nonlocal state
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)

  train_s = median_seconds(one_train_step, steps)

  infer = inference_images_per_s(model, train.inference_variables(state), config, mesh)

  peak = matmul_peak_gflop_per_s()
  pipeline, pipeline_source = pipeline_images_per_s(config)
  result = {
      'image_size': size, 'batch_size': batch_size,
      'base_features': config.model.base_features, 'depth': config.model.depth,
      'norm': config.model.norm, 'upsample': config.model.upsample,
      'devices': jax.device_count(), 'platform': jax.default_backend(),
      'train_images_per_s': round(batch_size / train_s, 2),
      'infer_images_per_s': round(infer, 2),
      'pipeline_images_per_s': round(pipeline, 1), 'pipeline_source': pipeline_source,
      'compile_s': round(compile_s, 2),
      'gflop_per_train_step': round(flops / 1e9, 3),
      'achieved_gflop_per_s': round(flops / 1e9 / train_s, 2),
      'matmul_peak_gflop_per_s': round(peak, 1),
      'fraction_of_peak': round(flops / 1e9 / train_s / peak, 3),
  }
  print(f"{'metric':<26}{'value':>12}")
  for key in ('train_images_per_s', 'infer_images_per_s', 'pipeline_images_per_s',
              'compile_s', 'gflop_per_train_step', 'achieved_gflop_per_s',
              'matmul_peak_gflop_per_s', 'fraction_of_peak'):
    print(f'{key:<26}{result[key]:>12}')
  print(json.dumps(result), flush=True)
  return result
