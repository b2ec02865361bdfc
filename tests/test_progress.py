"""Progress bars through a pipe: a whole line every few seconds, not one per step."""
import io
import time

from unet_flax import progress

INTERVAL = 0.2  # Seconds; the real one is a few seconds.


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def _run(monkeypatch, stream, steps=40, step_seconds=0.02, **kwargs):
  monkeypatch.setattr(progress, 'PIPE_INTERVAL_SECONDS', INTERVAL)
  start = time.monotonic()
  with progress.progress_bar(total=steps, desc='train', file=stream, **kwargs) as bar:
    for step in range(steps):
      time.sleep(step_seconds)
      bar.update(1)
      bar.set_postfix(step=step, refresh=False)
  return time.monotonic() - start


def test_a_pipe_gets_a_whole_line_every_interval(monkeypatch):
  pipe = io.StringIO()
  seconds = _run(monkeypatch, pipe)
  text = pipe.getvalue()
  lines = text.splitlines()
  assert '\r' not in text and text.endswith('\n') and all(line.strip() for line in lines)
  # Redraws after the first interval, then at most one per interval, and the final line.
  assert 2 <= len(lines) <= seconds / INTERVAL + 1
  assert lines[-1].startswith('train: 100%') and '40/40' in lines[-1]


def test_a_short_loop_prints_nothing_through_a_pipe(monkeypatch):
  pipe = io.StringIO()
  _run(monkeypatch, pipe, steps=3, step_seconds=0.0, leave=False)
  assert pipe.getvalue() == ''


def test_a_terminal_keeps_tqdm_redrawing_in_place(monkeypatch):
  terminal = _Terminal()
  _run(monkeypatch, terminal, steps=3, step_seconds=0.0)
  assert terminal.getvalue().startswith('\r') and '3/3' in terminal.getvalue()
