"""Annealed importance sampling (AIS) and its reverse, for bidirectional Monte Carlo.

AIS moves K independent chains from a normalised start pi_0(z) to the unnormalised
posterior f_1(z) = p(z) p(x|z) through the geometric path

    f_beta(z) = pi_0(z)^(1 - beta) * f_1(z)^beta,   0 = beta_0 < ... < beta_T = 1,

with one HMC transition that leaves f_{beta_t} invariant at each temperature, and
accumulates the log weight sum_t (beta_t - beta_{t-1}) [log f_1(z) - log pi_0(z)].
The mean of exp(weights) is unbiased for p(x), so log of it is a stochastic lower
bound of log p(x) that becomes tight as T grows (Neal 2001). It is the reference
estimator: started from q(z|x) it improves on importance sampling with the same
chains (with no transitions it is importance sampling), and started from the prior it does not
depend on the encoder at all.

Run backwards from an exact posterior sample (available on data simulated from the
model: the z that generated x), the same chain gives an unbiased estimate of 1/p(x),
hence a stochastic UPPER bound of log p(x). The two together bracket the truth
(bidirectional Monte Carlo, Grosse et al. 2015); the gap bounds AIS's error on
simulated data.

The algorithm is ``(init, step)`` with :class:`AISState` / :class:`AISInfo`, as in
BlackJAX; :func:`ais_log_px`, :func:`reverse_ais_log_px` and :func:`bdmc` run it.

References:
    Neal (2001). Annealed importance sampling. Statistics and Computing 11.
    Grosse, Ghahramani, Adams (2015). Sandwiching the marginal likelihood using
    bidirectional Monte Carlo. arXiv:1511.02543.
    Wu, Burda, Salakhutdinov, Grosse (2017). On the quantitative analysis of
    decoder-based generative models. ICLR. (step-size adaptation)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh

from jaxmed.likelihood import _reduce
from jaxmed.likelihood._gaussian import (
    diag_normal_log_prob,
    diag_normal_sample,
    standard_normal_log_prob,
)
from jaxmed.likelihood.diagnostics import Diagnostics
from jaxmed.likelihood.interface import LatentVariableModel

LogDensityFn = Callable[[Array], Array]


class AISState(NamedTuple):
    """One AIS chain.

    Attributes:
        z: ``(d,)`` current position.
        log_weight: accumulated log importance weight, nats.
        log_initial: log pi_0(z) at ``z``.
        log_target: log f_1(z) = log p(z) + log p(x|z) at ``z``.
        grad_initial: ``(d,)`` gradient of log pi_0 at ``z``.
        grad_target: ``(d,)`` gradient of log f_1 at ``z``.
    """

    z: Array
    log_weight: Array
    log_initial: Array
    log_target: Array
    grad_initial: Array
    grad_target: Array


class AISInfo(NamedTuple):
    """What one AIS step did.

    Attributes:
        acceptance_probability: the HMC Metropolis acceptance probability.
        log_weight_increment: (beta_to - beta_from) * (log f_1 - log pi_0) at the
            position before the transition.
    """

    acceptance_probability: Array
    log_weight_increment: Array


def ais_kernel(
    log_initial_fn: LogDensityFn,
    log_target_fn: LogDensityFn,
    *,
    inverse_mass: Array,
    num_leapfrog_steps: int = 10,
) -> tuple[Callable[[Array], AISState], Callable[..., tuple[AISState, AISInfo]]]:
    """AIS with HMC transitions along the geometric path from pi_0 to f_1.

    Args:
        log_initial_fn: log pi_0(z), a NORMALISED density, for ``z`` ``(d,)``.
        log_target_fn: log f_1(z), the unnormalised target, for ``z`` ``(d,)``.
        inverse_mass: ``(d,)`` diagonal inverse mass matrix of HMC (the scale of z
            per coordinate; must not depend on z).
        num_leapfrog_steps: leapfrog steps per HMC transition.

    Returns:
        ``(init, step)``: ``init(z) -> AISState`` and
        ``step(key, state, beta_from, beta_to, step_size) -> (AISState, AISInfo)``,
        which adds the weight increment for moving from ``beta_from`` to
        ``beta_to`` and then makes one HMC transition that leaves f_{beta_to}
        invariant. A reverse chain calls ``step`` with decreasing betas.

    .. note::
        The step size must not depend on the chain's own history: adapting it to
        the chain's acceptance rate biases the weights (measured: log p(x) too
        HIGH by several standard errors on a linear-Gaussian model).
        :func:`ais_log_px` takes its step sizes from separate pilot chains.
    """
    initial_value_and_grad = jax.value_and_grad(log_initial_fn)
    target_value_and_grad = jax.value_and_grad(log_target_fn)

    def evaluate(z):
        log_initial, grad_initial = initial_value_and_grad(z)
        log_target, grad_target = target_value_and_grad(z)
        return log_initial, log_target, grad_initial, grad_target

    def init(z: Array) -> AISState:
        log_initial, log_target, grad_initial, grad_target = evaluate(z)
        zero = jnp.zeros((), log_target.dtype)
        return AISState(z, zero, log_initial, log_target, grad_initial, grad_target)

    def step(key: Array, state: AISState, beta_from: Array, beta_to: Array, step_size: Array):
        increment = (beta_to - beta_from) * (state.log_target - state.log_initial)
        state = state._replace(log_weight=state.log_weight + increment)
        state, acceptance = _hmc_transition(key, state, beta_to, step_size)
        return state, AISInfo(acceptance, increment)

    def _hmc_transition(key, state: AISState, beta, eps):
        def log_f(log_initial, log_target):
            return (1 - beta) * log_initial + beta * log_target

        def grad_log_f(grad_initial, grad_target):
            return (1 - beta) * grad_initial + beta * grad_target

        k_momentum, k_accept = jax.random.split(key)
        # r ~ N(0, M) with M = diag(1 / inverse_mass); kinetic energy r^T M^-1 r / 2.
        momentum = jax.random.normal(k_momentum, state.z.shape, state.z.dtype) / jnp.sqrt(inverse_mass)

        def kinetic(r):
            return 0.5 * jnp.sum(inverse_mass * jnp.square(r))

        def leapfrog(carry, is_last):
            z, r, _, _, grad_initial, grad_target = carry
            z = z + eps * inverse_mass * r
            log_initial, log_target, grad_initial, grad_target = evaluate(z)
            # full momentum steps between positions, a half step at the end
            r = r + jnp.where(is_last, 0.5, 1.0) * eps * grad_log_f(grad_initial, grad_target)
            return (z, r, log_initial, log_target, grad_initial, grad_target), None

        r = momentum + 0.5 * eps * grad_log_f(state.grad_initial, state.grad_target)
        carry = (state.z, r, state.log_initial, state.log_target, state.grad_initial, state.grad_target)
        is_last = jnp.arange(num_leapfrog_steps) == num_leapfrog_steps - 1
        (z, r, log_initial, log_target, grad_initial, grad_target), _ = jax.lax.scan(
            leapfrog, carry, is_last
        )
        energy_old = -log_f(state.log_initial, state.log_target) + kinetic(momentum)
        energy_new = -log_f(log_initial, log_target) + kinetic(r)
        delta = energy_old - energy_new
        # A diverged trajectory (NaN/inf energy) is rejected.
        acceptance = jnp.where(jnp.isfinite(delta), jnp.exp(jnp.minimum(delta, 0.0)), 0.0)
        accept = jax.random.uniform(k_accept, (), acceptance.dtype) < acceptance
        proposed = AISState(z, state.log_weight, log_initial, log_target, grad_initial, grad_target)
        new_state = jax.tree.map(lambda new, old: jnp.where(accept, new, old), proposed, state)
        return new_state, acceptance

    return init, step


# -- annealing schedules: beta_0 = 0 < beta_1 < ... < beta_T = 1 ---------------------


def _linear_schedule(num_steps: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, num_steps + 1)


def _geometric_schedule(num_steps: int, beta_min: float = 1e-4) -> np.ndarray:
    # beta_1 = beta_min, then a constant ratio up to 1: the path moves slowly where
    # the likelihood first switches on.
    if num_steps == 1:
        return np.array([0.0, 1.0])
    return np.concatenate([[0.0], np.geomspace(beta_min, 1.0, num_steps)])


def _sigmoid_schedule(num_steps: int, delta: float = 4.0) -> np.ndarray:
    # Grosse et al. (2015), Sec. 6: sigma(delta (2t/T - 1)), rescaled to [0, 1].
    t = np.linspace(-delta, delta, num_steps + 1)
    s = 1.0 / (1.0 + np.exp(-t))
    return (s - s[0]) / (s[-1] - s[0])


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear_schedule,
    "geometric": _geometric_schedule,
    "sigmoid": _sigmoid_schedule,
}
"""Annealing schedules by name: ``num_steps -> (num_steps + 1,)`` betas from 0 to 1."""


def annealing_schedule(num_steps: int, schedule: str | Array = "sigmoid") -> np.ndarray:
    """Inverse temperatures beta_0 = 0 < ... < beta_T = 1.

    Args:
        num_steps: T, the number of transitions (>= 1).
        schedule: a name in :data:`SCHEDULES`, or an explicit increasing array of
            T + 1 betas from 0 to 1.

    Returns:
        ``(T + 1,)`` numpy array of betas.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"ais: unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"ais: num_steps must be a positive int, got {num_steps!r}")
        return SCHEDULES[schedule](int(num_steps))
    betas = np.asarray(schedule, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] != num_steps + 1:
        raise ValueError(f"ais: a schedule array must have num_steps + 1 = {num_steps + 1} betas, got shape {betas.shape}")
    if betas[0] != 0.0 or betas[-1] != 1.0 or np.any(np.diff(betas) <= 0):
        raise ValueError("ais: a schedule array must increase strictly from 0 to 1")
    return betas


