"""Test-session setup: no test sees the user's home, and one JAX compilation cache serves all.

Home: a dataset the user built into ~/tensorflow_datasets, or a ~/busi download, must not
change a result (with them, main.py given a missing manual dir found the user's BUSI build
and trained for minutes instead of stopping), and no test may write there. So HOME and
TFDS_DATA_DIR point at temporary folders, which also covers the configs' '~/...' defaults
and the subprocesses the tests start (they inherit the environment). They are set here, at
import, before any test module imports TFDS (which reads its default folder once) and
before module-scoped fixtures run main.py; then each test gets a fresh pair of its own.
Caches (matplotlib's fonts, ...) go to one folder per session; the XDG config and data
folders follow HOME.

JAX: many tests compile the same small U-Nets, in-process and in the `main.py` subprocesses
they start. Reusing the compiled programs took test_main.py + test_reliability.py from 169 s
to 139 s on 2 cores. The cache is a new temporary directory per session, so no run reads
programs another one wrote; a cache dir the user set is kept.

TensorFlow: tests run tf.data and JAX in one process. As main.py does before its first op,
TensorFlow is kept off the GPUs (it would reserve most of their memory at its first op, which
JAX then lacks); JAX keeps them.

The checkout: no test may write into the repository. The session fails when `git status`
shows an entry at its end that it did not show at its start (tests/checkout_state.py).
"""
import atexit
import os
import shutil
import tempfile

import pytest

import checkout_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Taken before any test runs: what the developer's checkout already shows.
_CHECKOUT_AT_START = checkout_state.snapshot(ROOT)

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix='busi-unet-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

# The home the suite was started from: what no test may see.
_USER_HOME = os.path.expanduser('~')
_SESSION_DIR = tempfile.mkdtemp(prefix='busi-unet-tests-')
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)


def _home_environ(home: str) -> dict[str, str]:
  return {'HOME': home, 'TFDS_DATA_DIR': os.path.join(home, 'tensorflow_datasets')}


for _name in ('XDG_CONFIG_HOME', 'XDG_DATA_HOME'):
  os.environ.pop(_name, None)
os.environ['XDG_CACHE_HOME'] = os.path.join(_SESSION_DIR, 'cache')
os.environ.update(_home_environ(os.path.join(_SESSION_DIR, 'home')))
os.makedirs(os.environ['HOME'])

# TensorFlow off the GPUs, as main.py keeps it: before any test module runs a TF op, which
# would start its runtime with every GPU it sees.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

tf.config.set_visible_devices([], 'GPU')


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory, monkeypatch):
  """A fresh HOME and TFDS folder per test: no test sees what another one built there."""
  for name, value in _home_environ(str(tmp_path_factory.mktemp('home'))).items():
    monkeypatch.setenv(name, value)


@pytest.fixture
def user_home() -> str:
  """The home the suite was started from (for the tests that prove it stays unseen)."""
  return _USER_HOME


def pytest_sessionfinish(session):
  """Fails the session when the tests left a file in the checkout (created, modified or
  deleted one) that `git status` did not show at the start."""
  written = checkout_state.new_entries(_CHECKOUT_AT_START, checkout_state.snapshot(ROOT))
  if not written:
    return
  reporter = session.config.pluginmanager.get_plugin('terminalreporter')
  if reporter is not None:
    reporter.ensure_newline()
    reporter.section('tests wrote into the checkout', sep='!', red=True, bold=True)
    reporter.write_line(f'FAILED: git status of {ROOT} shows what it did not at the start of '
                        'the session (write under tmp_path instead):', red=True)
    for entry in written:
      reporter.write_line(f'  {entry}', red=True)
  session.exitstatus = pytest.ExitCode.TESTS_FAILED
