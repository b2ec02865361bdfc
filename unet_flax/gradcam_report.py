"""--mode=gradcam: Seg-Grad-CAM of chosen layers over a dataset split, drawn and scored.

The maps are those `predict` draws (`predict.explain`: the CAM of the predicted lesion), here
beside the ground truth, so each layer's pointing game says how often its map peaks inside
the true lesion. The Grad-CAM computation itself is `gradcam`'s.
"""
import json
import os
import re

import numpy as np

from data import input_pipeline
from unet_flax import gradcam
from unet_flax import imaging
from unet_flax import predict
from unet_flax import progress
from unet_flax import release
from unet_flax import visualize


def _file_name(image_id: str) -> str:
  return re.sub(r'[^\w\-. ()]+', '_', image_id)


def gradcam_split(model, variables, config, batches, output_dir: str,
                  layers: tuple[str, ...] = ('decoder_1',),
                  max_images: int = 16) -> dict[str, float]:
  """Seg-Grad-CAM of each layer on every image of `batches`; pointing game per layer.

  `batches` come from `input_pipeline.eval_batches`. Writes overlays (first layer) of the
  first `max_images` images, `layer_comparison.png` of those images across layers, and
  `pointing_game.json`. The pointing game counts lesion images whose CAM maximum, at the
  original resolution, is inside the true lesion; an empty prediction counts as a miss.
  """
  os.makedirs(output_dir, exist_ok=True)
  hits = {layer: [] for layer in layers}
  empty = 0
  shown = []  # (image id, image, truth, {layer: cam}) for the comparison figure.
  for batch in progress.progress_bar(batches, desc='gradcam', unit='batch', leave=False):
    logits, _, results = predict.explain(model, variables, config, batch['image'], layers)
    for i, raw_id in enumerate(batch['image_id']):
      h, w = int(batch['orig_height'][i]), int(batch['orig_width'][i])
      truth = batch['orig_mask'][i, :h, :w] > 0
      cams = {layer: imaging.resize_map(results[layer].cam[i], h, w) for layer in layers}
      if truth.any():
        empty += bool(results[layers[0]].empty_target[i])
        for layer in layers:
          hits[layer].append(gradcam.pointing_hit(cams[layer], truth))
      if len(shown) < max_images:
        image_id, gray = raw_id.decode(), batch['orig_image'][i, :h, :w]
        pred = imaging.lesion_mask(imaging.lesion_probability(logits[i], h, w),
                                   config.eval.threshold, config.eval.min_lesion_fraction)
        visualize.overlay_figure(
            gray, pred, cams[layers[0]],
            os.path.join(output_dir, f'{_file_name(image_id)}_overlay.png'),
            gt_mask=truth, title=f'{image_id} (Seg-Grad-CAM of {layers[0]})')
        shown.append((image_id, gray, truth, cams))
  scores = {layer: float(np.mean(h)) if h else float('nan') for layer, h in hits.items()}
  if shown:
    visualize.layer_comparison_figure(
        [s[1] for s in shown], {layer: [s[3][layer] for s in shown] for layer in layers},
        [s[2] for s in shown], os.path.join(output_dir, 'layer_comparison.png'),
        row_titles=[s[0] for s in shown], title='Seg-Grad-CAM per layer (green: truth)')
  lesions = len(hits[layers[0]])
  with open(os.path.join(output_dir, 'pointing_game.json'), 'w') as f:
    json.dump({'pointing_game': scores, 'lesion_images': lesions,
               'empty_prediction': empty, 'threshold': config.eval.threshold}, f, indent=2)
  for layer, score in scores.items():
    print(f'Pointing game, {layer}: {score:.3f} of {lesions} lesion images '
          f'({empty} without a predicted lesion count as misses)')
  return scores


def gradcam_workdir(workdir: str, config, split: str, dataset: str, output_dir: str,
                    layers: list[str], max_images: int,
                    threshold: float | None = None) -> dict[str, float]:
  """--mode=gradcam: the workdir's best checkpoint, or a release model folder, on a split
  expression of `dataset`; each map explains the mask at `threshold` if given, else at the
  model's."""
  config, model, variables, _ = release.load_model(workdir, config, threshold)
  batches = input_pipeline.eval_batches(
      input_pipeline.load_split(config.data, split, source=dataset), config.data,
      batch_size=config.eval.batch_size)
  return gradcam_split(model, variables, config, batches, output_dir, tuple(layers),
                       max_images)
