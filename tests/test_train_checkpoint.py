"""Orbax checkpoints: bit-exact resumption, retention, and loading a model back."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.data.batching import batch_indices
from jaxmed.train import (
    Checkpointer,
    config_differences,
    OptimConfig,
    TrainConfig,
    TrainState,
    fit,
    jit_train_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    read_metrics,
    replicate,
    save_config,
)
from jaxmed.train.checkpoint import load_model

STEPS, BATCH, SEED = 20, 8, 11


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))[:, 0]


_model = _MLP()


def _loss_fn(params, batch, key):
    # Dropout-like random mask: resumption must also reproduce the keys.
    keep = jax.random.bernoulli(key, 0.8, batch["x"].shape)
    err = _model.apply(params, batch["x"] * keep / 0.8) - batch["y"]
    return jnp.mean(err**2), {}


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    data = {"x": x, "y": (x[:, 0] * x[:, 1]).astype(np.float32)}
    mesh = make_mesh(4)
    # One jitted step for every run of this module: one compilation.
    step = jit_train_step(make_train_step(_loss_fn), mesh)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2, schedule="warmup-cosine", warmup_steps=4), total_steps=STEPS)
    return data, mesh, step, tx


def _fresh_state(tx, mesh):
    params = _model.init(jax.random.key(0), np.zeros((1, 4), np.float32))
    return replicate(TrainState.create(params=params, tx=tx, key=jax.random.key(SEED)), mesh)


def _batch_fn(data, stop_at=None):
    def batch_fn(step):
        if step == stop_at:
            raise _Interrupt(step)
        rows = batch_indices(step, num_examples=64, batch_size=BATCH, seed=SEED)
        return {k: v[rows] for k, v in data.items()}

    return batch_fn


def _config():
    return TrainConfig(steps=STEPS, batch_size=BATCH, seed=SEED, log_every=1, eval_every=0,
                       checkpoint_every=5, keep=2)


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def test_stopped_and_resumed_run_is_bit_exact(tmp_path, problem):
    data, mesh, step, tx = problem
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    with Checkpointer(straight_dir, keep=2) as ckpt:
        straight = fit(_fresh_state(tx, mesh), train_step=step, batch_fn=_batch_fn(data), config=_config(),
                       mesh=mesh, checkpointer=ckpt, metrics_path=straight_dir / "metrics.jsonl", progress=False)

    # A run killed while drawing the batch of step 13: checkpoints 5 and 10 exist,
    # metrics.jsonl already holds steps 11-13 that the restart must not duplicate.
    with Checkpointer(resumed_dir, keep=2) as ckpt:
        with pytest.raises(_Interrupt):
            fit(_fresh_state(tx, mesh), train_step=step, batch_fn=_batch_fn(data, stop_at=13), config=_config(),
                mesh=mesh, checkpointer=ckpt, metrics_path=resumed_dir / "metrics.jsonl", progress=False)
        assert ckpt.all_steps() == [5, 10]
    assert [r["step"] for r in read_metrics(resumed_dir / "metrics.jsonl")] == list(range(1, 14))

    with Checkpointer(resumed_dir, keep=2) as ckpt:
        state = ckpt.restore(_fresh_state(tx, mesh))
        assert int(state.step) == 10
        resumed = fit(state, train_step=step, batch_fn=_batch_fn(data), config=_config(), mesh=mesh,
                      checkpointer=ckpt, metrics_path=resumed_dir / "metrics.jsonl", progress=False)
        assert ckpt.all_steps() == [15, 20]  # keep=2

    leaves_a = jax.tree.leaves((straight.state.params, straight.state.opt_state, straight.state.step))
    leaves_b = jax.tree.leaves((resumed.state.params, resumed.state.opt_state, resumed.state.step))
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(jax.random.key_data(straight.state.key), jax.random.key_data(resumed.state.key))
    assert _without_time(read_metrics(resumed_dir / "metrics.jsonl")) == _without_time(
        read_metrics(straight_dir / "metrics.jsonl")
    )
    assert len(read_metrics(straight_dir / "metrics.jsonl")) == STEPS


def test_restore_params_without_a_template_on_one_device(tmp_path, problem):
    _, mesh, _, tx = problem
    state = _fresh_state(tx, mesh).replace(step=jnp.asarray(3, jnp.int32))
    with Checkpointer(tmp_path, keep=1) as ckpt:
        assert ckpt.save(state)
        assert not ckpt.save(state)  # the same step twice is a no-op
    with Checkpointer(tmp_path, create=False) as ckpt:
        params = ckpt.restore_params()
        restored = ckpt.restore(_fresh_state(tx, make_mesh(1)))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        assert a.sharding.device_set == {jax.local_devices()[0]}
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored.step) == 3
    assert restored.params["params"]["Dense_0"]["kernel"].sharding.mesh.size == 1
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(jax.random.key(SEED)))


def test_load_model_rebuilds_the_vae_from_config_json(tmp_path):
    from jaxmed.models import PRESETS, VAE
    from jaxmed.train.registry import model_config_to_dict

    config = PRESETS["tiny"]
    model = VAE(config)
    params = numpy_params(model, np.random.default_rng(0), jnp.zeros((1, *config.image_shape)), jax.random.key(1))
    tx = make_optimizer(OptimConfig(), total_steps=1)
    state = TrainState.create(params=params, tx=tx, key=jax.random.key(2))
    save_config(tmp_path, {"model": {"name": "vae", "preset": "tiny", "config": model_config_to_dict(config)}})
    json.loads((tmp_path / "config.json").read_text())  # plain JSON
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state)

    loaded_model, loaded_params, loaded_config = load_model(tmp_path)
    assert loaded_config == config
    assert isinstance(loaded_model, VAE) and loaded_model.config == config
    assert jax.tree.structure(loaded_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    save_config(tmp_path, {"model": {"name": "gan", "config": {}}})
    with pytest.raises(ValueError, match="unknown model 'gan'"):
        load_model(tmp_path)
    from jaxmed.models import PRESETS
    from jaxmed.train.registry import model_config_to_dict

    fields = dataclasses.replace(PRESETS["tiny"])
    save_config(tmp_path, {"model": {"name": "vae", "config": model_config_to_dict(fields)}})
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path)


def test_config_differences_name_the_leaves_that_differ():
    stored = {"init": "ab12", "model": {"features": 8, "depth": 2, "norm": {"groups": 4}},
              "optim": {"steps": 300, "lr": 1e-3}, "sites": ["A", "B"], "old": 1}
    asked = {"init": "ab12", "model": {"features": 16, "depth": 2, "norm": {"groups": 8}},
             "optim": {"steps": 300, "lr": 1e-3}, "sites": ["A", "C"], "new": 2}
    assert config_differences(stored, asked) == ["model.features", "model.norm.groups", "new", "old", "sites"]
    assert config_differences(stored, json.loads(json.dumps(stored))) == []
    assert config_differences({"model": {"features": 8}}, {"model": 8}) == ["model"]
    assert config_differences(1, 2) == ["(the record)"]

