"""ONNX Runtime on this project's graph beside the reference U-Net's torch.onnx.export graph,
JAX and PyTorch eager, and where each graph's time goes.

The reference (benchmarks/torch_unet_reference.py: same layers, no presence head) is exported
at the model's shape (eval.batch_size, data.image_size, base features, depth) by the torch
venv's python. In this process, alternating batch by batch (median of each): JAX inference as
evaluate runs it, and ONNX Runtime on our graph (`onnx_graph.build`, one view, no flip TTA) and
on the reference graph, both with `onnx_backend.session_options` at `--threads`. Then, in the
torch venv's process (it needs onnxruntime too), PyTorch eager and ONNX Runtime on both graphs,
alternating. Ratios are taken within a process only. With `--profile`, each graph's ONNX
Runtime profile (after the graph optimizations: fused, NCHWc "blocked" ops) summed by op type,
per run, and the CPU seconds a batch takes (all threads).

  python -m benchmarks.onnx_graphs --workdir models/busi-unet \
      --torch_python ~/torchvenv/bin/python --profile
"""
import argparse
import collections
import json
import os
import subprocess
import tempfile
import time

import numpy as np

from unet_flax import benchmark
from unet_flax import evaluate
from unet_flax import onnx_backend
from unet_flax import onnx_graph
from unet_flax import release
from unet_flax import sharding

TORCH_REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_unet_reference.py')


def alternate(runs: dict, steps: int) -> dict[str, dict[str, float]]:
  """{name: {'seconds': median wall seconds, 'cpu_seconds': median process CPU seconds}} of
  each run, called in turn `steps` times after one warm-up call each."""
  for run in runs.values():
    run()
  wall, cpu = ({name: [] for name in runs} for _ in range(2))
  for _ in range(steps):
    for name, run in runs.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      run()
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return {name: {'seconds': float(np.median(wall[name])),
                 'cpu_seconds': float(np.median(cpu[name]))} for name in runs}


def op_profile(path: str, feed: dict, threads: int, steps: int) -> dict[str, float]:
  """Milliseconds per run of each op type in ONNX Runtime's profile of `steps` runs."""
  session = onnx_backend.session(path, threads, enable_profiling=True,
                                 profile_file_prefix=os.path.join(os.path.dirname(path), 'p'))
  session.run(None, feed)
  for _ in range(steps):
    session.run(None, feed)
  with open(session.end_profiling()) as f:
    events = json.load(f)
  totals = collections.Counter()
  for event in events:
    if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time'):
      totals[event['args']['op_name']] += event['dur'] / 1000 / (steps + 1)
  return dict(totals.most_common())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=release.MODEL_DIR,
                      help='A trained workdir or a release folder.')
  parser.add_argument('--torch_python', required=True, help="A torch venv's python.")
  parser.add_argument('--torch_ref', default=TORCH_REF, help='The PyTorch reference U-Net.')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='ONNX Runtime intra-op threads and PyTorch threads.')
  parser.add_argument('--steps', type=int, default=10, help='Timed batches per candidate.')
  parser.add_argument('--profile', action='store_true', help='Per-op-type times too.')
  args = parser.parse_args()

  config, model, variables, _ = release.load_model(args.workdir)
  batch, size = config.eval.batch_size, config.data.image_size
  shape = ['--image_size', str(size), '--batch_size', str(batch), '--base_features',
           str(config.model.base_features), '--depth', str(config.model.depth),
           '--threads', str(args.threads)]
  images = benchmark.eval_images(config)
  result = {'workdir': args.workdir, 'batch_size': batch, 'image_size': size,
            'base_features': config.model.base_features, 'depth': config.model.depth,
            'threads': args.threads, 'steps': args.steps, 'cpu_count': os.cpu_count()}
  with tempfile.TemporaryDirectory() as folder:
    paths = {'ours': os.path.join(folder, 'ours.onnx'),
             'reference': os.path.join(folder, 'reference.onnx')}
    with open(paths['ours'], 'wb') as f:
      f.write(onnx_graph.build(model, variables, size, False).SerializeToString())
    subprocess.run([args.torch_python, args.torch_ref, *shape, '--export_onnx',
                    paths['reference']], check=True, capture_output=True)
    feeds = {'ours': {onnx_graph.INPUT: images},
             'reference': {'image': np.ascontiguousarray(images.transpose(0, 3, 1, 2))}}
    sessions = {name: onnx_backend.session(path, args.threads) for name, path in paths.items()}
    predictor = evaluate.Predictor(model, sharding.create_mesh(), batch)
    runs = {'jax': lambda: predictor.logits(variables, images)}
    runs.update({f'onnxruntime_{name}': (lambda name=name: sessions[name].run(None, feeds[name]))
                 for name in sessions})
    here = alternate(runs, args.steps)
    result['this_process'] = {name: {'images_per_s': round(batch / t['seconds'], 2),
                                     'cpu_seconds_per_batch': round(t['cpu_seconds'], 3)}
                              for name, t in here.items()}
    ours = here['onnxruntime_ours']['seconds']
    result['this_process_ratios'] = {
        'ours / reference graph': round(here['onnxruntime_reference']['seconds'] / ours, 3),
        'ours / jax': round(here['jax']['seconds'] / ours, 3)}
    output = subprocess.run(
        [args.torch_python, args.torch_ref, *shape, '--steps', str(args.steps), '--onnx',
         f"ours={paths['ours']}", f"reference={paths['reference']}"],
        check=True, capture_output=True, text=True).stdout
    torch = json.loads(output.strip().splitlines()[-1])
    result['torch_process'] = torch
    rates = torch['infer_images_per_s']
    result['torch_process_ratios'] = {
        'ours / pytorch eager': round(rates['ours'] / rates['pytorch_eager'], 3),
        'reference graph / pytorch eager': round(rates['reference'] / rates['pytorch_eager'], 3),
        'ours / reference graph': round(rates['ours'] / rates['reference'], 3)}
    if args.profile:
      result['ms_per_run_by_op_type'] = {
          name: {op: round(ms, 1) for op, ms in op_profile(path, feeds[name], args.threads,
                                                           args.steps).items()}
          for name, path in paths.items()}

  for process in ('this_process', 'torch_process'):
    for name, ratio in result[f'{process}_ratios'].items():
      print(f'{name:<34}{ratio:>8.3f}   ({process.replace("_", " ")})')
  for name, ops in result.get('ms_per_run_by_op_type', {}).items():
    print(f'{name}: ' + ', '.join(f'{op} {ms:.1f}' for op, ms in ops.items()) + ' ms per run')
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