_STARTS = ("prior", "proposal")
# Pilot step-size adaptation: x 1.05 after an acceptance above the target, / 1.05
# otherwise.
_PILOT_LOG_FACTOR = math.log(1.05)


def _start_distribution(model: LatentVariableModel, x: Array, start: str):
    """pi_0 as (sample(key), log_prob(z)), and the proposal scale for the mass matrix."""
    mean, std = model.proposal(x)
    if start == "prior":
        # N(0, I): the prior of jaxmed's models. For a model with another prior the
        # estimate stays valid (AIS only needs a normalised start it can sample).
        def sample(key):
            return jax.random.normal(key, mean.shape, mean.dtype)

        return sample, standard_normal_log_prob, std

    if start == "proposal":

        def sample(key):
            return diag_normal_sample(key, mean, std)[0]

        return sample, lambda z: diag_normal_log_prob(z, mean, std), std

    raise ValueError(f"ais: start must be one of {_STARTS}, got {start!r}")


def _ais_log_weights(
    key: Array,
    model: LatentVariableModel,
    x: Array,
    *,
    betas: np.ndarray,
    start: str,
    z_start: Array | None,
    num_leapfrog_steps: int,
    step_size: float,
    target_acceptance: float,
    num_pilot_chains: int,
):
    """A function ``(n,) keys -> (n,) final log weights`` of n chains.

    ``betas`` is the forward schedule; the chains run it backwards from
    ``z_start`` when that is given. ``key`` drives the pilot chains that choose the
    step size at each temperature (see ``anneal``).
    """
    sample_start, log_initial, proposal_std = _start_distribution(model, x, start)

    def log_target(z):
        return model.log_prior(z) + model.log_likelihood(x, z)

    # Preconditioning by the proposal's scale: it depends on x only, so every
    # transition still leaves its distribution invariant; a VAE's posterior scales
    # differ by orders of magnitude between active and collapsed units.
    init, step = ais_kernel(
        log_initial, log_target,
        inverse_mass=jnp.square(jax.lax.stop_gradient(proposal_std)),
        num_leapfrog_steps=num_leapfrog_steps,
    )
    dtype = proposal_std.dtype
    num_steps = betas.shape[0] - 1
    steps = jnp.arange(num_steps)
    forward_from, forward_to = jnp.asarray(betas[:-1], dtype), jnp.asarray(betas[1:], dtype)

    def anneal(keys, starts, betas_from, betas_to, *, num_adapting, step_sizes):
        """Runs chains in lockstep; returns final log weights and step sizes used.

        The first ``num_adapting`` chains are pilots: after each transition the
        shared step size grows by ``_PILOT_LOG_FACTOR`` if their mean acceptance
        probability is above the target and shrinks otherwise (the rule of Wu et
        al. 2017, pooled). The other chains' step sizes then depend on the pilots
        only, never on their own history, which would bias their weights.
        ``step_sizes`` (T,) is used instead when there are no pilots.
        """
        def body(carry, inputs):
            states, log_eps = carry
            t, beta_from, beta_to, fixed = inputs
            eps = jnp.exp(log_eps) if num_adapting else fixed
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
            states, info = jax.vmap(step, in_axes=(0, 0, None, None, None))(
                step_keys, states, beta_from, beta_to, eps
            )
            if num_adapting:
                accepted = jnp.mean(info.acceptance_probability[:num_adapting])
                log_eps = log_eps + jnp.where(accepted > target_acceptance, 1.0, -1.0) * _PILOT_LOG_FACTOR
            return (states, log_eps), eps

        log_eps0 = jnp.log(jnp.asarray(step_size, dtype))
        inputs = (steps, betas_from, betas_to, step_sizes)
        (states, _), used = jax.lax.scan(body, (jax.vmap(init)(starts), log_eps0), inputs)
        return states.log_weight, used

    def split_keys(keys):
        pairs = jax.vmap(jax.random.split)(keys)
        return jax.vmap(sample_start)(pairs[:, 0]), pairs[:, 1]

    pilot_starts, pilot_run_keys = split_keys(jax.random.split(key, num_pilot_chains))
    fixed = jnp.full((num_steps,), step_size, dtype)

    if z_start is None:

        def log_weights(keys):
            starts, run_keys = split_keys(keys)
            all_keys = jnp.concatenate([pilot_run_keys, run_keys])
            all_starts = jnp.concatenate([pilot_starts, starts])
            log_w, _ = anneal(
                all_keys, all_starts, forward_from, forward_to,
                num_adapting=num_pilot_chains, step_sizes=fixed,
            )
            return log_w[num_pilot_chains:]

        return log_weights

    # Reverse: the pilots cannot start from the exact sample (the step sizes would
    # then depend on the reverse chains' start), so they run forward from pi_0 first.
    step_sizes = fixed
    if num_pilot_chains:
        _, step_sizes = anneal(
            pilot_run_keys, pilot_starts, forward_from, forward_to,
            num_adapting=num_pilot_chains, step_sizes=fixed,
        )
    # The reverse transition at betas[T - 1 - j] reuses the forward step size at
    # that temperature; beta_0 = 0 (no forward transition) takes beta_1's.
    step_sizes = step_sizes[np.maximum(num_steps - 2 - np.arange(num_steps), 0)]
    reverse = betas[::-1]
    reverse_from, reverse_to = jnp.asarray(reverse[:-1], dtype), jnp.asarray(reverse[1:], dtype)

    def reverse_log_weights(keys):
        _, run_keys = split_keys(keys)
        starts = jnp.broadcast_to(z_start, (keys.shape[0],) + z_start.shape)
        log_w, _ = anneal(run_keys, starts, reverse_from, reverse_to, num_adapting=0, step_sizes=step_sizes)
        return log_w

    return reverse_log_weights


