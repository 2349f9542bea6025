"""One training phase in its own folder: resumed bit for bit, loaded when finished, refused when it is another run.

The tasks train in phases (a pre-trained encoder, then the model; a
localiser, then a classifier), each one engine run (:func:`jaxmed.train.fit`)
in a folder of its own::

    RUN_DIR/
      config.json      what the run is: the caller's record + the SHA-1 of the starting variables ("init")
      metrics.jsonl    the fit loop's records
      loss_curve.png
      checkpoints/     Orbax: the latest state (parameters, optimiser state, step, key)

:func:`run_phase` compares ``config.json`` with the run it is asked for: the
same run is resumed from its latest checkpoint (or loaded, when finished);
another run is refused unless ``force``, which starts the folder over.
Resuming is bit-exact because the step key is ``fold_in(key, step)`` and
``batch_fn`` is a pure function of the step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jaxmed.train.checkpoint import Checkpointer, config_differences, save_config
from jaxmed.train.config import TrainConfig
from jaxmed.train.loop import fit
from jaxmed.train.metrics_log import plot_loss_curve, read_metrics
from jaxmed.train.parallel import jit_train_step, make_mesh
from jaxmed.train.state import TrainState
from jaxmed.train.step import make_train_step

__all__ = ["params_digest", "run_phase"]


def params_digest(params: Any) -> str:
    """SHA-1 of every leaf's bytes, in tree order."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _what_differs(stored: dict | None, record: dict, most: int = 6) -> str:
    if stored is None:
        return "no config.json"
    keys = ["init (the starting variables)" if k == "init" else k for k in config_differences(stored, record)]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return f"its config.json differs in {', '.join(keys[:most])}{more}"


@functools.lru_cache(maxsize=32)
def _jitted_step(loss_fn):
    # Cached by the loss function, so that runs of one kind share a compilation.
    return jit_train_step(make_train_step(loss_fn), make_mesh(1))


def run_phase(loss_fn: Callable, params: Any, tx: optax.GradientTransformation, batch_fn: Callable[[int], Any], *,
              steps: int, key: jax.Array, run_dir: str | Path, record: dict, progress: bool, force: bool = False,
              batch_size: int = 1, log_every: int | None = None, checkpoint_every: int | None = None
              ) -> tuple[Any, list[dict]]:
    """One engine run on one device in ``run_dir`` (module docstring).

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)``.
      params: the starting variables.
      tx: the optimiser.
      batch_fn: ``batch_fn(step)``, a pure function of the step.
      steps: optimiser steps in all.
      key: the run's root key (step ``s`` uses ``fold_in(key, s)``).
      run_dir: the run's folder.
      record: what ``config.json`` says besides ``"init"`` (JSON values: the
        task, the model, the data, the optimiser). A folder whose record
        differs holds another run.
      progress: a progress bar.
      force: start over in a folder holding another run (else `FileExistsError`).
      batch_size: recorded in the engine's config (the batches are ``batch_fn``'s).
      log_every: steps between metric records (default ``min(10, steps // 5)``, at least 1).
      checkpoint_every: steps between checkpoints (default ``min(50, steps // 4)``, at least 1;
        0: only the last step's, so a stopped run starts over).

    Returns:
      ``(variables, records)`` after ``steps`` steps, the records those of
      the whole run (``metrics.jsonl``).

    Raises:
      FileExistsError: ``run_dir`` holds another run (or files but no
        ``config.json``) and ``force`` is False; the message names the
        fields of ``config.json`` that differ (`config_differences`).
    """
    run_dir = Path(run_dir)
    record = json.loads(json.dumps({**record, "init": params_digest(params)}))
    config_path = run_dir / "config.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        stored = json.loads(config_path.read_text()) if config_path.is_file() else None
        if stored != record:
            if not force:
                raise FileExistsError(f"{run_dir}: holds another run ({_what_differs(stored, record)}); "
                                      "pass force to start it over")
            shutil.rmtree(run_dir)
    state = TrainState.create(params=params, tx=tx, key=key)
    if log_every is None:
        log_every = max(1, min(10, steps // 5))
    if checkpoint_every is None:
        checkpoint_every = max(1, min(50, steps // 4))
    engine = TrainConfig(steps=steps, batch_size=batch_size, log_every=log_every, eval_every=0,
                         checkpoint_every=checkpoint_every, keep=1, devices=1)
    save_config(run_dir, record)
    checkpointer = Checkpointer(run_dir, keep=1)
    metrics_path = run_dir / "metrics.jsonl"
    try:
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(jax.device_put(state, jax.local_devices()[0]))
        if int(state.step) >= steps:
            return jax.device_get(state.params), read_metrics(metrics_path)
        state = fit(state, train_step=_jitted_step(loss_fn), batch_fn=batch_fn, config=engine, mesh=make_mesh(1),
                    checkpointer=checkpointer, metrics_path=metrics_path, progress=progress).state
    finally:
        checkpointer.close()
        if metrics_path.exists():
            plot_loss_curve(read_metrics(metrics_path), run_dir / "loss_curve.png")
    return jax.device_get(state.params), read_metrics(metrics_path)
