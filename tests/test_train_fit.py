"""The fit loop: metrics log, evaluation, early stopping, the NaN/Inf guard, progress."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.train import (
    Checkpointer,
    NonFiniteLossError,
    OptimConfig,
    TrainConfig,
    TrainState,
    fit,
    jit_train_step,
    make_mesh,
    make_optimizer,
    make_train_step,
    plot_loss_curve,
    read_metrics,
    replicate,
)


def _loss_fn(params, batch, key):
    del key
    err = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(err**2), {}


@pytest.fixture(scope="module")
def setup():
    mesh = make_mesh(2)
    tx = make_optimizer(OptimConfig(optimizer="sgd", learning_rate=0.1), total_steps=100)
    step = jit_train_step(make_train_step(_loss_fn), mesh)  # shared: one compilation
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    w_true = np.array([1.0, -2.0, 0.5], np.float32)

    def batch_fn(step_index, *, poison_at=None):
        y = x @ w_true
        if step_index == poison_at:
            y = np.full_like(y, np.inf)
        return {"x": x, "y": y}

    def fresh():
        return replicate(TrainState.create(params={"w": jnp.zeros(3)}, tx=tx, key=jax.random.key(0)), mesh)

    return mesh, step, batch_fn, fresh, x, w_true


def test_metrics_log_records_logged_steps_and_the_loss(tmp_path, setup):
    mesh, step, batch_fn, fresh, x, w_true = setup
    config = TrainConfig(steps=7, batch_size=4, log_every=3, eval_every=0, checkpoint_every=0)
    result = fit(fresh(), train_step=step, batch_fn=batch_fn, config=config, mesh=mesh,
                 metrics_path=tmp_path / "metrics.jsonl", progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 7]  # every 3 steps and the last
    # Plain gradient descent on least squares, replayed in numpy.
    w, losses = np.zeros(3), []
    for _ in range(7):
        err = x @ w - x @ w_true
        losses.append(np.mean(err**2))
        w = w - 0.1 * 2 * x.T @ err / len(err)
    np.testing.assert_allclose([r["loss"] for r in records], [losses[2], losses[5], losses[6]], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(result.state.params["w"]), w, rtol=1e-5, atol=1e-6)
    assert result.stop_reason == "completed" and result.best_val_loss is None

    png = plot_loss_curve(records, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (400, 600)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, setup):
    mesh, step, batch_fn, fresh, _, _ = setup
    config = TrainConfig(steps=20, batch_size=4, log_every=1, eval_every=0, checkpoint_every=5, keep=3)
    with Checkpointer(tmp_path, keep=3) as ckpt:
        with pytest.raises(NonFiniteLossError, match=r"step 8.*last good checkpoint is step 5"):
            fit(fresh(), train_step=step, batch_fn=lambda s: batch_fn(s, poison_at=7), config=config,
                mesh=mesh, checkpointer=ckpt, metrics_path=tmp_path / "metrics.jsonl", progress=False)
        assert ckpt.all_steps() == [5]
        params = ckpt.restore_params()
    assert np.all(np.isfinite(np.asarray(params["w"])))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 8))


def test_early_stopping_on_validation_loss_and_resume_after_it(tmp_path, setup):
    mesh, step, batch_fn, fresh, _, _ = setup
    scripted = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 2.0])
    calls = []

    def eval_fn(params):
        calls.append(1)
        return {"loss": next(scripted)}

    config = TrainConfig(steps=50, batch_size=4, log_every=100, eval_every=2, checkpoint_every=0, patience=3)
    with Checkpointer(tmp_path) as ckpt:
        result = fit(fresh(), train_step=step, batch_fn=batch_fn, config=config, mesh=mesh, eval_fn=eval_fn,
                     checkpointer=ckpt, metrics_path=tmp_path / "metrics.jsonl", progress=False)
        # 4.0 at step 4 is the best; 4.5, 4.2, 4.1 are three evaluations without a lower loss.
        assert result.stop_reason == "early_stopping"
        assert int(result.state.step) == 10 and result.best_val_loss == 4.0
        assert ckpt.all_steps() == [10]  # saved when stopping
        records = read_metrics(tmp_path / "metrics.jsonl")
        assert [(r["step"], r["val_loss"]) for r in records] == [(2, 5.0), (4, 4.0), (6, 4.5), (8, 4.2), (10, 4.1)]
        assert all("loss" in r for r in records)

        # Resuming a run that already stopped early stops again at once.
        again = fit(ckpt.restore(fresh()), train_step=step, batch_fn=batch_fn, config=config, mesh=mesh,
                    eval_fn=eval_fn, checkpointer=ckpt, metrics_path=tmp_path / "metrics.jsonl", progress=False)
    assert again.stop_reason == "early_stopping" and int(again.state.step) == 10
    assert len(calls) == 5


def test_progress_bar_shows_rate_and_eta(capsys, setup):
    mesh, step, batch_fn, fresh, _, _ = setup
    config = TrainConfig(steps=5, batch_size=4, log_every=1, eval_every=0, checkpoint_every=0)
    fit(fresh(), train_step=step, batch_fn=batch_fn, config=config, mesh=mesh, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "step/s" in err and "<" in err  # elapsed<remaining
    assert "loss=" in err