def _ais(
    key: Array,
    x: Array,
    z_start: Array | None,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None,
    return_diagnostics: bool,
    mesh: Mesh | None,
    num_steps: int,
    schedule: str | Array,
    start: str,
    num_leapfrog_steps: int,
    step_size: float,
    target_acceptance: float,
    num_pilot_chains: int,
) -> Array | tuple[Array, Diagnostics]:
    """Forward AIS (``z_start`` None) or reverse AIS from ``z_start``; see the public pair."""
    _reduce.validate_sampling(num_samples, chunk_size, "ais" if z_start is None else "reverse ais")
    if not isinstance(num_pilot_chains, (int, np.integer)) or num_pilot_chains < 0:
        raise ValueError(f"ais: num_pilot_chains must be a non-negative int, got {num_pilot_chains!r}")
    if not isinstance(num_leapfrog_steps, (int, np.integer)) or num_leapfrog_steps < 1:
        raise ValueError(f"ais: num_leapfrog_steps must be a positive int, got {num_leapfrog_steps!r}")
    if not step_size > 0:
        raise ValueError(f"ais: step_size must be > 0, got {step_size!r}")
    if not 0 < target_acceptance < 1:
        raise ValueError(f"ais: target_acceptance must be in (0, 1), got {target_acceptance!r}")
    k_pilot, key = jax.random.split(key)
    log_weights = _ais_log_weights(
        k_pilot, model, x, betas=annealing_schedule(num_steps, schedule), start=start,
        z_start=z_start, num_leapfrog_steps=num_leapfrog_steps, step_size=step_size,
        target_acceptance=target_acceptance, num_pilot_chains=num_pilot_chains,
    )
    # Reverse chains' weights average to 1/p(x): minus the log of their mean.
    return _reduce.log_mean_estimate(
        log_weights, key, num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh, sign=1 if z_start is None else -1,
    )


