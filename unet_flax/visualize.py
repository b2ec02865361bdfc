"""Figures written to PNG files: overlays of predictions and Grad-CAM maps on the scan.

Built on `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so they work headless,
in threads, and leak no open figures. The ground truth, when known, is always the same green
contour; the prediction is red.
"""
from collections.abc import Mapping, Sequence
import json
import textwrap

from matplotlib.figure import Figure
import numpy as np

_TRUTH_COLOR = 'lime'
_PRED_COLOR = 'red'
_CAM_ALPHA = 0.5


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


def overlay_figure(image: np.ndarray, pred_mask: np.ndarray, cam: np.ndarray, path: str, *,
                   gt_mask: np.ndarray | None = None, title: str = '') -> None:
  """Image | prediction (red tint and contour) | Grad-CAM heat map, all at one size.

  `image` is uint8 (H, W); masks are binary (H, W); `cam` is float (H, W) in [0, 1]. The
  ground truth, if given, is drawn as a green contour on every panel.
  """
  fig = Figure(figsize=(10.5, 3.8), layout='constrained')
  axes = fig.subplots(1, 3)
  _show(axes[0], image, 'image' + (' (green: truth)' if gt_mask is not None else ''))
  _contour(axes[0], gt_mask, _TRUTH_COLOR)
  _show(axes[1], image, f'prediction: {int(np.count_nonzero(pred_mask))} px')
  tint = np.zeros((*pred_mask.shape, 4), np.float32)
  tint[np.asarray(pred_mask, bool)] = (1.0, 0.0, 0.0, 0.3)
  axes[1].imshow(tint, interpolation='nearest')
  _contour(axes[1], pred_mask, _PRED_COLOR)
  _contour(axes[1], gt_mask, _TRUTH_COLOR)
  heat = _show_cam(axes[2], image, cam, gt_mask, 'Seg-Grad-CAM')
  fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.02)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=100)


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
