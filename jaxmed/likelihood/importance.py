"""Estimators that sample the proposal q(z|x): importance sampling and plain Monte Carlo."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import Array
from jax.sharding import Mesh

from jaxmed.likelihood import _reduce
from jaxmed.likelihood._gaussian import diag_normal_sample
from jaxmed.likelihood.diagnostics import Diagnostics
from jaxmed.likelihood.interface import LatentVariableModel


def _proposal_estimate(
    key: Array,
    x: Array,
    model: LatentVariableModel,
    log_weight: Callable[[Array, Array], Array],
    *,
    method: str,
    num_samples: int,
    chunk_size: int | None,
    return_diagnostics: bool,
    mesh: Mesh | None,
) -> Array | tuple[Array, Diagnostics]:
    """log (1/N) sum_i w_i with ``log w_i = log_weight(z_i, log q(z_i|x))``, z_i ~ q(z|x)."""
    _reduce.validate_sampling(num_samples, chunk_size, method)
    mean, std = model.proposal(x)  # x is encoded once, outside the sample loop

    def one(key):
        return log_weight(*diag_normal_sample(key, mean, std))

    return _reduce.log_mean_estimate(
        jax.vmap(one), key, num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh,
    )


def importance_log_px(
    key: Array,
    x: Array,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
) -> Array | tuple[Array, Diagnostics]:
    """Importance-sampling estimate of log p(x) (the IWAE bound), one example.

    log p(x) ~ log (1/N) sum_i p(z_i) p(x|z_i) / q(z_i|x),  z_i ~ q(z|x).

    The mean of the weights is unbiased for p(x), so its log is a stochastic lower
    bound on log p(x) (Jensen) that tightens as N grows (Burda et al. 2016). x is
    encoded once; the N samples are decoded in chunks.

    Args:
        key: PRNG key; sample i uses ``fold_in(key, i)``.
        x: one example, in the shape ``model`` expects.
        model: a :class:`LatentVariableModel`.
        num_samples: N, the number of proposal samples.
        chunk_size: samples decoded at once (per device); None for all N at once.
            Memory is O(chunk_size); the result does not depend on it.
        return_diagnostics: also return :class:`Diagnostics` of the weights.
        mesh: shard the N samples over all devices of this mesh.

    Returns:
        log p(x) in nats, a scalar (and the diagnostics if asked).

    References:
        Burda, Grosse, Salakhutdinov (2016). Importance weighted autoencoders. ICLR.
    """
    return _proposal_estimate(
        key, x, model, lambda z, log_q: model.log_prior(z) + model.log_likelihood(x, z) - log_q,
        method="importance", num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh,
    )


def mc_log_px(
    key: Array,
    x: Array,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
) -> Array | tuple[Array, Diagnostics]:
    """Monte-Carlo "likelihood" log (1/N) sum_i p(x|z_i), z_i ~ q(z|x), one example.

    .. note::
        This is NOT an estimate of log p(x). Its mean (inside the log) is
        E_{q(z|x)}[p(x|z)], the expected likelihood of x under codes drawn from the
        encoder; it ignores the prior, so it does not penalise a posterior that
        sits far from N(0, I). It converges to log E_q[p(x|z)] as N grows, from
        below. It is offered because it is the "reconstruction probability" score
        used by VAE anomaly detectors (An & Cho 2015) and so a baseline that
        papers report; it is cheap and needs no prior.

    Args:
        key: PRNG key; sample i uses ``fold_in(key, i)``.
        x: one example.
        model: a :class:`LatentVariableModel`.
        num_samples: N.
        chunk_size: samples decoded at once (per device); None for all at once.
        return_diagnostics: also return :class:`Diagnostics` of the p(x|z_i).
        mesh: shard the N samples over all devices of this mesh.

    Returns:
        log (1/N) sum_i p(x|z_i) in nats, a scalar (and the diagnostics if asked).

    References:
        An & Cho (2015). Variational autoencoder based anomaly detection using
        reconstruction probability. SNU Data Mining Center, Special Lecture on IE.
    """
    return _proposal_estimate(
        key, x, model, lambda z, log_q: model.log_likelihood(x, z),
        method="mc", num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh,
    )
