"""Images/s of --mode=predict and of evaluate on a folder of scans, beside what the compiled
network work alone allows: how much of the user's wait is the pipeline around the network;
and the network itself in JAX, in ONNX Runtime and (given its venv) in PyTorch eager.

Predict runs in three modes: masks only; masks + CAMs; masks + CAMs + overlays; masks only
and evaluate also with the ONNX Runtime backend when it is installed. Evaluate's own
pipeline (`input_pipeline.eval_batches`, `evaluate.Predictor.evaluate`) scores the same scans,
against their BUSI-layout mask files (`X_mask.png` beside `X.png`) or, without any, as normal
scans. The bounds are measured in the same process, as --mode=benchmark measures inference:
the mask bound is inference images/s at eval.batch_size halved for flip TTA, the CAM bound
adds a Seg-Grad-CAM forward + backward per image. JAX and ONNX Runtime inference alternate
batch by batch, so both see the same machine load; the PyTorch eager reference U-Net (same
layers, `--torch_ref`, e.g. the one `benchmarks/compare_torch.sh` times) runs at the same
shape in its own venv. Rates are steady state: a warm-up batch compiles first (its time is
printed), evaluate scores whole batches only, and with `--repeats` each run is repeated in
turn with the others and its best kept. Prints a table and one JSON line.

  python -m benchmarks.predict_speed --workdir models/busi-unet --scans path/to/scans --limit 500
"""
import argparse
import contextlib
import functools
import io
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import tensorflow as tf

from data import classes
from data import input_pipeline
from data import scan_files
from data import synthetic
from unet_flax import benchmark
from unet_flax import evaluate
from unet_flax import onnx_backend
from unet_flax import predict
from unet_flax import release
from unet_flax import sharding

PREDICT_MODES = {'masks': {'cams': False, 'overlays': False},
                 'masks+cams': {'cams': True, 'overlays': False},
                 'masks+cams+overlays': {'cams': True, 'overlays': True}}


def predict_seconds(model, variables, config, paths: list[str], layer: str, **modes) -> float:
  """Wall time of `predict_files` on `paths` into a scratch folder (its lines not printed)."""
  with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(io.StringIO()):
    start = time.perf_counter()
    predict.predict_files(model, variables, config, paths, output_dir, layer, **modes)
    return time.perf_counter() - start


def raw_examples(inputs: list[tuple[str, list[str]]]) -> tf.data.Dataset:
  """The readable scans as the raw examples evaluate reads from a dataset build."""
  unspecified = classes.CLASS_NAMES.index('unspecified')

  def examples():
    for path, mask_paths in inputs:
      try:
        gray = scan_files.read_grayscale(path)
      except scan_files.ImageReadError:
        continue
      truth = predict.ground_truth(mask_paths, gray.shape, path)
      mask = np.zeros(gray.shape, np.uint8) if truth is None else truth.astype(np.uint8)
      yield {'image': gray[..., None], 'mask': mask[..., None],
             'label': np.int64(unspecified if mask.any() else classes.NORMAL),
             'image_id': path, 'num_masks': np.int32(len(mask_paths)), 'dup_group': path}

  return tf.data.Dataset.from_generator(examples, output_signature=synthetic.output_signature())


def evaluate_rate(predictor, variables, config, inputs) -> tuple[int, float]:
  """(images scored, seconds) of evaluate's batches and scoring on `inputs`."""
  data_config = config.data.copy_and_resolve_references()
  data_config.cache = False  # One pass: a cache would only hold memory.
  start = time.perf_counter()
  batches = input_pipeline.eval_batches(raw_examples(inputs), data_config,
                                        batch_size=config.eval.batch_size)
  scores, _, _ = predictor.evaluate(variables, batches, config.eval)
  return len(scores), time.perf_counter() - start


def network_bounds(infer: float, model, variables, config, layer: str) -> dict[str, float]:
  """Images/s the compiled work alone allows, given JAX's inference images/s: masks (flip
  TTA), and masks + Grad-CAM."""
  cam = benchmark.gradcam_images_per_s(model, variables, config, layer)
  masks = infer / _views(config)
  return {'infer_images_per_s': infer, 'gradcam_images_per_s': cam,
          'mask_bound': masks, 'cam_bound': 1 / (1 / masks + 1 / cam)}


def _views(config) -> int:
  """Network passes per image: two with flip TTA."""
  return 2 if config.eval.flip_tta else 1


def inference_rates(model, variables, config) -> dict[str, float]:
  """Images/s of one forward pass (no flip TTA) at eval.batch_size: JAX as evaluate runs it,
  and ONNX Runtime if installed, timed in alternation, median of each."""
  predictor = evaluate.Predictor(model, sharding.create_mesh(), config.eval.batch_size)
  images = benchmark.eval_images(config)
  runs = {'jax': lambda: predictor.logits(variables, images)}
  if onnx_backend.installed():
    network = onnx_backend.OnnxNetwork(model, variables, config.data.image_size, False)
    runs['onnxruntime'] = lambda: network.outputs(images)
  seconds = {name: [] for name in runs}
  for _ in range(benchmark.WARMUP_STEPS):
    for run in runs.values():
      run()
  for _ in range(config.benchmark.steps):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - start)
  return {name: config.eval.batch_size / float(np.median(s)) for name, s in seconds.items()}


