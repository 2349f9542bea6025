"""The NumPyro model + guide adapter, checked against the same model written by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from jaxmed.likelihood import LatentVariableModel, log_px, numpyro_latent_model
from jaxmed.models import LinearGaussian


@pytest.fixture(scope="module")
def models():
    reference = LinearGaussian.random(
        jax.random.key(1), data_dim=5, latent_dim=3, noise_std=0.4, proposal_shift=0.3, proposal_scale=1.0
    )
    plain = LinearGaussian(reference.weight, reference.bias, reference.noise_std)

    def model(x=None):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(reference.weight @ z + reference.bias, reference.noise_std).to_event(1), obs=x)

    def guide(x):
        shift = numpyro.param("shift", jnp.zeros(3))  # learned; substituted from params
        mean, std = plain.proposal(x)
        numpyro.sample("z", dist.Normal(mean + shift, std).to_event(1))

    adapted = numpyro_latent_model(model, guide, params={"shift": jnp.full(3, 0.3)})
    return reference, adapted


def test_adapter_densities_equal_the_hand_written_model(models):
    reference, adapted = models
    assert isinstance(adapted, LatentVariableModel)
    z, x = reference.sample(jax.random.key(2))
    np.testing.assert_allclose(adapted.log_prior(z), reference.log_prior(z), rtol=1e-6)
    np.testing.assert_allclose(adapted.log_likelihood(x, z), reference.log_likelihood(x, z), rtol=1e-6)
    for got, expected in zip(adapted.proposal(x), reference.proposal(x)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_adapter_gives_the_same_estimates_under_jit(models):
    reference, adapted = models
    _, xs = jax.vmap(reference.sample)(jax.random.split(jax.random.key(3), 3))
    run = jax.jit(lambda key, m, xs: log_px(key, m, xs, method="importance", num_samples=64, chunk_size=16))
    np.testing.assert_allclose(run(jax.random.key(4), adapted, xs), run(jax.random.key(4), reference, xs), rtol=1e-5)


def _model_with(extra_latent=False, observed=True):
    def model(x=None):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        if extra_latent:
            z = z * numpyro.sample("w", dist.HalfNormal(1.0))
        numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x if observed else None)

    return model


def _diagonal_guide(x):
    numpyro.sample("z", dist.Normal(x, 1.0).to_event(1))


def test_adapter_errors_name_the_problem():
    x, z = jnp.zeros(2), jnp.zeros(2)

    def full_cov_guide(x):
        numpyro.sample("z", dist.MultivariateNormal(x, jnp.eye(2)))

    with pytest.raises(ValueError, match="must be a diagonal Normal .* got MultivariateNormal"):
        numpyro_latent_model(_model_with(), full_cov_guide).proposal(x)
    with pytest.raises(ValueError, match=r"latent sample sites \['w'\] besides 'z'"):
        numpyro_latent_model(_model_with(extra_latent=True), _diagonal_guide).log_likelihood(x, z)
    with pytest.raises(ValueError, match="'x' is not observed"):
        numpyro_latent_model(_model_with(observed=False), _diagonal_guide).log_likelihood(x, z)
    with pytest.raises(ValueError, match="no latent sample site 'code'"):
        numpyro_latent_model(_model_with(), _diagonal_guide, latent_site="code").log_prior(z)
