"""Every mistake in a main.py command line ends in one FATAL line with exit status 2.

Each case runs main.py as a user would; none needs data or a trained model, and the checks
come before TensorFlow (and, without a workdir, before JAX) is imported, so each takes a
fraction of a second to about three. A download folder that holds no data, or other data than
its build, shows only when the data are loaded, a few seconds later: its FATAL line (exit
status 1) names the flags that set them in that mode.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import synthetic
from unet_flax import checkpointing
from unet_flax import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ['--config=configs/synthetic.py', '--workdir={tmp}/run']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir as training leaves it before the first checkpoint: config.json only."""
  path = str(tmp_path_factory.mktemp('workdir'))
  checkpointing.save_config(synthetic.get_config(), path)
  return path


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
  """A workdir whose best checkpoint is an untrained model of BUS-BRA + BUS-UCLM, neither of
  them downloaded here: evaluate and gradcam load the model, then miss the data."""
  path = str(tmp_path_factory.mktemp('mixed'))
  config = synthetic.get_config()
  config.data.source = 'busbra+bus_uclm'
  checkpointing.save_config(config, path)
  variables = model_lib.init_variables(model_lib.create_model(config.model), 0,
                                       config.data.image_size)
  checkpoints = checkpointing.Checkpoints(path, keep=1)
  checkpoints.save_best(1, variables, {'epoch': 1, 'step': 1, 'val_all_images_dice': 0.5})
  checkpoints.close()
  return path


def _main(args, tmp_path, workdir, **places):
  args = [arg.format(tmp=tmp_path, workdir=workdir, **places) for arg in args]
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


