"""Figures written to PNG files: overlays of predictions and Grad-CAM maps on the scan.

The per-scan overlay (`overlay_figure`, one per predicted file) is composed with numpy and
Pillow at the scan's own size: drawn with matplotlib it took as long as the network, half of
what `--mode=predict` waits for. The other figures, one per run, are built on
`matplotlib.figure.Figure` (Agg canvas, no pyplot state), so they work headless, in threads,
and leak no open figures. The ground truth, when known, is always the same green contour; the
prediction is red.
"""
from collections.abc import Mapping, Sequence
import json
import textwrap

import matplotlib
from matplotlib.figure import Figure
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import ndimage

_TRUTH_COLOR = 'lime'
_PRED_COLOR = 'red'
_CAM_ALPHA = 0.5
_PRED_TINT_ALPHA = 0.3
_JET = matplotlib.colormaps['jet'](np.linspace(0, 1, 256))[:, :3].astype(np.float32) * 255
_GAP = 6  # Pixels between panels.
_COLORBAR = 14  # Width of the CAM colour bar.


def _contour(ax, mask: np.ndarray | None, color: str) -> None:
  """Outline of a binary mask (nothing for an empty or missing one)."""
  if mask is not None and np.any(mask):
    ax.contour(np.asarray(mask, np.float32), levels=[0.5], colors=color, linewidths=1.2)


def _show(ax, image: np.ndarray, title: str) -> None:
  ax.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_title(title, fontsize=9)
  ax.set_axis_off()


def _show_cam(ax, image: np.ndarray, cam: np.ndarray, gt_mask, title: str):
  _show(ax, image, title)
  _contour(ax, gt_mask, _TRUTH_COLOR)
  return ax.imshow(cam, cmap='jet', vmin=0.0, vmax=1.0, alpha=_CAM_ALPHA,
                   interpolation='bilinear')


def _rgb(name: str) -> np.ndarray:
  return np.asarray(matplotlib.colors.to_rgb(name), np.float32) * 255


def _outline(rgb: np.ndarray, mask: np.ndarray | None, color: str, width: int) -> None:
  """Paints the inner border (`width` px) of a binary mask into `rgb`, in place."""
  if mask is None or not np.any(mask):
    return
  mask = np.asarray(mask, bool)
  rgb[mask & ~ndimage.binary_erosion(mask, iterations=width)] = _rgb(color)


