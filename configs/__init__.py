"""The shipped configs: each module's `get_config()` is one setting; default.py lists and
explains every field."""
import os


def shipped() -> list[str]:
  """Names of the shipped config modules ('cpu', 'default', ...), sorted."""
  folder = os.path.dirname(os.path.abspath(__file__))
  return sorted(name[:-3] for name in os.listdir(folder)
                if name.endswith('.py') and not name.startswith('_'))
