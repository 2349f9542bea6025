"""Deterministic, resumable, multi-host batching.

The batch of global step ``s`` is a pure function of ``(s, seed)``: it does not
depend on what was drawn before, so a run restored from a checkpoint at step
``s`` draws exactly the batches the uninterrupted run would have drawn.

Order of examples:

* Epoch ``e = step // steps_per_epoch`` visits the examples in the order
  ``np.random.default_rng([seed, e]).permutation(num_examples)``; a new epoch
  reshuffles.
* The permutation is cut into ``steps_per_epoch = num_examples // batch_size``
  global batches of exactly ``batch_size`` examples; the last
  ``num_examples % batch_size`` examples of each permutation are dropped (a
  fixed batch shape keeps the jitted train step compiled once). Each example
  is therefore seen at most once per epoch, and exactly once if
  ``batch_size`` divides ``num_examples``.
* In multi-host training process ``p`` of ``P`` takes the contiguous slice
  ``[p * batch_size // P, (p + 1) * batch_size // P)`` of the global batch, so
  the processes' shards are disjoint and, concatenated in process order, are
  the global batch (the layout `jax.make_array_from_process_local_data`
  expects for a batch axis sharded over all devices).

Example::

    for batch in iterate_batches(data, batch_size=64, seed=0, start_step=state.step,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
        state, metrics = train_step(state, batch)
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Iterator

import jax
import numpy as np

__all__ = ["batch_indices", "iterate_batches", "steps_per_epoch"]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full global batches in one epoch (the remainder is dropped).

    Args:
        num_examples: size of the data set.
        batch_size: global batch size (all processes together).

    Returns:
        ``num_examples // batch_size``, at least 1.

    Raises:
        ValueError: ``batch_size`` is not in ``[1, num_examples]``.
    """
    num_examples = operator.index(num_examples)
    batch_size = operator.index(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_examples < batch_size:
        raise ValueError(
            f"batch_size {batch_size} is larger than the data set ({num_examples} examples); "
            "no full batch can be drawn"
        )
    return num_examples // batch_size


def _check_shard(batch_size: int, process_index: int, process_count: int) -> None:
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by process_count {process_count}; "
            "every process must get the same number of examples"
        )


def _check_seed(seed: int) -> int:
    seed = operator.index(seed)
    if seed < 0:
        # SeedSequence entropy must be non-negative.
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


@functools.lru_cache(maxsize=2)
def _epoch_permutation(epoch: int, *, num_examples: int, seed: int) -> np.ndarray:
    # A SeedSequence of (seed, epoch): independent streams per epoch, stable
    # across numpy versions (NEP 19 keeps default_rng's stream fixed). Cached:
    # batch_indices is called once per step, and an epoch spans many steps.
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    permutation.flags.writeable = False  # shared by the cache
    return permutation


def _shard(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    per_process = global_batch.shape[0] // process_count
    # A copy: global_batch is a view of the cached (read-only) epoch permutation.
    return global_batch[process_index * per_process : (process_index + 1) * per_process].copy()


def batch_indices(
    step: int,
    *,
    num_examples: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Example indices of one global step, for one process.

    Args:
        step: global step, >= 0.
        num_examples: size of the data set.
        batch_size: global batch size (all processes together).
        seed: non-negative integer; the same seed gives the same sequence.
        process_index: this process (``jax.process_index()``).
        process_count: number of processes (``jax.process_count()``); must
            divide ``batch_size``.

    Returns:
        int64 ``[batch_size // process_count]``: indices into the data set,
        this process's contiguous part of the global batch of ``step``.

    Raises:
        ValueError: a negative step or seed, ``batch_size`` larger than the
            data set or not divisible by ``process_count``, or a bad
            ``process_index``.
    """
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    seed = _check_seed(seed)
    n_steps = steps_per_epoch(num_examples, batch_size)
    _check_shard(batch_size, process_index, process_count)
    epoch, position = divmod(step, n_steps)
    permutation = _epoch_permutation(epoch, num_examples=num_examples, seed=seed)
    global_batch = permutation[position * batch_size : (position + 1) * batch_size]
    return _shard(global_batch, process_index, process_count)


def _leading_size(data) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError("data has no arrays")
    sizes = {}
    for path, leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError(f"data{jax.tree_util.keystr(path)} is a scalar; every array needs a leading example axis")
        sizes[jax.tree_util.keystr(path)] = np.shape(leaf)[0]
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"data{name}: {size}" for name, size in sizes.items())
        raise ValueError(f"arrays in data disagree on the number of examples (leading axis): {listing}")
    return next(iter(sizes.values()))


def iterate_batches(
    data,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator:
    """Yields this process's batches of ``data``, step after step.

    The batch of step ``s`` is ``data`` indexed (on every leaf's leading axis)
    by ``batch_indices(s, ...)``, so ``iterate_batches(..., start_step=k)``
    yields exactly the tail, from step ``k``, of the sequence started at 0.

    Args:
        data: a pytree (e.g. a dict) of arrays that share the leading example
            axis. Leaves are copied to host numpy arrays once, at the start.
        batch_size: global batch size (all processes together).
        seed: non-negative integer seed of the shuffle.
        start_step: the first global step to yield (e.g. a restored state's
            step).
        num_steps: how many batches to yield; None yields forever.
        process_index: this process (``jax.process_index()``).
        process_count: number of processes (``jax.process_count()``).

    Yields:
        Pytrees shaped like ``data`` whose leaves are numpy arrays with leading
        axis ``batch_size // process_count``.

    Raises:
        ValueError: leaves disagree on the leading axis, or the batching
            arguments are invalid (see `batch_indices`).
    """
    # Validate everything before the first next(): errors belong to the call.
    data = jax.tree_util.tree_map(np.asarray, data)
    num_examples = _leading_size(data)
    seed = _check_seed(seed)
    n_steps = steps_per_epoch(num_examples, batch_size)
    _check_shard(batch_size, process_index, process_count)
    start_step = operator.index(start_step)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if num_steps is not None and operator.index(num_steps) < 0:
        raise ValueError(f"num_steps must be >= 0 or None, got {num_steps}")
    return _batches(
        data,
        num_examples=num_examples,
        n_steps=n_steps,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        num_steps=num_steps,
        process_index=process_index,
        process_count=process_count,
    )


def _batches(data, *, num_examples, n_steps, batch_size, seed, start_step, num_steps, process_index, process_count):
    steps = itertools.count(start_step) if num_steps is None else range(start_step, start_step + num_steps)
    for step in steps:
        epoch, position = divmod(step, n_steps)
        # The same numbers as batch_indices; the permutation is cached per epoch.
        permutation = _epoch_permutation(epoch, num_examples=num_examples, seed=seed)
        global_batch = permutation[position * batch_size : (position + 1) * batch_size]
        indices = _shard(global_batch, process_index, process_count)
        yield jax.tree_util.tree_map(lambda leaf: leaf[indices], data)
