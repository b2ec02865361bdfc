"""Joins this process to a multi-host JAX job (TPU pod slice, multi-node GPU).

`jax.distributed.initialize()` finds the coordinator, the process count and this process's
id on its own on Cloud TPU VMs, under SLURM and under Open MPI, so one command runs on every
host. It must run before anything else touches the devices, and only for multi-host jobs:
one host with several devices (a Colab TPU, a multi-GPU machine) needs nothing.
"""
import jax
from absl import logging


def maybe_initialize(config) -> None:
  """Initialises the multi-process runtime when `config.distributed` is set."""
  if config is None or not config.get('distributed', False):
    return
  jax.distributed.initialize()
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
