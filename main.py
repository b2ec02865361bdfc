"""busi-unet command line: train, evaluate, predict, gradcam, release, export, benchmark.

  python main.py --config=configs/cpu.py --workdir=runs/cpu             # train (+ test once)
  python main.py --mode=evaluate --workdir=runs/cpu --split=test         # best checkpoint
  python main.py --mode=predict --workdir=runs/cpu --input=scans/ --output=out/
  python main.py --mode=gradcam --workdir=runs/cpu --split=test --output=cams/
  python main.py --mode=release --workdir=runs/cpu --output=models/my-unet  # release folder
  python main.py --mode=benchmark --config=configs/cpu.py
  python main.py --mode=export --workdir=runs/cpu --output=exported/       # ONNX, SavedModel

Any config field can be overridden, e.g. `--config.train.num_epochs=5`. Modes that read a
workdir take its saved config.json unless --config is given. Without --workdir, evaluate,
predict and gradcam use the release model folder --model (default: the repository's
models/busi-unet), e.g. `python main.py --mode=predict --input=scans/ --output=out/`.
"""
import logging as std_logging
import os
import sys

# TensorFlow's C++ start-up notices (oneDNN, CPU features) say nothing a user can act on.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs
from data import names
from unet_flax import config_checks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, logs, figures.')
flags.DEFINE_string('model', None, 'evaluate/predict/gradcam/export without --workdir: a '
                    'release model folder (written by --mode=release); default: the '
                    'repository\'s models/busi-unet.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'evaluate', 'predict', 'gradcam', 'release', 'export', 'benchmark'],
                  'What to do.')
flags.DEFINE_string('split', 'test', 'evaluate/gradcam: TFDS split expression, e.g. '
                    '"train+validation+test".')
flags.DEFINE_enum('dataset', None, list(names.SOURCES),
                  'evaluate/gradcam: the dataset to score the model on (default: each one it '
                  'was trained on), e.g. a BUSI model on BUS-BRA.')
flags.DEFINE_string('manual_dir', None, 'evaluate/gradcam: another copy (folder or zip) of '
                    'the one dataset they read (--dataset), instead of the one in the config.')
flags.DEFINE_string('tfds_data_dir', None, 'evaluate/gradcam: where the data are built '
                    '(default: the config\'s; <workdir>/eval/tfds when --manual_dir is '
                    'given).')
flags.DEFINE_string('compare_to', None, 'evaluate: another workdir whose model is scored on '
                    'the same images; prints and saves the paired per-image differences.')
flags.DEFINE_list('input', [], 'predict: image files, folders or globs.')
flags.DEFINE_string('output', None, 'predict/gradcam/release/export: output folder. evaluate '
                    'of a release model: the folder its reports go under, as under a workdir '
                    '(default: runs/<model folder name>; gradcam\'s default is its '
                    '/gradcam).')
flags.DEFINE_enum('backend', 'jax', ['auto', 'jax', 'onnxruntime'],
                  'evaluate, predict --cams=false: what runs the network. onnxruntime (pip '
                  'install -r requirements-export.txt) is faster on a CPU, same probabilities '
                  'to 1e-4; auto: onnxruntime when installed and JAX would run on the CPU.')
flags.DEFINE_boolean('cams', True, 'predict: Seg-Grad-CAM maps (X_cam.npy); false skips the '
                     'Grad-CAM pass and writes masks and predictions.csv only (no overlays: '
                     'they show the CAM).')
flags.DEFINE_boolean('overlays', True, 'predict: overlay figures (X_overlay.png), the slowest '
                     'output to draw.')
flags.DEFINE_float('threshold', None, 'predict, evaluate, gradcam: lesion probability '
                   'threshold, 0 < t < 1, instead of the one chosen on validation with the '
                   'model (lower marks more; Grad-CAM explains the mask it gives).')
flags.DEFINE_boolean('probabilities', False, 'predict: also write X_probability.png, the '
                     'lesion probability of each pixel at the original size as a 16-bit '
                     'grayscale PNG: probability = value / 65535.')
# decoder_1 points at the lesion far more often than a coarse bottleneck (README, Grad-CAM).
flags.DEFINE_list('layers', ['decoder_1'], 'gradcam: layers to compare (first one is used '
                  'by predict), e.g. "encoder_3,bottleneck,decoder_1".')
flags.DEFINE_integer('max_images', 16, 'gradcam: images to draw.', lower_bound=0)


