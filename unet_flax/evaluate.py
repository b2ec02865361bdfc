"""Evaluation at the original resolution, and the report files it leaves behind.

The network sees a resized image; its logits are upsampled (bilinear) back to each image's
original size and thresholded there, because that is the mask a clinician would look at.
"""
import functools
import json
import os

import jax
import numpy as np
from scipy import special

from data import input_pipeline
from unet_flax import imaging
from unet_flax import metrics as metrics_lib
from unet_flax import model as model_lib
from unet_flax import onnx_backend
from unet_flax import progress
from unet_flax import release
from unet_flax import sharding
from unet_flax import visualize

SAMPLES_PER_CLASS = 4  # Images per class kept for the prediction grid figure.


class Predictor:
  """A jit-compiled forward pass over data-sharded batches (BatchNorm in inference mode), or
  `network` (an `onnx_backend.OnnxNetwork` of the same model) instead of JAX."""

  def __init__(self, model, mesh, batch_size: int, flip_tta: bool = False, network=None):
    sharding.check_batch_size(batch_size, 'eval.batch_size')
    self.mesh = mesh
    self._batch_size = batch_size
    self._network = network
    self._apply = jax.jit(
        functools.partial(model_lib.inference_outputs, model, flip_tta=flip_tta),
        in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
        out_shardings=sharding.replicated(mesh))

  def outputs(self, variables, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, S, S) logits and the (B,) image-level lesion probabilities of the presence head
    (None without one); a short batch is padded to the batch size, then cut, so every batch
    runs the same compiled program (a split's last batch would otherwise compile another).

    Every process passes the same whole batch; each device takes its slice of it.
    """
    if self._network is not None:
      logits, presence = self._network.outputs(images)
    else:
      padded, n = sharding.pad_batch({'image': images}, self._batch_size)
      images = sharding.global_batch(padded, self.mesh, same_on_all_processes=True)['image']
      logits, presence = (None if x is None else np.asarray(x)[:n]
                          for x in jax.device_get(self._apply(variables, images)))
    return logits, None if presence is None else special.expit(presence)

  def logits(self, variables, images: np.ndarray) -> np.ndarray:
    """The (B, S, S) logits of `outputs`."""
    return self.outputs(variables, images)[0]

  def probability_maps(self, variables, batches, desc: str):
    """Yields (image_id, label, lesion probability, truth, image, image-level lesion
    probability) per image of `batches` (from `input_pipeline.eval_batches`), the maps at the
    image's original size.

    The image-level probability answers "is there a lesion in this scan?": the presence
    head's, or without one the highest pixel probability.
    """
    for batch in progress.progress_bar(batches, desc=desc, unit='batch', leave=False):
      logits, presence = self.outputs(variables, batch['image'])
      for i, logit in enumerate(logits):
        h, w = int(batch['orig_height'][i]), int(batch['orig_width'][i])
        probability = imaging.lesion_probability(logit, h, w)
        yield (batch['image_id'][i].decode(), int(batch['label'][i]), probability,
               batch['orig_mask'][i, :h, :w], batch['orig_image'][i, :h, :w],
               float(probability.max() if presence is None else presence[i]))

  def evaluate(self, variables, batches, eval_config, desc: str = 'evaluate'):
    """Scores every image of `batches` at `eval_config.threshold`.

    Returns (scores, summary, samples); samples are a few (image, truth, prediction, score)
    tuples per class at the original size, for figures.
    """
    scores, samples = [], []
    for image_id, label, probability, truth, image, image_probability in self.probability_maps(
        variables, batches, desc):
      pred = imaging.lesion_mask(probability, eval_config.threshold,
                                 eval_config.min_lesion_fraction)
      score = metrics_lib.score_image(image_id, label, pred, truth,
                                      lesion_probability=image_probability)
      scores.append(score)
      if sum(s[3].label == label for s in samples) < SAMPLES_PER_CLASS:
        samples.append((image, truth, pred, score))
    return scores, metrics_lib.summarize(scores), samples

  def choose_threshold(self, variables, batches_by_dataset: dict, eval_config):
    """(threshold, {dataset: {candidate: {'all_images_dice', 'sensitivity'}}}) on the
    validation batches of each dataset, by `metrics.choose_threshold` (sensitivity up to
    `eval_config.min_sensitivity` on every dataset, then the mean all-image Dice, the
    combination that chose the checkpoint in `train.validate`)."""
    points = {}
    for name, batches in batches_by_dataset.items():
      images = [(image_id, label, probability, truth)
                for image_id, label, probability, truth, _, _
                in self.probability_maps(variables, batches, f'choosing the threshold, {name}')]
      points[name] = metrics_lib.operating_points(images, eval_config.threshold_candidates,
                                                  eval_config.min_lesion_fraction)
    return metrics_lib.choose_threshold(points, eval_config.min_sensitivity,
                                        eval_config.threshold), points


_DESCRIPTIONS = {'busi': 'BUSI (duplicate-group-aware split)',
                 'busbra': 'BUS-BRA (patient-grouped split)',
                 'bus_uclm': 'BUS-UCLM (patient-grouped split)',
                 'synthetic': 'SYNTHETIC DEMO data'}


def protocol(config, source: str, split: str, summary: dict, checkpoint_note: str) -> str:
  """The sentence that must stand next to every number."""
  name = input_pipeline.dataset_name(config.data, source)
  dataset = _DESCRIPTIONS.get(source, f'{name} (folder dataset, group-aware split)')
  return (f"{dataset}, split '{split}', {summary['num_images']} images; model trained on "
          f"{config.data.source}; Dice/IoU/HD95 per lesion image at the ORIGINAL resolution "
          f'(logits upsampled from {config.data.image_size}x{config.data.image_size}, '
          f'threshold {config.eval.threshold}, regions under '
          f'{100 * config.eval.min_lesion_fraction:g} % of the image removed); '
          f'checkpoint: {checkpoint_note}.')


def best_note(best: dict) -> str:
  """How the evaluated checkpoint (and its threshold) was chosen, for the protocol sentence."""
  note = (f"epoch {best['epoch']}, chosen on validation all-image Dice "
          f"{best['val_all_images_dice']:.4f} (lesion Dice; a normal scan 1 if empty, else 0)")
  if 'threshold' not in best:  # No candidates configured, or the run stopped before it.
    return note + '; threshold: the config\'s eval.threshold, not chosen on validation'
  by_threshold = best['val_all_images_dice_by_threshold']
  note += f"; threshold {best['threshold']} chosen on validation"
  if 'val_operating_points' in best:
    lowest = {t: min((p[t]['sensitivity'] for p in best['val_operating_points'].values()
                      if t in p and not np.isnan(p[t]['sensitivity'])), default=float('nan'))
              for t in by_threshold}
    note += (f" (image-level sensitivity up to {best['min_sensitivity']:g} on every dataset "
             'first, then all-image Dice; lowest sensitivity / all-image Dice: ' +
             ', '.join(f'{t}: {lowest[t]:.3f} / {d:.4f}' for t, d in by_threshold.items()) + ')')
  else:  # Chosen by the all-image Dice alone, before the sensitivity floor.
    note += (f" all-image Dice {by_threshold[str(best['threshold'])]:.4f} among " +
             ', '.join(f'{t}: {d:.4f}' for t, d in by_threshold.items()))
  return note


def split_dir(folder: str, split: str) -> str:
  """The folder of one split's report; split expressions become file-system safe."""
  return os.path.join(folder,
                      split.replace('[', '_').replace(']', '').replace(':', '-'))


def write_report(scores, summary: dict, samples, protocol_text: str, out_dir: str,
                 split: str) -> None:
  """summary.json, per_image.csv and predictions.png under `out_dir/<split>/` (process 0)."""
  if jax.process_index() != 0:
    return
  out_dir = split_dir(out_dir, split)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump({'protocol': protocol_text, 'split': split, **summary}, f, indent=2)
  metrics_lib.write_per_image_csv(scores, os.path.join(out_dir, 'per_image.csv'))
  visualize.prediction_grid(samples, os.path.join(out_dir, 'predictions.png'),
                            title=protocol_text)


def report_dir(workdir: str, config, source: str) -> str:
  """`<workdir>/eval/<dataset>`: reports of each dataset apart (then `/<split>/`)."""
  return os.path.join(workdir, 'eval', input_pipeline.dataset_name(config.data, source))


def evaluate_and_report(predictor, variables, config, source: str, raw_split, split: str,
                        workdir: str, checkpoint_note: str) -> dict:
  """Scores one dataset's split; prints the table; writes the report under `report_dir`."""
  batches = input_pipeline.eval_batches(raw_split, config.data,
                                        batch_size=config.eval.batch_size)
  scores, summary, samples = predictor.evaluate(variables, batches, config.eval,
                                                desc=f'{source} {split}')
  protocol_text = protocol(config, source, split, summary, checkpoint_note)
  print(metrics_lib.format_table(summary, protocol_text))
  write_report(scores, summary, samples, protocol_text, report_dir(workdir, config, source),
               split)
  return summary


def evaluate_workdir(workdir: str, config, split: str, dataset: str | None = None,
                     report_root: str | None = None, backend: str = 'jax',
                     threshold: float | None = None) -> dict:
  """--mode=evaluate: the workdir's best checkpoint, or a release model folder
  (`release.load_model`), on a split expression of `dataset` (any name `data.source`
  accepts), or of each dataset it was trained on, its network run by `backend`
  (`onnx_backend.BACKENDS`), at `threshold` if given, else the model's; reports go under
  `report_root` (default: the workdir). {dataset: summary}."""
  config, model, variables, best = release.load_model(workdir, config, threshold)
  note = f'best of {workdir}, {best_note(best)}'
  if threshold is not None:
    note += f'; evaluated at threshold {threshold:g}, given on the command line'
  predictor = Predictor(model, sharding.create_mesh(), config.eval.batch_size,
                        config.eval.flip_tta,
                        onnx_backend.network(backend, model, variables, config))
  return {
      source: evaluate_and_report(
          predictor, variables, config, source,
          input_pipeline.load_split(config.data, split, source=source), split,
          report_root or workdir, checkpoint_note=note)
      for source in ([dataset] if dataset else input_pipeline.sources(config.data))}
