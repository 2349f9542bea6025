"""Multiple-instance pooling: one score for a bag of instance scores or embeddings.

A bag is ``K`` instances (e.g. the segments of one radiograph) with a
``[K]`` bool ``mask`` of the instances that exist (static shapes: absent
ones are padding). Written for one bag; ``jax.vmap`` for a batch of bags.

* :func:`max_pooling`: the largest instance probability (a bag is positive
  when its most suspicious instance is);
* :func:`noisy_or_pooling`: ``1 - prod_k (1 - p_k)``, the probability that at
  least one instance is positive if instances were independent;
* :class:`AttentionPooling`: attention-based deep MIL (Ilse et al. 2018), a
  learned weighted mean of the instance embeddings, then a logit.

References:
  Ilse, Tomczak, Welling. Attention-based Deep Multiple Instance Learning.
  ICML 2018, eq. 8 (attention) and eq. 9 (gated attention).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["AttentionPooling", "max_pooling", "noisy_or_pooling"]


def max_pooling(probs: Array, mask: Array) -> Array:
    """The largest probability among the instances present; 0 for an empty bag.

    Args:
      probs: ``[K]`` instance probabilities in [0, 1].
      mask: ``[K]`` bool, the instances present.

    Returns:
      Scalar in [0, 1].
    """
    return jnp.max(jnp.where(mask, probs, 0.0), initial=0.0)


def noisy_or_pooling(probs: Array, mask: Array) -> Array:
    """``1 - prod_k (1 - p_k)`` over the instances present; 0 for an empty bag.

    Computed as ``-expm1(sum log1p(-p_k))``: a product of many factors near 1
    loses the small probabilities in float32.

    Args:
      probs: ``[K]`` instance probabilities in [0, 1].
      mask: ``[K]`` bool, the instances present.

    Returns:
      Scalar in [0, 1].
    """
    log_none = jnp.sum(jnp.where(mask, jnp.log1p(-jnp.clip(probs, 0.0, 1.0)), 0.0))
    return -jnp.expm1(log_none)


class AttentionPooling(nn.Module):
    """Attention-based MIL pooling (Ilse et al. 2018) of instance embeddings to one logit.

    ``a_k = softmax_k(w^T tanh(V h_k))`` (gated: ``w^T (tanh(V h_k) *
    sigmoid(U h_k))``) over the instances present; ``z = sum_k a_k h_k``; the
    bag logit is ``Dense(1)(z)``.

    Attributes:
      hidden: size of the attention's hidden layer (``V`` and ``U``).
      gated: use the gated attention (eq. 9).
    """

    hidden: int = 64
    gated: bool = False

    @nn.compact
    def __call__(self, embeddings: Array, mask: Array) -> tuple[Array, Array]:
        """Bag logit and attention weights.

        Args:
          embeddings: ``[K, D]`` instance embeddings.
          mask: ``[K]`` bool, the instances present (at least one).

        Returns:
          ``(logit, weights)``: a scalar logit and ``[K]`` weights summing to
          1 over the instances present (0 elsewhere).
        """
        hidden = jnp.tanh(nn.Dense(self.hidden, name="V")(embeddings))
        if self.gated:
            hidden = hidden * jax.nn.sigmoid(nn.Dense(self.hidden, name="U")(embeddings))
        scores = nn.Dense(1, use_bias=False, name="w")(hidden)[:, 0]
        weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf))
        weights = jnp.where(mask, weights, 0.0)
        pooled = jnp.sum(weights[:, None] * embeddings, axis=0)
        return nn.Dense(1, name="classifier")(pooled)[0], weights
