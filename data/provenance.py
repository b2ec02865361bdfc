"""Ties a TFDS build to the files it was built from.

TFDS reuses a build whenever one exists, so pointing `manual_dir` at another copy of a dataset
(or another folder of scans under the same name) would silently train and report on the old
one. Each build records a fingerprint of its source (file names and sizes below the manual dir,
plus how they were read); a later run whose source differs stops with a message that says
what to do.
"""
import hashlib
import json
import os

from data import names

FILE = 'source_fingerprint.json'


class StaleBuildError(names.DataSettingError, RuntimeError):
  """The TFDS build was made from other files than the configured manual dir holds."""


def fingerprint(manual_dir: str, reading: str, exclude: str = '') -> dict:
  """Names and sizes of every file below `manual_dir` (or the file itself, e.g. a zip), and
  `reading` (e.g. the folder builder's pairing options), hashed. `exclude` is a folder left
  out (the TFDS data dir, when a user keeps it inside the download folder)."""
  digest = hashlib.sha256(reading.encode())
  count = 0
  if os.path.isfile(manual_dir):
    entries = [(os.path.basename(manual_dir), os.path.getsize(manual_dir))]
  else:
    entries = []
    exclude = os.path.abspath(exclude) if exclude else ''
    for parent, dirnames, filenames in os.walk(manual_dir):
      dirnames[:] = sorted(d for d in dirnames
                           if os.path.abspath(os.path.join(parent, d)) != exclude)
      entries += [(os.path.relpath(os.path.join(parent, name), manual_dir),
                   os.path.getsize(os.path.join(parent, name))) for name in sorted(filenames)]
  for name, size in entries:
    digest.update(f'{name}\0{size}\n'.encode())
    count += 1
  return {'manual_dir': manual_dir, 'files': count, 'sha256': digest.hexdigest()}


def check(build_dir: str, manual_dir: str, reading: str, field: str, exclude: str = '') -> None:
  """Raises StaleBuildError if the build in `build_dir` came from other files than
  `manual_dir` (config.data.<`field`>) holds now. A build without a record, or a manual dir
  that is gone (the user keeps only the build), passes."""
  path = os.path.join(build_dir, FILE)
  if not os.path.exists(path) or not os.path.exists(manual_dir):
    return
  with open(path) as f:
    saved = json.load(f)
  current = fingerprint(manual_dir, reading, exclude)
  if current['sha256'] != saved['sha256']:
    old = saved['manual_dir']
    back = old != manual_dir and os.path.exists(old)
    raise StaleBuildError(lambda setting: (
        f'The dataset build {build_dir} was made from {old} ({saved["files"]} files), but '
        f'{manual_dir} ({current["files"]} files) differs in its files or reading options. To '
        f'use it, give it its own {setting("tfds_data_dir")} or delete the build to rebuild it' +
        (f'; to use the build, set {setting(field)}={old}' if back else '') + '.'))


def record(build_dir: str, manual_dir: str, reading: str, exclude: str = '') -> None:
  """Writes the fingerprint of a fresh build (atomically: processes may race)."""
  if not os.path.exists(manual_dir):
    return
  path = os.path.join(build_dir, FILE)
  with open(path + f'.tmp{os.getpid()}', 'w') as f:
    json.dump(fingerprint(manual_dir, reading, exclude), f, indent=2)
  os.replace(path + f'.tmp{os.getpid()}', path)
