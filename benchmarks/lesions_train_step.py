"""Train-step throughput of the lesion model (localiser + classifier, end to end): JAX (jaxmed) against PyTorch eager.

One Adam step of the end-to-end phase-2 loss of the lesions task (the
ordinal cumulative-link NLL of the grade plus the localiser's pixel loss:
weighted cross-entropy of the fused map and of each modality's map) on a
fixed batch of synthetic exams, 2D and 3D: the JAX step is the task's own
(`jaxmed.tasks.lesions.training._joint_loss` through
:func:`jaxmed.train.make_train_step`, jitted with the state donated by
:func:`jaxmed.train.jit_train_step`, augmentation and blanking off); PyTorch
runs the same network (a U-Net shared by the modality images with a one-hot
modality code, per-modality heads, the learned fusion; the classifier's
U-Net encoder on image + code + map, mean / map-weighted / max pooling, the
map's statistics, a two-layer head, increasing cut-points), loss and
optimiser eagerly, with its best CPU settings (``torch.set_num_threads``,
``OMP_WAIT_POLICY=PASSIVE`` and the malloc variables below). Dropout is off
in both (p = 0) so that they compute the same function; parameter counts
are checked equal. The two are timed in alternating rounds; figures are
medians, the ratio the median of per-round ratios.

Command (the figures in benchmarks/RESULTS.md, "Lesion model train step")::

    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 OMP_WAIT_POLICY=PASSIVE \\
        python benchmarks/lesions_train_step.py --dims 2 3

prints one JSON line per framework and grid and one with the ratio, e.g.
``{"benchmark": "lesions_train_step", "dims": 2, "framework": "jax", "exams_per_s": ...}``.
About 2 minutes on 2 CPU cores, compilation included. Recorded (2-vCPU Intel
Xeon, avx512_bf16, load average 1.9-3.2, jax 0.10.2, PyTorch 2.13.0+cpu with 2
threads): 2D 48x48, 16 exams: JAX 257.8 ms/step, PyTorch 192.7 ms/step, ratio
0.763; 3D 16x32x32, 2 exams: JAX 2590 ms/step, PyTorch 398 ms/step, ratio
0.154 (XLA:CPU's 3D convolutions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _machine import machine

_SHAPES = {2: ((48, 48), 16), 3: ((16, 32, 32), 2)}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=(2, 3))
    p.add_argument("--batch-size", type=int, help="exams per step (default 16 in 2D, 2 in 3D)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    p.add_argument("--steps", type=int, default=3, help="train steps per round and framework")
    p.add_argument("--no-torch", action="store_true", help="time JAX only")
    return p.parse_args(argv)


def _configs(shape):
    import dataclasses

    from jaxmed.tasks.lesions import ExamAugment, TrainConfig
    from jaxmed.tasks.lesions.config import PreprocessConfig

    depth = 3 if len(shape) == 2 else 2
    base = TrainConfig()
    loc = dataclasses.replace(base.localiser, image_shape=(*shape, 3), depth=depth, dropout=0.0, fusion="learned")
    cls = dataclasses.replace(base.classifier, depth=depth, dropout=0.0)
    spacing = (1.25,) * len(shape)
    return dataclasses.replace(base, localiser=loc, classifier=cls, augment=ExamAugment(enabled=False),
                               preprocess=PreprocessConfig(shape=shape, spacing_mm=spacing))


def _data(shape, batch_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch_size, *shape, 3)).astype(np.float32)
    mask = np.zeros((batch_size, *shape), np.float32)
    centre = tuple(s // 2 for s in shape)
    mask[(slice(None),) + tuple(slice(c - 3, c + 3) for c in centre)] = 1.0
    grade = rng.integers(0, 5, batch_size).astype(np.int32)
    return image, mask, grade


def _jax_step_fn(config, batch_size):
    import jax
    import optax

    from jaxmed.tasks.lesions import LesionNet
    from jaxmed.tasks.lesions.training import _joint_loss
    from jaxmed.train import TrainState, jit_train_step, make_mesh, make_train_step, replicate, shard_batch

    shape = config.localiser.image_shape[:-1]
    image, mask, grade = _data(shape, batch_size)
    net = LesionNet(localiser=config.localiser, classifier=config.classifier)
    key = jax.random.key(0)
    params = jax.jit(net.init)(key, image[:1])
    mesh = make_mesh(1)
    state = replicate(TrainState.create(params=params, tx=optax.adam(1e-3), key=key), mesh)
    batch = shard_batch({"image": image, "lesion_mask": mask, "grade": grade}, mesh)
    step = jit_train_step(make_train_step(_joint_loss(config)), mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    return run, sum(a.size for a in jax.tree.leaves(params))


def _torch_modules(config, ndim):
    import torch
    from torch import nn

    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    pool = nn.MaxPool2d(2) if ndim == 2 else nn.MaxPool3d(2)
    loc, cls = config.localiser, config.classifier
    m = loc.image_shape[-1]

    def block(cin, cout, groups):
        return nn.Sequential(conv(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(),
                             conv(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, cin, f, depth, groups, out):
            super().__init__()
            self.down = nn.ModuleList(block(cin if i == 0 else f * 2 ** (i - 1), f * 2**i, groups) for i in range(depth))
            self.bottom = block(f * 2 ** (depth - 1), f * 2**depth, groups)
            self.up_conv = nn.ModuleList(conv(f * 2 ** (i + 1), f * 2**i, 3, padding=1) for i in reversed(range(depth)))
            self.up = nn.ModuleList(block(f * 2 ** (i + 1), f * 2**i, groups) for i in reversed(range(depth)))
            self.out = conv(f, out, 1)

        def forward(self, x):
            skips = []
            for b in self.down:
                x = b(x)
                skips.append(x)
                x = pool(x)
            x = self.bottom(x)
            for up_conv, b, skip in zip(self.up_conv, self.up, reversed(skips)):
                x = up_conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
                x = b(torch.cat([skip, x], dim=1))
            return self.out(x)

    class Encoder(nn.Module):
        def __init__(self, cin, f, depth, groups):
            super().__init__()
            self.down = nn.ModuleList(block(cin if i == 0 else f * 2 ** (i - 1), f * 2**i, groups) for i in range(depth))
            self.bottom = block(f * 2 ** (depth - 1), f * 2**depth, groups)

        def forward(self, x):
            for b in self.down:
                x = pool(b(x))
            return self.bottom(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            f = loc.feature_channels
            self.unet = UNet(1 + m, loc.features, loc.depth, loc.norm_groups, f)
            self.head_kernel = nn.Parameter(torch.randn(m, f) / f**0.5)
            self.head_bias = nn.Parameter(torch.zeros(m))
            self.fusion = nn.Sequential(conv(m * f, loc.fusion_hidden, 3, padding=1), nn.ReLU(),
                                        conv(loc.fusion_hidden, 1, 1))
            self.encoder = Encoder(2 + m, cls.features, cls.depth, cls.norm_groups)
            width = 3 * cls.features * 2**cls.depth * m + 2
            self.hidden = nn.Linear(width, cls.hidden)
            self.score = nn.Linear(cls.hidden, 1)
            self.cut_first = nn.Parameter(torch.zeros(()))
            self.cut_gaps = nn.Parameter(torch.full((cls.num_classes - 2,), 0.5))

        def forward(self, x):  # x [N, M, *S]
            n, spatial = x.shape[0], x.shape[2:]
            code = torch.eye(m).reshape(m, 1, m, *[1] * ndim).expand(m, n, m, *spatial)
            inputs = torch.cat([x.transpose(0, 1).unsqueeze(2), code], dim=2).reshape(m * n, 1 + m, *spatial)
            feats = torch.relu(self.unet(inputs)).reshape(m, n, -1, *spatial)
            maps = torch.einsum("mnf...,mf->nm...", feats, self.head_kernel) + self.head_bias.reshape(1, m, *[1] * ndim)
            fused = self.fusion(feats.transpose(0, 1).reshape(n, -1, *spatial))[:, 0]
            prob = torch.sigmoid(fused)
            pm = prob.unsqueeze(0).expand(m, n, *spatial).reshape(m * n, 1, *spatial)
            enc = self.encoder(torch.cat([inputs, pm], dim=1))
            factor = 2**cls.depth
            w = nn.functional.avg_pool2d(pm, factor) if ndim == 2 else nn.functional.avg_pool3d(pm, factor)
            w = w / (w.flatten(1).sum(1).reshape(-1, *[1] * (ndim + 1)) + 1e-6)
            pooled = torch.cat([enc.flatten(2).mean(2), (enc * w).flatten(2).sum(2), enc.flatten(2).amax(2)], 1)
            pooled = pooled.reshape(m, n, -1).transpose(0, 1).reshape(n, -1)
            p = prob.flatten(1).clamp(1e-6, 1 - 1e-6)
            top = p.amax(1)
            stats = torch.stack([torch.log(top) - torch.log1p(-top), p.mean(1)], 1)
            s = self.score(torch.relu(self.hidden(torch.cat([pooled, stats], 1))))[:, 0]
            cuts = self.cut_first + torch.cat([torch.zeros(1), torch.cumsum(nn.functional.softplus(self.cut_gaps) + 1e-3, 0)])
            return fused, maps, s[:, None] - cuts[None, :]

    return Net()


def _torch_step_fn(config, batch_size, threads):
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = config.localiser.image_shape[:-1]
    ndim = len(shape)
    net = _torch_modules(config, ndim)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    image, mask, grade = _data(shape, batch_size)
    x = torch.from_numpy(np.moveaxis(image, -1, 1).copy())
    y = torch.from_numpy(mask)
    g = torch.from_numpy(grade.astype(np.int64))
    pos, mw, lw = config.loss.pos_weight, config.loss.modality_weight, config.joint_localiser_weight

    def wbce(logits, target):
        return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 + (pos - 1) * target)

    def step():
        opt.zero_grad(set_to_none=True)
        fused, maps, c = net(x)
        # Cumulative-link NLL, as jaxmed.losses.cumulative_link_log_probs.
        ls = nn.functional.logsigmoid
        middle = ls(c[:, :-1]) + ls(-c[:, 1:]) + torch.log(-torch.expm1(torch.clamp(c[:, 1:] - c[:, :-1], max=-1e-12)))
        log_probs = torch.cat([ls(-c[:, :1]), middle, ls(c[:, -1:])], 1)
        nll = -log_probs.gather(1, g[:, None])[:, 0].mean()
        pixel = wbce(fused, y) + mw * wbce(maps, y.unsqueeze(1).expand_as(maps)).mean(1)
        loss = nll + lw * pixel.mean()
        loss.backward()
        opt.step()
        return loss

    return step, sum(p.numel() for p in net.parameters())


def _time(step, n):
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
    for dims in args.dims:
        shape, default_batch = _SHAPES[dims]
        batch_size = args.batch_size or default_batch
        config = _configs(shape)
        t0 = time.perf_counter()
        jax_step, jax_params = _jax_step_fn(config, batch_size)
        _time(jax_step, 2)
        compile_s = time.perf_counter() - t0
        frameworks = {"jax": jax_step}
        if not args.no_torch:
            torch_step, torch_params = _torch_step_fn(config, batch_size, args.threads)
            if torch_params != jax_params:
                raise SystemExit(f"parameter counts differ: jax {jax_params}, torch {torch_params}")
            _time(torch_step, 2)
            frameworks["torch"] = torch_step
        times = {name: [] for name in frameworks}
        cpu = {name: [] for name in frameworks}
        for _ in range(args.rounds):
            for name, step in frameworks.items():
                wall, c = _time(step, args.steps)
                times[name].append(wall / args.steps)
                cpu[name].append(c / args.steps)
        common = {"benchmark": "lesions_train_step", "dims": dims, "grid": list(shape), "batch_size": batch_size,
                  "threads": args.threads, "params": jax_params, "rounds": args.rounds,
                  "steps_per_round": args.steps,
                  "env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                         "OMP_WAIT_POLICY")}, **machine()}
        for name, ts in times.items():
            med = statistics.median(ts)
            line = {**common, "framework": name, "exams_per_s": round(batch_size / med, 2),
                    "ms_per_step": round(1e3 * med, 1), "ms_per_step_min": round(1e3 * min(ts), 1),
                    "cpu_ms_per_step": round(1e3 * statistics.median(cpu[name]), 1)}
            if name == "jax":
                line["compile_s"] = round(compile_s, 1)
            else:
                import torch

                line["torch_version"] = torch.__version__
            print(json.dumps(line), flush=True)
        if "torch" in times:
            ratios = [t / j for j, t in zip(times["jax"], times["torch"])]
            print(json.dumps({**common, "framework": "ratio",
                              "jax_over_torch_exams_per_s": round(statistics.median(ratios), 3),
                              "per_round": [round(r, 3) for r in ratios]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
