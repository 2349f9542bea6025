"""Data parallelism over a mesh of the 4 simulated CPU devices (tests/conftest.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data.batching import batch_indices
from jaxmed.train import (
    DATA_AXIS,
    OptimConfig,
    TrainConfig,
    TrainState,
    fit,
    jit_eval_step,
    jit_train_step,
    local_batch_slice,
    make_eval_step,
    make_evaluator,
    make_mesh,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))[:, 0]


_model = _MLP()


def _loss_fn(params, batch, key):
    # Key-dependent noise: the devices must also agree on the random numbers.
    noisy = batch["x"] + 0.05 * jax.random.normal(key, batch["x"].shape)
    err = _model.apply(params, noisy) - batch["y"]
    return jnp.mean(err**2), {"max_abs_err": jnp.max(jnp.abs(err))}


def _data(rng, n=128, d=5):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return {"x": x, "y": np.sin(x.sum(axis=1)).astype(np.float32)}


def _curve(num_devices, data, steps=12, batch_size=16):
    mesh = make_mesh(num_devices)
    config = TrainConfig(steps=steps, batch_size=batch_size, seed=5, log_every=1, eval_every=4,
                         checkpoint_every=0, devices=num_devices)
    tx = make_optimizer(OptimConfig(learning_rate=3e-2, grad_clip_norm=2.0), total_steps=steps)
    params = _model.init(jax.random.key(1), data["x"][:1])
    state = TrainState.create(params=params, tx=tx, key=jax.random.key(2))

    def batch_fn(step):
        rows = batch_indices(step, num_examples=len(data["x"]), batch_size=batch_size, seed=5)
        return jax.tree.map(lambda a: a[rows], data)

    evaluator = make_evaluator(jit_eval_step(make_eval_step(_loss_fn), mesh),
                               [{k: v[i : i + 16] for k, v in data.items()} for i in (0, 16)],
                               mesh=mesh, key=jax.random.key(3))
    result = fit(state, train_step=jit_train_step(make_train_step(_loss_fn), mesh), batch_fn=batch_fn,
                 config=config, mesh=mesh, eval_fn=evaluator, progress=False)
    return result


def test_one_and_four_devices_give_the_same_loss_curve(rng):
    data = _data(rng)
    one, four = _curve(1, data), _curve(4, data)
    assert four.state.params["params"]["Dense_0"]["kernel"].sharding.mesh.size == 4
    for key in ("loss", "max_abs_err", "grad_norm"):
        a = [r[key] for r in one.records]
        b = [r[key] for r in four.records]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)
    val_one = [r["val_loss"] for r in one.records if "val_loss" in r]
    val_four = [r["val_loss"] for r in four.records if "val_loss" in r]
    assert len(val_one) == 3
    np.testing.assert_allclose(val_one, val_four, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(four.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The curve is a real descent, not a constant.
    assert one.records[-1]["loss"] < 0.8 * one.records[0]["loss"]


def test_batch_is_split_along_the_data_axis():
    mesh = make_mesh(4)
    batch = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "label": np.arange(8)}
    sharded = shard_batch(batch, mesh)
    assert sharded["image"].sharding.spec == jax.sharding.PartitionSpec(DATA_AXIS)
    shards = sorted(sharded["image"].addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape for s in shards] == [(2, 3)] * 4
    for i, shard in enumerate(shards):
        np.testing.assert_array_equal(np.asarray(shard.data), batch["image"][2 * i : 2 * i + 2])
    np.testing.assert_array_equal(np.asarray(sharded["label"]), batch["label"])


def test_metrics_are_means_over_the_global_batch(rng):
    def loss_fn(params, batch, key):
        return jnp.mean(batch["x"] * params["w"]), {"x_max": jnp.max(batch["x"])}

    mesh = make_mesh(4)
    x = rng.normal(size=(12,)).astype(np.float32)
    tx = make_optimizer(OptimConfig(optimizer="sgd"), total_steps=1)
    state = replicate(TrainState.create(params={"w": jnp.ones(())}, tx=tx, key=jax.random.key(0)), mesh)
    _, metrics = jit_train_step(make_train_step(loss_fn), mesh)(state, shard_batch({"x": x}, mesh))
    assert float(metrics["loss"]) == pytest.approx(float(np.mean(x)), rel=1e-5)
    assert float(metrics["x_max"]) == float(np.max(x))
    assert float(metrics["grad_norm"]) == pytest.approx(abs(float(np.mean(x))), rel=1e-5)


def test_bad_device_counts_and_batch_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="only 4 are available"):
        make_mesh(5)
    with pytest.raises(ValueError, match=r"global batch size \(6\) must be divisible by the number of devices \(4\)"):
        shard_batch({"x": np.zeros((6, 2), np.float32)}, make_mesh(4))
    with pytest.raises(ValueError, match="same leading size"):
        shard_batch({"x": np.zeros((4, 2)), "y": np.zeros((8,))}, make_mesh(4))
    assert local_batch_slice(8) == slice(0, 8)  # one process reads everything
    assert make_mesh(2).devices.tolist() == jax.devices()[:2]
