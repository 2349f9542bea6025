"""Diagonal Gaussian log densities, written once."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import Array

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def standard_normal_log_prob(eps: Array) -> Array:
    """log N(eps; 0, I) summed over the last axis, in nats."""
    return -0.5 * jnp.sum(jnp.square(eps), axis=-1) - eps.shape[-1] * _HALF_LOG_2PI


def diag_normal_log_prob(z: Array, mean: Array, std: Array) -> Array:
    """log N(z; mean, diag(std^2)) for ``(d,)`` vectors, in nats."""
    return standard_normal_log_prob((z - mean) / std) - jnp.sum(jnp.log(std), axis=-1)
