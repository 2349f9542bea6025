"""Train-step throughput of a VAE preset: JAX (jaxmed) against PyTorch eager.

One full Adam step of the mean negative ELBO (unit-variance Gaussian
likelihood + KL, one reparameterised sample per image) on a fixed batch of
synthetic images, built through the training engine
(:func:`jaxmed.train.step.make_train_step`, jitted with a donated state by
:func:`jaxmed.train.parallel.jit_train_step`). PyTorch runs the same network,
loss and optimiser eagerly with the same number of threads. The two are timed
in alternating rounds, so that load from other processes hits both alike, and
the ratio is the median of the per-round ratios.

Command (the figures in benchmarks/RESULTS.md, "Train step, reference64, CPU")::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py --preset reference64 --batch-size 64

prints one JSON line per framework and one with the ratio, e.g.
``{"benchmark": "train_step", "framework": "jax", "images_per_s": ...}``;
``--devices 2`` splits the batch over two CPU devices (data parallel).
``OMP_WAIT_POLICY=PASSIVE`` stops PyTorch's OpenMP threads from spinning,
which on a loaded machine makes PyTorch's figure several times better and
stable; on an idle machine run both ways and keep PyTorch's better figure.
About 1-4 minutes on 2 CPU cores (compilation included); the JAX step reached
0.64-0.74x PyTorch's images/s on the idle AVX2 machine of RESULTS.md (421 vs
569 img/s with ``OMP_WAIT_POLICY=PASSIVE``; plain XLA convolutions: 109 img/s)
and 0.68-0.77x on an AVX-512 one (357 vs 484), short of the 1.2x target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

from _machine import machine


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="reference64")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--devices", type=int, default=1, help="CPU devices (data parallel)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--rounds", type=int, default=9, help="alternating timing rounds")
    p.add_argument("--steps", type=int, default=5, help="train steps per round and framework")
    p.add_argument("--down-impl", default=None, help="override the preset's down_impl")
    p.add_argument("--up-impl", default=None, help="override the preset's up_impl")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-torch", action="store_true", help="time JAX only")
    return p.parse_args(argv)


def _torch_vae(cfg):
    """The preset's network in PyTorch (2D presets with uniform strides only)."""
    from torch import nn

    if cfg.spatial_rank != 2:
        raise SystemExit("the PyTorch baseline covers 2D presets only")
    k, chans = cfg.kernel_size, cfg.channels
    h, w, c = cfg.image_shape
    pads = []
    for s in cfg.strides:
        # "SAME" for even k: (k - s) / 2 on each side, as XLA pads it.
        if (k - s) % 2:
            raise SystemExit("the PyTorch baseline needs k - stride even")
        pads.append((k - s) // 2)
    enc, cin = [], c
    for ch, s, pd in zip(chans, cfg.strides, pads):
        enc += [nn.Conv2d(cin, ch, k, s, pd), nn.ReLU()]
        cin = ch
    factor = math.prod(cfg.strides)
    gh, gw = h // factor, w // factor
    enc += [nn.Flatten(), nn.Linear(chans[-1] * gh * gw, 2 * cfg.latent_dim)]
    dec = [nn.Linear(cfg.latent_dim, chans[-1] * gh * gw), nn.ReLU(), nn.Unflatten(1, (chans[-1], gh, gw))]
    outs = (*reversed(chans[:-1]), c)
    cin = chans[-1]
    for i, (ch, s, pd) in enumerate(zip(outs, reversed(cfg.strides), reversed(pads))):
        dec.append(nn.ConvTranspose2d(cin, ch, k, s, pd))
        dec.append(nn.ReLU() if i < len(outs) - 1 else nn.Sigmoid())
        cin = ch
    return nn.Sequential(*enc), nn.Sequential(*dec)


def _torch_step_fn(cfg, batch_size, threads, seed=0):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    enc, dec = _torch_vae(cfg)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(size=(batch_size, cfg.image_shape[-1], *cfg.image_shape[:-1])).astype(np.float32))
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))

    def step():
        opt.zero_grad(set_to_none=True)
        mean, log_scale = enc(x).chunk(2, dim=1)
        z = mean + log_scale.exp() * torch.randn_like(mean)
        x_mean = dec(z)
        nll = (0.5 * (x - x_mean).square() + half_log_2pi).flatten(1).sum(1)
        kl = 0.5 * (mean.square() + (2 * log_scale).exp() - 1 - 2 * log_scale).sum(1)
        loss = (nll + kl).mean()
        loss.backward()
        opt.step()
        return loss

    n_params = sum(p.numel() for p in [*enc.parameters(), *dec.parameters()])
    return step, n_params


