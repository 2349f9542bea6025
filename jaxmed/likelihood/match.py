"""The KL "match likelihood": how close the encoder's q(z|x) is to the prior."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from jaxmed.likelihood._gaussian import kl_to_standard_normal
from jaxmed.likelihood.diagnostics import Diagnostics
from jaxmed.likelihood.interface import LatentVariableModel


def match_log_px(
    key: Array | None,
    x: Array,
    *,
    model: LatentVariableModel,
    return_diagnostics: bool = False,
) -> Array | tuple[Array, Diagnostics]:
    """Match score -KL(q(z|x) || N(0, I)) of one example, in nats.

    .. note::
        Sign convention: the score is MINUS the KL divergence, so that, like a
        log-likelihood, higher means more normal (an encoding that matches the
        prior) and the anomaly threshold is applied the same way. It is <= 0, and 0
        only when q(z|x) = N(0, I). It is not an estimate of log p(x): it ignores
        the decoder, and compares q with N(0, I) whatever ``model.log_prior`` is.
        It is exact (closed form for Gaussians) and deterministic; ``key`` is
        unused and accepted for a signature common to all estimators.

    Args:
        key: unused (may be None).
        x: one example.
        model: a :class:`LatentVariableModel` (only ``proposal`` is called).
        return_diagnostics: also return :class:`Diagnostics`: standard error 0,
            ESS and k-hat NaN (there are no weights).

    Returns:
        -KL(q(z|x) || N(0, I)), a scalar (and the diagnostics if asked).
    """
    del key
    mean, std = model.proposal(x)
    score = -kl_to_standard_normal(mean, std)
    if return_diagnostics:
        nan = jnp.full_like(score, jnp.nan)
        return score, Diagnostics(standard_error=jnp.zeros_like(score), ess=nan, k_hat=nan)
    return score
