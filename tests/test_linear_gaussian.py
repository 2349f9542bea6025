"""LinearGaussian: exact log p(x) and posterior against independent formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxmed.likelihood import LatentVariableModel
from jaxmed.models import LinearGaussian


def _numpy_model(rng, data_dim=5, latent_dim=3):
    weight = rng.normal(size=(data_dim, latent_dim))
    bias = rng.normal(size=data_dim)
    return weight, bias, 0.7


def test_exact_log_px_matches_scipy_multivariate_normal(rng):
    weight, bias, sigma = _numpy_model(rng)
    model = LinearGaussian(weight, bias, sigma)
    xs = rng.normal(size=(4, 5)) * 2
    cov = weight @ weight.T + sigma**2 * np.eye(5)
    expected = scipy.stats.multivariate_normal(bias, cov).logpdf(xs)
    got = jax.jit(jax.vmap(model.exact_log_px))(jnp.asarray(xs, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_exact_posterior_matches_gaussian_conditioning(rng):
    # Condition the joint Gaussian of (z, x) on x (the D x D route; the model uses
    # the d x d precision route).
    weight, bias, sigma = _numpy_model(rng)
    model = LinearGaussian(weight, bias, sigma)
    x = rng.normal(size=5)
    cov_xx = weight @ weight.T + sigma**2 * np.eye(5)
    gain = weight.T @ np.linalg.inv(cov_xx)
    mean, cov = model.exact_posterior(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(mean, gain @ (x - bias), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cov, np.eye(3) - gain @ weight, rtol=1e-4, atol=1e-5)


def test_log_densities_and_bayes_rule(rng):
    # log p(z) + log p(x|z) - log p(z|x) = log p(x) at any z.
    weight, bias, sigma = _numpy_model(rng)
    model = LinearGaussian(weight, bias, sigma)
    x, z = rng.normal(size=5), rng.normal(size=3)
    np.testing.assert_allclose(
        model.log_prior(jnp.asarray(z, jnp.float32)),
        scipy.stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z), rtol=1e-6,
    )
    np.testing.assert_allclose(
        model.log_likelihood(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)),
        scipy.stats.norm(weight @ z + bias, sigma).logpdf(x).sum(), rtol=1e-5,
    )
    mean, cov = (np.asarray(a, np.float64) for a in model.exact_posterior(jnp.asarray(x, jnp.float32)))
    log_joint = (
        scipy.stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z)
        + scipy.stats.norm(weight @ z + bias, sigma).logpdf(x).sum()
    )
    log_post = scipy.stats.multivariate_normal(mean, cov).logpdf(z)
    np.testing.assert_allclose(log_joint - log_post, model.exact_log_px(jnp.asarray(x, jnp.float32)), rtol=1e-4)


def test_proposal_is_shifted_and_scaled_posterior_diagonal(rng):
    weight, bias, sigma = _numpy_model(rng)
    shift = np.array([0.5, -0.2, 0.1], np.float32)
    model = LinearGaussian(weight, bias, sigma, proposal_shift=shift, proposal_scale=2.0)
    exact = LinearGaussian(weight, bias, sigma)
    x = jnp.asarray(rng.normal(size=5), jnp.float32)
    mean, cov = exact.exact_posterior(x)
    q_mean, q_std = model.proposal(x)
    np.testing.assert_allclose(q_mean, mean + shift, rtol=1e-6)
    np.testing.assert_allclose(q_std, 2.0 * np.sqrt(np.diagonal(cov)), rtol=1e-6)
    assert isinstance(model, LatentVariableModel)


def test_sample_moments_and_pytree_through_jit(key):
    model = LinearGaussian.random(jax.random.key(3), data_dim=4, latent_dim=2, noise_std=0.3)
    zs, xs = jax.jit(jax.vmap(LinearGaussian.sample, in_axes=(None, 0)))(model, jax.random.split(key, 20000))
    assert zs.shape == (20000, 2) and xs.shape == (20000, 4)
    cov = model.weight @ model.weight.T + 0.09 * jnp.eye(4)
    # Standard errors at n = 20000: mean sqrt(var / n) <= 0.015, covariance
    # entries <= var * sqrt(2 / n) = 0.044 for the largest variance (4.4).
    np.testing.assert_allclose(xs.mean(0), model.bias, atol=0.06)
    np.testing.assert_allclose(np.cov(np.asarray(xs).T), cov, atol=0.15)
    np.testing.assert_allclose(zs.mean(0), 0.0, atol=0.03)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight=np.ones(3), bias=np.ones(3), noise_std=1.0), "weight must be"),
        (dict(weight=np.ones((3, 2)), bias=np.ones(2), noise_std=1.0), "bias must have shape"),
        (dict(weight=np.ones((3, 2)), bias=np.ones(3), noise_std=0.0), "noise_std must be > 0"),
        (dict(weight=np.ones((3, 2)), bias=np.ones(3), noise_std=1.0, proposal_scale=-1.0), "proposal_scale"),
        (dict(weight=np.ones((3, 2)), bias=np.ones(3), noise_std=1.0, proposal_shift=np.ones(3)), "proposal_shift"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearGaussian(**kwargs)