def ais_log_px(
    key: Array,
    x: Array,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
    num_steps: int = 500,
    schedule: str | Array = "sigmoid",
    start: str = "proposal",
    num_leapfrog_steps: int = 10,
    step_size: float = 0.5,
    target_acceptance: float = 0.65,
    num_pilot_chains: int = 16,
) -> Array | tuple[Array, Diagnostics]:
    """AIS estimate of log p(x), one example: the reference estimator.

    Args:
        key: PRNG key; chain i uses ``fold_in(key, i)``.
        x: one example.
        model: a :class:`LatentVariableModel`.
        num_samples: K, the number of independent AIS chains.
        chunk_size: chains run at once (per device); None for all K at once.
        return_diagnostics: also return :class:`Diagnostics` of the K AIS weights.
        mesh: shard the K chains over all devices of this mesh.
        num_steps: T, the number of temperatures (one HMC transition each).
        schedule: spacing of the betas along the geometric path (see
            :func:`annealing_schedule`): ``"sigmoid"`` (Grosse et al. 2015, the
            default: fine steps at both ends), ``"geometric"`` (constant ratio
            from 1e-4: fine near beta = 0 only; measured on the linear-Gaussian
            model its reverse (BDMC) bound is the loosest), ``"linear"``, or an
            explicit array.
        start: pi_0: ``"proposal"`` (q(z|x), the default: far fewer
            temperatures are needed for the sharp posteriors of a trained VAE)
            or ``"prior"`` (N(0, I): independent of the encoder, but a sharp
            posterior then needs thousands of temperatures).
        num_leapfrog_steps: leapfrog steps per HMC transition.
        step_size: HMC step size in units of the proposal's std (the mass
            matrix is diag(1 / std^2)): the pilot chains' starting value, or the
            fixed step size when ``num_pilot_chains`` is 0.
        target_acceptance: acceptance rate the pilot adapts the step size to.
        num_pilot_chains: extra chains run alongside each chunk (the same ones,
            from the same key, for every chunk and device) whose mean acceptance
            adapts the step size all chains use; their weights are discarded.
            0 for a fixed ``step_size``.

    Returns:
        log (1/K) sum_k w_k in nats, a scalar (a stochastic lower bound of log p(x));
        and the diagnostics if asked.
    """
    return _ais(
        key, x, None, model=model, num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh, num_steps=num_steps,
        schedule=schedule, start=start, num_leapfrog_steps=num_leapfrog_steps,
        step_size=step_size, target_acceptance=target_acceptance,
        num_pilot_chains=num_pilot_chains,
    )


