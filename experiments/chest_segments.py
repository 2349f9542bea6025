"""Do full-resolution segments keep small nodules visible? AUROC by nodule size, segments vs whole images.

Command (after ``jaxmed chest train --out runs/chest``, which trains the segment model (a))::

    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 \\
        python experiments/chest_segments.py --model runs/chest --out runs/chest-study

Methods, all on the same training phantoms (1024x1024, 0.39 mm; the chest
model's own training set, drawn again from its seed) and the same test set:

* (a) ``segments``: the chest model: regions by the U-Net at 256, 9 segments
  of 340 px windows at scale 0.8 (272 px), the segment classifier trained on
  segments, image score by max, noisy-OR and attention pooling;
* (b) ``whole 256 wide``: a whole-image classifier on the radiograph
  downscaled to 256x256, 3x wider (9x the FLOPs of the segment net per
  forward), so that its FLOPs per image match (a)'s classifier budget;
* (b0) ``whole 256``: the segment net's own width on the downscaled image
  (1/9 of (a)'s budget);
* (c) ``whole 1024``: the segment net's width on the full-resolution image.

Every whole-image classifier trains for as many radiograph passes as the
segment classifier did (``--steps`` x ``--batch``), with image labels (a
finding present; the type of the largest). The test set: radiographs with
exactly one nodule of each size bin (3-6, 6-10, 10-20, 20-30 mm) and normal
radiographs; AUROC of each bin's positives against all normals, with
stratified bootstrap 95% intervals. FLOPs per image are XLA's count of the
forward pass (``cost_analysis``), region U-Net stated apart.

Writes ``summary.json``, ``results.csv`` (one row per test radiograph),
``auroc_by_size.png`` and the three runs' folders into ``--out``. The
published effect tested against: on NIH ChestX-ray14, nodule AUROC rose from
0.689 at 64 px to 0.854 at 320 px (Sabottke and Spieler, Radiology: AI 2020).

Measured: benchmarks/RESULTS.md ("Nodule AUROC by size"). The demo preset's
model trained 2500 classifier steps on 400 phantoms, baselines on image
labels alone (``--supervision labels``), 20 per bin against 40 normals,
9 min 22 s on 2 cores. 3-10 mm AUROC: segments max 0.700, attention 0.634,
noisy-OR 0.578; whole 128 wide (matched budget) 0.539. The whole-image
classifiers' training loss did not fall. With the same map supervision
(``--supervision map``, the default; ``--skip-full``; 5 min 48 s): whole 128
wide 0.463; segments minus it +0.237 (max), +0.172 (attention, paired 95%
interval +0.019 .. +0.318), +0.115 (noisy-OR).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxmed.data.batching import batch_indices
from jaxmed.data.phantoms import FindingSpec
from jaxmed.losses import ClassifierLossConfig, make_classifier_loss
from jaxmed.metrics import auroc, bootstrap
from jaxmed.models import ClassifierConfig
from jaxmed.tasks.chest import (
    POOLINGS,
    downsample,
    evaluate_radiographs,
    load_chest_model,
    radiograph_set,
    training_set_key,
)
from jaxmed.train import OptimConfig, make_optimizer, run_phase

BINS = ((3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))
_TEST_STREAM = 1000


def forward_flops(fn, *args) -> float:
    """XLA's FLOP count of one call of ``fn(*args)`` (forward pass)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def whole_inputs(images: np.ndarray, size: int) -> np.ndarray:
    """Normalised radiographs ``[N, G, G, 1]`` at ``size`` (antialiased), float32 (or float16 at full size)."""
    if size == images.shape[1]:
        return images
    fn = jax.jit(jax.vmap(lambda x: downsample(x.astype(jnp.float32), size)))
    return np.concatenate([np.asarray(fn(images[i:i + 8])) for i in range(0, len(images), 8)])


def finding_maps(data: dict, size: int) -> np.ndarray:
    """``[N, size, size]`` float32: the union of each radiograph's valid finding masks, resized as its image is."""
    valid_bits = np.sum(np.asarray(data["finding_valid"], np.uint8) << np.arange(data["finding_valid"].shape[1],
                                                                                dtype=np.uint8), axis=1)
    union = (data["finding_bits"] & valid_bits.astype(np.uint8)[:, None, None]) != 0
    return whole_inputs(union[..., None].astype(np.float32), size)[..., 0]


