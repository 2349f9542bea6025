"""Step time of the vmapped masked-region loss vs a Python loop over views.

Command (the figures in benchmarks/RESULTS.md, "Masked-region step")::

    python benchmarks/masked_region.py [--views 2 4 8] [--batch 1 8] [--reps 7]

One JSON line per (batch size, number of views): the median time of one
training step (gradient of the summed view losses + SGD update) of a
``UNet(features=16, depth=3)`` on 64x64x3 images, views blanking modality
``v mod 3`` on a random 8x8-cell partition, for

- ``loop``: a jitted single-view gradient (accumulated into the gradient
  sum) called once per view from Python, then a jitted update;
- ``vmapped``: :func:`jaxmed.losses.make_masked_region_loss` with the views a
  ``jax.vmap`` axis of one jitted step, every view running the network
  (the blanking schedule is a traced argument, as when it is drawn per step);
- ``shared``: the same with the schedule a constant, so views that blank the
  same modality share one network pass (only where views > distinct
  patterns).

The variants run interleaved (loop, vmapped, shared, loop, ...) so that load
from other processes hits all alike; medians and ratios are printed, and the
updates are checked to agree (``max_update_rel_diff``) before timing.
Runtime: about 8 minutes on 2 busy CPU cores, 1.5 on idle ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmed.data.regions import one_modality_per_view, random_partition_regions
from jaxmed.losses import blank_modalities, make_masked_region_loss, masked_mean
from jaxmed.models import UNet

from _machine import machine


def _block(tree):
    return jax.block_until_ready(tree)


def build(num_views: int, batch: int, size: int, modalities: int, features: int, depth: int):
    """Params, data and the two step functions for one setting."""
    key_init, key_x, key_y, key_r = jax.random.split(jax.random.key(0), 4)
    model = UNet(features=features, depth=depth)
    x = jax.random.normal(key_x, (batch, size, size, modalities))
    y = (jax.random.uniform(key_y, (batch, size, size)) < 0.1).astype(jnp.float32)
    params = model.init(key_init, x[:1])
    regions = random_partition_regions(key_r, (size, size), num_views=num_views, cell=8)
    blank = one_modality_per_view(num_views, modalities)
    # SGD, so that the check below compares gradients (Adam's first step is
    # ~lr * sign(g), which flips on gradients that are zero up to rounding).
    tx = optax.sgd(1e-2)
    opt_state = tx.init(params)
    batch_dict = {"image": x, "lesion_mask": y}

    def make_vmapped_step(shared: bool):
        @jax.jit
        def step(params, opt_state, batch, key, blank_arg):
            # shared: the concrete schedule is closed over, so views with the
            # same blanked modality share one network pass; otherwise the
            # traced argument makes every view run the network.
            loss_fn = make_masked_region_loss(
                model.apply, regions=regions, blank=blank if shared else blank_arg
            )
            grads, _ = jax.grad(loss_fn, has_aux=True)(params, batch, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return lambda params, opt_state, batch, key: step(params, opt_state, batch, key, blank)

    def single_view_loss(params, x, y, region, blank_v):
        def one(x1, y1):
            logits = model.apply(params, blank_modalities(x1, blank_v)[None])[0, ..., 0]
            return masked_mean(optax.sigmoid_binary_cross_entropy(logits, y1), region)

        return jnp.mean(jax.vmap(one)(x, y))

    @jax.jit
    def accumulate_view_grad(grad_sum, params, x, y, region, blank_v):
        g = jax.grad(single_view_loss)(params, x, y, region, blank_v)
        return jax.tree.map(jnp.add, grad_sum, g)

    @jax.jit
    def apply_grads(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def loop_step(params, opt_state, batch, key):
        del key  # fixed regions and blanks: nothing random
        grad_sum = jax.tree.map(jnp.zeros_like, params)
        for v in range(num_views):
            grad_sum = accumulate_view_grad(
                grad_sum, params, batch["image"], batch["lesion_mask"], regions[v], blank[v]
            )
        return apply_grads(params, opt_state, grad_sum)

    steps = {"loop": loop_step, "vmapped": make_vmapped_step(False)}
    if len(np.unique(np.asarray(blank), axis=0)) < num_views:
        steps["shared"] = make_vmapped_step(True)
    return params, opt_state, batch_dict, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    modalities = 3
    key = jax.random.key(1)
    for batch_size in args.batch:
        for num_views in args.views:
            params, opt_state, batch, steps = build(
                num_views, batch_size, args.size, modalities, args.features, args.depth
            )
            # Every variant computes the same update: check before timing.
            updates = {
                k: jax.tree.map(jnp.subtract, step(params, opt_state, batch, key)[0], params)
                for k, step in steps.items()
            }
            scale = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates["loop"]))
            max_diff = max(
                float(jnp.max(jnp.abs(a - b))) / scale
                for u in updates.values()
                for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(updates["loop"]))
            )
            times = {k: [] for k in steps}
            for _ in range(args.reps):
                for name, step in steps.items():  # interleaved: load hits all alike
                    t0 = time.perf_counter()
                    _block(step(params, opt_state, batch, key))
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            record = {
                "bench": "masked_region_step",
                "views": num_views,
                "batch": batch_size,
                "image": [args.size, args.size, modalities],
                "unet": {"features": args.features, "depth": args.depth},
                "distinct_blanks": int(len(np.unique(np.asarray(one_modality_per_view(num_views, modalities)), axis=0))),
                **{f"{k}_ms": round(v, 1) for k, v in med.items()},
                "speedup_vmapped": round(med["loop"] / med["vmapped"], 2),
                "speedup_shared": round(med["loop"] / med["shared"], 2) if "shared" in med else None,
                "max_update_rel_diff": float(f"{max_diff:.2g}"),
                "reps": args.reps,
                **machine(),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