def _model_dir():
  """The workdir or release model folder that evaluate, predict and gradcam read."""
  from unet_flax import release
  return FLAGS.workdir or FLAGS.model or release.default_model()


def _report_root(model_dir):
  """Where evaluate and gradcam write reports: the workdir, else (a release model)
  --output or runs/<model folder name>."""
  if FLAGS.workdir:
    return FLAGS.workdir
  return FLAGS.output or os.path.join('runs', os.path.basename(os.path.normpath(model_dir)))


def _saved_config(model_dir):
  """The --config if given, else the workdir's (or release folder's) saved one."""
  from unet_flax import checkpointing
  return FLAGS.config or checkpointing.load_config(model_dir)


def _datasets_read(config) -> tuple[str, ...]:
  """What evaluate and gradcam read: --dataset, else each dataset the model was trained on
  (evaluate) or the first one (gradcam)."""
  if FLAGS.dataset:
    return (FLAGS.dataset,)
  datasets = names.sources(config.data)
  return datasets if FLAGS.mode == 'evaluate' else datasets[:1]


def _workdir_config(model_dir, report_root):
  """`_saved_config` with the data flags: --manual_dir holds the one dataset read, built
  under --tfds_data_dir (default with --manual_dir: `report_root`/eval/tfds)."""
  config = _saved_config(model_dir)
  with config.unlocked():
    if FLAGS.manual_dir:
      (dataset,) = _datasets_read(config)  # Several: refused by _check_against_model.
      config.data.update_from_flattened_dict({names.DOWNLOAD_FIELDS[dataset]: FLAGS.manual_dir})
      config.data.tfds_data_dir = os.path.join(report_root, 'eval', 'tfds')
    if FLAGS.tfds_data_dir:
      config.data.tfds_data_dir = FLAGS.tfds_data_dir
  return config


def _evaluate():
  """--mode=evaluate, and with --compare_to the paired comparison on the same images."""
  from unet_flax import compare, evaluate, release
  model_dir = _model_dir()
  root = _report_root(model_dir)
  config = _workdir_config(model_dir, root)
  summaries = evaluate.evaluate_workdir(model_dir, config, FLAGS.split, FLAGS.dataset, root,
                                        FLAGS.backend, FLAGS.threshold)
  if not FLAGS.compare_to:
    return
  # The other model reads the very same data (folders, builds, folder dataset's naming), at
  # its own input size; its protocol still names what it was trained on.
  other = _saved_config(FLAGS.compare_to)
  with other.unlocked():
    own = {'image_size': other.data.image_size, 'source': other.data.source}
    other.data = config.data.copy_and_resolve_references()
    other.data.update(own)
  # A workdir keeps its own reports; a release model folder stays as shipped.
  other_root = (os.path.join(root, 'compared', os.path.basename(os.path.normpath(
      FLAGS.compare_to))) if release.is_release(FLAGS.compare_to) else FLAGS.compare_to)
  for dataset in summaries:
    evaluate.evaluate_workdir(FLAGS.compare_to, other, FLAGS.split, dataset, other_root,
                              backend=FLAGS.backend)
    print(compare.write_comparison(
        evaluate.split_dir(evaluate.report_dir(root, config, dataset), FLAGS.split),
        evaluate.split_dir(evaluate.report_dir(other_root, config, dataset), FLAGS.split),
        model_dir, FLAGS.compare_to))