CASES = [
    (['--mode=segment'],
     'FATAL flag --mode=segment: value should be one of '
     '<train|evaluate|predict|gradcam|release|export|benchmark>'),
    (['--workdr=x'], "FATAL Unknown command line flag 'workdr'. Did you mean: workdir ?"),
    (['--workdir=x', '--config.train.num_epochs=3'],
     "FATAL Unknown command line flag 'config.train.num_epochs' (--config.* overrides need a "
     '--config=configs/<name>.py)'),
    ([*TRAIN, '--config.train.num_epochs=abc'],
     "FATAL flag --config.train.num_epochs=abc: invalid literal for int() with base 10: 'abc'"),
    ([*TRAIN, '--config.train.batchsize=4'],
     "FATAL Unknown config field in --config.train.batchsize=4: 'batchsize' Did you mean "
     '"batch_size" instead of "batchsize"? Every field is listed in configs/default.py.'),
    (['--config=configs/no_such.py', '--workdir=x'],
     'FATAL Cannot load --config=configs/no_such.py (no such file). Shipped configs: '),
    ([*TRAIN, '--config.data.source=bussi'],
     "FATAL config.data.source='bussi': expected one or more of busi, busbra, bus_uclm, folder, "
     'synthetic, joined by "+", each once.'),
    ([*TRAIN, '--config.data.source=synthetic', '--config.data.mix_weights=busi=1'],
     "FATAL config.data.mix_weights='busi=1' must give a positive weight to each of "
     'synthetic (e.g. "synthetic=1").'),
    ([*TRAIN, '--config.data.image_size=-5'],
     'FATAL config.data.image_size=-5 must be a positive multiple of 2**model.depth = 8 '
     '(e.g. 8).'),
    ([*TRAIN, '--config.data.image_size=0'],
     'FATAL config.data.image_size=0 must be a positive multiple of 2**model.depth = 8'),
    ([*TRAIN, '--config.data.image_size=-32'],
     'FATAL config.data.image_size=-32 must be a positive multiple of 2**model.depth = 8'),
    ([*TRAIN, '--config.data.image_size=60'],
     'FATAL config.data.image_size=60 must be a positive multiple of 2**model.depth = 8 '
     '(e.g. 64).'),
    ([*TRAIN, '--config.train.learning_rate=-1'],
     'FATAL config.train.learning_rate=-1.0 must be > 0.'),
    ([*TRAIN, '--config.train.learning_rate=nan'],
     'FATAL config.train.learning_rate=nan must be > 0.'),
    ([*TRAIN, '--config.train.num_epochs=0'],
     'FATAL config.train.num_epochs=0 must be an integer >= 1.'),
    ([*TRAIN, '--config.train.ema_decay=1.0'],
     'FATAL config.train.ema_decay=1.0 must be in [0, 1).'),
    ([*TRAIN, '--config.model.dropout=-0.1'],
     'FATAL config.model.dropout=-0.1 must be in [0, 1).'),
    ([*TRAIN, '--config.model.norm=layer'],
     "FATAL config.model.norm='layer' must be one of batch, group, none."),
    ([*TRAIN, '--config.eval.threshold_candidates=(0.5,1.0)'],
     'FATAL config.eval.threshold_candidates=(0.5, 1.0) must each be in (0, 1).'),
    ([*TRAIN, 'extra'], "FATAL Unexpected arguments ['extra']: every option is a --flag=value."),
    (['--mode=train'], 'FATAL --workdir is required for --mode=train.'),
    (['--mode=benchmark'], 'FATAL --config is required for --mode=benchmark'),
    (['--mode=predict', '--workdir={workdir}', '--input=x'],
     'FATAL --mode=predict needs --input (files, folders or globs) and --output (a folder).'),
    (['--mode=predict', '--workdir={workdir}', '--input=x', '--output=y', '--threshold=1'],
     'FATAL --threshold=1.0 must be in (0, 1).'),
    (['--mode=gradcam', '--workdir={workdir}', '--threshold=0'],
     'FATAL --threshold=0.0 must be in (0, 1).'),
    (['--mode=gradcam', '--workdir={workdir}', '--max_images=-1'],
     'FATAL flag --max_images=-1: -1 is not a non-negative integer'),
    (['--mode=evaluate', '--workdir={workdir}', '--dataset=bussi'],
     'FATAL flag --dataset=bussi: value should be one of <busi|busbra|bus_uclm|folder|synthetic'),
    (['--mode=evaluate', '--workdir={workdir}', '--split=tset'],
     "FATAL --split='tset': expected split names (train, validation, test) joined by \"+\", "
     'each optionally sliced, e.g. "test[:50%]" or "train+validation".'),
    # Checked against the workdir's model and datasets, before any data or checkpoint is read.
    (['--mode=gradcam', '--workdir={workdir}', '--layers=decoder_1,decoder_9'],
     'FATAL --layers=decoder_1,decoder_9: this model (depth 3) has no decoder_9; its layers '
     'are encoder_0, encoder_1, encoder_2, bottleneck, decoder_2, decoder_1, decoder_0.'),
    (['--mode=evaluate', '--workdir={workdir}', '--split=test[:50%]'],
     "FATAL --split='test[:50%]': expected split names (train, validation, test) joined by "
     '"+", e.g. "train+validation" (the synthetic dataset has no slices).'),
    # --manual_dir is a copy of the one dataset read; the release model reads three.
    (['--mode=evaluate', '--manual_dir={tmp}/busbra'],
     'FATAL --manual_dir={tmp}/busbra is a copy of one dataset, but --mode=evaluate reads '
     'busi+busbra+bus_uclm here: name the one it holds, '
     '--dataset=<busi|busbra|bus_uclm|folder>.'),
    (['--mode=gradcam', '--workdir={workdir}', '--manual_dir={tmp}/scans'],
     'FATAL --manual_dir={tmp}/scans is a copy of one dataset, but the synthetic dataset is '
     'generated, not read from files: name the one it holds, '
     '--dataset=<busi|busbra|bus_uclm|folder>.'),
]