def torch_rate(torch_python: str, torch_ref: str, config, steps: int) -> dict:
  """The reference U-Net's JSON line (PyTorch eager, all cores) at the model's shape."""
  command = [torch_python, torch_ref, '--image_size', str(config.data.image_size),
             '--batch_size', str(config.eval.batch_size),
             '--base_features', str(config.model.base_features),
             '--depth', str(config.model.depth), '--threads', str(os.cpu_count()),
             '--steps', str(steps)]
  output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='A trained workdir or a release folder.')
  parser.add_argument('--scans', required=True, help='Folder (or glob) of PNG/JPEG scans.')
  parser.add_argument('--limit', type=int, default=0, help='Use the first N scans; 0: all.')
  parser.add_argument('--layer', default='decoder_1', help='Grad-CAM layer, as predict.')
  parser.add_argument('--steps', type=int, default=10, help='Timed steps per bound.')
  parser.add_argument('--repeats', type=int, default=1,
                      help='Runs of each predict/evaluate mode, in turn; the best is kept.')
  parser.add_argument('--torch_python', default='', help="A torch venv's python.")
  parser.add_argument('--torch_ref', default='', help='The PyTorch reference U-Net script.')
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')  # TF only feeds the input pipeline; JAX has them.

  config, model, variables, _ = release.load_model(args.workdir)
  config.benchmark.steps = args.steps
  inputs, _ = predict.expand_inputs([args.scans])
  inputs = inputs[:args.limit or None]
  if len(inputs) < config.eval.batch_size:
    raise SystemExit(f'{args.scans}: {len(inputs)} scans; the rates need at least a batch '
                     f'(eval.batch_size = {config.eval.batch_size}).')
  paths, batch = [path for path, _ in inputs], config.eval.batch_size
  result = {'workdir': args.workdir, 'scans': len(paths), 'image_size': config.data.image_size,
            'eval_batch_size': batch, 'flip_tta': config.eval.flip_tta, 'layer': args.layer,
            'cpu_count': os.cpu_count()}

  def predict_rate(**options):
    return len(paths) / predict_seconds(model, variables, config, paths, args.layer, **options)

  def evaluate_images_per_s(predictor, scans):
    scored, seconds = evaluate_rate(predictor, variables, config, scans)
    return scored / seconds

  runs = {mode: functools.partial(predict_rate, **options)
          for mode, options in PREDICT_MODES.items()}
  predictor = evaluate.Predictor(model, sharding.create_mesh(), batch, config.eval.flip_tta)
  whole = inputs[:len(inputs) // batch * batch]
  runs['evaluate'] = functools.partial(evaluate_images_per_s, predictor, whole)
  onnx_network = (onnx_backend.network('onnxruntime', model, variables, config)
                  if onnx_backend.installed() else None)
  if onnx_network is not None:
    runs['masks, onnxruntime'] = functools.partial(predict_rate, **PREDICT_MODES['masks'],
                                                   network=onnx_network)
    runs['evaluate, onnxruntime'] = functools.partial(
        evaluate_images_per_s, evaluate.Predictor(model, sharding.create_mesh(), batch,
                                                  config.eval.flip_tta, onnx_network), whole)
  result['predict_compile_and_first_batch_s'] = predict_seconds(
      model, variables, config, paths[:batch], args.layer)
  _, result['evaluate_compile_and_first_batch_s'] = evaluate_rate(
      predictor, variables, config, inputs[:batch])
  rates = {}
  for _ in range(args.repeats):
    for run, rate in runs.items():
      rates[run] = max(rate(), rates.get(run, 0.0))

  infer = inference_rates(model, variables, config)
  bounds = network_bounds(infer['jax'], model, variables, config, args.layer)
  bound_of = {'masks': bounds['mask_bound'], 'masks+cams': bounds['cam_bound'],
              'masks+cams+overlays': bounds['cam_bound'], 'evaluate': bounds['mask_bound']}
  if onnx_network is not None:
    bounds['onnxruntime_mask_bound'] = infer['onnxruntime'] / _views(config)
    bound_of['masks, onnxruntime'] = bound_of['evaluate, onnxruntime'] = (
        bounds['onnxruntime_mask_bound'])
  result.update({f'{name}_infer_images_per_s': round(rate, 2) for name, rate in infer.items()})
  if args.torch_python:
    torch = torch_rate(args.torch_python, args.torch_ref, config, args.steps)
    result['torch_eager_infer_images_per_s'] = torch['infer_images_per_s']
    result['torch'] = torch['torch']

  print(f"{'inference (no TTA)':<24}{'images/s':>10}")
  for name in ('jax', 'onnxruntime', 'torch_eager'):
    if f'{name}_infer_images_per_s' in result:
      print(f"{name:<24}{result[f'{name}_infer_images_per_s']:>10.2f}")
  print(f"{'run':<24}{'images/s':>10}{'bound':>10}{'of bound':>10}")
  for run, rate in rates.items():
    print(f'{run:<24}{rate:>10.2f}{bound_of[run]:>10.2f}{rate / bound_of[run]:>10.0%}')
  result.update({f'{run}_images_per_s': round(rate, 2) for run, rate in rates.items()})
  result.update({name: round(value, 2) for name, value in bounds.items()})
  print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}),
        flush=True)


if __name__ == '__main__':
  main()
