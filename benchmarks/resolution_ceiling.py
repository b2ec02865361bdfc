"""The Dice a perfect network could score at each input size: the resolution's own ceiling.

A network trained at S x S can at best reproduce its training target, the mask resized to S x S
by the input pipeline. This takes exactly that target, brings it back to each image's original
size the way evaluation brings logits back (`imaging.resize_map`, threshold 0.5) and scores it
with `metrics.score_image`. If the ceiling is far above the measured Dice, a larger input size
cannot be what is missing. Needs the BUSI build. Prints one JSON line.

  python -m benchmarks.resolution_ceiling --sizes 128,160,192,224,256 --split train
"""
import argparse
import json

import numpy as np

from configs import default
from data import input_pipeline
from unet_flax import imaging
from unet_flax import metrics


def lesion_dice_ceiling(raw_ds, data_config, size: int) -> list[float]:
  """Dice of the S x S target, returned to original size, for every lesion image."""
  data_config = data_config.copy_and_resolve_references()  # The caller's config stays as is.
  data_config.image_size = size
  dice = []
  for batch in input_pipeline.eval_batches(raw_ds, data_config, batch_size=16):
    for i, target in enumerate(batch['mask'][..., 0]):
      h, w = int(batch['orig_height'][i]), int(batch['orig_width'][i])
      truth = batch['orig_mask'][i, :h, :w]
      if truth.any():
        pred = imaging.resize_map(target, h, w) > 0.5
        dice.append(metrics.score_image('', int(batch['label'][i]), pred, truth).dice)
  return dice


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='128,160,192,224,256')
  parser.add_argument('--split', default='train', help='Any TFDS split expression.')
  parser.add_argument('--tfds_data_dir', default='', help="'' = the TFDS default.")
  args = parser.parse_args()

  data_config = default.get_config().data
  data_config.tfds_data_dir = args.tfds_data_dir
  raw = input_pipeline.load_split(data_config, args.split)
  result = {'split': args.split}
  for size in map(int, args.sizes.split(',')):
    dice = np.array(lesion_dice_ceiling(raw, data_config, size))
    result[size] = {'lesion_images': len(dice), 'mean_dice': round(float(dice.mean()), 4),
                    'p5_dice': round(float(np.percentile(dice, 5)), 4),
                    'min_dice': round(float(dice.min()), 4)}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
