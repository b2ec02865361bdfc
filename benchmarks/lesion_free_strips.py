"""How often a trained model marks a lesion where there is none, beyond the few normal scans.

A split has few normal scans (BUSI's validation: 21; BUS-BRA: none), too few to see a model's
false positives. Every lesion scan also holds lesion-free tissue: its largest strip beside,
above or below the lesion (`lesion_free_strips`). This scores those strips as normal
scans, with the workdir's checkpoint, threshold and evaluation protocol (original resolution,
`eval.min_lesion_fraction`), beside the split's real normal scans. Prints one JSON line per
dataset.

  python -m benchmarks.lesion_free_strips --workdir=runs/mixed --split=validation
"""
import argparse
import json

import tensorflow as tf

from data import classes
from data import input_pipeline
from unet_flax import checkpointing
from unet_flax import evaluate
from unet_flax import sharding


def lesion_free_crop(example: dict[str, tf.Tensor], margin: float = 0.05,
                     min_aspect: float = 0.4) -> dict[str, tf.Tensor]:
  """The largest strip of a lesion scan beside, above or below its lesions, as an empty scan.

  Strips span the whole image on one side of the lesions' bounding box grown by `margin` of
  the longer image side; a strip counts if its short side is at least `min_aspect` of its
  long side (the aspect range of whole BUSI scans, which are also resized to a square).
  Returns the example as a normal scan: `image` the strip, an all-zero `mask`, `label`
  normal, and `valid` (False: no strip qualifies).
  Why: these are real tissue from every scanner, lesion-like shadows and fat lobules
  included, with nothing to find; BUS-BRA has no normal scans at all.
  """
  image, mask = example['image'], example['mask'][..., 0] > 0
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  grow = tf.cast(margin * tf.cast(tf.maximum(height, width), tf.float32), tf.int32)
  rows = tf.cast(tf.where(tf.reduce_any(mask, axis=1))[:, 0], tf.int32)
  cols = tf.cast(tf.where(tf.reduce_any(mask, axis=0))[:, 0], tf.int32)
  top, bottom = rows[0] - grow, rows[-1] + grow + 1  # Lesion box rows: [top, bottom).
  left, right = cols[0] - grow, cols[-1] + grow + 1
  # (row offset, column offset, height, width) of the strips left, right, above and below.
  strips = tf.stack([
      tf.stack([0, 0, height, tf.maximum(left, 0)]),
      tf.stack([0, tf.minimum(right, width), height, tf.maximum(width - right, 0)]),
      tf.stack([0, 0, tf.maximum(top, 0), width]),
      tf.stack([tf.minimum(bottom, height), 0, tf.maximum(height - bottom, 0), width])])
  short = tf.minimum(strips[:, 2], strips[:, 3])
  long = tf.maximum(strips[:, 2], strips[:, 3])
  ok = (tf.cast(short, tf.float32) >= min_aspect * tf.cast(long, tf.float32)) & (short > 0)
  best = tf.argmax(tf.where(ok, strips[:, 2] * strips[:, 3], -1))
  y, x, h, w = tf.unstack(strips[best])
  valid = ok[best]
  # An invalid strip may be empty: crop one pixel instead (the example is filtered out).
  h, w = tf.where(valid, h, 1), tf.where(valid, w, 1)
  crop = image[y:y + h, x:x + w]
  return {**example, 'image': crop, 'mask': tf.zeros_like(crop),
          'label': tf.constant(classes.NORMAL, tf.int64), 'valid': valid}


def lesion_free_strips(raw_ds: tf.data.Dataset) -> tf.data.Dataset:
  """`lesion_free_crop` of every lesion scan of `raw_ds` that has one (normal scans have no
  lesion to cut away): the scans this benchmark scores."""
  return (raw_ds.filter(lambda ex: ex['label'] != classes.NORMAL).map(lesion_free_crop)
          .filter(lambda ex: ex['valid']))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='A trained workdir.')
  parser.add_argument('--split', default='validation', help='Any TFDS split expression.')
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')  # TF only feeds the input pipeline; JAX has them.

  config, model, variables, _ = checkpointing.load_inference(args.workdir)
  predictor = evaluate.Predictor(model, sharding.create_mesh(), config.eval.batch_size,
                                 config.eval.flip_tta)
  for source in input_pipeline.sources(config.data):
    raw = input_pipeline.load_split(config.data, args.split, source=source)
    result = {'workdir': args.workdir, 'dataset': source, 'split': args.split,
              'threshold': config.eval.threshold}
    for name, scans in (('lesion_free_strips', lesion_free_strips(raw)),
                        ('normal_scans', raw.filter(lambda ex: ex['label'] == classes.NORMAL))):
      batches = input_pipeline.eval_batches(scans, config.data,
                                            batch_size=config.eval.batch_size)
      normal = predictor.evaluate(variables, batches, config.eval, desc=name)[1]['normal']
      result[name] = {'n': normal['n'], 'predicted_empty': (round(normal['empty_rate'], 4)
                                                            if normal['n'] else None)}
    print(json.dumps(result))


if __name__ == '__main__':
  main()
