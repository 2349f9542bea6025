"""One entry point, :func:`log_px`, for every estimator over a batch of examples."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import Array
from jax.sharding import Mesh

from jaxmed.likelihood.ais import ais_log_px
from jaxmed.likelihood.diagnostics import Diagnostics
from jaxmed.likelihood.importance import importance_log_px, mc_log_px
from jaxmed.likelihood.interface import LatentVariableModel
from jaxmed.likelihood.match import match_log_px
from jaxmed.likelihood.mcmc import mcmc_log_px

ESTIMATORS: dict[str, Callable[..., Array | tuple[Array, Diagnostics]]] = {
    "mc": mc_log_px,
    "importance": importance_log_px,
    "mcmc": mcmc_log_px,
    "ais": ais_log_px,
    "match": match_log_px,
}
"""Per-example estimators by method name: ``f(key, x, *, model, ...)``."""

_SAMPLE_FREE = frozenset({"match"})


def log_px(
    key: Array,
    model: LatentVariableModel,
    xs: Array,
    *,
    method: str,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
    **method_options,
) -> Array | tuple[Array, Diagnostics]:
    """log p(x) in nats for each example of a batch.

    The per-example estimator ``ESTIMATORS[method]`` is vmapped over the batch, so a
    batch is one program: x is encoded once per example and the decoder sees
    ``batch * chunk_size`` latents at a time. jit-compatible (wrap it in
    ``jax.jit`` with the options bound, e.g. through ``functools.partial``).

    Methods (see each function for its options and what it estimates):

    - ``"importance"`` (:func:`importance_log_px`): the IWAE bound, log-mean of
      p(z) p(x|z) / q(z|x) over z ~ q(z|x); a lower bound in expectation.
    - ``"mc"`` (:func:`mc_log_px`): log-mean of p(x|z) over z ~ q(z|x); estimates
      log E_q[p(x|z)], NOT log p(x).
    - ``"mcmc"`` (:func:`mcmc_log_px`): NUTS/HMC posterior samples, a fitted q,
      reciprocal importance sampling.
    - ``"ais"`` (:func:`ais_log_px`): annealed importance sampling, the reference.
    - ``"match"`` (:func:`match_log_px`): -KL(q(z|x) || N(0, I)), higher = more
      normal; not a log-likelihood, and ``num_samples`` is not needed.

    Args:
        key: PRNG key; example b uses ``jax.random.split(key, batch)[b]``.
        model: a :class:`LatentVariableModel`.
        xs: ``(batch, ...)`` examples.
        method: a key of :data:`ESTIMATORS`.
        num_samples: samples (or AIS chains) per example; required except for
            ``"match"``.
        chunk_size: samples per example evaluated at once (bounds memory; the
            result does not depend on it).
        return_diagnostics: also return :class:`Diagnostics` with ``(batch,)``
            fields.
        mesh: shard the sample axis (samples, AIS chains, MCMC chains) over all
            devices of this mesh; the result is the same as on one device up to
            floating-point summation order.
        **method_options: passed to the estimator, e.g. ``num_steps`` for ``"ais"``
            or ``num_warmup`` for ``"mcmc"``.

    Returns:
        ``(batch,)`` log p(x) estimates in nats (in the dtype of the model's
        computation: float32 unless 64-bit is enabled); with
        ``return_diagnostics``, a pair ``(estimates, Diagnostics)``.

    Raises:
        ValueError: for an unknown method, a missing ``num_samples``, or options the
            estimator rejects.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"log_px: unknown method {method!r}; choose from {sorted(ESTIMATORS)}")
    options = dict(model=model, return_diagnostics=return_diagnostics, **method_options)
    if method in _SAMPLE_FREE:
        if mesh is not None:
            raise ValueError(f"log_px: method {method!r} draws no samples; mesh does not apply")
    else:
        if num_samples is None:
            raise ValueError(f"log_px: method {method!r} needs num_samples")
        options.update(num_samples=num_samples, chunk_size=chunk_size, mesh=mesh)
    estimator = ESTIMATORS[method]

    def one(key, x):
        return estimator(key, x, **options)

    keys = jax.random.split(key, xs.shape[0])
    return jax.vmap(one)(keys, xs)
