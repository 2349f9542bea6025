"""Ordinal classification: the cumulative-link (proportional-odds) model, per example, unreduced.

``K`` ordered classes ``0 < 1 < ... < K - 1`` and ``K - 1`` cumulative logits
``c_k = logit P(y > k)``, decreasing in ``k`` (a score minus increasing
cut-points, as :class:`jaxmed.models.MapClassifier` gives them). Then

    P(y = 0) = 1 - sigmoid(c_0),
    P(y = k) = sigmoid(c_{k-1}) - sigmoid(c_k),    0 < k < K - 1,
    P(y = K - 1) = sigmoid(c_{K-2}).

References:
  McCullagh. Regression models for ordinal data. JRSS B 42(2), 1980.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["cumulative_link_log_probs", "cumulative_link_nll"]


def cumulative_link_log_probs(cumulative_logits: Array) -> Array:
    """Log class probabilities of the cumulative-link model.

    Computed in log space: ``sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b)
    (1 - exp(b - a))`` for ``a > b``, so small differences between
    saturated sigmoids keep their precision.

    Args:
      cumulative_logits: ``[..., K - 1]``, ``c_k = logit P(y > k)``, strictly
        decreasing along the last axis.

    Returns:
      ``[..., K]`` log probabilities (they sum to 1 in probability).
    """
    c = cumulative_logits
    first = jax.nn.log_sigmoid(-c[..., :1])
    last = jax.nn.log_sigmoid(c[..., -1:])
    a, b = c[..., :-1], c[..., 1:]
    # log(1 - exp(b - a)) = log(-expm1(b - a)); b - a < 0 for decreasing logits.
    middle = jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + jnp.log(-jnp.expm1(jnp.minimum(b - a, -1e-12)))
    return jnp.concatenate([first, middle, last], axis=-1)


def cumulative_link_nll(cumulative_logits: Array, label: Array) -> Array:
    """Negative log-likelihood of the true class, nats, per example.

    Args:
      cumulative_logits: ``[N, K - 1]`` (decreasing along the last axis).
      label: ``[N]`` int classes in ``[0, K)``.

    Returns:
      ``[N]`` ``-log P(y = label)``.
    """
    log_probs = cumulative_link_log_probs(cumulative_logits)
    return -jnp.take_along_axis(log_probs, label.astype(jnp.int32)[:, None], axis=-1)[:, 0]
