r"""The adaptation curve of `benchmarks/adaptation_curve.sh` as a figure and a Markdown table.

Reads what the script's runs wrote (each workdir's BUS-BRA test `summary.json`, the paired
`comparison.json` of fine-tuned against scratch, and the `<workdir>.time` wall times) and
draws BUS-BRA test lesion Dice against the number of BUS-BRA training patients, fine-tuned
from the base model and trained from scratch, with their 95 % bootstrap intervals. Runs not
finished yet are left out, so the curve can be drawn while the script still runs:

  python -m benchmarks.adaptation_figure --runs runs/adaptation \
      --output docs/figures/adaptation_curve.png
"""
import argparse
import json
import os
import sys

from matplotlib.figure import Figure

_SIZES = ('10', '25', '50', '100', 'all')
_TEST = os.path.join('eval', 'busbra', 'test')


def _json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _minutes(workdir: str) -> float | None:
  """Wall minutes of a finished run (the script's `<workdir>.time`, '<seconds> s')."""
  path = workdir + '.time'
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return float(f.read().split()[0]) / 60


def _dice(summary) -> tuple[float, float, float]:
  dice = summary['lesion']['dice']
  return dice['mean'], *dice['ci95']


def read_curve(runs: str) -> list[dict]:
  """One row per finished n: its Dice (mean, low, high) per start, the paired difference
  and the wall minutes. n = 0 is the base model, evaluated on BUS-BRA without training."""
  rows = []
  base = _json(os.path.join(runs, 'base', _TEST, 'summary.json'))
  if base:
    rows.append({'n': '0', 'finetuned': _dice(base), 'scratch': None, 'paired': None,
                 'finetuned_min': None, 'scratch_min': None})
  for n in _SIZES:
    finetuned, scratch = (os.path.join(runs, f'{start}_{n}') for start in ('finetuned', 'scratch'))
    summaries = [_json(os.path.join(w, _TEST, 'summary.json')) for w in (finetuned, scratch)]
    comparison = _json(os.path.join(finetuned, _TEST, 'comparison.json'))
    if not all(summaries) or comparison is None:
      continue
    paired = comparison['dice']
    rows.append({'n': n, 'finetuned': _dice(summaries[0]), 'scratch': _dice(summaries[1]),
                 'paired': (paired['mean_difference'], *paired['ci95']),
                 'finetuned_min': _minutes(finetuned), 'scratch_min': _minutes(scratch)})
  return rows


def _interval(values) -> str:
  return '-' if values is None else f'{values[0]:.3f} ({values[1]:.3f} .. {values[2]:.3f})'


def _wall(minutes) -> str:
  return '-' if minutes is None else f'{minutes:.1f}'


def markdown(rows: list[dict]) -> str:
  lines = ['| BUS-BRA training patients | fine-tuned Dice (95 % CI) | from scratch | '
           'paired fine-tuned - scratch | wall min (fine-tuned / scratch) |',
           '| --- | --- | --- | --- | --- |']
  for row in rows:
    lines.append(f"| {row['n']} | {_interval(row['finetuned'])} | {_interval(row['scratch'])} | "
                 f"{_interval(row['paired'])} | {_wall(row['finetuned_min'])} / "
                 f"{_wall(row['scratch_min'])} |")
  return '\n'.join(lines)


def figure(rows: list[dict], path: str) -> None:
  fig = Figure(figsize=(6.4, 4.0), dpi=120)
  ax = fig.add_subplot()
  positions = range(len(rows))
  for key, label, color, shift in (('finetuned', 'fine-tuned from BUSI + BUS-UCLM', 'tab:blue',
                                    -0.06),
                                   ('scratch', 'from scratch, same recipe', 'tab:orange', 0.06)):
    points = [(x + shift, row[key]) for x, row in zip(positions, rows) if row[key]]
    if not points:
      continue
    xs = [x for x, _ in points]
    means = [v[0] for _, v in points]
    errors = [[v[0] - v[1] for _, v in points], [v[2] - v[0] for _, v in points]]
    ax.errorbar(xs, means, yerr=errors, marker='o', capsize=3, color=color, label=label)
  ax.set_xticks(list(positions), [row['n'] for row in rows])
  ax.set_xlabel('BUS-BRA training patients (0: the base model as it is)')
  ax.set_ylabel('BUS-BRA test lesion Dice (95 % CI)')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(loc='upper left')  # the corner no curve reaches: n = 0 is the base model alone
  ax.set_title('Adapting to a new hospital: fine-tuning vs training from scratch', fontsize=10)
  fig.tight_layout()
  fig.savefig(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', default='runs/adaptation',
                      help='RUNS folder of adaptation_curve.sh.')
  parser.add_argument('--output', default='docs/figures/adaptation_curve.png', help='Figure path.')
  args = parser.parse_args()
  rows = read_curve(args.runs)
  if not rows:
    sys.exit(f'no finished run under {args.runs}')
  figure(rows, args.output)
  print(markdown(rows))
  print(f'figure: {args.output}')


if __name__ == '__main__':
  main()
