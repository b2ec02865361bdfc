"""How often a trained model marks a lesion where there is none, beyond the few normal scans.

A split has few normal scans (BUSI's validation: 21; BUS-BRA: none), too few to see a model's
false positives. Every lesion scan also holds lesion-free tissue: its largest strip beside,
above or below the lesion (`augment.lesion_free_strips`). This scores those strips as normal
scans, with the workdir's checkpoint, threshold and evaluation protocol (original resolution,
`eval.min_lesion_fraction`), beside the split's real normal scans. Prints one JSON line per
dataset.

  python -m benchmarks.lesion_free_strips --workdir=runs/mixed --split=validation
"""
import argparse
import json

from data import augment
from data import classes
from data import input_pipeline
from unet_flax import checkpointing
from unet_flax import evaluate
from unet_flax import sharding


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='A trained workdir.')
  parser.add_argument('--split', default='validation', help='Any TFDS split expression.')
  args = parser.parse_args()

  config, model, variables, _ = checkpointing.load_inference(args.workdir)
  predictor = evaluate.Predictor(model, sharding.create_mesh(), config.eval.batch_size,
                                 config.eval.flip_tta)
  for source in input_pipeline.sources(config.data):
    raw = input_pipeline.load_split(config.data, args.split, source=source)
    result = {'workdir': args.workdir, 'dataset': source, 'split': args.split,
              'threshold': config.eval.threshold}
    for name, scans in (('lesion_free_strips', augment.lesion_free_strips(raw)),
                        ('normal_scans', raw.filter(lambda ex: ex['label'] == classes.NORMAL))):
      batches = input_pipeline.eval_batches(scans, config.data,
                                            batch_size=config.eval.batch_size)
      normal = predictor.evaluate(variables, batches, config.eval, desc=name)[1]['normal']
      result[name] = {'n': normal['n'], 'predicted_empty': (round(normal['empty_rate'], 4)
                                                            if normal['n'] else None)}
    print(json.dumps(result))


if __name__ == '__main__':
  main()
