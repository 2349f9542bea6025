"""Speed of the chest-radiograph phantom through ``make_dataset(..., kind="chest")``.

Command::

    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 \
        python benchmarks/chest_phantom.py [--sizes 1024 2048] [--rounds 5] [--images 24 6]

The malloc settings (recorded in each line as ``malloc_reuse``) let glibc
reuse freed host memory instead of returning it to the kernel: on these
VMs first-touch page faults cost 1-2 ms per MB, about 15 ms per 1024x1024
sample (10 MB of image and masks), which a data pipeline that frees its
consumed batches does not pay.

One JSON line per image size: images per second through
:func:`jaxmed.data.phantoms.make_dataset` (jitted, vmapped over chunks of the
default size, arrays copied to the host and concatenated, as a caller gets
them), the median over ``--rounds`` rounds after compilation, each round
drawing ``--images`` new images (different keys); the per-round figures; the
process CPU time per image (all threads; less sensitive than wall time to
other processes on a shared machine); the time of the first call (compile +
one chunk) and the compile time (first call minus a steady call of one
chunk). Default config (findings in half of the images, three slots, the
400 mm field of view: 0.39 mm at 1024, 0.195 mm at 2048).

The issue's target: at least 20 images/s at 1024x1024 on 2 CPU cores.
Runtime: about a minute on 2 CPU cores (a third of it compiling).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from jaxmed.data.phantoms import ChestPhantomConfig, make_dataset
from jaxmed.data.phantoms import _default_chunk_size  # the chunk make_dataset picks
from jaxmed.data.phantoms.chest import sample_chest

from _machine import machine


def bench(size: int, *, images: int, rounds: int) -> dict:
    config = ChestPhantomConfig(shape=(size, size))
    chunk = _default_chunk_size(sample_chest, config)
    key = jax.random.key(0)

    t0 = time.perf_counter()
    make_dataset(key, chunk, kind="chest", config=config)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_dataset(jax.random.fold_in(key, 1), chunk, kind="chest", config=config)
    steady_chunk = time.perf_counter() - t0

    rates, cpu = [], []
    for r in range(rounds):
        round_key = jax.random.fold_in(key, 100 + r)
        w0, c0 = time.perf_counter(), time.process_time()
        data = make_dataset(round_key, images, kind="chest", config=config)
        wall, cpu_s = time.perf_counter() - w0, time.process_time() - c0
        assert data["image"].shape == (images, size, size, 1) and np.isfinite(data["image"]).all()
        del data  # freed before the next round, as a training loop frees consumed batches
        rates.append(images / wall)
        cpu.append(cpu_s / images)
    return {
        "bench": "chest_phantom",
        "shape": [size, size],
        "pixel_spacing_mm": round(config.spacing_mm, 4),
        "render_factor": config.render_factor,
        "finding_slots": config.num_slots,
        "chunk_size": chunk,
        "images_per_round": images,
        "rounds": rounds,
        "images_per_s": round(statistics.median(rates), 2),
        "images_per_s_rounds": [round(x, 2) for x in rates],
        "cpu_s_per_image": round(statistics.median(cpu), 4),
        "malloc_reuse": os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None,
        "first_call_s": round(first, 2),
        "compile_s": round(first - steady_chunk, 2),
        **machine(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument(
        "--images", type=int, nargs="+", default=None, help="images per round, one per size (default 24 at <= 1024, 6 above)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images = args.images or [24 if s <= 1024 else 6 for s in args.sizes]
    if len(images) != len(args.sizes):
        parser.error("--images needs one count per size")
    for size, n in zip(args.sizes, images, strict=True):
        print(json.dumps(bench(size, images=n, rounds=args.rounds)), flush=True)


if __name__ == "__main__":
    main()