def _blend(rgb: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
  return (1 - alpha) * rgb + alpha * color


def overlay_figure(image: np.ndarray, pred_mask: np.ndarray, cam: np.ndarray, path: str, *,
                   gt_mask: np.ndarray | None = None, title: str = '') -> None:
  """Image | prediction (red tint and contour) | Grad-CAM heat map and its colour bar, each
  panel at the image's size, captioned, under `title`.

  `image` is uint8 (H, W); masks are binary (H, W); `cam` is float (H, W) in [0, 1]. The
  ground truth, if given, is drawn as a green contour on every panel.
  """
  h, w = image.shape
  width = max(1, round(max(h, w) / 300))  # Contour width: visible on any size of scan.
  gray = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
  prediction = gray.copy()
  pred_mask = np.asarray(pred_mask, bool)
  prediction[pred_mask] = _blend(prediction[pred_mask], _rgb(_PRED_COLOR), _PRED_TINT_ALPHA)
  _outline(prediction, pred_mask, _PRED_COLOR, width)
  heat = _blend(gray, _JET[np.clip(np.rint(np.asarray(cam) * 255), 0, 255).astype(np.intp)],
                _CAM_ALPHA)
  panels = [gray, prediction, heat]
  for panel in panels:
    _outline(panel, gt_mask, _TRUTH_COLOR, width)
  captions = ['image' + (' (green: truth)' if gt_mask is not None else ''),
              f'prediction: {int(np.count_nonzero(pred_mask))} px', 'Seg-Grad-CAM']

  font = ImageFont.load_default(size=max(11, round(h / 32)))
  line = round(font.size * 1.4)
  total_width = 3 * w + 3 * _GAP + _COLORBAR + 3 * font.size
  title_lines = textwrap.wrap(title, max(20, int(total_width / (0.6 * font.size))))
  top = line * (len(title_lines) + 1)
  canvas = Image.new('RGB', (total_width, top + h + _GAP), 'white')
  draw = ImageDraw.Draw(canvas)
  for i, text in enumerate(title_lines):
    draw.text((total_width // 2, i * line + line // 2), text, 'black', font, anchor='mm')
  for i, (panel, caption) in enumerate(zip(panels, captions)):
    left = i * (w + _GAP)
    canvas.paste(Image.fromarray(np.rint(panel).astype(np.uint8)), (left, top))
    draw.text((left + w // 2, top - line // 2), caption, 'black', font, anchor='mm')
  bar_left = 3 * (w + _GAP)
  bar = _JET[np.linspace(255, 0, h).astype(np.intp)]
  canvas.paste(Image.fromarray(np.repeat(bar[:, None].astype(np.uint8), _COLORBAR, axis=1)),
               (bar_left, top))
  for text, y, anchor in (('1', top, 'lt'), ('0', top + h, 'lb')):
    draw.text((bar_left + _COLORBAR + 3, y), text, 'black', font, anchor=anchor)
  canvas.save(path, compress_level=1)  # Speckle compresses poorly; level 6 took 4x as long.


def layer_comparison_figure(images: Sequence[np.ndarray],
                            cams_by_layer: Mapping[str, Sequence[np.ndarray]],
                            gt_masks: Sequence[np.ndarray | None], path: str, *,
                            row_titles: Sequence[str] = (), title: str = '') -> None:
  """One row per image: the scan, then its Grad-CAM from each layer, side by side.

  Shallow layers localise sharply but see little context; the bottleneck sees the whole
  lesion at coarse resolution. Putting them next to each other shows that trade-off.
  """
  layers = list(cams_by_layer)
  rows, cols = len(images), 1 + len(layers)
  fig = Figure(figsize=(2.4 * cols, 2.4 * rows + 0.4), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  for i, image in enumerate(images):
    _show(axes[i, 0], image, row_titles[i] if row_titles else '')
    _contour(axes[i, 0], gt_masks[i], _TRUTH_COLOR)
    for j, layer in enumerate(layers, start=1):
      _show_cam(axes[i, j], image, cams_by_layer[layer][i], gt_masks[i], layer if i == 0 else '')
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=80)


def training_curves(metrics_jsonl: str, path: str) -> None:
  """Training loss and validation Dice per epoch, from a run's metrics.jsonl."""
  with open(metrics_jsonl) as f:
    epochs = [row for row in map(json.loads, f) if 'epoch_loss' in row]
  evals = [row for row in epochs if 'val_dice' in row]
  fig = Figure(figsize=(10, 3.6))
  ax_loss, ax_dice = fig.subplots(1, 2)
  ax_loss.plot([r['epoch'] for r in epochs], [r['epoch_loss'] for r in epochs])
  ax_loss.set(xlabel='epoch', ylabel='training loss', title='training loss', yscale='log')
  x = [r['epoch'] for r in evals]
  ax_dice.plot(x, [r['val_dice'] for r in evals], marker='o', ms=3, label='lesion Dice')
  ax_dice.plot(x, [r['val_normal_empty_rate'] for r in evals], ls='--',
               label='normal scans predicted empty')
  ax_dice.plot(x, [r['val_all_images_dice'] for r in evals], marker='s', ms=3,
               label='all-image Dice (chooses the checkpoint)')
  if evals:
    best = max(evals, key=lambda r: r['val_all_images_dice'])
    ax_dice.axvline(best['epoch'], color='gray', lw=0.8)
    ax_dice.annotate(f"best {best['val_all_images_dice']:.3f} (epoch {best['epoch']})",
                     (best['epoch'], best['val_all_images_dice']), textcoords='offset points',
                     xytext=(-40, -14), fontsize=8)
  ax_dice.set(xlabel='epoch', ylabel='original resolution', ylim=(0, 1),
              title='validation split')
  # Time to quality: minutes of training (cumulative epoch time) on a top axis.
  ends = np.array([0] + [r['epoch'] for r in epochs], dtype=float)
  minutes = np.cumsum([0] + [r['epoch_seconds'] for r in epochs]) / 60
  if len(ends) > 2:
    # Extended at the last epoch's pace, so ticks past the end do not pile up there.
    ends = np.append(ends, ends[-1] + 1e4)
    minutes = np.append(minutes, minutes[-1] + 1e4 * (minutes[-1] - minutes[-2]) /
                        (ends[-2] - ends[-3]))
    ax_dice.secondary_xaxis('top', functions=(
        lambda e: np.interp(e, ends, minutes), lambda m: np.interp(m, minutes, ends))
                            ).set_xlabel('minutes of training', fontsize=8)
  ax_dice.legend(fontsize=8, loc='lower right')
  for ax in (ax_loss, ax_dice):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def prediction_grid(samples, path: str, title: str = '') -> None:
  """Rows of image | ground truth | prediction, each at the image's original size.

  `samples` are (image uint8 HxW, truth HxW, prediction HxW, metrics.ImageScore) tuples.
  """
  if not samples:
    return
  fig = Figure(figsize=(7.5, 2.3 * len(samples) + 0.6))
  axes = fig.subplots(len(samples), 3, squeeze=False)
  for row, (image, truth, pred, score) in zip(axes, samples):
    dice = '' if np.isnan(score.dice) else f', Dice {score.dice:.2f}'
    _show(row[0], image, f'{score.image_id}{dice}')
    _show(row[1], image, 'ground truth')
    _contour(row[1], truth, _TRUTH_COLOR)
    _show(row[2], image, 'prediction')
    _contour(row[2], pred, _PRED_COLOR)
  if title:
    fig.suptitle(textwrap.fill(title, 120), fontsize=7)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # Room for the title.
  fig.savefig(path, dpi=90)
