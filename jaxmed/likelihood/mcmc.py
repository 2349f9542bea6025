"""log p(x) by MCMC on the posterior and reciprocal importance sampling.

Chains sample p(z|x) with NumPyro's HMC/NUTS kernels in functional form
(``numpyro.infer.hmc.hmc``), vmapped over chains (and, through
:func:`jaxmed.likelihood.log_px`, over images: one compiled program for a batch,
not one ``MCMC`` object per image). A density q(z) is fitted to a first segment of
posterior samples; a second, independent segment of the same chains gives

    1/p(x) = E_{p(z|x)}[ q(z) / (p(z) p(x|z)) ]      (q normalised),

so log p(x) ~ -log (1/N) sum_i q(z_i) / (p(z_i) p(x|z_i)) (reciprocal importance
sampling, Gelfand & Dey 1994). The estimator has finite variance only when q has
LIGHTER tails than the posterior: for a Gaussian posterior with covariance S and a
Gaussian q with covariance C, when C < 2 S. A Gaussian q fitted to the samples
satisfies this up to estimation error (``fit_scale`` < 1 adds a margin). A Student-t
q is for heavy-tailed posteriors only: on a light-tailed (e.g. Gaussian) posterior
the estimator's variance is infinite, which a finite run may not reveal, not even
through k-hat.

References:
    Gelfand & Dey (1994). Bayesian model choice: asymptotics and exact calculations.
    JRSS B 56(3).
    Hoffman & Gelman (2014). The No-U-Turn sampler. JMLR 15.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array
from jax.sharding import Mesh
from numpyro.infer.hmc import hmc

from jaxmed.likelihood import _reduce
from jaxmed.likelihood._gaussian import diag_normal_sample
from jaxmed.likelihood.diagnostics import Diagnostics
from jaxmed.likelihood.interface import LatentVariableModel


def _fit_factor(cov: Array, *, density: str, student_t_df: float, fit_scale: float, min_variance: Array) -> Array:
    """Lower-triangular scale factor of q, matching ``fit_scale * cov``.

    The Student-t scale matrix is the covariance times (df - 2) / df.

    ``cov`` comes from running sums in the working precision; when the chains
    barely moved along some direction it is singular or, after rounding,
    slightly indefinite (seen in float32: smallest eigenvalue -1e-7 against a
    trace of 0.5), and a Cholesky factor would be NaN. So its eigenvalues are
    floored at ``1e-6`` times their mean (or at ``min_variance``, scaled like
    the covariance, when larger)
    and the triangular factor is taken by a QR decomposition of the
    eigen-factor, which is finite for any floored spectrum.
    """
    d = cov.shape[0]
    scale2 = fit_scale * (1.0 if density == "gaussian" else (student_t_df - 2) / student_t_df)
    w, v = jnp.linalg.eigh(scale2 * (cov + cov.T) / 2)
    w = jnp.maximum(w, jnp.maximum(1e-6 * jnp.sum(jnp.abs(w)) / d, scale2 * min_variance))
    # (V sqrt(W))^T = Q R, so V W V^T = R^T R: R^T is a Cholesky factor (up to signs).
    r = jnp.linalg.qr((v * jnp.sqrt(w)[None, :]).T, mode="r")
    return (r * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[:, None]).T


def _log_q(z: Array, loc: Array, chol: Array, *, density: str, student_t_df: float) -> Array:
    """log q(z) for one ``(d,)`` z, q with location ``loc`` and scale factor ``chol``."""
    if density == "gaussian":
        return dist.MultivariateNormal(loc, scale_tril=chol).log_prob(z)
    return dist.MultivariateStudentT(student_t_df, loc, chol).log_prob(z)


_DENSITIES = ("gaussian", "student_t")
_ALGOS = ("NUTS", "HMC")


def _validate(num_samples, num_chains, num_warmup, num_fit_samples, algo, density, student_t_df, fit_scale, mesh):
    if not isinstance(num_chains, (int, np.integer)) or num_chains < 1:
        raise ValueError(f"mcmc: num_chains must be a positive int, got {num_chains!r}")
    if num_samples % num_chains:
        raise ValueError(f"mcmc: num_samples ({num_samples}) must be a multiple of num_chains ({num_chains})")
    if num_fit_samples % num_chains or num_fit_samples < 2 * num_chains:
        raise ValueError(
            f"mcmc: num_fit_samples ({num_fit_samples}) must be a multiple of num_chains "
            f"({num_chains}) and at least 2 per chain"
        )
    if not isinstance(num_warmup, (int, np.integer)) or num_warmup < 0:
        raise ValueError(f"mcmc: num_warmup must be a non-negative int, got {num_warmup!r}")
    if algo not in _ALGOS:
        raise ValueError(f"mcmc: algo must be one of {_ALGOS}, got {algo!r}")
    if density not in _DENSITIES:
        raise ValueError(f"mcmc: density must be one of {_DENSITIES}, got {density!r}")
    if density == "student_t" and not student_t_df > 2:
        raise ValueError(f"mcmc: student_t_df must be > 2 (finite covariance), got {student_t_df!r}")
    if not fit_scale > 0:
        raise ValueError(f"mcmc: fit_scale must be > 0, got {fit_scale!r}")
    if mesh is not None and num_chains % mesh.size:
        raise ValueError(f"mcmc: num_chains ({num_chains}) must be a multiple of the mesh size ({mesh.size})")


def mcmc_log_px(
    key: Array,
    x: Array,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_fit_samples: int | None = None,
    algo: str = "NUTS",
    step_size: float = 1.0,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    num_steps: int | None = None,
    dense_mass: bool = False,
    density: str = "gaussian",
    student_t_df: float = 5.0,
    fit_scale: float = 1.0,
) -> Array | tuple[Array, Diagnostics]:
    """MCMC + reciprocal importance sampling estimate of log p(x), one example.

    Args:
        key: PRNG key; chain c uses ``fold_in(key, c)``.
        x: one example.
        model: a :class:`LatentVariableModel`; the chains start at draws from its
            proposal.
        num_samples: N, posterior samples used in the estimate (N / num_chains per
            chain, drawn after the fitting segment).
        chunk_size: unused: samples are consumed as they are drawn, so memory is
            O(num_chains) whatever N; accepted for a signature common to all
            estimators.
        return_diagnostics: also return :class:`Diagnostics` of the reciprocal
            weights q(z_i) / (p(z_i) p(x|z_i)).
        mesh: shard the chains over all devices of this mesh (num_chains must be a
            multiple of its size); the fitting sums are summed over devices.
            Chains are chaotic: the last-bit rounding differences between a
            batch of 4 chains on one device and 1 chain per device grow into
            different trajectories, so sharded and unsharded runs agree in
            distribution (within their standard errors), not to the last digit.
        num_chains: independent chains.
        num_warmup: warm-up (adaptation) iterations per chain, discarded.
        num_fit_samples: samples (all chains together) that q is fitted to;
            defaults to N.
        algo: ``"NUTS"`` or ``"HMC"`` (NumPyro's kernels).
        step_size: initial step size, adapted during warm-up (dual averaging).
        target_accept_prob: the step-size adaptation's target.
        max_tree_depth: NUTS tree depth limit.
        num_steps: HMC only: fixed leapfrog steps per iteration (None: NumPyro's
            trajectory length 2 pi).
        dense_mass: adapt a dense (instead of diagonal) mass matrix.
        density: q's family, ``"gaussian"`` (default) or ``"student_t"``.
        student_t_df: degrees of freedom of the Student-t q (> 2).
        fit_scale: multiplies q's covariance; < 1 narrows q, which keeps the
            estimator's variance finite when the fitted covariance overshoots.

    Returns:
        log p(x) in nats, a scalar; and the diagnostics if asked.
    """
    _reduce.validate_sampling(num_samples, chunk_size, "mcmc")
    num_fit_samples = num_samples if num_fit_samples is None else num_fit_samples
    _validate(num_samples, num_chains, num_warmup, num_fit_samples, algo, density, student_t_df, fit_scale, mesh)
    samples_per_chain = num_samples // num_chains
    fit_per_chain = num_fit_samples // num_chains
    num_top = _reduce.num_top_for(num_samples, return_diagnostics)

    mean, std = model.proposal(x)

    def potential(z):
        return -(model.log_prior(z) + model.log_likelihood(x, z))

    init_kernel, sample_kernel = hmc(potential_fn=potential, algo=algo)
    sample_chains = jax.vmap(sample_kernel)
    hmc_options = dict(
        step_size=step_size, target_accept_prob=target_accept_prob, dense_mass=dense_mass,
        max_tree_depth=max_tree_depth, num_steps=num_steps,
    )
    if algo == "HMC" and num_steps is not None:
        # A fixed number of steps with the adapted step size (NumPyro otherwise
        # rescales the step to a fixed trajectory length).
        hmc_options["trajectory_length"] = None

    num_fit = fit_per_chain * num_chains
    fit_end = num_warmup + fit_per_chain
    # Sums are taken about the proposal mean, a constant near the posterior mean,
    # so that the covariance (S2 - S1 S1^T / n) does not cancel catastrophically.
    centre = jax.lax.stop_gradient(mean)
    # q's variance floor should chains not move at all: a millionth of the proposal's.
    min_variance = 1e-6 * jnp.mean(jnp.square(jax.lax.stop_gradient(std)))

    def run(key, first_chain, num_local_chains, axes=None):
        """Weight stats of chains first_chain, ..., first_chain + num_local_chains - 1.

        ``axes``: the mesh axes the fitting sums are summed over (None: one device).
        """
        chain_ids = first_chain + jnp.arange(num_local_chains)
        chain_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, chain_ids)
        start_keys, kernel_keys = jnp.moveaxis(jax.vmap(jax.random.split)(chain_keys), 1, 0)
        z0 = jax.vmap(lambda k: diag_normal_sample(k, mean, std)[0])(start_keys)
        state = jax.vmap(
            lambda z, k: init_kernel(z, num_warmup, rng_key=k, **hmc_options)
        )(z0, kernel_keys)
        dtype = state.potential_energy.dtype
        d = mean.shape[0]

        # One loop over warm-up, fitting and estimating iterations: NumPyro's NUTS
        # is traced once (tracing it dominates compile time). q is fitted once,
        # from the running sums at the last fitting iteration (with a mesh, the
        # only iteration whose sums cross devices), so no samples are stored:
        # memory is O(num_chains * d^2) for any N.
        def fit(sum_dz, sum_dz2):
            total_dz, total_dz2 = (sum_dz, sum_dz2) if axes is None else jax.lax.psum((sum_dz, sum_dz2), axes)
            mean_dz = total_dz / num_fit
            cov = (total_dz2 - num_fit * jnp.outer(mean_dz, mean_dz)) / (num_fit - 1)
            chol = _fit_factor(cov, density=density, student_t_df=student_t_df, fit_scale=fit_scale,
                               min_variance=min_variance)
            return centre + mean_dz, chol

        def body(i, carry):
            state, sum_dz, sum_dz2, q, stats = carry
            state = sample_chains(state)
            dz = state.z - centre[None, :]
            fitting = (i >= num_warmup) & (i < fit_end)
            sum_dz = sum_dz + jnp.where(fitting, jnp.sum(dz, axis=0), 0.0)
            sum_dz2 = sum_dz2 + jnp.where(fitting, dz.T @ dz, 0.0)
            q = jax.lax.cond(i == fit_end - 1, fit, lambda *_: q, sum_dz, sum_dz2)

            def add_weights(stats):
                log_q = jax.vmap(lambda z: _log_q(z, *q, density=density, student_t_df=student_t_df))
                # potential_energy = -log p(z) - log p(x|z) at the new z: no extra pass.
                return _reduce.add_log_weights(stats, log_q(state.z) + state.potential_energy)

            stats = jax.lax.cond(i >= fit_end, add_weights, lambda stats: stats, stats)
            return state, sum_dz, sum_dz2, q, stats

        carry = (
            state, jnp.zeros((d,), dtype), jnp.zeros((d, d), dtype), (centre, jnp.eye(d, dtype=dtype)),
            _reduce.empty_stats(num_top, dtype),
        )
        *_, stats = jax.lax.fori_loop(0, fit_end + samples_per_chain, body, carry)
        return stats

    if mesh is None:
        stats = run(key, 0, num_chains)
    else:
        local = num_chains // mesh.size
        axes = tuple(mesh.axis_names)
        stats = _reduce.over_devices(lambda key, device: run(key, device * local, local, axes), key, mesh)
    # The reciprocal weights average to 1/p(x): minus the log of their mean.
    return _reduce.finish(stats, num_samples, return_diagnostics, sign=-1)