def reverse_ais_log_px(
    key: Array,
    x: Array,
    z: Array,
    *,
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
    num_steps: int = 500,
    schedule: str | Array = "sigmoid",
    start: str = "proposal",
    num_leapfrog_steps: int = 10,
    step_size: float = 0.5,
    target_acceptance: float = 0.65,
    num_pilot_chains: int = 16,
) -> Array | tuple[Array, Diagnostics]:
    """Reverse AIS from an exact posterior sample: a stochastic UPPER bound of log p(x).

    The chains start at ``z``, which must be an exact draw from p(z|x) (for data
    simulated from the model, the z that generated x), and anneal from beta = 1 to
    beta = 0 with the same transitions as :func:`ais_log_px`. Their weights average
    to an unbiased estimate of 1/p(x), so minus the log of their mean is, in
    expectation, >= log p(x) (Grosse et al. 2015). On real data there is no exact
    posterior sample and the bound does not hold.

    Args:
        key: PRNG key; chain i uses ``fold_in(key, i)``.
        x: one example.
        z: ``(d,)`` exact posterior sample for ``x``.
        model, num_samples, chunk_size, return_diagnostics, mesh, num_steps,
        schedule, start, num_leapfrog_steps, step_size, target_acceptance,
        num_pilot_chains: as in
            :func:`ais_log_px`; use the same values for a meaningful sandwich.

    Returns:
        -log (1/K) sum_k w_k^rev in nats, a scalar; and the diagnostics (of the
        reverse weights) if asked.
    """
    return _ais(
        key, x, z, model=model, num_samples=num_samples, chunk_size=chunk_size,
        return_diagnostics=return_diagnostics, mesh=mesh, num_steps=num_steps,
        schedule=schedule, start=start, num_leapfrog_steps=num_leapfrog_steps,
        step_size=step_size, target_acceptance=target_acceptance,
        num_pilot_chains=num_pilot_chains,
    )


