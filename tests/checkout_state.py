"""What `git status` shows of a checkout, to tell what a test session wrote into it.

conftest.py takes a snapshot when the session starts and fails the session when, at its end,
the repository shows an entry that was not there before: a file a test created, modified or
deleted in the checkout. Entries already there at the start (a developer's uncommitted
edits, their untracked notes) are no test's doing and fail nothing. Ignored paths (runs/,
__pycache__/, see .gitignore) are not shown by git status and are not checked.
"""
import shutil
import subprocess
from typing import Optional


def snapshot(root: str) -> Optional[frozenset[str]]:
  """The `git status --porcelain` entries of the checkout at `root`, each untracked file on
  its own (not folded into its folder); None where there is no git or no repository."""
  git = shutil.which('git')
  if git is None:
    return None
  result = subprocess.run(
      [git, 'status', '--porcelain=v1', '--untracked-files=all', '--ignore-submodules'],
      cwd=root, capture_output=True, text=True, check=False)
  if result.returncode:
    return None
  return frozenset(line for line in result.stdout.splitlines() if line)


def new_entries(before: Optional[frozenset[str]], after: Optional[frozenset[str]]) -> list[str]:
  """The entries of `after` that `before` did not have, sorted."""
  if before is None or after is None:
    return []
  return sorted(after - before)
