"""Images/s of --mode=predict and of evaluate on a folder of scans, beside what the compiled
network work alone allows: how much of the user's wait is the pipeline around the network.

Predict runs in three modes: masks only; masks + CAMs; masks + CAMs + overlays. Evaluate's own
pipeline (`input_pipeline.eval_batches`, `evaluate.Predictor.evaluate`) scores the same scans,
against their BUSI-layout mask files (`X_mask.png` beside `X.png`) or, without any, as normal
scans. The bounds are measured in the same process, as --mode=benchmark measures inference:
the mask bound is inference images/s at eval.batch_size halved for flip TTA, the CAM bound
adds a Seg-Grad-CAM forward + backward per image. Rates are steady state: a warm-up batch
compiles first (its time is printed), and evaluate scores whole batches only. Prints a table
and one JSON line.

  python -m benchmarks.predict_speed --workdir runs/cpu --scans path/to/scans --limit 500
"""
import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from data import classes
from data import input_pipeline
from data import scan_files
from data import synthetic
from unet_flax import benchmark
from unet_flax import checkpointing
from unet_flax import evaluate
from unet_flax import predict
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


def network_bounds(model, variables, config, layer: str) -> dict[str, float]:
  """Images/s the compiled work alone allows: masks (flip TTA), and masks + Grad-CAM."""
  infer = benchmark.inference_images_per_s(model, variables, config, sharding.create_mesh())
  cam = benchmark.gradcam_images_per_s(model, variables, config, layer)
  masks = infer / (2 if config.eval.flip_tta else 1)
  return {'infer_images_per_s': infer, 'gradcam_images_per_s': cam,
          'mask_bound': masks, 'cam_bound': 1 / (1 / masks + 1 / cam)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='A trained workdir.')
  parser.add_argument('--scans', required=True, help='Folder (or glob) of PNG/JPEG scans.')
  parser.add_argument('--limit', type=int, default=0, help='Use the first N scans; 0: all.')
  parser.add_argument('--layer', default='decoder_1', help='Grad-CAM layer, as predict.')
  parser.add_argument('--steps', type=int, default=10, help='Timed steps per bound.')
  args = parser.parse_args()

  config, model, variables, _ = checkpointing.load_inference(args.workdir)
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

  result['predict_compile_and_first_batch_s'] = predict_seconds(
      model, variables, config, paths[:batch], args.layer)
  rates = {mode: len(paths) / predict_seconds(model, variables, config, paths, args.layer,
                                              **options)
           for mode, options in PREDICT_MODES.items()}
  predictor = evaluate.Predictor(model, sharding.create_mesh(), batch, config.eval.flip_tta)
  _, result['evaluate_compile_and_first_batch_s'] = evaluate_rate(
      predictor, variables, config, inputs[:batch])
  scored, seconds = evaluate_rate(predictor, variables, config,
                                  inputs[:len(inputs) // batch * batch])
  rates['evaluate'] = scored / seconds
  bounds = network_bounds(model, variables, config, args.layer)
  bound_of = {'masks': bounds['mask_bound'], 'masks+cams': bounds['cam_bound'],
              'masks+cams+overlays': bounds['cam_bound'], 'evaluate': bounds['mask_bound']}

  print(f"{'run':<22}{'images/s':>10}{'bound':>10}{'of bound':>10}")
  for run, rate in rates.items():
    print(f'{run:<22}{rate:>10.2f}{bound_of[run]:>10.2f}{rate / bound_of[run]:>10.0%}')
  result.update({f'{run}_images_per_s': round(rate, 2) for run, rate in rates.items()})
  result.update({name: round(value, 2) for name, value in bounds.items()})
  print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}),
        flush=True)


if __name__ == '__main__':
  main()