class BDMCResult(NamedTuple):
    """A sandwich of log p(x) per example, in nats.

    Attributes:
        lower: ``(batch,)`` forward AIS (lower bound in expectation).
        upper: ``(batch,)`` reverse AIS from the true z (upper bound in expectation).
    """

    lower: Array
    upper: Array


def bdmc(
    key: Array,
    model: LatentVariableModel,
    xs: Array,
    zs: Array,
    *,
    num_samples: int,
    chunk_size: int | None = None,
    return_diagnostics: bool = False,
    mesh: Mesh | None = None,
    **ais_options,
) -> BDMCResult | tuple[BDMCResult, tuple[Diagnostics, Diagnostics]]:
    """Bidirectional Monte Carlo on simulated data: forward and reverse AIS bounds.

    Args:
        key: PRNG key.
        model: a :class:`LatentVariableModel`.
        xs: ``(batch, ...)`` examples simulated from the model.
        zs: ``(batch, d)`` the latents that generated them (exact posterior samples).
        num_samples: chains per example and direction.
        chunk_size: chains run at once per example.
        return_diagnostics: also return the :class:`Diagnostics` of the forward
            and of the reverse weights (``(batch,)`` fields each). The reverse
            chains of an example share one start, so their standard error
            understates the spread of the upper bound across simulated examples.
        mesh: shard the chains over all devices of this mesh.
        **ais_options: ``num_steps``, ``schedule``, ``start``,
            ``num_leapfrog_steps``, ``step_size``, ``target_acceptance``,
            ``num_pilot_chains`` (as in
            :func:`ais_log_px`), shared by both directions.

    Returns:
        :class:`BDMCResult` with the lower and upper bounds (and, if asked, the
        pair of diagnostics). The bounds hold in expectation over simulated
        examples: averaged over a data set, the true mean log p(x) lies between
        them up to Monte-Carlo error, and their gap bounds the error of forward
        AIS with these settings (Grosse et al. 2015).
    """
    if xs.shape[0] != zs.shape[0]:
        raise ValueError(f"bdmc: xs and zs must have the same batch size, got {xs.shape[0]} and {zs.shape[0]}")
    k_forward, k_reverse = jax.random.split(key)
    options = dict(
        num_samples=num_samples, chunk_size=chunk_size, mesh=mesh,
        return_diagnostics=return_diagnostics, **ais_options,
    )

    def forward(k, x):
        return ais_log_px(k, x, model=model, **options)

    def reverse(k, x, z):
        return reverse_ais_log_px(k, x, z, model=model, **options)

    batch = xs.shape[0]
    lower = jax.vmap(forward)(jax.random.split(k_forward, batch), xs)
    upper = jax.vmap(reverse)(jax.random.split(k_reverse, batch), xs, zs)
    if return_diagnostics:
        return BDMCResult(lower=lower[0], upper=upper[0]), (lower[1], upper[1])
    return BDMCResult(lower=lower, upper=upper)
