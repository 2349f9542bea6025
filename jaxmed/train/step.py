"""Train and eval step factories, generic over a loss function.

A loss function has the signature ``loss_fn(params, batch, key) -> (loss,
metrics)``: ``batch`` is a pytree whose leaves share a leading batch axis,
``loss`` is a scalar averaged over that axis and ``metrics`` a dict of
scalars. The steps built here are pure; :mod:`jaxmed.train.parallel` jits them
over a device mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmed.train.state import TrainState

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
EvalStep = Callable[[Any, Any, jax.Array], dict[str, jax.Array]]


def _cast_floating(tree: Any, dtype: jnp.dtype) -> Any:
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _compute_objective(loss_fn: LossFn, *, mixed_precision: bool) -> LossFn:
    def objective(params, batch, key):
        if mixed_precision:
            # bf16 compute, f32 master weights: the cast is inside the
            # differentiated function, so gradients arrive in float32.
            params = _cast_floating(params, jnp.bfloat16)
            batch = _cast_floating(batch, jnp.bfloat16)
        loss, metrics = loss_fn(params, batch, key)
        return loss.astype(jnp.float32), _cast_floating(metrics, jnp.float32)

    return objective


def make_train_step(loss_fn: LossFn, *, mixed_precision: bool = False) -> TrainStep:
    """Builds ``train_step(state, batch) -> (state, metrics)``.

    The step key is ``fold_in(state.key, state.step)``, so randomness depends
    only on the root key and the update count (a resumed run repeats it
    exactly).

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (scalar loss, metrics dict)``,
        the loss a mean over the batch.
      mixed_precision: cast parameters and floating batch leaves to bfloat16
        for the forward and backward pass; parameters, gradients and optimiser
        state stay float32. ``loss_fn`` should reduce in float32.

    Returns:
      A pure function ``train_step(state, batch) -> (state, metrics)``.
      ``metrics`` holds float32 scalars: ``loss``, the loss function's own
      metrics, ``grad_norm`` (global L2 norm of the gradient, before
      clipping), and the bool ``finite`` (loss and the updated parameters are
      all finite).
    """
    objective = _compute_objective(loss_fn, mixed_precision=mixed_precision)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, batch, state.step_key())
        new_state = state.apply_gradients(grads)
        metrics = {
            **aux,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "finite": jnp.isfinite(loss) & _all_finite(new_state.params),
        }
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn, *, mixed_precision: bool = False) -> EvalStep:
    """Builds ``eval_step(params, batch, key) -> metrics`` (no update).

    Args:
      loss_fn: as for :func:`make_train_step`.
      mixed_precision: as for :func:`make_train_step`.

    Returns:
      A pure function returning ``{"loss": ..., **loss_fn metrics}`` as
      float32 scalars, means over the batch.
    """
    objective = _compute_objective(loss_fn, mixed_precision=mixed_precision)

    def eval_step(params: Any, batch: Any, key: jax.Array) -> dict[str, jax.Array]:
        loss, aux = objective(params, batch, key)
        return {**aux, "loss": loss}

    return eval_step
