"""The adaptation curve is read from the runs the script wrote, finished runs only."""
import json
import os

from PIL import Image

from benchmarks import adaptation_figure


def _summary(workdir, mean, low, high):
  path = os.path.join(workdir, 'eval', 'busbra', 'test')
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'lesion': {'dice': {'mean': mean, 'ci95': [low, high]}}}, f)
  return path


def _runs(tmp_path):
  runs = str(tmp_path)
  _summary(os.path.join(runs, 'base'), 0.62, 0.58, 0.66)
  for n, tuned, scratch in (('10', 0.75, 0.30), ('50', 0.80, 0.70)):
    for start, dice in (('finetuned', tuned), ('scratch', scratch)):
      _summary(os.path.join(runs, f'{start}_{n}'), dice, dice - 0.03, dice + 0.03)
      with open(os.path.join(runs, f'{start}_{n}.time'), 'w') as f:
        f.write('90.00 s\n' if start == 'finetuned' else '120.00 s\n')
    comparison = os.path.join(runs, f'finetuned_{n}', 'eval', 'busbra', 'test',
                              'comparison.json')
    with open(comparison, 'w') as f:
      json.dump({'dice': {'mean_difference': tuned - scratch,
                          'ci95': [tuned - scratch - 0.05, tuned - scratch + 0.05]}}, f)
  # n = 25 still training: its fine-tuned run finished, the scratch one has no test report.
  _summary(os.path.join(runs, 'finetuned_25'), 0.77, 0.74, 0.80)
  return runs


def test_finished_sizes_in_order_with_paired_difference_and_wall_minutes(tmp_path):
  rows = adaptation_figure.read_curve(_runs(tmp_path))

  assert [row['n'] for row in rows] == ['0', '10', '50']
  assert rows[0]['scratch'] is None and rows[0]['finetuned'] == (0.62, 0.58, 0.66)
  assert rows[1]['paired'][0] == 0.75 - 0.30
  assert rows[2]['finetuned_min'] == 1.5 and rows[2]['scratch_min'] == 2.0
  table = adaptation_figure.markdown(rows).splitlines()
  assert len(table) == 2 + 3
  assert table[3] == ('| 10 | 0.750 (0.720 .. 0.780) | 0.300 (0.270 .. 0.330) | '
                      '0.450 (0.400 .. 0.500) | 1.5 / 2.0 |')


def test_figure_is_written(tmp_path):
  path = str(tmp_path / 'curve.png')
  adaptation_figure.figure(adaptation_figure.read_curve(_runs(tmp_path / 'runs')), path)

  assert Image.open(path).size == (768, 480)
