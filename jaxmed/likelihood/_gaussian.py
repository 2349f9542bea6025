"""Diagonal Gaussian log densities and the KL to N(0, I), for ``(..., d)`` vectors.

The formulas are NumPyro's (``numpyro.distributions``), as in
:mod:`jaxmed.models.observation`, so the estimators and training share one copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions.kl import kl_divergence


def standard_normal_log_prob(eps: Array) -> Array:
    """log N(eps; 0, I) summed over the last axis, in nats."""
    return jnp.sum(dist.Normal(0.0, 1.0).log_prob(eps), axis=-1)


def diag_normal_log_prob(z: Array, mean: Array, std: Array) -> Array:
    """log N(z; mean, diag(std^2)) summed over the last axis, in nats."""
    return jnp.sum(dist.Normal(mean, std).log_prob(z), axis=-1)


def diag_normal_sample(key: Array, mean: Array, std: Array) -> tuple[Array, Array]:
    """A draw z ~ N(mean, diag(std^2)) of ``(..., d)`` vectors, and its log density in nats.

    The log density is taken from the standard-normal noise (no division by std).
    """
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + std * eps, standard_normal_log_prob(eps) - jnp.sum(jnp.log(std), axis=-1)


def kl_to_standard_normal(mean: Array, std: Array) -> Array:
    """KL(N(mean, diag(std^2)) || N(0, I)) in nats, summed over the last axis.

    Closed form: 0.5 * sum(std^2 + mean^2 - 1 - 2 log std).
    """
    return jnp.sum(kl_divergence(dist.Normal(mean, std), dist.Normal(0.0, 1.0)), axis=-1)