def _usage_error(message) -> None:
  """Ends a run whose command line or config is wrong: one line, exit status 2."""
  print(f'FATAL {message}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, but every mistake (an unknown flag or config field, a value of the wrong
  kind, a --config file that cannot be loaded) is one line, and --help is no failure."""
  try:
    argv = FLAGS(argv)
  except SystemExit as e:  # absl's --help and --helpfull print the help, then exit 1.
    sys.exit(0 if e.code == 1 else e.code)
  except flags.UnrecognizedFlagError as e:
    hint = (' (--config.* overrides need a --config=configs/<name>.py)'
            if e.flagname.startswith('config.') and FLAGS['config'].value is None else '')
    _usage_error(f'{e}{hint}')
  except flags.Error as e:  # A value absl or the config cannot take, e.g. --mode=segment.
    _usage_error(e)
  except (AttributeError, KeyError) as e:  # What ml_collections raises for an unknown field.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    reason = ' '.join(str(e.args[0] if e.args else e).split())
    _usage_error(f'Unknown config field in {" ".join(overrides)}: {reason} Every field is '
                 'listed in configs/default.py.')
  try:
    # ml_collections defers a load failure to the config's first use.
    FLAGS.config is None or FLAGS.config.keys()  # pylint: disable=expression-not-assigned
  except OSError as e:
    while e.__cause__ is not None:
      e = e.__cause__
    filename = FLAGS['config'].config_filename.split(':')[0]
    reason = ('no such file' if not os.path.exists(filename) else
              f'{type(e).__name__}: {" ".join(str(e).split())}')
    _usage_error(f'Cannot load --config={filename} ({reason}). Shipped configs: '
                 f'{", ".join(f"configs/{name}.py" for name in configs.shipped())}.')
  return argv


def _check_flags(argv) -> None:
  """Every flag and config value that needs no workdir, before anything heavy is imported."""
  problem = None
  if len(argv) > 1:
    problem = f'Unexpected arguments {argv[1:]}: every option is a --flag=value.'
  elif FLAGS.mode in ('train', 'release') and not FLAGS.workdir:
    problem = f'--workdir is required for --mode={FLAGS.mode}.'
  elif FLAGS.workdir and FLAGS.model:
    problem = 'Give --workdir or --model, not both.'
  elif FLAGS.mode in ('train', 'benchmark') and FLAGS.config is None:
    problem = (f'--config is required for --mode={FLAGS.mode}, e.g. '
               '--config=configs/synthetic.py.')
  elif FLAGS.mode == 'predict' and not (FLAGS.input and FLAGS.output):
    problem = '--mode=predict needs --input (files, folders or globs) and --output (a folder).'
  elif FLAGS.mode == 'predict' and FLAGS.cams and FLAGS.backend == 'onnxruntime':
    problem = ('--backend=onnxruntime computes masks only (Grad-CAM needs JAX): add '
               '--cams=false.')
  elif FLAGS.mode in ('release', 'export') and not FLAGS.output:
    problem = f'--mode={FLAGS.mode} needs --output (the folder to write).'
  elif not FLAGS.layers:
    problem = '--layers is empty: name one or more, e.g. --layers=decoder_1.'
  if problem:
    _usage_error(problem)
  try:
    if FLAGS.threshold is not None:
      config_checks.check_range('--threshold', FLAGS.threshold, config_checks.PROBABILITY)
    names.check_split(FLAGS.split, '--split')
    if FLAGS.config is not None:
      config_checks.check(FLAGS.config)
  except ValueError as e:
    _usage_error(e)


def _check_against_model() -> None:
  """The flags whose choices the model and its datasets set (the --config, else the workdir's
  or release folder's saved one), before TensorFlow, data or weights are loaded."""
  if FLAGS.mode not in ('evaluate', 'predict', 'gradcam'):
    return
  config = _saved_config(_model_dir())
  if FLAGS.mode in ('predict', 'gradcam'):
    from unet_flax import model as model_lib
    layers = model_lib.layer_names(config.model.depth)
    unknown = [layer for layer in FLAGS.layers if layer not in layers]
    if unknown:
      raise config_checks.ConfigError(
          f'--layers={",".join(FLAGS.layers)}: this model (depth {config.model.depth}) has '
          f'no {", ".join(unknown)}; its layers are {", ".join(layers)}.')
  if FLAGS.mode in ('evaluate', 'gradcam'):
    datasets = _datasets_read(config)
    try:
      names.check_split(FLAGS.split, '--split', slices='synthetic' not in datasets)
    except ValueError as e:
      raise config_checks.ConfigError(str(e)) from None
    if FLAGS.manual_dir and (len(datasets) > 1 or datasets[0] not in names.DOWNLOAD_FIELDS):
      reads = (f'--mode={FLAGS.mode} reads {"+".join(datasets)} here' if len(datasets) > 1
               else 'the synthetic dataset is generated, not read from files')
      raise config_checks.ConfigError(
          f'--manual_dir={FLAGS.manual_dir} is a copy of one dataset, but {reads}: name the '
          f'one it holds, --dataset=<{"|".join(names.DOWNLOAD_FIELDS)}>.')


ROOT = os.path.dirname(os.path.abspath(__file__))


class _ProjectInfoOnly(std_logging.Filter):
  """At the default verbosity, INFO lines come from this project only: orbax alone logs
  hundreds per checkpoint. `--verbosity=1` shows every library's."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(ROOT)


def _user_errors() -> tuple[type[Exception], ...]:
  """What a user's data, workdir or download gets wrong (not bugs): these end the run with a
  message, not a traceback."""
  from data import provenance, scan_files
  from unet_flax import checkpointing, onnx_graph, release
  return (FileNotFoundError, config_checks.ConfigError, provenance.StaleBuildError,
          scan_files.FormatError, checkpointing.UnreadableCheckpointError,
          checkpointing.WorkdirMismatchError, release.ChecksumError,
          release.ModelMismatchError, onnx_graph.MissingDependencyError)


def _data_setting(field: str) -> str:
  """How this command line sets config.data.<field>, for the advice of a data error:
  evaluate and gradcam take the copy of the one dataset they read from --manual_dir and its
  build folder from --tfds_data_dir; any other field is a --config override."""
  if FLAGS.mode not in ('evaluate', 'gradcam'):
    return f'--config.data.{field}'
  if field == 'tfds_data_dir':
    return '--tfds_data_dir'
  dataset = next(name for name, download in names.DOWNLOAD_FIELDS.items() if download == field)
  if _datasets_read(_saved_config(_model_dir())) == (dataset,):
    return '--manual_dir'
  return f'--config.data.{field}' if FLAGS.config else f'--dataset={dataset} --manual_dir'


def _run():
  if FLAGS.mode == 'train':
    from unet_flax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, command=sys.argv)
  elif FLAGS.mode == 'evaluate':
    _evaluate()
  elif FLAGS.mode == 'predict':
    from unet_flax import onnx_backend, predict, release
    config, model, variables, _ = release.load_model(_model_dir(), FLAGS.config,
                                                     FLAGS.threshold)
    failures = predict.predict_files(
        model, variables, config, FLAGS.input, FLAGS.output, layer=FLAGS.layers[0],
        overlays=FLAGS.overlays, cams=FLAGS.cams, probabilities=FLAGS.probabilities,
        network=None if FLAGS.cams else onnx_backend.network(FLAGS.backend, model, variables,
                                                             config))
    if failures:
      logging.error('%d input file(s) could not be processed (see above).', failures)
      sys.exit(1)
  elif FLAGS.mode == 'gradcam':
    from unet_flax import gradcam_report
    model_dir = _model_dir()
    root = _report_root(model_dir)
    config = _workdir_config(model_dir, root)
    (dataset,) = _datasets_read(config)
    gradcam_report.gradcam_workdir(model_dir, config, FLAGS.split, dataset,
                                   FLAGS.output or os.path.join(root, 'gradcam'),
                                   FLAGS.layers, FLAGS.max_images, FLAGS.threshold)
  elif FLAGS.mode == 'release':
    from unet_flax import release
    manifest = release.export(FLAGS.workdir, FLAGS.output)
    print(f"Wrote {FLAGS.output}: {release.VARIABLES_FILE} "
          f"({manifest['variables']['bytes'] / 1e6:.1f} MB, sha256 "
          f"{manifest['variables']['sha256']}), threshold {manifest['threshold']}, "
          f"epoch {manifest['best']['epoch']}, test reports of "
          f"{', '.join(manifest['test']) or 'no dataset'}.")
  elif FLAGS.mode == 'benchmark':
    from unet_flax import benchmark
    benchmark.run(FLAGS.config)
  elif FLAGS.mode == 'export':
    from unet_flax import export
    export.export_workdir(_model_dir(), FLAGS.config, FLAGS.output)


# The modes that run TensorFlow (the input pipeline, the SavedModel export); predict and
# release do not, and start twice as fast without importing it.
_TENSORFLOW_MODES = ('train', 'evaluate', 'gradcam', 'benchmark', 'export')


def _keep_tensorflow_off_the_gpus() -> None:
  """TensorFlow only runs the input pipeline; JAX owns the accelerators. Left to see a GPU,
  TF would reserve most of its memory at its first op."""
  if FLAGS.mode not in _TENSORFLOW_MODES:
    return
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')


def main(argv):
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_ProjectInfoOnly())
  _check_flags(argv)
  try:
    _check_against_model()
    _keep_tensorflow_off_the_gpus()
    from unet_flax import distributed
    distributed.maybe_initialize(FLAGS.config)
    _run()
  except Exception as e:  # pylint: disable=broad-except
    if FLAGS.verbosity >= 1 or not isinstance(e, _user_errors()):
      raise
    message = e.message(_data_setting) if isinstance(e, names.DataSettingError) else str(e)
    if isinstance(e, config_checks.ConfigError):
      _usage_error(message)
    sys.exit(f'FATAL {message}')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
