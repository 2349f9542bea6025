"""Segments per second through extraction + segment classifier forward: vmapped JAX vs PyTorch vs a Python loop of crops.

Command (prints one JSON line per variant)::

    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 \\
        python benchmarks/chest_segments.py [--batch 4] [--rounds 7]

Setting: ``--batch`` phantom radiographs of 1024x1024 with their region
label maps; the default layout (9 windows of 340 px per radiograph, blanked
outside their regions, resized by 0.8 to 272 px); the default segment
classifier (``CLASSIFIER_PRESETS["segment272"]``, random weights). Variants,
each timed from radiographs + labels to segment logits:

- ``jax_vmapped``: :func:`jaxmed.tasks.chest.segment_layout` +
  :func:`~jaxmed.tasks.chest.extract_segments` (``jax.vmap`` over
  ``lax.dynamic_slice``) + the classifier, one jitted function;
- ``jax_python_loop``: the same layout (jitted), then one jitted crop +
  blank + resize call per window from a Python loop, stacked, and the same
  jitted classifier;
- ``torch``: the same network in PyTorch (the same weights, outputs checked
  to agree), eager, ``torch.set_num_threads(2)``, ``torch.inference_mode``;
  the windows cut, blanked and resized (``F.interpolate(antialias=True)``)
  in a Python loop of tensor slices from the same layout and masks (the
  PyTorch idiom; it has no batched dynamic slice); ``torch_forward_only``
  times the network alone on the same segments.

The variants run interleaved (one round of each, in turn) so that load from
other processes hits all alike; each line gives the median segments per
second over ``--rounds`` rounds, the per-round figures, and the ratio to
``jax_vmapped``; the last line the machine (benchmarks/_machine.py).
Measured (``--rounds 7``, 45 s wall, load 3.2, 2 shared Xeon cores, JAX
0.10.2, PyTorch 2.13.0+cpu, malloc reuse on): segments/s, median: JAX
vmapped 73.0; JAX Python loop of crops 59.5 (1.23x the time); PyTorch
pipeline 25.3 (2.89x); PyTorch network alone 93.7 (0.78x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.phantoms import ChestPhantomConfig, make_dataset
from jaxmed.models import CLASSIFIER_PRESETS
from jaxmed.tasks.chest import SegmentConfig, extract_segments, kind_masks, region_labels, segment_layout

from _machine import machine


def torch_network(params, channels, *, input_mean=0.0, input_std=1.0, map_head=False):
    import torch
    import torch.nn.functional as F

    p = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a, np.float32).copy()), params["params"])

    def conv_weight(kernel):  # (kh, kw, in, out) -> (out, in, kh, kw)
        return kernel.permute(3, 2, 0, 1).contiguous()

    layers = [(conv_weight(p[f"down_{i}"]["kernel"]), p[f"down_{i}"]["bias"],
               conv_weight(p[f"conv_{i}"]["kernel"]), p[f"conv_{i}"]["bias"]) for i in range(len(channels))]
    head_w, head_b = p["head"]["kernel"].T.contiguous(), p["head"]["bias"]
    if map_head:
        map_w, map_b = conv_weight(p["map"]["kernel"]), p["map"]["bias"]

    def forward(x):  # x: (N, 1, H, W)
        x = (x - input_mean) / input_std
        for wd, bd, wc, bc in layers:
            # XLA "SAME" for a 4x4 stride-2 kernel on an even size: one pixel each side.
            x = F.relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), wd, bd, stride=2))
            x = F.relu(F.conv2d(x, wc, bc, padding=1))
        emb = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        logits = emb @ head_w.T + head_b
        if map_head:  # presence: the largest cell of the 1x1-convolution map
            cells = F.conv2d(x, map_w, map_b)[:, 0]
            logits = torch.cat([cells.amax(dim=(1, 2))[:, None], logits[:, 1:]], dim=1)
        return logits

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="radiographs per call")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    seg = SegmentConfig()
    net_config = CLASSIFIER_PRESETS["segment272"]
    net = net_config.make_module()
    params = net.init(jax.random.key(0), jnp.zeros((1, *net_config.image_shape)))
    data = make_dataset(jax.random.key(1), args.batch, kind="chest", config=ChestPhantomConfig(shape=(1024, 1024)))
    images = jnp.asarray(data["image"])
    labels = jax.jit(jax.vmap(region_labels))(data["right_lung"], data["left_lung"], data["heart"])
    win, size, k = seg.window, seg.segment_size, seg.num_segments
    n_segments = args.batch * k

    @jax.jit
    def vmapped(params, images, labels):
        def one(image, lab):
            return extract_segments(image, lab, segment_layout(lab, seg), seg)

        segments = jax.vmap(one)(images, labels)
        return net.apply(params, segments.reshape(-1, size, size, 1))

    layouts = jax.jit(jax.vmap(lambda lab: segment_layout(lab, seg)))
    masks_fn = jax.jit(jax.vmap(lambda lab: kind_masks(lab, margin=seg.margin)))
    crop = jax.jit(lambda image, mask, r, c, kind: jax.image.resize(
        jnp.where(jax.lax.dynamic_slice(mask, (kind, r, c), (1, win, win))[0][..., None],
                  jax.lax.dynamic_slice(image, (r, c, 0), (win, win, 1)), seg.fill_value),
        (size, size, 1), "linear", antialias=True))
    forward = jax.jit(net.apply)

    def python_loop(params, images, labels):
        layout = jax.device_get(layouts(labels))
        masks = masks_fn(labels)
        crops = [crop(images[b], masks[b], int(r), int(c), int(kind))
                 for b in range(args.batch) for (r, c), kind in zip(layout.corners[b], layout.kinds[b])]
        return forward(params, jnp.stack(crops))

    torch_forward = torch_network(params, net_config.channels, input_mean=net_config.input_mean,
                                  input_std=net_config.input_std, map_head=net_config.map_head)
    torch_images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()

    def torch_pipeline():
        layout = jax.device_get(layouts(labels))  # the same layout and masks as JAX's
        masks = torch.from_numpy(np.asarray(masks_fn(labels)))
        with torch.inference_mode():
            crops = []
            for b in range(args.batch):
                for (r, c), kind in zip(layout.corners[b], layout.kinds[b]):
                    window = torch_images[b:b + 1, :, r:r + win, c:c + win]
                    shown = masks[b, kind, r:r + win, c:c + win]
                    window = torch.where(shown, window, torch.tensor(seg.fill_value))
                    crops.append(F.interpolate(window, size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False))
            return torch_forward(torch.cat(crops))

    segments = np.asarray(jax.jit(jax.vmap(lambda image, lab: extract_segments(image, lab, segment_layout(lab, seg),
                                                                                seg)))(images, labels))
    torch_segments = torch.from_numpy(segments.reshape(-1, size, size, 1)).permute(0, 3, 1, 2).contiguous()

    def torch_forward_only():
        with torch.inference_mode():
            return torch_forward(torch_segments)

    variants = {
        "jax_vmapped": lambda: jax.block_until_ready(vmapped(params, images, labels)),
        "jax_python_loop": lambda: jax.block_until_ready(python_loop(params, images, labels)),
        "torch": torch_pipeline,
        "torch_forward_only": torch_forward_only,
    }
    # Same network, same segments: the outputs agree before anything is timed.
    reference = np.asarray(variants["jax_vmapped"]())
    agreement = {name: float(np.max(np.abs(np.asarray(fn()) - reference))) for name, fn in variants.items()}
    if max(agreement.values()) > 1e-2:
        raise SystemExit(f"the variants disagree: {agreement}")

    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["jax_vmapped"])
    info = machine()
    for name, ts in times.items():
        rate = n_segments / statistics.median(ts)
        print(json.dumps({
            "bench": "chest_segments", "variant": name, "radiographs": args.batch, "segments": n_segments,
            "segment_size": size, "window": win, "grid": 1024, "channels": list(net_config.channels),
            "segments_per_s": round(rate, 2), "segments_per_s_rounds": [round(n_segments / t, 2) for t in ts],
            "time_ratio_to_jax_vmapped": round(statistics.median(ts) / base, 3),
            "max_abs_diff_to_jax_vmapped": agreement[name], "rounds": args.rounds,
            "torch_threads": torch.get_num_threads(),
            "malloc_reuse": os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None,
            **info, "jax": jax.__version__, "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
