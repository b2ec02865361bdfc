"""Data parallelism with one code path for 1 to N devices, on one host or many.

A 1-D `Mesh` over all devices; batches are sharded along its 'data' axis and the train state
is replicated. `jax.jit` with these shardings lets XLA insert the gradient all-reduce, so
there is no pmap and nothing home-made.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unet_flax import config_checks

DATA_AXIS = 'data'


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, what: str = 'train.batch_size') -> None:
  devices = jax.device_count()
  if global_batch_size % devices:
    raise config_checks.ConfigError(
        f'config.{what}={global_batch_size} is not divisible by the {devices} devices; '
        f'choose a multiple of {devices} (it is the global batch, split over all devices).')


def global_batch(local_batch: dict, mesh: Mesh, same_on_all_processes: bool = False) -> dict:
  """Turns numpy batches into global arrays sharded over the mesh.

  By default each process passes its own part of the global batch (training). With
  `same_on_all_processes`, every process passes the whole batch (evaluation).
  """
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, x, x.shape if same_on_all_processes else None), local_batch)


def replicate(tree, mesh: Mesh):
  """Host values that every process holds alike (weights read from a file) as replicated
  global arrays; each leaf gets buffers of its own, so a donated state may hold them."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(replicated(mesh), np.asarray(x),
                                                       np.shape(x)), tree)


def pad_batch(batch: dict, multiple: int) -> tuple[dict, int]:
  """Pads the leading axis up to a multiple (for the last, short eval batch).

  Returns the padded batch and the number of real examples, so padded rows can be dropped.
  """
  n = len(next(iter(batch.values())))
  pad = -n % multiple
  if pad:
    batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}
  return batch, n
