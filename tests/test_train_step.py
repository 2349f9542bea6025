"""The train state, optimiser construction and the jitted train/eval steps.

Expected values are computed by hand with numpy (closed-form gradients of a
linear least-squares model, the textbook optimiser updates) and compared with
what the jitted steps produce.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.train import (
    OptimConfig,
    TrainConfig,
    TrainState,
    config_from_dict,
    jit_train_step,
    make_eval_step,
    make_mesh,
    make_optimizer,
    make_schedule,
    make_train_step,
    replicate,
    shard_batch,
)


def _linear_loss(params, batch, key):
    """Mean squared error of a linear model: an exact gradient is 2/B X^T (Xw + b - y)."""
    del key
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return jnp.mean(err**2), {"mean_err": jnp.mean(err)}


def _linear_problem(rng, n=8, d=3):
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(n,)).astype(np.float32)
    params = {"w": rng.normal(size=(d,)).astype(np.float32), "b": np.float32(0.3)}
    return {"x": x, "y": y}, params


def _numpy_grad(params, batch):
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    err = x @ params["w"] + params["b"] - y
    return {"w": 2 * x.T @ err / len(y), "b": 2 * err.mean()}, float(np.mean(err**2))


def test_configs_round_trip_through_json():
    optim = OptimConfig(optimizer="adamw", learning_rate=3e-4, schedule="warmup-cosine",
                        warmup_steps=5, weight_decay=0.01, grad_clip_norm=1.0,
                        lr_factors=(("params/log_scale", 30), ("*/bias", 0.5)))
    assert optim.lr_factors == (("params/log_scale", 30.0), ("*/bias", 0.5))
    train = TrainConfig(steps=50, batch_size=8, patience=3, devices=4, mixed_precision=True)
    for config in (optim, train):
        text = json.dumps(dataclasses.asdict(config))
        assert config_from_dict(type(config), json.loads(text)) == config


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OptimConfig(optimizer="rmsprop"), "optimizer"),
        (lambda: OptimConfig(schedule="linear"), "schedule"),
        (lambda: OptimConfig(learning_rate=0.0), "learning_rate"),
        (lambda: OptimConfig(grad_clip_norm=-1.0), "grad_clip_norm"),
        (lambda: OptimConfig(lr_factors=(("w", 0.0),)), "positive factor"),
        (lambda: OptimConfig(lr_factors=("w",)), "pairs"),
        (lambda: TrainConfig(steps=0), "steps"),
        (lambda: TrainConfig(batch_size=6, devices=4), "divisible"),
        (lambda: TrainConfig(patience=0), "patience"),
        (lambda: config_from_dict(TrainConfig, {"step": 3}), "no field"),
    ],
)
def test_bad_configs_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_warmup_cosine_schedule_matches_the_formula():
    config = OptimConfig(learning_rate=0.1, schedule="warmup-cosine", warmup_steps=4, final_lr_fraction=0.1)
    schedule = make_schedule(config, total_steps=20)
    for step in range(21):
        if step < 4:
            expected = 0.1 * step / 4
        else:
            progress = (step - 4) / 16
            expected = 0.01 + (0.1 - 0.01) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    cosine = make_schedule(OptimConfig(learning_rate=0.2, schedule="cosine"), total_steps=10)
    assert float(cosine(5)) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(dataclasses.replace(config, warmup_steps=20), total_steps=20)


def test_sgd_step_with_clipping_and_weight_decay_matches_numpy(rng):
    batch, params = _linear_problem(rng)
    lr, clip, wd = 0.1, 0.5, 0.01
    tx = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=lr, grad_clip_norm=clip,
                                    weight_decay=wd), total_steps=10)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), tx=tx, key=jax.random.key(0))
    new_state, metrics = jax.jit(make_train_step(_linear_loss))(state, batch)

    grad, loss = _numpy_grad(params, batch)
    norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grad.values()))
    assert norm > clip  # the clip is active
    for name in params:
        clipped = grad[name] * clip / norm
        expected = params[name] - lr * (clipped + wd * params[name])
        np.testing.assert_allclose(new_state.params[name], expected, rtol=1e-5, atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)  # before clipping
    assert bool(metrics["finite"])
    assert int(new_state.step) == 1


def test_lr_factors_scale_the_rate_per_parameter_group():
    # SGD with clipping: the whole gradient is clipped once, then each group
    # moves at its own multiple of the scheduled rate (cosine at step 0: the peak).
    config = OptimConfig(optimizer="sgd", learning_rate=0.1, schedule="cosine", grad_clip_norm=1.0,
                         lr_factors=(("params/enc*/bias", 3.0), ("params/enc*", 0.5)))
    tx = make_optimizer(config, total_steps=10)
    params = {"params": {"encoder": {"kernel": jnp.ones(2), "bias": jnp.ones(1)}, "log_scale": jnp.ones(1)}}
    grads = {"params": {"encoder": {"kernel": jnp.full(2, 2.0), "bias": jnp.full(1, 2.0)},
                        "log_scale": jnp.full(1, 2.0)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    clipped = 2.0 / math.sqrt(4 * 4.0)  # global norm 4 -> 1
    # The first matching pattern wins: the bias at 3x, the kernel at 0.5x, the rest at 1x.
    np.testing.assert_allclose(updates["params"]["encoder"]["bias"], [-0.3 * clipped], rtol=1e-6)
    np.testing.assert_allclose(updates["params"]["encoder"]["kernel"], [-0.05 * clipped] * 2, rtol=1e-6)
    np.testing.assert_allclose(updates["params"]["log_scale"], [-0.1 * clipped], rtol=1e-6)
    # A pattern that matches nothing is an error naming it.
    typo = make_optimizer(dataclasses.replace(config, lr_factors=(("params/logscale", 2.0),)), total_steps=10)
    with pytest.raises(ValueError, match=r"\['params/logscale'\] match no parameter"):
        typo.init(params)


def test_adamw_first_step_matches_the_textbook_update(rng):
    batch, params = _linear_problem(rng)
    lr, wd = 0.01, 0.1
    tx = make_optimizer(OptimConfig(optimizer="adamw", learning_rate=lr, weight_decay=wd), total_steps=10)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), tx=tx, key=jax.random.key(0))
    new_state, _ = jax.jit(make_train_step(_linear_loss))(state, batch)
    grad, _ = _numpy_grad(params, batch)
    for name in params:
        # Step 1 with bias correction: m_hat = g, v_hat = g^2.
        g = grad[name]
        expected = params[name] - lr * (g / (np.abs(g) + 1e-8) + wd * params[name])
        np.testing.assert_allclose(new_state.params[name], expected, rtol=1e-5, atol=1e-6)


def test_step_traces_once_and_donates_the_state(rng):
    traces = []

    def loss_fn(params, batch, key):
        traces.append(1)  # runs only while tracing
        return _linear_loss(params, batch, key)

    batch, params = _linear_problem(rng)
    mesh = make_mesh(4)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2), total_steps=5)
    state = replicate(TrainState.create(params=params, tx=tx, key=jax.random.key(0)), mesh)
    step = jit_train_step(make_train_step(loss_fn), mesh)
    first = state
    for _ in range(5):
        state, metrics = step(state, shard_batch(batch, mesh))
    assert len(traces) == 1
    assert int(state.step) == 5
    assert first.params["w"].is_deleted()  # the input state was donated
    assert metrics["loss"].sharding.is_fully_replicated


def test_step_key_is_fold_in_of_root_key_and_step():
    def loss_fn(params, batch, key):
        noise = jax.random.normal(key, (3,))
        return jnp.sum(params["w"] * 0.0), {"noise": noise[0], "noise2": noise[2]}

    root = jax.random.key(7)
    tx = make_optimizer(OptimConfig(optimizer="sgd"), total_steps=10)
    state = TrainState.create(params={"w": jnp.ones(2)}, tx=tx, key=root)
    step = jax.jit(make_train_step(loss_fn))
    for s in range(3):
        state, metrics = step(state, {"x": jnp.zeros((1,))})
        expected = jax.random.normal(jax.random.fold_in(root, s), (3,))
        assert float(metrics["noise"]) == float(expected[0])
        assert float(metrics["noise2"]) == float(expected[2])
        # The state's root key never changes.
        np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(root))


def test_mixed_precision_computes_in_bf16_and_keeps_f32_params(rng):
    seen = {}

    def loss_fn(params, batch, key):
        seen["dtypes"] = (params["w"].dtype, batch["x"].dtype)
        return _linear_loss(params, batch, key)

    batch, params = _linear_problem(rng)
    # Adam: its moment buffers are floating state that must stay float32.
    tx = make_optimizer(OptimConfig(optimizer="adam", learning_rate=0.01), total_steps=1)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), tx=tx, key=jax.random.key(0))
    mixed, m_mixed = jax.jit(make_train_step(loss_fn, mixed_precision=True))(state, batch)
    assert seen["dtypes"] == (jnp.bfloat16, jnp.bfloat16)
    full, m_full = jax.jit(make_train_step(_linear_loss))(state, batch)
    assert mixed.params["w"].dtype == jnp.float32
    assert m_mixed["loss"].dtype == jnp.float32
    moments = [x for x in jax.tree.leaves(mixed.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert moments and all(x.dtype == jnp.float32 for x in moments)
    # bf16 has an 8-bit mantissa: agreement to about 1%.
    np.testing.assert_allclose(mixed.params["w"], full.params["w"], rtol=2e-2, atol=2e-2)
    assert float(m_mixed["loss"]) == pytest.approx(float(m_full["loss"]), rel=2e-2)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_non_finite_loss_or_params_are_flagged(rng):
    batch, params = _linear_problem(rng)
    tx = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=0.1), total_steps=1)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), tx=tx, key=jax.random.key(0))
    step = jax.jit(make_train_step(_linear_loss))
    y = batch["y"].copy()
    y[0] = np.nan
    bad = {"x": batch["x"], "y": y}
    _, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    _, metrics = step(state, batch)
    assert bool(metrics["finite"])
    # A finite loss and gradient, but a step so large that the parameters overflow
    # (1e39 is already inf in float32, which numpy warns about: expected here).
    huge = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=1e39), total_steps=1)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), tx=huge, key=jax.random.key(0))
    new_state, metrics = jax.jit(make_train_step(_linear_loss))(state, batch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert not np.all(np.isfinite(np.asarray(new_state.params["w"])))
    assert not bool(metrics["finite"])


def test_eval_step_is_the_loss_without_an_update(rng):
    batch, params = _linear_problem(rng)
    metrics = jax.jit(make_eval_step(_linear_loss))(params, batch, jax.random.key(0))
    _, loss = _numpy_grad(params, batch)
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
    err = batch["x"] @ params["w"] + params["b"] - batch["y"]
    assert float(metrics["mean_err"]) == pytest.approx(float(err.mean()), rel=1e-5, abs=1e-6)


def test_every_configurable_optimizer_and_schedule_has_a_builder():
    from jaxmed.train.config import OPTIMIZER_NAMES, SCHEDULE_NAMES
    from jaxmed.train.optim import OPTIMIZERS, SCHEDULES

    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES and tuple(SCHEDULES) == SCHEDULE_NAMES
