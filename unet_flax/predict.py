"""Prediction on the user's own files.

`predict_files` takes whatever the user points at (files, folders, globs; PNG, JPEG, BMP,
TIFF and DICOM, see `scan_files`) and writes, at each scan's ORIGINAL size, the binary mask,
the Seg-Grad-CAM map, an overlay figure and optionally the probability map, and one
`predictions.csv` row per scan. Each frame of a multi-frame DICOM file is a scan of its own.
A folder in the BUSI layout (`X.png` beside `X_mask.png`, `X_mask_1.png`, ...) is recognised:
the mask files are ground truth, drawn on the overlay, and not predicted on.
"""
import collections
from concurrent import futures
import csv
import functools
import glob
import os
import re
import sys
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import special
from tqdm import tqdm

from data import scan_files
from unet_flax import gradcam
from unet_flax import imaging
from unet_flax import model as model_lib
from unet_flax import progress
from unet_flax import visualize

_MASK_STEM = re.compile(rf'(?P<image>.+){scan_files.MASK_STEM_SUFFIX}')
# `X_probability.png` holds round(probability * PROBABILITY_SCALE): 16-bit, steps of 1.5e-5.
PROBABILITY_SCALE = 65535
CSV_COLUMNS = ('file', 'frame', 'height', 'width', 'lesion_area_px', 'lesion_area_percent',
               'max_lesion_probability', 'presence_probability', 'threshold', 'error')


def _is_image(name: str) -> bool:
  return name.lower().endswith(scan_files.SCAN_EXTENSIONS)


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _images_under(folder: str) -> list[str]:
  return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                for name in names if _is_image(name))


def _busi_masks(folder: str) -> dict[str, list[str]]:
  """{image stem: names of its mask files} for `X_mask.*`, `X_mask_<n>.*` beside `X.*`."""
  folder = folder or '.'
  names = sorted(n for n in os.listdir(folder) if _is_image(n)) if os.path.isdir(folder) else []
  stems = {_stem(n) for n in names}
  masks = {}
  for name in names:
    match = _MASK_STEM.fullmatch(_stem(name))
    if match and match['image'] in stems:
      masks.setdefault(match['image'], []).append(name)
  return masks


