"""Training-input throughput once the decode/resize cache is warm (epochs 2+).

This is the rate the host can feed an accelerator with augmented batches; if a train step is
faster than a batch here, the input pipeline is the bottleneck. Runs on synthetic data, and on
the real BUSI build when one exists in --tfds_data_dir. Prints one JSON line.

  python -m benchmarks.pipeline_throughput --image_size 256 --batch_size 16
"""
import argparse
import json
import os
import time

from configs import default
from data import input_pipeline


def measure(raw_ds, data_config, *, batch_size: int, epochs: int) -> dict[str, float]:
  start = time.perf_counter()
  train = input_pipeline.TrainInput(raw_ds, data_config, batch_size=batch_size, seed=0)
  for _ in train.epoch(0):  # Epoch 0 fills TF's autotuning state too; not timed.
    pass
  warmup_s = time.perf_counter() - start
  start = time.perf_counter()
  images = sum(batch['image'].shape[0] for e in range(1, 1 + epochs) for batch in train.epoch(e))
  seconds = time.perf_counter() - start
  return {'num_examples': train.num_examples, 'cache_fill_and_first_epoch_s': round(warmup_s, 2),
          'images_per_s': round(images / seconds, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--epochs', type=int, default=3, help='Timed epochs after the first.')
  parser.add_argument('--num_synthetic', type=int, default=256)
  parser.add_argument('--tfds_data_dir', default='',
                      help='Where BUSI is built; empty: the TFDS default.')
  args = parser.parse_args()

  data_config = default.get_config().data
  data_config.image_size = args.image_size
  result = {'image_size': args.image_size, 'batch_size': args.batch_size,
            'augment': data_config.augment.enabled, 'cpu_count': os.cpu_count()}

  data_config.source = 'synthetic'
  data_config.synthetic.num_train = args.num_synthetic
  raw = input_pipeline.load_split(data_config, 'train')
  result['synthetic'] = measure(raw, data_config, batch_size=args.batch_size, epochs=args.epochs)

  data_config.source = 'busi'
  data_config.tfds_data_dir = args.tfds_data_dir
  if input_pipeline.is_built(data_config):
    raw = input_pipeline.load_split(data_config, 'train')
    result['busi'] = measure(raw, data_config, batch_size=args.batch_size, epochs=args.epochs)
  else:
    result['busi'] = None  # Not built there.
  print(json.dumps(result))


if __name__ == '__main__':
  main()
