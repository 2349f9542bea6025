"""Importance sampling, plain MC and the match score against closed forms.

The linear-Gaussian model has an exact log p(x); its proposal is deliberately
imperfect (shifted and widened diagonal of the exact posterior). Sampling
estimators must land within a few of their own standard errors of the truth, and
give the same numbers under jit, vmap, chunking and sharding over 4 devices.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scipy_exact_log_px
import scipy.stats
from numpyro.infer.importance import _psis_khat

from jaxmed.likelihood import (
    effective_sample_size,
    importance_log_px,
    log_mean_standard_error,
    log_px,
    match_log_px,
    psis_khat,
)
from jaxmed.models import LinearGaussian

SHIFT, SCALE = 0.3, 1.5


@pytest.fixture(scope="module")
def model():
    return LinearGaussian.random(
        jax.random.key(1), data_dim=6, latent_dim=3, noise_std=0.5,
        proposal_shift=SHIFT, proposal_scale=SCALE,
    )


@pytest.fixture(scope="module")
def xs(model):
    _, xs = jax.vmap(model.sample)(jax.random.split(jax.random.key(2), 4))
    return xs


_exact = scipy_exact_log_px


def test_importance_converges_to_exact_log_px(model, xs):
    f = jax.jit(partial(log_px, method="importance", num_samples=4000, chunk_size=1000, return_diagnostics=True))
    estimate, diag = f(jax.random.key(3), model, xs)
    exact = _exact(model, xs)
    assert estimate.shape == (4,) and estimate.dtype == jnp.float32
    assert np.all(np.abs(estimate - exact) < 4 * diag.standard_error), (estimate - exact, diag.standard_error)
    # A widened proposal has light-tailed weights: reliable by PSIS.
    assert np.all(diag.k_hat < 0.5) and np.all(diag.ess > 100)
    # With one sample the estimate is an ELBO: below the truth on average.
    elbo = log_px(
        jax.random.key(4), model, jnp.repeat(xs[:1], 200, axis=0), method="importance", num_samples=1
    )
    assert float(jnp.mean(elbo)) < exact[0] - 0.1


def test_mc_matches_its_closed_form(model, xs):
    # E_q[N(x; Wz + b, s^2 I)] with z ~ N(m, diag(v)) is N(x; Wm + b, W diag(v) W^T + s^2 I).
    f = jax.jit(partial(log_px, method="mc", num_samples=4000, chunk_size=1000, return_diagnostics=True))
    estimate, diag = f(jax.random.key(5), model, xs)
    w, b, s = (np.asarray(a, np.float64) for a in (model.weight, model.bias, model.noise_std))
    for x, got, se in zip(np.asarray(xs), estimate, diag.standard_error):
        mean, std = (np.asarray(a, np.float64) for a in model.proposal(jnp.asarray(x)))
        expected = scipy.stats.multivariate_normal(w @ mean + b, w @ np.diag(std**2) @ w.T + s**2 * np.eye(6)).logpdf(x)
        assert abs(got - expected) < 4 * se, (got, expected, se)
    # It is not log p(x): it ignores the prior, so it differs by far more than its error.
    assert np.all(np.abs(estimate - _exact(model, xs)) > 10 * diag.standard_error)


def test_match_is_minus_closed_form_kl(model, xs):
    score = log_px(jax.random.key(0), model, xs, method="match")
    for x, got in zip(np.asarray(xs), score):
        mean, std = (np.asarray(a, np.float64) for a in model.proposal(jnp.asarray(x)))
        cov = np.diag(std**2)
        # KL(N(m, C) || N(0, I)) = (tr C + m^T m - d - log det C) / 2, matrix form.
        kl = 0.5 * (np.trace(cov) + mean @ mean - 3 - np.linalg.slogdet(cov)[1])
        np.testing.assert_allclose(got, -kl, rtol=1e-5)
    assert np.all(score <= 0)
    _, diag = match_log_px(None, xs[0], model=model, return_diagnostics=True)
    assert diag.standard_error == 0 and np.isnan(diag.k_hat)


def test_same_numbers_under_jit_vmap_chunking_and_devices(model, xs):
    method = "importance"
    key = jax.random.key(6)
    run = partial(log_px, method=method, num_samples=103)
    reference = jax.jit(run)(key, model, xs)
    # One image at a time (a Python loop over the per-example function).
    keys = jax.random.split(key, xs.shape[0])
    per_example = jax.jit(partial(importance_log_px, num_samples=103))
    looped = [per_example(k, x, model=model) for k, x in zip(keys, xs)]
    np.testing.assert_allclose(looped, reference, rtol=1e-6)
    np.testing.assert_allclose(run(key, model, xs, chunk_size=10), reference, rtol=1e-6)  # not jitted
    mesh = jax.make_mesh((4,), ("samples",))
    sharded = jax.jit(partial(run, chunk_size=7, mesh=mesh))(key, model, xs)
    np.testing.assert_allclose(sharded, reference, rtol=1e-6)


def test_streamed_diagnostics_equal_whole_vector_diagnostics(model, xs):
    # Recompute the 500 log weights of image 0 by hand (sample i uses fold_in(key, i))
    # and compare the chunked, sharded running diagnostics with numpy/numpyro on them.
    key = jax.random.key(7)
    n = 500
    x = xs[0]
    mean, std = model.proposal(x)
    eps = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (3,)))(jnp.arange(n))
    z = mean[None, :] + std[None, :] * eps
    log_q = scipy.stats.norm(np.asarray(mean), np.asarray(std)).logpdf(np.asarray(z)).sum(1)
    log_joint = jax.vmap(lambda z: model.log_prior(z) + model.log_likelihood(x, z))(z)
    log_w = np.asarray(log_joint, np.float64) - log_q
    mesh = jax.make_mesh((4,), ("samples",))
    estimate, diag = jax.jit(
        partial(importance_log_px, num_samples=n, chunk_size=32, mesh=mesh, return_diagnostics=True)
    )(key, x, model=model)
    w = np.exp(log_w - log_w.max())
    np.testing.assert_allclose(estimate, np.log(w.mean()) + log_w.max(), rtol=1e-5)
    np.testing.assert_allclose(diag.ess, w.sum() ** 2 / (w**2).sum(), rtol=1e-3)
    np.testing.assert_allclose(diag.standard_error, w.std(ddof=1) / np.sqrt(n) / w.mean(), rtol=1e-3)
    np.testing.assert_allclose(diag.k_hat, _psis_khat(log_w), atol=2e-3)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_psis_khat_matches_numpyro(sigma, rng):
    # Log-normal weights: k-hat grows with sigma (heavier tails).
    log_w = rng.normal(size=2000) * sigma
    np.testing.assert_allclose(jax.jit(psis_khat)(jnp.asarray(log_w)), _psis_khat(log_w), atol=2e-3)
    w = np.exp(log_w)
    np.testing.assert_allclose(effective_sample_size(jnp.asarray(log_w)), w.sum() ** 2 / (w**2).sum(), rtol=1e-4)
    np.testing.assert_allclose(
        log_mean_standard_error(jnp.asarray(log_w)), w.std(ddof=1) / np.sqrt(2000) / w.mean(), rtol=1e-4
    )


def test_psis_khat_flags_heavy_tails(rng):
    # Pareto(alpha) weights have tail shape k = 1 / alpha.
    for alpha, k in [(4.0, 0.25), (1.25, 0.8)]:
        log_w = np.log(rng.pareto(alpha, size=4000) + 1)
        assert abs(float(psis_khat(jnp.asarray(log_w))) - k) < 0.15


def test_float64_run_is_exact_where_the_proposal_is_the_posterior():
    # Orthogonal columns make the posterior diagonal, so the unshifted proposal IS
    # the posterior and every importance weight equals p(x): the estimate is exact
    # up to rounding. x far from the mean makes log p(x) large, where float32 loses
    # digits and float64 must not.
    with jax.enable_x64(True):
        q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 3)))
        model = LinearGaussian(jnp.asarray(q * [3.0, 2.0, 0.5]), jnp.zeros(8), 0.01)
        xs = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8)) * 3.0)
        exact = _exact(model, xs)
        got = log_px(jax.random.key(8), model, xs, method="importance", num_samples=64, chunk_size=16)
        assert got.dtype == jnp.float64
        assert np.all(np.abs(exact) > 1e4)
        np.testing.assert_allclose(got, exact, rtol=1e-10)  # float32: ~1e-3
        np.testing.assert_allclose(jax.vmap(model.exact_log_px)(xs), exact, rtol=1e-10)
        match = log_px(jax.random.key(0), model, xs, method="match")
        assert match.dtype == jnp.float64


def test_bad_options_are_rejected(model, xs):
    with pytest.raises(ValueError, match="unknown method 'iwae'"):
        log_px(jax.random.key(0), model, xs, method="iwae", num_samples=10)
    with pytest.raises(ValueError, match="needs num_samples"):
        log_px(jax.random.key(0), model, xs, method="importance")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        log_px(jax.random.key(0), model, xs, method="mc", num_samples=10, chunk_size=0)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        log_px(jax.random.key(0), model, xs, method="importance", num_samples=0)