def expand_inputs(paths: list[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
  """([(image path, its ground-truth mask paths)], [problems]) for files, folders and globs.

  Folders are searched recursively for `scan_files.SCAN_EXTENSIONS`; a file that does not
  exist is kept, so reading it reports the reason. A pattern or folder that matches no scan
  is a problem.
  """
  found, problems = [], []
  for path in paths:
    if os.path.isdir(path):
      matches = _images_under(path)
    elif glob.has_magic(path):
      matches = sorted(f for m in glob.glob(path, recursive=True)
                       for f in (_images_under(m) if os.path.isdir(m) else [m]))
    else:
      matches = [path]
    if not matches:
      problems.append(f'{path}: no scan found ({" ".join(scan_files.SCAN_EXTENSIONS)})')
    found += matches
  masks_in = functools.cache(_busi_masks)
  inputs = []
  for path in dict.fromkeys(found):  # Ordered de-duplication.
    folder, name = os.path.split(path)
    masks = masks_in(folder)
    match = _MASK_STEM.fullmatch(_stem(name))
    if not (match and name in masks.get(match['image'], [])):
      inputs.append((path, [os.path.join(folder, n) for n in masks.get(_stem(name), [])]))
  return inputs, problems


def ground_truth(mask_paths: list[str], shape: tuple[int, int], name: str):
  """The union of the mask files of the scan `name` of (H, W) `shape`, read as the builders
  read masks; None if there are none, or if any is unusable (said on stderr): the overlay
  then shows no ground truth rather than part of it."""
  if not mask_paths:
    return None
  try:
    return scan_files.read_masks(mask_paths, shape, name)
  except scan_files.FormatError as e:
    tqdm.write(f'{name}: ignoring ground truth: {e}', file=sys.stderr)
    return None


def _check_output_dir(output_dir: str, inputs) -> None:
  """Refuses to write `X_mask.png` where it would pass for (or overwrite) ground truth."""
  out = os.path.realpath(output_dir)
  for path, _ in inputs:
    if os.path.realpath(os.path.dirname(path) or '.') == out:
      raise ValueError(f'Output folder {output_dir!r} holds the input {path!r}; its '
                       '*_mask.png files would mix with ground truth. Choose another folder.')


class _Scan(NamedTuple):
  """One scan of a readable input: what the network sees, and what its outputs are drawn on."""
  path: str
  name: str  # Its outputs' stem: the file's, with `_frame003` for frame 3 of a DICOM loop.
  frame: int | None  # 1-based frame number in a multi-frame file, else None.
  last: bool  # The last scan of its file.
  gray: np.ndarray  # uint8 (H, W), the original size.
  truth: np.ndarray | None  # Ground truth for the overlay, if known.
  network_input: np.ndarray  # float32 (S, S, 1).


class _Prediction(NamedTuple):
  """The network's outputs for one scan, at the network's size."""
  logits: np.ndarray  # (S, S) flip-TTA logits, as `evaluate` scores them.
  presence: float | None  # Image-level lesion probability; None without a presence head.
  cam: np.ndarray | None  # (S, S) Seg-Grad-CAM; None when CAMs are not asked for.
  empty_target: bool  # No predicted lesion, so the CAM is all zero.


def _read(path: str, mask_paths: list[str], size: int, with_truth: bool) -> list[_Scan]:
  """Decodes and resizes one input's scans; raises `scan_files.ImageReadError`.

  The frames of a multi-frame file are named `X_frame001`, `X_frame002`, ... (three digits,
  more if there are over 999 frames), so they sort in order; ground truth is only looked
  for beside single-frame files.
  """
  frames = scan_files.read_frames(path)
  stem = _stem(path)
  if len(frames) == 1:
    gray = frames[0]
    truth = ground_truth(mask_paths, gray.shape, stem) if with_truth else None
    return [_Scan(path, stem, None, True, gray, truth, imaging.model_input(gray, size))]
  digits = max(3, len(str(len(frames))))
  return [_Scan(path, f'{stem}_frame{number:0{digits}d}', number, number == len(frames), gray,
                None, imaging.model_input(gray, size))
          for number, gray in enumerate(frames, 1)]


def _read_ahead(reader: futures.Executor, inputs, read, ahead: int):
  """(path, future of `read(path, mask_paths)`) in input order, with `ahead` more reads
  submitted, so decoding the next batch overlaps the network's work on this one."""
  pending = collections.deque()
  for path, mask_paths in inputs:
    pending.append((path, reader.submit(read, path, mask_paths)))
    if len(pending) > ahead:
      yield pending.popleft()
  yield from pending


def _clash(scans: list[_Scan], owners: dict[str, tuple[str, int | None]]) -> str | None:
  """Why one input's `scans` cannot be written: an output name that `owners` (output name ->
  (path, frame) of the scan that took it) already holds, e.g. of `a.png` for `a.tif`, or of
  frame 1 of a multi-frame `X.dcm` for `X_frame001.png`. Else None, and the names are taken."""
  for scan in scans:
    if scan.name in owners:
      path, frame = owners[scan.name]
      owner = repr(path) if frame is None else f'frame {frame} of {path!r}'
      return f'{scan.path}: output name {scan.name!r} is already used by {owner}; rename one'
  owners.update((scan.name, (scan.path, scan.frame)) for scan in scans)
  return None


def _readable_batches(reads, batch_size: int, on_failure):
  """Lists of up to `batch_size` _Scans in input order; an unreadable input, or one whose
  outputs would overwrite an earlier input's (`_clash`), goes to `on_failure(path, reason)`
  and the next readable scans take its place in the batch."""
  batch, owners = [], {}
  for path, read in reads:
    try:
      scans = read.result()
    except scan_files.ImageReadError as e:
      on_failure(path, str(e))
      continue
    clash = _clash(scans, owners)
    if clash:
      on_failure(path, clash)
      continue
    for scan in scans:
      batch.append(scan)
      if len(batch) == batch_size:
        yield batch
        batch = []
  if batch:
    yield batch


def explain(model, variables, config, images: np.ndarray, layers, network=None):
  """The logits `evaluate` scores (flip TTA per config), the presence logits, and each
  layer's Grad-CAM of the region the logits mark, so the map explains the very mask shown.
  `network` (an `onnx_backend.OnnxNetwork`) computes the logits instead of JAX.

  Returns ((B, S, S) logits, (B,) presence logits or None, {layer: GradCamResult}).
  """
  if network is None:
    logits, presence = model_lib.inference_outputs(model, variables, images,
                                                   flip_tta=config.eval.flip_tta)
  else:
    logits, presence = network.outputs(images)
  logits = np.asarray(logits)
  region = np.stack([imaging.lesion_mask(special.expit(image_logits), config.eval.threshold,
                                         config.eval.min_lesion_fraction)
                     for image_logits in logits])
  return (logits, None if presence is None else np.asarray(presence),
          {layer: gradcam.seg_grad_cam(model, variables, images, layer, region=region)
           for layer in layers})


def _predict_batch(model, variables, config, scans: list[_Scan], batch_size: int,
                   layer: str | None, network=None) -> list[_Prediction]:
  """Network outputs of each scan; Grad-CAM of `layer` unless it is None.

  The batch is zero-padded to `batch_size`: one shape, so each function compiles once. A
  scan's outputs do not depend on its neighbours or place in the batch (BatchNorm runs in
  inference mode); XLA may round differently for another batch size.
  """
  size = config.data.image_size
  images = np.zeros((batch_size, size, size, 1), np.float32)
  for i, scan in enumerate(scans):
    images[i] = scan.network_input
  logits, presence, results = explain(model, variables, config, images,
                                      [layer] if layer else [], network)
  return [_Prediction(logits[i], None if presence is None else float(special.expit(presence[i])),
                      results[layer].cam[i] if layer else None,
                      bool(layer and results[layer].empty_target[i]))
          for i in range(len(scans))]


def _write_outputs(output_dir: str, scan: _Scan, prediction: _Prediction, eval_config,
                   overlay: bool, probabilities: bool) -> tuple[str, dict]:
  """Mask, CAM, overlay and probability map at the original size; returns (summary line,
  CSV row)."""
  name = scan.name
  h, w = scan.gray.shape
  probability = imaging.lesion_probability(prediction.logits, h, w)
  mask = imaging.lesion_mask(probability, eval_config.threshold,
                             eval_config.min_lesion_fraction)
  area = int(mask.sum())
  line = (f'{name}: lesion area {area} px ({100.0 * area / (h * w):.2f}%), '
          f'max probability {probability.max():.3f}')
  if prediction.empty_target:
    line += ' [no predicted lesion: Grad-CAM map is all zero]'
  Image.fromarray(mask.astype(np.uint8) * 255).save(
      os.path.join(output_dir, f'{name}_mask.png'))
  if probabilities:
    Image.fromarray(np.round(probability * PROBABILITY_SCALE).astype(np.uint16)).save(
        os.path.join(output_dir, f'{name}_probability.png'))
  if prediction.cam is not None:
    cam = imaging.resize_map(prediction.cam, h, w)
    np.save(os.path.join(output_dir, f'{name}_cam.npy'), cam)
    if overlay:
      visualize.overlay_figure(scan.gray, mask, cam,
                               os.path.join(output_dir, f'{name}_overlay.png'),
                               gt_mask=scan.truth, title=line)
  row = {'file': scan.path, 'frame': '' if scan.frame is None else scan.frame, 'height': h, 'width': w, 'lesion_area_px': area,
         'lesion_area_percent': round(100.0 * area / (h * w), 4),
         'max_lesion_probability': round(float(probability.max()), 6),
         'presence_probability': ('' if prediction.presence is None
                                  else round(prediction.presence, 6)),
         'threshold': eval_config.threshold, 'error': ''}
  return line, row


class _Outcomes:
  """Per-input outcomes as they arrive: progress bar, printed lines, failures, CSV rows."""

  def __init__(self, bar):
    self.bar = bar
    self.rows = collections.defaultdict(list)  # Input path -> its scans' CSV rows.
    self.failures = 0

  def failed(self, path: str, reason: str) -> None:
    tqdm.write(f'ERROR {reason} (skipped)', file=sys.stderr)
    self.rows[path].append({'file': path, 'error': reason})
    self.failures += 1
    self.bar.update()

  def written(self, line: str, row: dict, last: bool) -> None:
    tqdm.write(line)
    self.rows[row['file']].append(row)
    self.bar.update(int(last))


def _write_csv(path: str, rows: list[dict]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval='')
    writer.writeheader()
    writer.writerows(rows)


def predict_files(model, variables, config, paths: list[str], output_dir: str,
                  layer: str = 'decoder_1', *, overlays: bool = True, cams: bool = True,
                  probabilities: bool = False, network=None) -> int:
  """Predicts every scan of `paths` into `output_dir`; returns how many inputs failed.

  Per scan `X` (a file `X.ext`, or frame 3 of a multi-frame DICOM `X_frame003`): `X_mask.png`
  (0/255, at `config.eval.threshold`), `X_cam.npy` (float32 Seg-Grad-CAM of `layer`, unless
  `cams` is False), `X_overlay.png` (if `overlays`; it shows the CAM, so not without `cams`)
  and `X_probability.png` (if `probabilities`: the lesion probability as a 16-bit grayscale
  PNG, probability = value / 65535, the mask being it above the threshold less specks), all
  at the original size; `predictions.csv` has a row per scan, in input and frame order.
  Unreadable files, and files whose outputs would overwrite an earlier one's (`_clash`), are
  reported and skipped. One thread decodes the next batch and another
  writes the last one while the network runs, so a folder streams at the network's pace.
  `network` (an `onnx_backend.OnnxNetwork`) computes the logits instead of JAX.
  """
  inputs, problems = expand_inputs(paths)
  _check_output_dir(output_dir, inputs)
  os.makedirs(output_dir, exist_ok=True)
  for problem in problems:
    print(f'ERROR {problem}', file=sys.stderr)
  overlay = overlays and cams
  batch_size = max(1, min(config.eval.batch_size, len(inputs)))
  read = functools.partial(_read, size=config.data.image_size, with_truth=overlay)
  with (progress.progress_bar(total=len(inputs), unit='image',
                             disable=len(inputs) <= batch_size) as bar,
        futures.ThreadPoolExecutor(1) as reader, futures.ThreadPoolExecutor(1) as writer):
    outcomes = _Outcomes(bar)
    writes = collections.deque()
    for scans in _readable_batches(_read_ahead(reader, inputs, read, batch_size), batch_size,
                                   outcomes.failed):
      predictions = _predict_batch(model, variables, config, scans, batch_size,
                                   layer if cams else None, network)
      writes += [(writer.submit(_write_outputs, output_dir, scan, prediction, config.eval,
                                overlay, probabilities), scan.last)
                 for scan, prediction in zip(scans, predictions)]
      while len(writes) > len(scans):  # The previous batch: bounds memory, keeps order.
        write, last = writes.popleft()
        outcomes.written(*write.result(), last)
    while writes:
      write, last = writes.popleft()
      outcomes.written(*write.result(), last)
  _write_csv(os.path.join(output_dir, 'predictions.csv'),
             [row for path, _ in inputs for row in outcomes.rows[path]])
  return len(problems) + outcomes.failures

