"""Progress bars that stay readable when no terminal shows them.

In a terminal tqdm redraws one line in place. Through a pipe (the Colab notebook streams
main.py's output) or into a log file every redraw is a line of its own, one per training
step. There these bars print a whole line at most every PIPE_INTERVAL_SECONDS, and nothing
for a loop that ends sooner.
"""
import sys

from tqdm import tqdm

PIPE_INTERVAL_SECONDS = 5.0


class _WholeLines:
  """A stream that prints tqdm's carriage-return redraws as whole lines: a log line can then
  not end up glued to a half-drawn bar, and the blank redraws that clear a bar are dropped."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    for line in text.replace('\r', '\n').split('\n'):
      if line.strip():
        self._stream.write(line.rstrip() + '\n')

  def __getattr__(self, name):  # flush, encoding, isatty.
    return getattr(self._stream, name)


def progress_bar(iterable=None, **tqdm_kwargs) -> tqdm:
  """`tqdm(iterable, **tqdm_kwargs)`, drawn at most every PIPE_INTERVAL_SECONDS when its
  stream is not a terminal. Call `set_postfix(..., refresh=False)`: by default it redraws on
  every call, whatever the interval."""
  stream = tqdm_kwargs.get('file') or sys.stderr
  if not stream.isatty():
    tqdm_kwargs = {'mininterval': PIPE_INTERVAL_SECONDS, 'delay': PIPE_INTERVAL_SECONDS,
                   **tqdm_kwargs, 'file': _WholeLines(stream)}
  return tqdm(iterable, **tqdm_kwargs)
