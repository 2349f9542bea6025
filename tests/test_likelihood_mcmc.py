"""MCMC (NumPyro NUTS, vmapped) + reciprocal importance sampling against exact log p(x)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scipy_exact_log_px
import scipy.stats

from jaxmed.likelihood import log_px, mcmc_log_px
from jaxmed.likelihood.mcmc import _fit_factor, _log_q
from jaxmed.models import LinearGaussian

# Stated tolerance: the estimate is within 4 of its standard errors + 0.02 nats of
# the exact value (MCMC bias from finite warm-up is below 0.02 nats here).
TOL_SE, TOL_ABS = 4.0, 0.02


@pytest.fixture(scope="module")
def problem():
    model = LinearGaussian.random(
        jax.random.key(1), data_dim=6, latent_dim=3, noise_std=0.5,
        proposal_shift=0.3, proposal_scale=1.5,
    )
    _, xs = jax.vmap(model.sample)(jax.random.split(jax.random.key(6), 4))
    exact = scipy_exact_log_px(model, xs)
    return model, xs, exact


OPTIONS = dict(method="mcmc", num_samples=400, num_chains=4, num_warmup=200, return_diagnostics=True)


@pytest.fixture(scope="module")
def unsharded(problem):
    model, xs, _ = problem
    return jax.jit(partial(log_px, **OPTIONS))(jax.random.key(7), model, xs)


def test_nuts_estimate_within_stated_tolerance(problem, unsharded):
    _, _, exact = problem
    estimate, diag = unsharded
    error = np.asarray(estimate) - exact
    assert np.all(np.abs(error) < TOL_SE * diag.standard_error + TOL_ABS), (error, diag.standard_error)
    assert np.all(diag.standard_error < 0.05) and np.all(diag.k_hat < 0.7)


def test_chains_sharded_over_four_devices_agree(problem, unsharded):
    model, xs, exact = problem
    mesh = jax.make_mesh((4,), ("chains",))
    estimate, diag = jax.jit(partial(log_px, mesh=mesh, **OPTIONS))(jax.random.key(7), model, xs)
    error = np.asarray(estimate) - exact
    assert np.all(np.abs(error) < TOL_SE * diag.standard_error + TOL_ABS)
    # Same chains up to rounding-driven divergence: equal within the joint error.
    joint = np.hypot(diag.standard_error, unsharded[1].standard_error)
    assert np.all(np.abs(estimate - unsharded[0]) < 4 * joint + 1e-3)


@pytest.mark.parametrize("density", ["gaussian", "student_t"])
def test_fitted_density_matches_scipy(density, rng):
    mean = rng.normal(size=3)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)  # well conditioned: no eigenvalue reaches the floor
    chol = _fit_factor(jnp.asarray(cov), density=density, student_t_df=5.0, fit_scale=0.8, min_variance=1e-9)
    zs = rng.normal(size=(5, 3)) * 2
    got = jax.vmap(lambda z: _log_q(z, jnp.asarray(mean), chol, density=density, student_t_df=5.0))(
        jnp.asarray(zs, jnp.float32))
    target = 0.8 * cov
    if density == "gaussian":
        expected = scipy.stats.multivariate_normal(mean, target).logpdf(zs)
    else:  # moment-matched: covariance of the t equals the target
        expected = scipy.stats.multivariate_t(mean, target * 3 / 5, df=5).logpdf(zs)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_fitted_density_of_an_indefinite_covariance_is_the_floored_one(rng):
    # Chains that moved along one line: a rank-1 covariance, made slightly
    # indefinite as float32 running sums make it (a Cholesky factor is NaN).
    u = rng.normal(size=4)
    cov = np.outer(u, u) - 1e-7 * np.eye(4)
    assert np.isnan(jnp.linalg.cholesky(jnp.asarray(cov, jnp.float32))).any()
    mean = rng.normal(size=4)
    chol = _fit_factor(jnp.asarray(cov, jnp.float32), density="gaussian", student_t_df=5.0, fit_scale=1.0,
                       min_variance=0.0)
    # The same spectrum with the eigenvalues below 1e-6 x their mean raised to it, in float64.
    w, v = np.linalg.eigh(cov)
    w = np.maximum(w, 1e-6 * np.abs(w).sum() / 4)
    zs = mean + rng.normal(size=(5, 4)) * 1e-3
    expected = scipy.stats.multivariate_normal(mean, (v * w) @ v.T).logpdf(zs)
    got = np.asarray(jax.vmap(lambda z: _log_q(z, jnp.asarray(mean, jnp.float32), chol, density="gaussian",
                                               student_t_df=5.0))(jnp.asarray(zs, jnp.float32)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-3)


def test_bad_options_are_rejected(problem):
    model, xs, _ = problem
    x = xs[0]
    run = partial(mcmc_log_px, jax.random.key(0), x, model=model, num_warmup=2)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        run(num_samples=10, num_chains=4)
    with pytest.raises(ValueError, match="algo must be one of"):
        run(num_samples=8, algo="MALA")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        run(num_samples=8, chunk_size=0)
    with pytest.raises(ValueError, match="density must be one of"):
        run(num_samples=8, density="laplace")
    with pytest.raises(ValueError, match="student_t_df must be > 2"):
        run(num_samples=8, density="student_t", student_t_df=2.0)
    with pytest.raises(ValueError, match="multiple of the mesh size"):
        run(num_samples=6, num_chains=3, mesh=jax.make_mesh((4,), ("chains",)))
