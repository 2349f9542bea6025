"""Data parallelism over a device mesh (``jax.jit`` + ``NamedSharding``).

The mesh has one axis, ``"data"``. Batches are split along their leading
axis over it; the train state is replicated. XLA inserts the gradient
all-reduce, so a loss that is a mean over the batch is the mean over the
*global* batch, and one device and many devices compute the same numbers (up
to the order of floating-point sums). Across processes (multi-host), each
process holds only its own slice of the batch
(:func:`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmed.train.step import EvalStep, TrainStep

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A one-axis ``("data",)`` mesh over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices; ``None`` = all (``jax.device_count()``).
        With several processes the mesh must span all devices of all of them.

    Returns:
      The mesh.

    Raises:
      ValueError: more devices asked for than exist, or a subset asked for in
        a multi-process run.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"asked for {num_devices} devices but only {len(devices)} are available "
            f"({devices[0].platform})"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"a multi-process run must use all {len(devices)} devices of its "
            f"{jax.process_count()} processes, not {n}"
        )
    # jax.devices() lists each process's devices together, so every process
    # owns one contiguous block of the data axis.
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"``, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The whole array on every device of the mesh."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree, equal on every process, replicated over the mesh.

    Works across processes, where ``jax.device_put`` of a local array cannot
    reach other processes' devices. Typed PRNG keys are moved as their key
    data and wrapped again.

    Args:
      tree: a pytree of arrays (the same values on every process).
      mesh: the device mesh.

    Returns:
      The pytree with every leaf a global array replicated over ``mesh``.
    """
    sharding = replicated_sharding(mesh)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles this process's slice of a batch into a global sharded batch.

    Args:
      local_batch: pytree of host arrays, each with leading axis
        ``global_batch / process_count`` (with one process: the whole batch).
      mesh: the device mesh.

    Returns:
      The pytree of global arrays, leading axis sharded over ``"data"``.

    Raises:
      ValueError: the global batch is not divisible by the number of devices.
    """
    sharding = batch_sharding(mesh)
    leaves = jax.tree.leaves(local_batch)
    local_size = int(np.shape(leaves[0])[0])
    global_size = local_size * jax.process_count()
    if global_size % mesh.size:
        raise ValueError(
            f"the global batch size ({global_size}) must be divisible by the "
            f"number of devices ({mesh.size})"
        )
    for leaf in leaves:
        if np.shape(leaf)[0] != local_size:
            raise ValueError(
                f"all batch leaves need the same leading size; got {np.shape(leaf)[0]} "
                f"and {local_size}"
            )
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def jit_train_step(train_step: TrainStep, mesh: Mesh):
    """Jits a train step for the mesh, donating the incoming state.

    Args:
      train_step: ``(state, batch) -> (state, metrics)``.
      mesh: the device mesh.

    Returns:
      The jitted step: state replicated, batch sharded on ``"data"``, metrics
      replicated. The caller must not use a state after passing it in.
    """
    rep, data = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(
        train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,)
    )


def jit_eval_step(eval_step: EvalStep, mesh: Mesh):
    """Jits an eval step ``(params, batch, key) -> metrics`` for the mesh."""
    rep, data = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(rep, data, rep), out_shardings=rep)


def local_batch_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process reads.

    Process ``i`` of ``n`` takes the ``i``-th contiguous ``1/n`` of the
    global batch, the layout :func:`shard_batch` expects.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(
            f"the global batch size ({global_batch_size}) must be divisible by "
            f"the number of processes ({n})"
        )
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)