def image_targets(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image labels: a finding present, and the type of the largest finding (-1 for none)."""
    label = np.asarray(data["has_finding"], np.float32)
    sizes = np.where(data["finding_valid"], data["finding_size_mm"], -1.0)
    largest = np.argmax(sizes, axis=1)
    kind = np.take_along_axis(data["finding_type"], largest[:, None], axis=1)[:, 0]
    return label, np.where(label > 0, kind, -1).astype(np.int32)


def train_whole(name: str, config: ClassifierConfig, images: np.ndarray, label: np.ndarray, kind: np.ndarray, *,
                steps: int, batch: int, lr: float, seed: int, out: Path, loss: ClassifierLossConfig,
                maps: np.ndarray | None = None):
    """A whole-image classifier trained through the engine; returns its parameters and seconds.

    With ``maps`` (``[N, H, W]`` finding maps at the input size) it is trained
    with the dense finding-map loss as the segment classifier is
    (``loss.map_weight``); without, on image labels alone (``map_weight`` 0).
    """
    if maps is None:
        loss = dataclasses.replace(loss, map_weight=0.0)
    model = config.make_module()
    params = model.init(jax.random.key(seed), jnp.zeros((1, *config.image_shape)))
    tx = make_optimizer(OptimConfig(learning_rate=lr, schedule="warmup-cosine", warmup_steps=max(1, steps // 20),
                                    grad_clip_norm=1.0), total_steps=steps)
    n = len(images)

    def batch_fn(step):
        rows = batch_indices(step, num_examples=n, batch_size=batch, seed=seed)
        out = {"image": images[rows].astype(np.float32), "label": label[rows], "finding_type": kind[rows]}
        return out if maps is None else {**out, "finding_map": maps[rows]}

    record = {"experiment": "chest_segments", "part": name, "model": dataclasses.asdict(config),
              "loss": dataclasses.asdict(loss), "data": {"num_images": n, "maps": maps is not None},
              "optim": {"learning_rate": lr, "steps": steps, "batch_size": batch, "seed": seed}}
    t = time.perf_counter()
    # A finished run of the same settings in OUT/name is loaded, a stopped one resumed.
    params, _ = run_phase(make_classifier_loss(model.apply, loss), params, tx, batch_fn, steps=steps,
                          key=jax.random.key(seed + 1), run_dir=out / name, record=record, progress=False,
                          batch_size=batch, log_every=10, checkpoint_every=0)
    return jax.device_put(params, jax.local_devices()[0]), time.perf_counter() - t


def whole_scores(config: ClassifierConfig, params, images: np.ndarray, *, batch: int) -> np.ndarray:
    model = config.make_module()
    fn = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply(p, x.astype(jnp.float32))[:, 0]))
    n = len(images)
    out = [np.asarray(fn(params, images[np.arange(i, i + batch) % n])) for i in range(0, n, batch)]
    return np.concatenate(out)[:n]


def test_set(model_config, *, per_bin: int, normals: int, seed: int, progress: bool) -> tuple[dict, np.ndarray]:
    """Normals, then ``per_bin`` radiographs with one nodule per size bin; returns the set and each row's bin (-1 normal)."""
    root = jax.random.fold_in(jax.random.key(seed), _TEST_STREAM)
    parts = [radiograph_set(jax.random.fold_in(root, 0), normals, model_config.phantom_config(finding_probability=0.0),
                            progress=progress, desc="normals")]
    groups = [np.full(normals, -1)]
    for b, (lo, hi) in enumerate(BINS):
        config = model_config.phantom_config(findings=(FindingSpec(type="nodule"),), nodule_size_mm=(lo, hi))
        parts.append(radiograph_set(jax.random.fold_in(root, 1 + b), per_bin, config, progress=progress,
                                    desc=f"nodules {lo:g}-{hi:g} mm"))
        groups.append(np.full(per_bin, b))
    data = {k: np.concatenate([p[k] if p[k].ndim < 2 or k in ("image", "labels", "finding_bits")
                               else p[k][:, :1] for p in parts]) for k in parts[1]}
    return data, np.concatenate(groups)


def auroc_table(key, scores: dict[str, np.ndarray], groups: np.ndarray) -> dict:
    table = {}
    for name, s in scores.items():
        row = {}
        for b, (lo, hi) in enumerate([*BINS, (3.0, 10.0)]):
            pos = (groups == b) if b < len(BINS) else (groups == 0) | (groups == 1)
            rows = pos | (groups == -1)
            labels = pos[rows].astype(np.int32)
            est = bootstrap(jax.random.fold_in(key, b), auroc, jnp.asarray(s[rows]), jnp.asarray(labels),
                            num_resamples=1000)
            row[f"{lo:g}-{hi:g}"] = {"auroc": float(est.estimate), "low": float(est.low), "high": float(est.high),
                                     "num_pos": int(pos.sum()), "num_neg": int((groups == -1).sum())}
        table[name] = row
    return table


def paired_gaps(key, scores: dict[str, np.ndarray], groups: np.ndarray, whole: str) -> dict:
    """Each segment pooling's 3-10 mm AUROC minus ``whole``'s, with a paired stratified bootstrap interval.

    Both methods are scored on the same resampled radiographs in every
    replicate, so the interval is that of the difference (not of two
    independent AUROCs). No pooling is picked on this test set: all three
    are reported; the model's own decision pooling is ``config.decision``.
    """
    pos = (groups == 0) | (groups == 1)
    rows = pos | (groups == -1)
    labels = jnp.asarray(pos[rows].astype(np.int32))

    def gap(s, y):
        return auroc(s[:, 0], y) - auroc(s[:, 1], y)

    out = {}
    for pooling in POOLINGS:
        both = jnp.asarray(np.stack([scores[f"segments {pooling}"][rows], scores[whole][rows]], axis=1))
        est = bootstrap(key, gap, both, labels, num_resamples=2000)
        out[pooling] = {"gap": float(est.estimate), "low": float(est.low), "high": float(est.high)}
    return out


def plot_table(path: Path, table: dict, flops: dict) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    bins = [f"{lo:g}-{hi:g}" for lo, hi in BINS]
    x = np.arange(len(bins))
    for name, row in table.items():
        y = [row[b]["auroc"] for b in bins]
        lo = [row[b]["auroc"] - row[b]["low"] for b in bins]
        hi = [row[b]["high"] - row[b]["auroc"] for b in bins]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=f"{name} ({flops.get(name, 0) / 1e9:.1f} GFLOP)")
    ax.axhline(0.5, color="0.7", linestyle=":")
    ax.set(xticks=x, xticklabels=bins, xlabel="nodule size, mm", ylabel="AUROC vs normal radiographs", ylim=(0.3, 1.02),
           title="Nodule AUROC by size (95% bootstrap intervals)")
    ax.legend(fontsize="x-small", loc="lower right")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="chest model folder (jaxmed chest train --out)")
    parser.add_argument("--out", default="runs/chest-study")
    parser.add_argument("--per-bin", type=int, default=40, help="test radiographs per nodule size bin")
    parser.add_argument("--normals", type=int, default=80, help="normal test radiographs")
    parser.add_argument("--steps", type=int, default=None, help="whole-image training steps (default: the segment "
                                                                  "classifier's)")
    parser.add_argument("--batch", type=int, default=None, help="radiographs per step (default: the segment "
                                                                "classifier's)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--skip-full", action="store_true", help="leave out (c), the full-resolution whole image")
    parser.add_argument("--supervision", choices=("map", "labels"), default="map",
                        help="whole-image classifiers trained with the segment classifier's dense finding-map loss "
                             "(map, the same supervision: default) or on image labels alone (labels)")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load = [os.getloadavg()]
    chest = load_chest_model(args.model)
    config = chest.config
    steps = args.steps or config.classifier_steps
    batch = args.batch or config.classifier_batch_size
    timings = {}

    t = time.perf_counter()
    train = radiograph_set(training_set_key(config), config.num_train, config.phantom_config(), progress=True,
                           desc="training phantoms")
    label, kind = image_targets(train)
    timings["train_data_s"] = time.perf_counter() - t

    base = config.classifier.channels
    small = config.regions.input_size
    wide = f"whole {small} wide"
    # As the segment classifier: inputs in [0, 1], centred; with "map", a map head and its loss.
    centred = {"input_mean": 0.5, "input_std": 0.25, "map_head": args.supervision == "map"}
    methods = {
        f"whole {small}": ClassifierConfig(image_shape=(small, small, 1), channels=base, **centred),
        wide: ClassifierConfig(image_shape=(small, small, 1), channels=tuple(3 * c for c in base), **centred),
    }
    if not args.skip_full:
        methods[f"whole {config.grid}"] = ClassifierConfig(image_shape=(config.grid, config.grid, 1), channels=base,
                                                           **centred)
    inputs = {small: whole_inputs(train["image"], small), config.grid: train["image"]}
    maps = ({small: finding_maps(train, small), config.grid: finding_maps(train, config.grid)}
            if args.supervision == "map" else None)
    params = {}
    for name, cfg in methods.items():
        print(f"training {name}: {steps} steps of {batch}", flush=True)
        params[name], timings[f"train_{name}_s"] = train_whole(
            name.replace(" ", "_"), cfg, inputs[cfg.image_shape[0]], label, kind, steps=steps, batch=batch,
            lr=args.lr, seed=config.seed + 7, out=out, loss=config.loss,
            maps=None if maps is None else maps[cfg.image_shape[0]])
        load.append(os.getloadavg())
    del inputs, maps, train

    t = time.perf_counter()
    test, groups = test_set(config, per_bin=args.per_bin, normals=args.normals, seed=config.seed, progress=True)
    timings["test_data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluated = evaluate_radiographs(chest, test, batch_size=2, progress=True)
    timings["score_segments_s"] = time.perf_counter() - t
    scores = {f"segments {p}": evaluated[f"score_{p}"] for p in POOLINGS}
    small_test = whole_inputs(test["image"], small)
    for name, cfg in methods.items():
        t = time.perf_counter()
        images = small_test if cfg.image_shape[0] == small else test["image"]
        scores[name] = whole_scores(cfg, params[name], images, batch=2 if cfg.image_shape[0] > small else 16)
        timings[f"score_{name}_s"] = time.perf_counter() - t

    # FLOPs per radiograph (forward), by XLA's count.
    seg_net = config.classifier.make_module()
    num_segments = config.segments.num_segments
    seg_flops = forward_flops(lambda p, x: seg_net.apply(p, x), chest.classifier,
                              jnp.zeros((num_segments, *config.classifier.image_shape)))
    region_net = config.regions.make_module()
    region_flops = forward_flops(lambda p, x: region_net.apply(p, x), chest.regions,
                                 jnp.zeros((1, small, small, 1)))
    flops = {f"segments {p}": seg_flops for p in POOLINGS}
    for name, cfg in methods.items():
        net = cfg.make_module()
        flops[name] = forward_flops(lambda p, x, net=net: net.apply(p, x), params[name],
                                    jnp.zeros((1, *cfg.image_shape)))

    table = auroc_table(jax.random.key(config.seed + 11), scores, groups)
    plot_table(out / "auroc_by_size.png", table, flops)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "group", "nodule_size_mm", *scores])
        for i in range(len(groups)):
            size = float(test["finding_size_mm"][i, 0]) if groups[i] >= 0 else 0.0
            writer.writerow([i, "normal" if groups[i] < 0 else f"{BINS[groups[i]][0]:g}-{BINS[groups[i]][1]:g}",
                             round(size, 2), *[f"{float(s[i]):.9g}" for s in scores.values()]])
    bins = [f"{lo:g}-{hi:g}" for lo, hi in [*BINS, (3.0, 10.0)]]
    lines = [f"{'method':<26}{'GFLOP/img':>10}" + "".join(f"{b + ' mm':>14}" for b in bins)]
    for name, row in table.items():
        lines.append(f"{name:<26}{flops[name] / 1e9:>10.2f}" + "".join(f"{row[b]['auroc']:>14.3f}" for b in bins))
    gaps = paired_gaps(jax.random.key(config.seed + 12), scores, groups, wide)
    for pooling, g in gaps.items():
        lines.append(f"3-10 mm, {pooling} minus {wide}: {g['gap']:+.3f} (paired 95% interval {g['low']:+.3f} .. "
                     f"{g['high']:+.3f})")
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "command": " ".join(["python", "experiments/chest_segments.py", *sys.argv[1:]]),
        "model": args.model, "table": "\n".join(lines), "auroc": table,
        "flops_per_image": {**flops, "region_unet": region_flops, "segments_per_image": num_segments},
        "gap_3_10mm_segments_minus_matched_whole": gaps, "matched_whole": wide,
        "decision_pooling": config.decision,
        "test": {"per_bin": args.per_bin, "normals": args.normals, "bins_mm": BINS},
        "training": {"steps": steps, "batch": batch, "num_train": config.num_train, "lr": args.lr,
                     "whole_image_supervision": args.supervision},
        "segment_checks_on_test": {
            "dice_mean": np.asarray(evaluated["dice"]).mean(0).round(4).tolist(),
            "finding_whole_rate": float(np.asarray(evaluated["finding_whole"])[groups >= 0, 0].mean())},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "load_average": [[round(x, 2) for x in la] for la in load],
        "jax": jax.__version__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(summary["table"])
    print(f"{timings['total_s']:.0f} s in all; load {load[0]} .. {load[-1]}")


if __name__ == "__main__":
    main()
