"""log-mean-exp of N log weights in bounded memory, optionally sharded over devices.

Sample i always draws its randomness from ``fold_in(key, i)``, so the estimate does
not depend on how the N samples are cut into chunks or spread over devices (up to
the order of floating-point additions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxmed.likelihood.diagnostics import Diagnostics, _diagnostics_from_sums, psis_tail_size

LogWeightFn = Callable[[Array], Array]
"""Maps ``(n,)`` per-sample PRNG keys to ``(n,)`` log weights."""


class _WeightStats(NamedTuple):
    """Running sums over the log weights seen so far (all scalars but ``top``)."""

    log_sum: Array  # log sum_i w_i
    log_sum_sq: Array  # log sum_i w_i^2, for the ESS and the standard error
    top: Array  # (num_top,) largest log w_i, descending; -inf until filled


def empty_stats(num_top: int, dtype) -> _WeightStats:
    neg_inf = jnp.array(-jnp.inf, dtype)
    return _WeightStats(neg_inf, neg_inf, jnp.full((num_top,), -jnp.inf, dtype))


def add_log_weights(stats: _WeightStats, log_weights: Array) -> _WeightStats:
    """Folds a chunk of ``(n,)`` log weights into the running sums."""
    log_weights = log_weights.astype(stats.log_sum.dtype)
    num_top = stats.top.shape[0]
    top = stats.top
    if num_top:
        top = jax.lax.top_k(jnp.concatenate([stats.top, log_weights]), num_top)[0]
    return _WeightStats(
        jnp.logaddexp(stats.log_sum, jax.nn.logsumexp(log_weights)),
        jnp.logaddexp(stats.log_sum_sq, jax.nn.logsumexp(2 * log_weights)),
        top,
    )


def merge_gathered(stats: _WeightStats) -> _WeightStats:
    """Reduces stats with a leading device axis to one set of stats."""
    num_top = stats.top.shape[-1]
    top = stats.top
    if num_top:
        top = jax.lax.top_k(stats.top.reshape(-1), num_top)[0]
    return _WeightStats(
        jax.nn.logsumexp(stats.log_sum), jax.nn.logsumexp(stats.log_sum_sq), top
    )


def num_top_for(num_samples: int, return_diagnostics: bool) -> int:
    """How many of the largest log weights to keep (0 unless diagnostics are wanted)."""
    return psis_tail_size(num_samples) + 1 if return_diagnostics else 0


def _local_stats(
    log_weight_fn: LogWeightFn,
    key: Array,
    start: Array | int,
    *,
    count: int,
    num_samples: int,
    chunk_size: int,
    num_top: int,
) -> _WeightStats:
    """Stats over samples start, ..., start + count - 1 (those below num_samples)."""
    num_chunks = math.ceil(count / chunk_size)
    offsets = jnp.arange(chunk_size)

    def chunk(c):
        local = c * chunk_size + offsets
        index = start + local
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
        log_w = log_weight_fn(keys)
        # Padding of the last chunk (and past num_samples) contributes w = 0.
        return jnp.where((local < count) & (index < num_samples), log_w, -jnp.inf)

    # The dtype of the weights decides the carry's; tracing abstractly avoids
    # compiling the weight function twice (once outside the scan).
    dtype = jax.eval_shape(chunk, 0).dtype

    def body(stats, c):
        return add_log_weights(stats, chunk(c)), None

    stats, _ = jax.lax.scan(body, empty_stats(num_top, dtype), jnp.arange(num_chunks))
    return stats


def reduce_log_weights(
    log_weight_fn: LogWeightFn,
    key: Array,
    *,
    num_samples: int,
    chunk_size: int | None,
    num_top: int = 0,
    mesh: Mesh | None = None,
) -> _WeightStats:
    """Running log-sum-exp stats over ``num_samples`` log weights.

    Args:
        log_weight_fn: maps ``(n,)`` keys to ``(n,)`` log weights; called on
            chunks of ``chunk_size`` keys (fewer when the work is small).
        key: PRNG key; sample i uses ``fold_in(key, i)``.
        num_samples: N, the number of log weights.
        chunk_size: samples evaluated at once (per device); None for all at once.
        num_top: how many of the largest log weights to keep (for PSIS).
        mesh: if given, the samples are split evenly over all devices of the mesh
            (``shard_map``), each device runs its share in chunks, and the sums are
            combined across devices.

    Returns:
        The stats, replicated on every device of ``mesh``.
    """
    if mesh is None:
        size = num_samples if chunk_size is None else min(chunk_size, num_samples)
        return _local_stats(
            log_weight_fn, key, 0, count=num_samples, num_samples=num_samples,
            chunk_size=size, num_top=num_top,
        )

    per_device = math.ceil(num_samples / mesh.size)
    size = per_device if chunk_size is None else min(chunk_size, per_device)

    def local(key, device):
        return _local_stats(
            log_weight_fn, key, device * per_device, count=per_device, num_samples=num_samples,
            chunk_size=size, num_top=num_top,
        )

    return over_devices(local, key, mesh)


def over_devices(local_stats_fn: Callable[[Array, Array], _WeightStats], key: Array, mesh: Mesh) -> _WeightStats:
    """Runs ``local_stats_fn(key, device_index)`` on every device of ``mesh`` and merges.

    The function may use collectives over ``tuple(mesh.axis_names)``. Returns the
    merged stats, replicated on every device.
    """
    axes = tuple(mesh.axis_names)

    def shard(key):
        stats = local_stats_fn(key, jax.lax.axis_index(axes))
        return merge_gathered(jax.lax.all_gather(stats, axes))

    # check_vma=False: all_gather's result is replicated by construction (every
    # device reduces the same gathered values), which the checker cannot infer.
    return jax.shard_map(shard, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)(key)


def finish(
    stats: _WeightStats, num_samples: int, return_diagnostics: bool, *, sign: int = 1
) -> Array | tuple[Array, Diagnostics]:
    """An estimator's result: ``sign * log((1/N) sum_i w_i)``, and the diagnostics if asked.

    ``sign`` is -1 for the reciprocal estimators (MCMC, reverse AIS), whose weights
    average to 1/p(x).
    """
    estimate = sign * (stats.log_sum - jnp.log(jnp.asarray(num_samples, stats.log_sum.dtype)))
    if not return_diagnostics:
        return estimate
    top = stats.top if stats.top.shape[0] else None
    return estimate, _diagnostics_from_sums(stats.log_sum, stats.log_sum_sq, top, num_samples=num_samples)


def log_mean_estimate(
    log_weight_fn: LogWeightFn,
    key: Array,
    *,
    num_samples: int,
    chunk_size: int | None,
    return_diagnostics: bool,
    mesh: Mesh | None,
    sign: int = 1,
) -> Array | tuple[Array, Diagnostics]:
    """The result of an estimator that averages N independent weights.

    :func:`reduce_log_weights` then :func:`finish`, with their arguments; the
    caller validates them first (:func:`validate_sampling`).
    """
    stats = reduce_log_weights(
        log_weight_fn, key, num_samples=num_samples, chunk_size=chunk_size,
        num_top=num_top_for(num_samples, return_diagnostics), mesh=mesh,
    )
    return finish(stats, num_samples, return_diagnostics, sign=sign)


def validate_sampling(num_samples: int, chunk_size: int | None, method: str) -> None:
    """Raises ValueError for a non-positive sample count or chunk size."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"{method}: num_samples must be a positive int, got {num_samples!r}")
    if chunk_size is not None and (
        not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"{method}: chunk_size must be a positive int or None, got {chunk_size!r}")
