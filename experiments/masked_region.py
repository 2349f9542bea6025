"""Does masked-region training make a lesion detector robust to a missing modality?

Two 2D U-Nets (``jaxmed.models.UNet``) are trained on multi-contrast MRI
phantoms (T2, ADC, DWI; ``jaxmed.data.phantoms``) to give per-pixel lesion
logits, with the same data, steps, batch size and optimiser:

- ``plain``: sigmoid cross-entropy on every pixel, all modalities present;
- ``masked``: each example is split per step into ``M + 1 = 4`` random
  disjoint regions (8x8-pixel cells, ``random_partition_regions``); view 0
  sees all modalities on its region, view ``v + 1`` replaces modality ``v``
  by a blank (0) and computes the loss on its region only; the update
  uses the sum of the four view losses (``jaxmed.losses.make_lesion_loss``
  with ``LesionLossConfig(masked=True)``, built on
  ``make_masked_region_loss``: the views are a vmapped axis).
  ``--without-full-view`` drops view 0: the network then never sees all
  three modalities together and fails when none is missing (measured: Dice
  0.27 and sample AUROC 0.38 with all modalities, against 0.94-0.96 with
  one missing).

Both are then tested on held-out phantoms with all modalities, and with each
single modality replaced by the same blank (0): pixel AUROC (all pixels),
Dice of the 0.5-thresholded map (pooled over the test set) and a per-sample
abnormal/normal AUROC (score = the image's highest lesion probability).

Command::

    python experiments/masked_region.py --out runs/masked_region

writes ``results.json``, ``table.md`` and ``masked_region.png`` to ``--out``.

Expected (defaults, seed 0; deterministic on CPU; measured 2026-11-23 on 2
idle cores):

==========  =========  ===========  =====  ============
model       condition  pixel AUROC  Dice   sample AUROC
==========  =========  ===========  =====  ============
plain       all        1.000        0.982  1.000
plain       -t2        0.999        0.547  0.857
plain       -adc       0.999        0.460  0.890
plain       -dwi       0.584        0.000  0.638
masked      all        1.000        0.978  1.000
masked      -t2        1.000        0.976  1.000
masked      -adc       1.000        0.980  1.000
masked      -dwi       1.000        0.905  0.998
==========  =========  ===========  =====  ============

The plain model collapses without DWI (the contrast where lesions are
brightest) and loses about half its Dice without T2 or ADC; the
masked-region model loses at most 0.07 Dice (without DWI) and nothing with
all modalities present, at ~4x the training time (four network passes per
step). Test set: 256 phantoms, 52% with lesions, 0.5% lesion pixels. Pixel
AUROC is near 1 for any model that does not collapse, since most pixels are
easy background. (Batches: a fresh permutation per epoch,
``jaxmed.data.batching.batch_indices``, as ``jaxmed train`` draws them.)

Runtime: about 1.7 minutes on 2 idle CPU cores: training 17 s (plain) + 66 s
(masked), the rest data, compilation and evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.batching import batch_indices
from jaxmed.data.phantoms import MRIPhantomConfig, make_dataset
from jaxmed.losses import LesionLossConfig, blank_modalities, make_lesion_loss
from jaxmed.metrics import auroc
from jaxmed.models import UNet
from jaxmed.train import (
    OptimConfig,
    TrainConfig,
    TrainState,
    fit,
    jit_train_step,
    make_mesh,
    make_optimizer,
    make_train_step,
)

BLANK_VALUE = 0.0


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/masked_region")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train", type=int, default=1024, help="training phantoms")
    p.add_argument("--test", type=int, default=256, help="test phantoms")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--cell", type=int, default=8, help="region cell size, pixels")
    p.add_argument("--pos-weight", type=float, default=5.0,
                   help="weight of lesion pixels in the cross-entropy (they are ~1%% of pixels)")
    p.add_argument("--without-full-view", dest="include_none", action="store_false",
                   help="masked arm: no view with nothing blanked (only one view per dropped modality)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train(kind, model, init_params, data, args, out: Path):
    loss_config = LesionLossConfig(masked=kind == "masked", cell=args.cell, include_none=args.include_none,
                                   blank_value=BLANK_VALUE, pos_weight=args.pos_weight)
    loss_fn = make_lesion_loss(model.apply, loss_config, shape=data["image"].shape[1:-1],
                               num_modalities=data["image"].shape[-1])
    key = jax.random.key(args.seed)
    tx = make_optimizer(OptimConfig(learning_rate=args.lr, schedule="cosine", final_lr_fraction=0.1),
                        total_steps=args.steps)
    state = TrainState.create(params=init_params, tx=tx, key=jax.random.fold_in(key, 1))
    mesh = make_mesh(1)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, log_every=25, eval_every=0,
                         checkpoint_every=0, devices=1)
    train_data = {k: data[k] for k in ("image", "lesion_mask")}

    def batch_fn(step):
        # A fresh permutation of the training set every epoch, as jaxmed train draws it.
        idx = batch_indices(step, num_examples=len(train_data["image"]), batch_size=args.batch_size, seed=args.seed)
        return {k: v[idx] for k, v in train_data.items()}

    t0 = time.perf_counter()
    result = fit(state, train_step=jit_train_step(make_train_step(loss_fn), mesh), batch_fn=batch_fn,
                 config=config, mesh=mesh, metrics_path=out / f"metrics_{kind}.jsonl", progress=False)
    return jax.device_get(result.state.params), time.perf_counter() - t0


def make_predict(model, *, chunk=64):
    """``predict(params, images, blank [M]) -> [N, *S]`` lesion probabilities, blanked modalities."""

    @jax.jit
    def prob(params, x, blank):
        x = jax.vmap(blank_modalities, in_axes=(0, None, None))(x, blank, BLANK_VALUE)
        return jax.nn.sigmoid(model.apply(params, x)[..., 0])

    def predict(params, images, blank):
        return np.concatenate(
            [np.asarray(prob(params, images[i:i + chunk], blank)) for i in range(0, len(images), chunk)]
        )

    return predict


def evaluate(prob, lesion, has_lesion):
    """Pixel AUROC, pooled Dice at 0.5 and per-sample AUROC (max probability)."""
    pred = prob >= 0.5
    dice = 2.0 * np.sum(pred & lesion) / max(np.sum(pred) + np.sum(lesion), 1)
    return {
        "pixel_auroc": float(auroc(jnp.asarray(prob.ravel()), jnp.asarray(lesion.ravel()))),
        "dice": float(dice),
        "sample_auroc": float(auroc(jnp.asarray(prob.reshape(len(prob), -1).max(1)), jnp.asarray(has_lesion))),
    }


def _plot(results, conditions, examples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("pixel_auroc", "dice", "sample_auroc")
    fig = plt.figure(figsize=(13, 6.5))
    grid = fig.add_gridspec(2, 1, height_ratios=(1.1, 1.0))
    top = grid[0].subgridspec(1, 3)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(top[i])
        xs = np.arange(len(conditions))
        for j, kind in enumerate(results):
            vals = [results[kind][c][metric] for c in conditions]
            bars = ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, label=kind)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(xs, conditions)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(0, 1.08)
        if i == 0:
            ax.legend(loc="lower left")
    bottom = grid[1].subgridspec(1, len(examples))
    for i, (title, img) in enumerate(examples):
        ax = fig.add_subplot(bottom[i])
        ax.imshow(img, cmap="gray" if i < 4 else "magma", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    phantom = MRIPhantomConfig(shape=(args.size, args.size))
    key = jax.random.key(args.seed)
    train_data = make_dataset(jax.random.fold_in(key, 0), args.train, config=phantom)
    test_data = make_dataset(jax.random.fold_in(key, 1), args.test, config=phantom)
    data_seconds = time.perf_counter() - t_start
    names = phantom.modalities
    m = len(names)
    model = UNet(features=args.features, depth=args.depth)
    # One initialisation (host copy) for both arms: they differ only in the loss.
    init_params = jax.device_get(jax.jit(model.init)(key, jnp.zeros((1, *train_data["image"].shape[1:]))))
    predict = make_predict(model)

    conditions = ["all"] + [f"-{name}" for name in names]
    blanks = [np.zeros(m, bool)] + list(np.eye(m, dtype=bool))
    results, timings, probs = {}, {}, {}
    for kind in ("plain", "masked"):
        params, seconds = train(kind, model, init_params, train_data, args, out)
        timings[kind] = round(seconds, 1)
        results[kind] = {}
        for cond, blank in zip(conditions, blanks):
            p = predict(params, test_data["image"], jnp.asarray(blank))
            probs[kind, cond] = p
            results[kind][cond] = evaluate(p, test_data["lesion_mask"], test_data["has_lesion"])
        print(json.dumps({"model": kind, "train_s": timings[kind], **results[kind]}), flush=True)

    lines = [
        "| model | condition | pixel AUROC | Dice | sample AUROC |",
        "|---|---|---|---|---|",
    ]
    for kind in results:
        for cond in conditions:
            r = results[kind][cond]
            lines.append(f"| {kind} | {cond} | {r['pixel_auroc']:.3f} | {r['dice']:.3f} | {r['sample_auroc']:.3f} |")
    lines.append("")
    lines.append("Mean drop from `all` over the single-modality-missing conditions:")
    lines.append("")
    lines.append("| model | pixel AUROC | Dice | sample AUROC |")
    lines.append("|---|---|---|---|")
    drops = {}
    for kind in results:
        d = {metric: float(np.mean([results[kind]["all"][metric] - results[kind][c][metric]
                                    for c in conditions[1:]]))
             for metric in ("pixel_auroc", "dice", "sample_auroc")}
        drops[kind] = d
        lines.append(f"| {kind} | {d['pixel_auroc']:.3f} | {d['dice']:.3f} | {d['sample_auroc']:.3f} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    print(table)

    i = int(np.argmax(test_data["lesion_mask"].reshape(args.test, -1).sum(1)))
    img = test_data["image"][i]
    examples = [(f"{n.upper()}", img[..., k]) for k, n in enumerate(names)]
    examples.append(("lesion", test_data["lesion_mask"][i].astype(float)))
    for kind in results:
        examples.append((f"{kind}, all", probs[kind, "all"][i]))
        examples.append((f"{kind}, -{names[-1]}", probs[kind, f"-{names[-1]}"][i]))
    _plot(results, conditions, examples, out / "masked_region.png")

    summary = {
        "args": vars(args),
        "results": results,
        "mean_drop": drops,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": timings,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "test_lesion_fraction": float(test_data["lesion_mask"].mean()),
        "test_abnormal_fraction": float(test_data["has_lesion"].mean()),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"total_s": summary["total_seconds"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
