"""Throughput of the log p(x) estimators on the reference VAE, against per-image baselines.

The network is ``PRESETS["reference64"]`` (64x64x1 images, latent 32) with
randomly initialised parameters (speed does not depend on training). For each
(method, K) one JSON line is printed::

    {"benchmark": "estimator", "method": "importance", "num_samples": 1000,
     "batch": 8, "images_per_s": ..., "samples_per_s": ..., "device_kind": "cpu", ...}

Baselines, timed in alternating rounds with jaxmed's estimator so that load from
other processes hits both alike (figures are medians over rounds; ``ratio`` is the
median of per-round ratios):

- ``importance``: a straightforward per-image PyTorch implementation of the same
  estimator on the same network (same weights, copied): each image is repeated K
  times, every copy is encoded, sampled, decoded and weighted, one image after
  another (``torch.set_num_threads(--threads)``, ``torch.no_grad``). jaxmed
  encodes each image once and decodes all images' samples in one batch.
- ``mcmc``: NumPyro's ``MCMC`` object (NUTS, vectorised chains) run once per
  image, followed by the same Gaussian fit and reciprocal importance sampling. A
  new potential per image means a new compilation per image: that is the cost of
  the pattern. jaxmed compiles once and vmaps the chains over images.

Command (the figures in benchmarks/RESULTS.md, section "Estimators")::

    python benchmarks/estimators.py
    python benchmarks/estimators.py --methods mc,importance --up-impl subpixel

About 10 minutes on 2 CPU cores. ``--quick`` (small K, 2 rounds) takes about 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from functools import partial

import jax
import numpy as np

from jaxmed.likelihood import log_px
from jaxmed.models import PRESETS, VAE, vae_latent_model

from _machine import machine


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8, help="images per estimator call")
    p.add_argument("--ks", default="10,100,1000", help="K values for mc / importance")
    p.add_argument("--chunk-size", type=int, default=250, help="samples per image decoded at once")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--baseline-images", type=int, default=2, help="images per baseline round")
    p.add_argument("--mcmc-warmup", type=int, default=50)
    p.add_argument("--mcmc-samples", type=int, default=40, help="N (and the fitting samples)")
    p.add_argument("--mcmc-chains", type=int, default=4)
    p.add_argument("--mcmc-batch", type=int, default=4)
    p.add_argument("--max-tree-depth", type=int, default=6)
    p.add_argument("--ais-chains", type=int, default=8)
    p.add_argument("--ais-steps", type=int, default=20)
    p.add_argument("--slow-rounds", type=int, default=2, help="timing rounds for ais and mcmc")
    p.add_argument("--methods", default="match,mc,importance,ais,mcmc")
    p.add_argument(
        "--up-impl", default=None,
        help="decoder up-sampling implementation (same parameters and function; "
        "'subpixel' has the fastest forward pass on XLA:CPU, the preset's default "
        "'subpixel_matmul' the fastest gradient)",
    )
    p.add_argument("--quick", action="store_true", help="K up to 100, 2 rounds, short MCMC")
    args = p.parse_args(argv)
    if args.quick:
        args.ks, args.rounds, args.slow_rounds = "10,100", 2, 1
        args.mcmc_warmup, args.mcmc_samples, args.ais_steps = 20, 16, 5
    return args


# -- the network ------------------------------------------------------------------


def _model_and_images(batch, seed=0, up_impl=None):
    config = PRESETS["reference64"]
    if up_impl is not None:
        config = dataclasses.replace(config, up_impl=up_impl)
    vae = VAE(config)
    images = jax.random.uniform(jax.random.key(seed + 1), (batch, *config.image_shape))
    params = jax.jit(vae.init)(jax.random.key(seed), images[:1], jax.random.key(seed + 2))
    return config, vae, params, images


def _torch_networks(config, params):
    """Encoder and decoder of the reference VAE in PyTorch, with jaxmed's weights."""
    import torch
    from torch import nn

    p = jax.tree.map(lambda a: torch.from_numpy(np.array(a, np.float32)), params["params"])
    k, chans = config.kernel_size, config.channels
    h, w, c = config.image_shape
    grid = h // 2 ** len(chans), w // 2 ** len(chans)

    def conv(name, cin, cout):
        # "SAME" with k = 4, stride 2 on even sizes pads 1 on each side.
        layer = nn.Conv2d(cin, cout, k, 2, 1)
        layer.weight.data = p["encoder"][name]["kernel"].permute(3, 2, 0, 1).contiguous()
        layer.bias.data = p["encoder"][name]["bias"]
        return layer

    def upconv(name, cin, cout):
        # lax "SAME" transposed conv = PyTorch's with the kernel flipped, padding 1.
        layer = nn.ConvTranspose2d(cin, cout, k, 2, 1)
        layer.weight.data = p["decoder"][name]["kernel"].flip(0, 1).permute(2, 3, 0, 1).contiguous()
        layer.bias.data = p["decoder"][name]["bias"]
        return layer

    def dense(weights, cin, cout):
        layer = nn.Linear(cin, cout)
        layer.weight.data = weights["kernel"].T.contiguous()
        layer.bias.data = weights["bias"]
        return layer

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            cins = (c, *chans[:-1])
            self.convs = nn.ModuleList(conv(f"conv_{i}", a, b) for i, (a, b) in enumerate(zip(cins, chans)))
            self.out = dense(p["encoder"]["out"], chans[-1] * grid[0] * grid[1], 2 * config.latent_dim)

        def forward(self, x):  # NCHW
            for layer in self.convs:
                x = torch.relu(layer(x))
            # flatten in (h, w, c) order, as the Flax model does
            return self.out(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)).chunk(2, dim=-1)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = dense(p["decoder"]["dense"], config.latent_dim, chans[-1] * grid[0] * grid[1])
            outs = (*reversed(chans[:-1]), c)
            cins = tuple(reversed(chans))
            self.ups = nn.ModuleList(upconv(f"upconv_{i}", a, b) for i, (a, b) in enumerate(zip(cins, outs)))

        def forward(self, z):
            x = torch.relu(self.dense(z)).reshape(z.shape[0], *grid, chans[-1]).permute(0, 3, 1, 2)
            for i, layer in enumerate(self.ups):
                x = layer(x)
                x = torch.relu(x) if i < len(self.ups) - 1 else torch.sigmoid(x)
            return x

    return Encoder().eval(), Decoder().eval()


