"""The fit loop: steps, logging, evaluation, checkpoints, guards.

It is deliberately small: the data come from ``batch_fn(step)``, a pure
function of the step (``jaxmed.data.batching.batch_indices`` makes one), so a
run restored at step ``k`` sees exactly the batches an uninterrupted run would
have seen from ``k`` on, and the step keys are ``fold_in(key, step)``
(:class:`~jaxmed.train.state.TrainState`): together they make resumption
bit-exact.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxmed.train.checkpoint import Checkpointer
from jaxmed.train.config import TrainConfig
from jaxmed.train.metrics_log import append_metrics, read_metrics, truncate_metrics
from jaxmed.train.parallel import replicate, replicated_sharding, shard_batch
from jaxmed.train.state import TrainState

BatchFn = Callable[[int], Any]
EvalFn = Callable[[Any], dict[str, float]]


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN/Inf; training stopped."""


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final train state (on the mesh).
      stop_reason: ``"completed"`` or ``"early_stopping"``.
      best_val_loss: the lowest validation loss seen, or None.
      records: the metric records written by this call.
    """

    state: TrainState
    stop_reason: str
    best_val_loss: float | None
    records: list[dict[str, Any]] = field(default_factory=list)


def make_evaluator(eval_step, batches: Sequence[Any], *, mesh: Mesh, key: jax.Array) -> EvalFn:
    """Turns a jitted eval step and fixed validation batches into ``eval_fn(params)``.

    The batches are placed on the mesh once. Batch ``i`` always uses the key
    ``fold_in(key, i)``, so repeated evaluations of the same parameters give
    the same numbers (early stopping compares like with like).

    Args:
      eval_step: jitted ``(params, batch, key) -> metrics``
        (:func:`~jaxmed.train.parallel.jit_eval_step`).
      batches: this process's slices of equally sized validation batches.
      mesh: the device mesh.
      key: PRNG key of the evaluation.

    Returns:
      ``eval_fn(params) -> {name: float}``, the means over the batches.
    """
    if not batches:
        raise ValueError("make_evaluator needs at least one validation batch")
    sharded = [shard_batch(b, mesh) for b in batches]
    keys = replicate(list(jax.random.split(key, len(sharded))), mesh)

    def eval_fn(params: Any) -> dict[str, float]:
        # Dispatch every batch, then one transfer to the host.
        outputs = jax.device_get([eval_step(params, batch, k) for batch, k in zip(sharded, keys, strict=True)])
        # Equal batch sizes: the mean of batch means is the mean over examples.
        return {name: float(np.mean([o[name] for o in outputs])) for name in outputs[0]}

    return eval_fn


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}


def _is_placed(tree: Any, mesh: Mesh) -> bool:
    sharding = replicated_sharding(mesh)
    return all(getattr(x, "sharding", None) == sharding for x in jax.tree.leaves(tree))


def _track_best(best: float, since_best: int, val_loss: float) -> tuple[float, int]:
    """The lowest validation loss so far and the evaluations since it, after one more."""
    return (val_loss, 0) if val_loss < best else (best, since_best + 1)


def _early_stopping_state(records: Sequence[dict[str, Any]]) -> tuple[float, int]:
    best, since_best = math.inf, 0
    for record in records:
        if "val_loss" in record:
            best, since_best = _track_best(best, since_best, record["val_loss"])
    return best, since_best


def fit(
    state: TrainState,
    *,
    train_step: Callable,
    batch_fn: BatchFn,
    config: TrainConfig,
    mesh: Mesh,
    eval_fn: EvalFn | None = None,
    checkpointer: Checkpointer | None = None,
    metrics_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> FitResult:
    """Trains from ``state.step`` to ``config.steps``.

    Every step: ``train_step(state, shard_batch(batch_fn(step)))``; that the
    loss and new parameters stayed finite is checked (one device-to-host
    transfer) at every step that logs, evaluates or checkpoints. Every ``config.log_every``
    steps a record ``{"step", "loss", ...}`` is appended to ``metrics_path``;
    every ``config.eval_every`` steps ``eval_fn`` runs and its results join
    the record as ``val_<name>``; every ``config.checkpoint_every`` steps,
    at early stopping and at the end, a checkpoint is saved.

    Resuming: pass a restored state. Records after its step are dropped from
    ``metrics_path`` (they are logged again) and the early-stopping counter is
    rebuilt from the records kept.

    Args:
      state: the starting state; placed on the mesh (replicated) if it is not.
      train_step: jitted ``(state, batch) -> (state, metrics)``
        (:func:`~jaxmed.train.parallel.jit_train_step`); the state is donated.
      batch_fn: ``batch_fn(step) -> batch`` for 0-based step ``step``: this
        process's slice of that step's global batch (pytree of host arrays).
      config: steps, logging/eval/checkpoint periods, patience.
      mesh: the device mesh.
      eval_fn: ``eval_fn(params) -> {name: value}`` with at least ``"loss"``;
        None = no evaluation (and no early stopping).
      checkpointer: where checkpoints go; None = none are saved.
      metrics_path: the ``metrics.jsonl`` file (written by process 0); None =
        no file.
      progress: show a tqdm progress bar (process 0) with rate and ETA.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteLossError: the loss or the parameters became non-finite. The
        bad state is not saved; the message names the last good checkpoint.
    """
    from tqdm.auto import tqdm

    if not _is_placed(state, mesh):
        state = replicate(state, mesh)
    start = int(state.step)
    writer = metrics_path is not None and jax.process_index() == 0
    previous = []
    if metrics_path is not None:
        # Every process reads the history (early stopping must agree); only
        # process 0 rewrites the file, by an atomic rename.
        previous = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= start]
        if writer:
            truncate_metrics(metrics_path, after_step=start)
    best, since_best = _early_stopping_state(previous)

    patience = config.patience if eval_fn is not None else None
    if patience is not None and since_best >= patience:
        return FitResult(state, "early_stopping", None if math.isinf(best) else best)

    records: list[dict[str, Any]] = []
    stop_reason = "completed"
    bar = tqdm(total=config.steps, initial=start, unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    t0 = time.perf_counter()
    finite = None
    try:
        for step in range(start, config.steps):
            state, metrics = train_step(state, shard_batch(batch_fn(step), mesh))
            done = step + 1
            # Accumulated on the device: waiting for every step's flag would
            # stop the host from preparing the next batch while this one runs.
            finite = metrics["finite"] if finite is None else finite & metrics["finite"]
            bar.update(1)
            is_last = done == config.steps
            log_now = done % config.log_every == 0 or is_last
            eval_now = eval_fn is not None and (
                (config.eval_every and done % config.eval_every == 0) or is_last
            )
            save_now = checkpointer is not None and (
                is_last or (config.checkpoint_every and done % config.checkpoint_every == 0)
            )
            # Checked before anything is logged, evaluated or saved, so no bad state is kept.
            if (log_now or eval_now or save_now) and not bool(finite):
                _stop_non_finite(done, config.log_every, checkpointer)
            stop_early = False
            if log_now or eval_now:
                record = {"step": done, **_scalars(metrics)}
                if eval_now:
                    val = eval_fn(state.params)
                    record.update({f"val_{k}": v for k, v in val.items()})
                    best, since_best = _track_best(best, since_best, record["val_loss"])
                    stop_early = patience is not None and since_best >= patience
                record["elapsed_s"] = round(time.perf_counter() - t0, 3)
                if writer:
                    append_metrics(metrics_path, record)
                records.append(record)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "val_loss") if k in record})
            if save_now or (checkpointer is not None and stop_early):
                checkpointer.save(state)
            if stop_early:
                stop_reason = "early_stopping"
                break
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    return FitResult(state, stop_reason, None if math.isinf(best) else best, records)


def _stop_non_finite(step: int, log_every: int, checkpointer: Checkpointer | None) -> None:
    if checkpointer is not None:
        checkpointer.wait()
        last = checkpointer.latest_step()
        where = (
            f"the last good checkpoint is step {last} in {Path(checkpointer.run_dir).absolute()}"
            if last is not None else "no checkpoint had been saved yet"
        )
    else:
        where = "no checkpointer was given, so nothing was saved"
    raise NonFiniteLossError(
        f"training stopped at step {step}: the loss or the updated parameters became "
        f"non-finite (NaN/Inf) within the last {log_every} step(s); the bad state was not "
        f"saved; {where}. Lower the "
        "learning rate or set a gradient clip norm, then resume from that checkpoint."
    )
