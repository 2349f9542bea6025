"""Annealed importance sampling and BDMC on the linear-Gaussian model (exact log p(x))."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scipy_exact_log_px

from jaxmed.likelihood import (
    ais_kernel,
    ais_log_px,
    annealing_schedule,
    bdmc,
    log_px,
)
from jaxmed.models import LinearGaussian


@pytest.fixture(scope="module")
def model():
    # A deliberately poor proposal: shifted by 0.3 and 1.5x too wide.
    return LinearGaussian.random(
        jax.random.key(1), data_dim=6, latent_dim=3, noise_std=0.5,
        proposal_shift=0.3, proposal_scale=1.5,
    )


_exact = scipy_exact_log_px


def test_bdmc_forward_converges_and_bounds_sandwich_exact_log_px(model):
    zs, xs = jax.vmap(model.sample)(jax.random.split(jax.random.key(4), 16))
    run = jax.jit(partial(bdmc, num_samples=32, num_steps=40, start="proposal", return_diagnostics=True))
    result, (forward_diag, _) = run(jax.random.key(5), model, xs, zs)
    exact = _exact(model, xs)
    lower_gap, upper_gap = np.asarray(result.lower) - exact, np.asarray(result.upper) - exact
    # Forward chains are independent: each estimate within 4 of its standard errors.
    assert np.all(np.abs(lower_gap) < 4 * forward_diag.standard_error + 1e-3), (lower_gap, forward_diag)
    assert np.all(forward_diag.k_hat < 0.7)
    # The bounds hold in expectation over simulated (x, z) (reverse chains share
    # their exact start, so per-example errors are correlated): check dataset
    # averages, as Grosse et al. (2015) report them, with a 3-sigma allowance.
    allowance = 3 * np.std(lower_gap) / 4, 3 * np.std(upper_gap) / 4
    assert lower_gap.mean() <= allowance[0], lower_gap
    assert upper_gap.mean() >= -allowance[1], upper_gap
    # With 40 temperatures both bounds are already within a few hundredths of a nat.
    assert np.mean(upper_gap - lower_gap) < 0.1


def test_ais_from_the_prior_is_exact_and_the_same_under_chunking_and_devices(model):
    _, xs = jax.vmap(model.sample)(jax.random.split(jax.random.key(6), 2))
    run = partial(log_px, method="ais", num_samples=30, num_steps=50, start="prior", return_diagnostics=True)
    reference, diag = jax.jit(run)(jax.random.key(7), model, xs)
    # From N(0, I) the estimate does not depend on the (poor) proposal's mean.
    error = np.asarray(reference) - _exact(model, xs)
    assert np.all(np.abs(error) < 4 * diag.standard_error), (error, diag.standard_error)
    mesh = jax.make_mesh((4,), ("chains",))
    # 30 chains over 4 devices: 8 per device (the last 2 past N), in chunks of 3
    # (the third chunk padded).
    sharded, _ = jax.jit(partial(run, chunk_size=3, mesh=mesh))(jax.random.key(7), model, xs)
    np.testing.assert_allclose(sharded, reference, rtol=1e-5)


def test_hmc_transition_leaves_the_posterior_invariant(model):
    # At beta = 1 a transition must keep exact posterior samples exactly
    # distributed (and add nothing to the weight): compare moments after 10 steps.
    x = model.sample(jax.random.key(8))[1]
    mean, cov = (np.asarray(a, np.float64) for a in model.exact_posterior(x))
    init, step = ais_kernel(
        lambda z: -0.5 * jnp.sum(z**2),
        lambda z: model.log_prior(z) + model.log_likelihood(x, z),
        inverse_mass=jnp.ones(3), num_leapfrog_steps=5,
    )
    n = 4000
    z0 = jax.random.multivariate_normal(jax.random.key(9), jnp.asarray(mean), jnp.asarray(cov), (n,))

    @jax.jit
    def run(key, z):
        def body(state, k):
            state, info = step(k, state, 1.0, 1.0, 0.3)
            return state, info.acceptance_probability

        return jax.lax.scan(body, init(z), jax.random.split(key, 10))

    state, acceptance = jax.vmap(run)(jax.random.split(jax.random.key(10), n), z0)
    z = np.asarray(state.z, np.float64)
    assert np.all(np.asarray(state.log_weight) == 0)
    assert 0.5 < float(acceptance.mean()) < 1.0  # moves, not frozen
    se = np.sqrt(np.diagonal(cov) / n)
    assert np.all(np.abs(z.mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=4 * np.sqrt(2 / n) * np.max(np.diagonal(cov)))


def test_annealing_schedules():
    linear = annealing_schedule(4, "linear")
    np.testing.assert_allclose(linear, [0, 0.25, 0.5, 0.75, 1])
    geometric = annealing_schedule(5, "geometric")
    assert geometric[0] == 0 and geometric[1] == pytest.approx(1e-4) and geometric[-1] == pytest.approx(1)
    np.testing.assert_allclose(geometric[2:] / geometric[1:-1], 10.0)  # constant ratio
    sigmoid = annealing_schedule(10, "sigmoid")
    np.testing.assert_allclose(sigmoid + sigmoid[::-1], 1.0, atol=1e-12)  # symmetric
    assert np.all(np.diff(sigmoid) > 0)
    np.testing.assert_allclose(annealing_schedule(2, [0.0, 0.3, 1.0]), [0, 0.3, 1])
    with pytest.raises(ValueError, match="unknown schedule"):
        annealing_schedule(3, "cosine")
    with pytest.raises(ValueError, match="increase strictly from 0 to 1"):
        annealing_schedule(2, [0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="start must be one of"):
        ais_log_px(jax.random.key(0), jnp.zeros(6), model=LinearGaussian(jnp.ones((6, 2)), jnp.zeros(6), 1.0),
                   num_samples=2, num_steps=2, start="posterior")