def _jax_step_fn(cfg, batch_size, devices, seed=0):
    import jax
    import numpy as np
    import optax

    from jaxmed.losses import vae_loss_fn
    from jaxmed.models import VAE
    from jaxmed.train.parallel import jit_train_step, make_mesh, replicate, shard_batch
    from jaxmed.train.state import TrainState
    from jaxmed.train.step import make_train_step

    model = VAE(cfg)
    mesh = make_mesh(devices)
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(batch_size, *cfg.image_shape)).astype(np.float32)
    key = jax.random.key(seed)
    params = jax.jit(model.init)(key, images[:1], key)
    state = replicate(TrainState.create(params=params, tx=optax.adam(1e-3), key=key), mesh)
    batch = shard_batch({"image": images}, mesh)
    step = jit_train_step(make_train_step(vae_loss_fn(model)), mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    n_params = sum(a.size for a in jax.tree.leaves(params))
    return run, n_params, jax.devices()[0].device_kind


def _time(step, n):
    """Wall-clock and process CPU seconds of ``n`` steps, waiting for the last."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        out = step()
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    else:
        out.item()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None):
    args = _parse(argv)
    # Devices must be fixed before JAX starts.
    flags = os.environ.get("XLA_FLAGS", "")
    if args.devices > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import dataclasses

    import jax.numpy as jnp

    from jaxmed.models import PRESETS

    cfg = PRESETS[args.preset]
    overrides = {}
    if args.down_impl:
        overrides["down_impl"] = args.down_impl
    if args.up_impl:
        overrides["up_impl"] = args.up_impl
    if args.dtype == "bfloat16":
        overrides["dtype"] = jnp.bfloat16
    cfg = dataclasses.replace(cfg, **overrides)

    t0 = time.perf_counter()
    jax_step, jax_params, device_kind = _jax_step_fn(cfg, args.batch_size, args.devices)
    _time(jax_step, 2)  # compile + warm-up
    compile_s = time.perf_counter() - t0
    frameworks = {"jax": jax_step}
    if not args.no_torch:
        torch_step, torch_params = _torch_step_fn(cfg, args.batch_size, args.threads)
        if torch_params != jax_params:
            raise SystemExit(f"parameter counts differ: jax {jax_params}, torch {torch_params}")
        _time(torch_step, 2)
        frameworks["torch"] = torch_step
    times = {name: [] for name in frameworks}
    cpu_times = {name: [] for name in frameworks}
    for _ in range(args.rounds):
        for name, step in frameworks.items():
            wall, cpu = _time(step, args.steps)
            times[name].append(wall / args.steps)
            cpu_times[name].append(cpu / args.steps)
    common = {
        "benchmark": "train_step",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "devices": args.devices,
        "threads": args.threads,
        "dtype": args.dtype,
        "device_kind": device_kind,
        "params": jax_params,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        **machine(),
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        line = {
            **common,
            "framework": name,
            "images_per_s": round(args.batch_size / med, 1),
            "ms_per_step": round(1e3 * med, 2),
            "ms_per_step_min": round(1e3 * min(ts), 2),
            # CPU seconds of the whole process (all threads): less sensitive to
            # other processes than wall time, but counts spin-waiting threads.
            "cpu_ms_per_step": round(1e3 * statistics.median(cpu_times[name]), 2),
        }
        if name == "jax":
            line.update(down_impl=cfg.down_impl, up_impl=cfg.up_impl, compile_s=round(compile_s, 1))
        if name == "torch":
            import torch

            line["torch_version"] = torch.__version__
        print(json.dumps(line), flush=True)
    if "torch" in times:
        ratios = [t / j for j, t in zip(times["jax"], times["torch"])]
        print(json.dumps({
            **common,
            "framework": "ratio",
            "jax_over_torch_images_per_s": round(statistics.median(ratios), 3),
            "per_round": [round(r, 3) for r in ratios],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