def _torch_importance(encoder, decoder, images_nchw, num_samples, generator):
    """The straightforward baseline: per image, K copies encoded, sampled, decoded."""
    import torch

    out = []
    with torch.no_grad():
        for x in images_nchw:
            copies = x.unsqueeze(0).expand(num_samples, *x.shape)
            mean, log_scale = encoder(copies)
            eps = torch.randn(mean.shape, generator=generator)
            z = mean + log_scale.exp() * eps
            recon = decoder(z)
            d_x, d_z = x.numel(), z.shape[-1]
            log_lik = -0.5 * ((copies - recon) ** 2).flatten(1).sum(1) - 0.5 * d_x * math.log(2 * math.pi)
            log_prior = -0.5 * (z**2).sum(1) - 0.5 * d_z * math.log(2 * math.pi)
            log_q = -0.5 * (eps**2).sum(1) - log_scale.sum(1) - 0.5 * d_z * math.log(2 * math.pi)
            log_w = log_lik + log_prior - log_q
            out.append(float(torch.logsumexp(log_w, 0) - math.log(num_samples)))
    return np.array(out)


def _numpyro_mcmc_per_image(key, model, images, *, num_warmup, num_samples, num_chains, max_tree_depth):
    """NumPyro's MCMC object once per image + Gaussian fit + reciprocal IS (numpy)."""
    from numpyro.infer import MCMC, NUTS
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    out = []
    per_chain = num_samples // num_chains
    for i, x in enumerate(images):
        def potential(z, x=x):
            return -(model.log_prior(z) + model.log_likelihood(x, z))

        mean, std = model.proposal(x)
        z0 = mean + std * jax.random.normal(jax.random.fold_in(key, i), (num_chains, mean.shape[0]))
        mcmc = MCMC(
            NUTS(potential_fn=potential, max_tree_depth=max_tree_depth),
            num_warmup=num_warmup, num_samples=2 * per_chain, num_chains=num_chains,
            chain_method="vectorized", progress_bar=False,
        )
        mcmc.run(jax.random.fold_in(key, 1000 + i), init_params=z0, extra_fields=("potential_energy",))
        z = np.asarray(mcmc.get_samples(group_by_chain=True), np.float64)
        energy = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["potential_energy"], np.float64)
        fit = z[:, :per_chain].reshape(-1, z.shape[-1])
        q = multivariate_normal(fit.mean(0), np.cov(fit.T) + 1e-6 * np.eye(z.shape[-1]))
        log_v = q.logpdf(z[:, per_chain:].reshape(-1, z.shape[-1])) + energy[:, per_chain:].reshape(-1)
        out.append(-(logsumexp(log_v) - math.log(log_v.size)))
    return np.array(out)


