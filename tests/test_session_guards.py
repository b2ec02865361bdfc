"""The test session's own guards (conftest.py): TensorFlow kept off the GPUs, and a session
that wrote into the checkout fails."""
import subprocess
import sys

import pytest
import tensorflow as tf

import checkout_state


def _git(folder, *args):
  subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@example.com', *args],
                 cwd=folder, check=True, capture_output=True)


def test_the_checkout_check_names_what_the_session_wrote_not_what_was_there(tmp_path,
                                                                            tmp_path_factory):
  _git(tmp_path, 'init', '-q')
  for name in ('edited.txt', 'tracked.txt', 'removed.txt', '.gitignore'):
    (tmp_path / name).write_text('runs/\n' if name == '.gitignore' else name)
  _git(tmp_path, 'add', '.')
  _git(tmp_path, 'commit', '-q', '-m', 'start')
  # The developer's uncommitted work: no test's doing.
  (tmp_path / 'edited.txt').write_text('edited by the developer')
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'todo.txt').write_text('mine')
  before = checkout_state.snapshot(str(tmp_path))
  assert before == {' M edited.txt', '?? notes/todo.txt'}

  # What tests then write: a new file (also beside the developer's untracked one), an edit
  # of a clean tracked file, a deletion; under an ignored folder is not the checkout's.
  (tmp_path / 'notes' / 'report.json').write_text('{}')
  (tmp_path / 'out.png').write_bytes(b'png')
  (tmp_path / 'tracked.txt').write_text('rewritten')
  (tmp_path / 'removed.txt').unlink()
  (tmp_path / 'runs').mkdir()
  (tmp_path / 'runs' / 'eval.json').write_text('{}')
  assert checkout_state.new_entries(before, checkout_state.snapshot(str(tmp_path))) == [
      ' D removed.txt', ' M tracked.txt', '?? notes/report.json', '?? out.png']
  # Outside a repository there is nothing to check.
  assert checkout_state.snapshot(str(tmp_path_factory.mktemp('not_a_repository'))) is None
  assert checkout_state.new_entries(None, frozenset({'?? x'})) == []


class _Session:
  class config:  # pylint: disable=invalid-name
    class pluginmanager:  # pylint: disable=invalid-name
      @staticmethod
      def get_plugin(name):
        del name
        return None

  exitstatus = pytest.ExitCode.OK


def test_the_session_fails_when_the_checkout_shows_a_new_entry(monkeypatch):
  conftest = sys.modules['conftest']
  at_start = frozenset({' M a_developers_edit.py'})
  monkeypatch.setattr(conftest, '_CHECKOUT_AT_START', at_start)
  monkeypatch.setattr(checkout_state, 'snapshot', lambda root: at_start)
  session = _Session()
  conftest.pytest_sessionfinish(session)
  assert session.exitstatus == pytest.ExitCode.OK
  monkeypatch.setattr(checkout_state, 'snapshot',
                      lambda root: at_start | {'?? tests/written_by_a_test.png'})
  conftest.pytest_sessionfinish(session)
  assert session.exitstatus == pytest.ExitCode.TESTS_FAILED


def test_tensorflow_sees_no_gpu():
  """On a GPU machine: TensorFlow, which only feeds tf.data, has none of them (JAX has)."""
  if not tf.config.list_physical_devices('GPU'):
    pytest.skip('no GPU on this machine: nothing to hide from TensorFlow')
  assert tf.config.get_visible_devices('GPU') == []