@pytest.mark.parametrize('args, fatal', CASES, ids=[
    ' '.join(args).replace('{tmp}/', '').replace('{workdir}', 'W') for args, _ in CASES])
def test_mistake_ends_in_one_fatal_line_with_status_2(args, fatal, tmp_path, workdir):
  result = _main(args, tmp_path, workdir)
  assert (result.returncode, result.stdout) == (2, ''), result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(fatal.format(tmp=tmp_path)), (
      result.stderr[-2000:])
  assert not (tmp_path / 'run').exists()  # Nothing was written.


def _not_built(name: str, download: str, reason: str) -> str:
  return (f'{name} is not built in the TFDS data dir {{tfds}} ({{tfds_flag}}), and {download} '
          f'cannot build it (set {{flag}}): {reason}')


def _no_folder(name: str, download: str) -> str:
  return _not_built(name, download, f'The manual dir {download} does not exist; it must be the '
                    f'folder holding the images of {name!r}.')


_NO_BUSI = _not_built('busi', '{home}/busi', 'No BUSI dataset found in the manual dir '
                      '{home}/busi.')
_NO_BUSBRA = _no_folder('busbra', '{home}/busbra/BUSBRA')
_NO_BUS_UCLM = _no_folder('bus_uclm', '{home}/bus_uclm/BUS-UCLM')
_NO_FOLDER = 'The folder dataset has no folder: {flag}=<your images and masks>.'
_CONFIG_TFDS = '--config.data.tfds_data_dir'
_EVALUATE = ['--mode=evaluate', '--workdir={mixed}']
# (arguments, FATAL line or its start, the flag that sets the download, the TFDS data dir's).
MISSING_DOWNLOADS = [
    # Train: every setting is a config field.
    ([*TRAIN, '--config.data.source=busbra', '--config.data.busbra_dir={tmp}/no_busbra'],
     _no_folder('busbra', '{tmp}/no_busbra'), '--config.data.busbra_dir', _CONFIG_TFDS),
    ([*TRAIN, '--config.data.source=bus_uclm'], _NO_BUS_UCLM,
     '--config.data.bus_uclm_dir', _CONFIG_TFDS),
    ([*TRAIN, '--config.data.source=busi'], _NO_BUSI, '--config.data.manual_dir', _CONFIG_TFDS),
    ([*TRAIN, '--config.data.source=folder'], _NO_FOLDER, '--config.data.folder.dir', None),
    # Evaluate and gradcam take the copy of the one dataset they read from --manual_dir (here
    # for the repository's release model, built under its report folder).
    (['--mode=evaluate', '--dataset=busbra', '--manual_dir={tmp}/no_busbra',
      '--output={tmp}/reports'], _no_folder('busbra', '{tmp}/no_busbra').replace(
          '{tfds}', '{tmp}/reports/eval/tfds'), '--manual_dir', '--tfds_data_dir'),
    ([*_EVALUATE, '--dataset=bus_uclm'], _NO_BUS_UCLM, '--manual_dir', '--tfds_data_dir'),
    ([*_EVALUATE, '--dataset=folder'], _NO_FOLDER, '--manual_dir', None),
    (['--mode=gradcam', '--workdir={mixed}'], _NO_BUSBRA, '--manual_dir', '--tfds_data_dir'),
    # Evaluating each dataset of a model: the first missing one is named with its dataset.
    (_EVALUATE, _NO_BUSBRA, '--dataset=busbra --manual_dir', '--tfds_data_dir'),
    (['--mode=evaluate', '--output={tmp}/reports'], _NO_BUSI, '--dataset=busi --manual_dir',
     '--tfds_data_dir'),
    ([*_EVALUATE, '--config=configs/synthetic.py', '--config.data.source=busbra+bus_uclm'],
     _NO_BUSBRA, '--config.data.busbra_dir', '--tfds_data_dir'),
]


@pytest.mark.parametrize('args, fatal, flag, tfds_flag', MISSING_DOWNLOADS, ids=[
    ' '.join(args).replace('{tmp}/', '') for args, *_ in MISSING_DOWNLOADS])