# -- timing -------------------------------------------------------------------------


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    jax.block_until_ready(result)
    return time.perf_counter() - start, result


def _emit(**fields):
    print(json.dumps({"benchmark": "estimator", **fields}), flush=True)


def main(argv=None):
    args = _parse(argv)
    device_kind = jax.devices()[0].device_kind
    config, vae, params, images = _model_and_images(max(args.batch, args.mcmc_batch), up_impl=args.up_impl)
    model = vae_latent_model(vae, params)
    methods = args.methods.split(",")
    ks = [int(k) for k in args.ks.split(",")]

    torch_parts = None
    if "importance" in methods:
        import torch

        torch.set_num_threads(args.threads)
        encoder, decoder = _torch_networks(config, params)
        nchw = torch.from_numpy(np.asarray(images[: args.baseline_images]).transpose(0, 3, 1, 2).copy())
        torch_parts = encoder, decoder, nchw, torch.Generator().manual_seed(0)

    runs = []  # (method, K, batch, options)
    if "match" in methods:
        runs.append(("match", 1, args.batch, {}))
    for method in ("mc", "importance"):
        if method in methods:
            runs += [(method, k, args.batch, {}) for k in ks]
    if "ais" in methods:
        runs.append((
            "ais", args.ais_chains, args.batch,
            dict(num_steps=args.ais_steps, num_leapfrog_steps=5, num_pilot_chains=8),
        ))
    if "mcmc" in methods:
        runs.append((
            "mcmc", args.mcmc_samples, args.mcmc_batch,
            dict(num_warmup=args.mcmc_warmup, num_chains=args.mcmc_chains, max_tree_depth=args.max_tree_depth),
        ))

    for method, k, batch, options in runs:
        xs = images[:batch]
        sampling = {} if method == "match" else dict(num_samples=k, chunk_size=min(k, args.chunk_size))
        estimator = jax.jit(partial(log_px, method=method, **sampling, **options))
        compile_s, estimate = _timed(lambda: estimator(jax.random.key(0), model, xs))
        ours, theirs, ratios = [], [], []
        baseline = None
        numpyro_mcmc = partial(_numpyro_mcmc_per_image, model=model, num_warmup=args.mcmc_warmup,
                               num_samples=args.mcmc_samples, num_chains=args.mcmc_chains,
                               max_tree_depth=args.max_tree_depth)
        if method == "mcmc":
            # Warm-up, as ours is compiled above: NumPyro's first MCMC run in a
            # process costs ~17 s once; later images cost ~1 s of tracing each.
            numpyro_mcmc(jax.random.key(99), images=images[:1])
        rounds = args.slow_rounds if method in ("ais", "mcmc") else args.rounds
        for r in range(rounds):
            t, estimate = _timed(lambda: estimator(jax.random.key(r + 1), model, xs))
            ours.append(batch / t)
            if method == "importance":
                encoder, decoder, nchw, generator = torch_parts
                tb, baseline = _timed(lambda: _torch_importance(encoder, decoder, nchw, k, generator))
            elif method == "mcmc":
                n = args.baseline_images
                tb, baseline = _timed(lambda: numpyro_mcmc(jax.random.key(100 + r), images=images[:n]))
            else:
                continue
            theirs.append(args.baseline_images / tb)
            ratios.append(ours[-1] / theirs[-1])
        images_per_s = statistics.median(ours)
        fields = dict(
            method=method, num_samples=k, batch=batch, images_per_s=round(images_per_s, 3),
            samples_per_s=round(images_per_s * k, 1), device_kind=device_kind,
            compile_s=round(compile_s, 1), rounds=rounds, up_impl=config.up_impl, **options, **machine(),
        )
        if ratios:
            base = statistics.median(theirs)
            fields.update(
                baseline_images_per_s=round(base, 3), baseline_samples_per_s=round(base * k, 1),
                ratio=round(statistics.median(ratios), 2),
                # same network and estimator: the two estimates agree within MC error
                baseline_mean_abs_diff=round(float(np.mean(np.abs(np.asarray(estimate[: len(baseline)]) - baseline))), 3),
            )
        _emit(**fields)


if __name__ == "__main__":
    main()
