"""The train state: one pytree holding everything a step changes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Parameters, optimiser state, update count and the run's root PRNG key.

    ``tx`` is a static field (part of the tree structure, not a leaf), as in
    ``flax.training.train_state``; everything else is an array leaf, so the
    whole state can be donated to a jitted step and sharded over a mesh.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the model parameters (float32 pytree).
      opt_state: the optimiser state for ``params``.
      key: the run's root PRNG key (typed key array, shape ()). It never
        changes; step ``s`` uses ``jax.random.fold_in(key, s)``, which is what
        makes a resumed run draw the same randomness as an uninterrupted one.
      tx: the Optax transformation that produced ``opt_state``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, params: Any, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
        """A fresh state at step 0.

        Args:
          params: initial parameters.
          tx: the optimiser.
          key: root PRNG key of the run (``jax.random.key``).

        Returns:
          The state with ``step == 0`` and ``opt_state = tx.init(params)``.
        """
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            key=key,
            tx=tx,
        )

    def apply_gradients(self, grads: Any) -> TrainState:
        """One optimiser update; increments ``step``."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
        )

    def step_key(self) -> jax.Array:
        """The PRNG key of the update about to be made: ``fold_in(key, step)``."""
        return jax.random.fold_in(self.key, self.step)