def test_missing_download_names_the_flag_that_sets_it(args, fatal, flag, tfds_flag, tmp_path,
                                                      workdir, mixed):
  """The data layer names the config fields; main.py the flags that set them in this mode."""
  result = _main(args, tmp_path, workdir, mixed=mixed)
  lines = [line for line in result.stderr.splitlines() if line.startswith('FATAL ')]
  assert (result.returncode, result.stdout, len(lines)) == (1, '', 1), result.stderr[-2000:]
  fatal = fatal.format(tmp=tmp_path, home=os.environ['HOME'], flag=flag, tfds_flag=tfds_flag,
                       tfds=os.environ['TFDS_DATA_DIR'])
  assert lines[0].startswith(f'FATAL {fatal}'), lines[0]
  if '--mode=evaluate' not in args and '--mode=gradcam' not in args:
    assert '--manual_dir' not in result.stderr  # A flag of evaluate and gradcam only.
  assert not os.listdir(tmp_path)  # Nothing was written: no run, no report, no build.


def test_a_stale_build_names_the_flags_that_set_the_copy_and_its_build(tmp_path, workdir,
                                                                        mixed):
  """A build of one copy of a folder dataset, evaluated with --manual_dir at another copy."""
  from data import input_pipeline  # pylint: disable=g-import-not-at-top  # TensorFlow.
  from test_datasets_end_to_end import _write_folder_dataset  # pylint: disable=g-import-not-at-top
  built = _write_folder_dataset(str(tmp_path / 'scans'), num=9)
  config = synthetic.get_config().data  # The folder options of `mixed`'s config.
  config.source, config.folder.dir, config.tfds_data_dir = 'folder', built, str(tmp_path / 'tfds')
  input_pipeline.load_split(config, 'test')
  copy = str(shutil.copytree(built, tmp_path / 'copy'))
  shutil.copy(tmp_path / 'copy' / 'scan_0.png', tmp_path / 'copy' / 'scan_9.png')
  shutil.copy(tmp_path / 'copy' / 'scan_0_mask.png', tmp_path / 'copy' / 'scan_9_mask.png')
  result = _main(['--mode=evaluate', '--workdir={mixed}', '--dataset=folder',
                  f'--manual_dir={copy}', '--tfds_data_dir={tmp}/tfds'], tmp_path, workdir,
                 mixed=mixed)
  lines = [line for line in result.stderr.splitlines() if line.startswith('FATAL ')]
  assert (result.returncode, result.stdout, len(lines)) == (1, '', 1), result.stderr[-2000:]
  assert lines[0].startswith(f'FATAL The dataset build {tmp_path}/tfds/seg_folder/'), lines[0]
  assert lines[0].endswith(
      f'was made from {built} (18 files), but {copy} (20 files) differs in its files or reading '
      'options. To use it, give it its own --tfds_data_dir or delete the build to rebuild it; '
      f'to use the build, set --manual_dir={built}.'), lines[0]


def test_help_exits_0_and_shows_the_usage(tmp_path, workdir):
  result = _main(['--help'], tmp_path, workdir)
  assert result.returncode == 0 and result.stderr == ''
  assert 'busi-unet command line' in result.stdout and '--threshold' in result.stdout


def test_command_line_flags_are_defined_in_main_only():
  """absl flags live in one registry: a second module that defines one (a benchmark, say)
  breaks every process that imports it beside main.py with a DuplicateFlagError."""
  offenders = [str(path.relative_to(ROOT))
               for package in ('configs', 'unet_flax', 'data', 'benchmarks')
               for path in sorted(pathlib.Path(ROOT, package).rglob('*.py'))
               if 'flags.DEFINE_' in path.read_text(encoding='utf-8')]
  assert not offenders, f'absl flags defined outside main.py: {offenders}'
