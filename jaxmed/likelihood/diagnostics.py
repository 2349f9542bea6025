"""How far to trust an importance-weighted estimate: standard error, ESS, PSIS k-hat.

Every sampling estimator in jaxmed reduces to log of a mean of weights,
``log (1/N) sum_i w_i`` (the MCMC estimator to minus that, for reciprocal weights).
Three numbers computed from the same log weights say whether the mean is
trustworthy:

- the standard error of the log estimate, by the delta method;
- the effective sample size (sum w)^2 / sum w^2;
- the Pareto k-hat of the weights' upper tail (Vehtari et al. 2024): below 0.5
  the weights have finite variance; 0.5-0.7 the estimate converges slowly; above
  0.7 it is unreliable, whatever the standard error says.

The functions here take a whole vector of log weights. The estimators compute the
same quantities from running sums (:class:`_WeightStats` in ``_reduce.py``) so that
memory stays bounded; both routes share :func:`_diagnostics_from_sums`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

# Zhang & Stephens' prior on the GPD scale, and Vehtari et al.'s weak prior on k
# (mean 0.5, 10 pseudo-observations), as in numpyro.infer.importance.
_GPD_GRID_PRIOR = 3.0
_K_PRIOR_MEAN = 0.5
_K_PRIOR_COUNT = 10.0
_MIN_TAIL = 5


class Diagnostics(NamedTuple):
    """Reliability of one log p(x) estimate (one image).

    Attributes:
        standard_error: delta-method standard error of the log estimate, in nats:
            sqrt(Var(w) / N) / mean(w), with the unbiased variance. Zero for the
            deterministic ``"match"`` score.
        ess: effective sample size of the weights, (sum w)^2 / sum w^2, between 1
            and N. NaN for ``"match"``.
        k_hat: Pareto shape of the weights' upper tail (PSIS). Above 0.7 the
            estimate is unreliable. NaN when the tail has fewer than 5 distinct
            values (N below about 25, or all weights equal) and for ``"match"``.
    """

    standard_error: Array
    ess: Array
    k_hat: Array


def psis_tail_size(num_samples: int) -> int:
    """Number of largest weights the PSIS fit uses: ceil(min(0.2 S, 3 sqrt(S)))."""
    return math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples)))


def effective_sample_size(log_weights: Array) -> Array:
    """Effective sample size (sum w)^2 / sum w^2 of importance weights.

    Args:
        log_weights: ``(N,)`` log importance weights (any additive constant).

    Returns:
        A scalar between 1 and N.
    """
    return jnp.exp(2 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2 * log_weights))


def log_mean_standard_error(log_weights: Array) -> Array:
    """Delta-method standard error of log((1/N) sum_i w_i), in nats.

    Args:
        log_weights: ``(N,)`` log weights, N >= 2.

    Returns:
        sqrt(s^2 / N) / mean(w) with s^2 the unbiased sample variance of w; a scalar.
    """
    diag = _diagnostics_from_sums(
        jax.nn.logsumexp(log_weights),
        jax.nn.logsumexp(2 * log_weights),
        None,
        num_samples=log_weights.shape[0],
    )
    return diag.standard_error


def psis_khat(log_weights: Array) -> Array:
    """Pareto k-hat of importance weights, computed in JAX (jit- and vmap-able).

    Fits a generalized Pareto distribution to the M = ceil(min(0.2 S, 3 sqrt S))
    largest weights (in excess of the next one) by the empirical-Bayes method of
    Zhang & Stephens (2009), with the weak prior on k of Vehtari et al. (2024,
    App. G). It follows ``numpyro.infer.importance._psis_khat`` step by step; the
    tests check the two agree.

    Args:
        log_weights: ``(S,)`` log importance weights.

    Returns:
        k-hat, a scalar; NaN when fewer than 5 tail weights exceed the cut-off.

    References:
        Vehtari, Simpson, Gelman, Yao, Gabry (2024). Pareto smoothed importance
        sampling. JMLR 25(72). Zhang & Stephens (2009). Technometrics 51(3).
    """
    num_samples = log_weights.shape[0]
    num_top = psis_tail_size(num_samples) + 1
    top = jax.lax.top_k(log_weights, num_top)[0]
    return _khat_from_top(top)


def _khat_from_top(top: Array) -> Array:
    """k-hat from the M+1 largest log weights, in descending order."""
    top = top - top[0]
    finfo = jnp.finfo(top.dtype)
    cutoff = jnp.maximum(jnp.log(finfo.tiny), top[-1])
    tail = top[:-1][::-1]  # ascending, as the fit expects
    valid = tail > cutoff
    exceedance = jnp.where(valid, jnp.exp(tail) - jnp.exp(cutoff), 0.0)
    k = _fit_gpd_shape(exceedance, valid)
    return jnp.where(jnp.sum(valid) < _MIN_TAIL, jnp.nan, k)


def _fit_gpd_shape(x: Array, valid: Array) -> Array:
    """Shape k of a generalized Pareto fitted to exceedances ``x`` (ascending).

    ``valid`` marks the entries that take part; they are a suffix of ``x`` (ties
    with the cut-off are dropped, as numpy's boolean indexing does in the
    reference). The grid of candidate scales therefore depends on the valid count
    ``n`` and is masked rather than resized.
    """
    size = x.shape[0]
    dtype = x.dtype
    n_int = jnp.sum(valid)
    n = n_int.astype(dtype)
    grid_max = 30 + int(math.sqrt(size))
    grid_size = 30 + jnp.floor(jnp.sqrt(n))
    j = jnp.arange(1, grid_max + 1, dtype=dtype)
    grid_valid = j <= grid_size
    # numpy's x[int(n / 4 + 0.5) - 1] within the valid suffix
    quartile_index = size - n_int + jnp.floor(n / 4 + 0.5).astype(n_int.dtype) - 1
    quartile = x[jnp.clip(quartile_index, 0, size - 1)]
    b = 1 / x[-1] + (1 - jnp.sqrt(grid_size / jnp.where(grid_valid, j - 0.5, 1.0))) / (
        _GPD_GRID_PRIOR * quartile
    )
    # Profile log-likelihood of each candidate b, with the masked mean over the tail.
    log1p_terms = jnp.log1p(-b[:, None] * x[None, :])
    k_b = jnp.sum(jnp.where(valid[None, :], log1p_terms, 0.0), axis=1) / n
    log_lik = n * (jnp.log(-b / k_b) - k_b - 1)
    # w_j = 1 / sum_j' exp(L_j' - L_j) is a softmax of the profile log-likelihood.
    weights = jax.nn.softmax(jnp.where(grid_valid, log_lik, -jnp.inf))
    weights = jnp.where(weights >= 10 * jnp.finfo(jnp.float64).eps, weights, 0.0)
    weights = weights / jnp.sum(weights)
    b_mean = jnp.sum(jnp.where(grid_valid, b * weights, 0.0))
    k = jnp.sum(jnp.where(valid, jnp.log1p(-b_mean * x), 0.0)) / n
    return k * n / (n + _K_PRIOR_COUNT) + _K_PRIOR_COUNT * _K_PRIOR_MEAN / (n + _K_PRIOR_COUNT)


def _diagnostics_from_sums(
    log_sum: Array, log_sum_sq: Array, top: Array | None, *, num_samples: int
) -> Diagnostics:
    """Diagnostics from log sum w, log sum w^2 and the largest log weights."""
    ess = jnp.exp(2 * log_sum - log_sum_sq)
    # Var(w)/mean(w)^2 = N sum w^2 / (sum w)^2 - 1 = N / ESS - 1 (biased); times N/(N-1)
    # for the unbiased variance, divided by N for the mean: (N / ESS - 1) / (N - 1).
    rel_var = jnp.maximum(num_samples / ess - 1, 0.0)
    if num_samples > 1:
        standard_error = jnp.sqrt(rel_var / (num_samples - 1))
    else:
        standard_error = jnp.full_like(ess, jnp.nan)
    k_hat = _khat_from_top(top) if top is not None else jnp.full_like(ess, jnp.nan)
    return Diagnostics(standard_error=standard_error, ess=ess, k_hat=k_hat)
