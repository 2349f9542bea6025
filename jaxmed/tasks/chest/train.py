"""Training the chest model on phantoms: region U-Net, segment classifier, attention pooling head.

Each network trains through the engine (:func:`jaxmed.train.fit`: a jitted,
donated train step over a device mesh, step keys ``fold_in(key, step)``,
Orbax checkpoints, ``metrics.jsonl``) into its own run folder under the
model folder::

    MODEL_DIR/
      chest.json        the ChestConfig and what training measured (training.json's summary)
      regions/          region U-Net run (config.json, metrics.jsonl, loss_curve.png, checkpoints/)
      classifier/       segment classifier run ("classifier" registry model: jaxmed.train.load_model reads it)
      attention/        attention pooling run

:func:`train_chest` runs all three; :func:`load_chest_model` reads a model
folder back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmed
from jaxmed.data.batching import batch_indices
from jaxmed.io import prepare_out_dir
from jaxmed.train import Checkpointer, OptimConfig, make_optimizer, read_metrics, run_phase
from jaxmed.tasks.chest.classifier import make_segment_loss
from jaxmed.tasks.chest.config import ChestConfig, config_from_json, config_to_json
from jaxmed.tasks.chest.data import radiograph_set, region_set
from jaxmed.tasks.chest.pipeline import ChestModel, attention_module
from jaxmed.tasks.chest.regions import make_region_loss
from jaxmed.tasks.chest.segments import extract_segments, segment_layout

__all__ = ["CHEST_FILE", "MODEL_PARTS", "layout_embeddings", "load_chest_model", "train_attention", "train_chest",
           "train_classifier", "train_regions", "training_set_key"]

CHEST_FILE = "chest.json"
MODEL_PARTS = ("regions", "classifier", "attention")
# Streams of the seed (jax.random.fold_in).
_REGION_DATA, _TRAIN_DATA, _REGION_INIT, _CLASSIFIER_INIT, _ATTENTION_INIT, _STEPS = 11, 12, 13, 14, 15, 16


def _run(name: str, loss_fn, params, batch_fn: Callable[[int], dict], *, steps: int, batch_size: int, lr: float,
         key: jax.Array, run_dir: Path, record: dict, progress: bool, log_every: int = 10):
    """One engine run (:func:`jaxmed.train.run_phase`): warm-up + cosine Adam, checkpointed at the end."""
    tx = make_optimizer(OptimConfig(learning_rate=lr, schedule="warmup-cosine", warmup_steps=max(1, steps // 20),
                                    grad_clip_norm=1.0), total_steps=steps)
    record = {"jaxmed_version": jaxmed.__version__, "task": "chest", "part": name, **record,
              "optim": {"learning_rate": lr, "schedule": "warmup-cosine", "steps": steps, "batch_size": batch_size}}
    params, records = run_phase(loss_fn, params, tx, batch_fn, steps=steps, key=key, run_dir=run_dir, record=record,
                                progress=progress, batch_size=batch_size, log_every=log_every, checkpoint_every=0)
    return jax.device_put(params, jax.local_devices()[0]), records


def _batches(data: dict[str, np.ndarray], batch_size: int, seed: int, keys: tuple[str, ...]):
    n = len(data[keys[0]])

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rows = batch_indices(step, num_examples=n, batch_size=batch_size, seed=seed)
        return {k: data[k][rows] for k in keys}

    return batch_fn


def training_set_key(config: ChestConfig) -> jax.Array:
    """The key of the classifier's training radiographs (:func:`radiograph_set`), for studies that redraw them."""
    return jax.random.fold_in(jax.random.key(config.seed), _TRAIN_DATA)


def train_regions(config: ChestConfig, run_dir: str | os.PathLike, *, data: dict | None = None,
                  progress: bool = True) -> tuple[Any, list[dict], dict]:
    """Trains the region U-Net on region phantoms (:func:`jaxmed.tasks.chest.data.region_set`).

    Returns:
      ``(params, records, data)``: the parameters, the metric records and the training set.
    """
    root = jax.random.key(config.seed)
    net = config.regions
    if data is None:
        data = region_set(jax.random.fold_in(root, _REGION_DATA), config.num_region_train, size=net.input_size,
                          fovs_mm=config.region_fovs_mm, progress=progress)
    model = net.make_module()
    params = model.init(jax.random.fold_in(root, _REGION_INIT), jnp.zeros((1, net.input_size, net.input_size, 1)))
    record = {"model": {"name": "region_unet", "config": {**vars(net)}},
              "data": {"source": "chest phantoms", "fovs_mm": list(config.region_fovs_mm),
                       "num": int(len(data["image"]))}}
    params, records = _run("regions", make_region_loss(model, net), params,
                           _batches(data, config.region_batch_size, config.seed, ("image", "target")),
                           steps=config.region_steps, batch_size=config.region_batch_size, lr=config.region_lr,
                           key=jax.random.fold_in(root, _STEPS), run_dir=Path(run_dir), record=record,
                           progress=progress)
    return params, records, data


_RADIOGRAPH_KEYS = ("image", "labels", "finding_bits", "finding_valid", "finding_lung", "finding_type")


def train_classifier(config: ChestConfig, run_dir: str | os.PathLike, data: dict[str, np.ndarray], *,
                     progress: bool = True) -> tuple[Any, list[dict]]:
    """Trains the segment classifier on segments drawn from radiographs in each step.

    Args:
      config: the model.
      run_dir: its run folder (the ``"classifier"`` registry model).
      data: training radiographs (:func:`jaxmed.tasks.chest.data.radiograph_set`).
      progress: a progress bar.
    """
    root = jax.random.key(config.seed)
    model = config.classifier.make_module()
    params = model.init(jax.random.fold_in(root, _CLASSIFIER_INIT), jnp.zeros((1, *config.classifier.image_shape)))
    from jaxmed.train.registry import model_config_to_dict

    record = {"model": {"name": "classifier", "preset": "", "config": model_config_to_dict(config.classifier),
                        "loss": vars(config.loss)},
              "segments": vars(config.segments), "data": {"source": "chest phantoms", "num": int(len(data["image"]))}}
    loss_fn = make_segment_loss(model.apply, config.segments, config.loss)
    return _run("classifier", loss_fn, params,
                _batches(data, config.classifier_batch_size, config.seed + 1, _RADIOGRAPH_KEYS),
                steps=config.classifier_steps, batch_size=config.classifier_batch_size, lr=config.classifier_lr,
                key=jax.random.fold_in(root, _STEPS + 1), run_dir=Path(run_dir), record=record, progress=progress,
                log_every=1)


def layout_embeddings(config: ChestConfig, classifier_params: Any, data: dict[str, np.ndarray], *,
                      batch_size: int = 4) -> dict[str, np.ndarray]:
    """Segment probabilities and embeddings of the layout windows of radiographs, from their true regions.

    Returns:
      ``{"embedding": [N, K, D], "prob": [N, K], "valid": [N, K]}``.
    """
    model = config.classifier.make_module()
    seg = config.segments

    @jax.jit
    def run(params, images, labels):
        def one(image, labels):
            layout = segment_layout(labels, seg)
            logits, emb = model.apply(params, extract_segments(image, labels, layout, seg), with_embedding=True)
            return emb, jax.nn.sigmoid(logits[:, 0]), layout.valid

        return jax.vmap(one)(images.astype(jnp.float32), labels)

    parts = []
    n = len(data["image"])
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size) % n  # one compiled shape; the wrapped rows are cut below
        parts.append(jax.device_get(run(classifier_params, data["image"][rows], data["labels"][rows])))
    emb, prob, valid = (np.concatenate([p[i] for p in parts])[:n] for i in range(3))
    return {"embedding": emb, "prob": prob, "valid": valid}


def train_attention(config: ChestConfig, run_dir: str | os.PathLike, bags: dict[str, np.ndarray],
                    labels: np.ndarray, *, progress: bool = True) -> tuple[Any, list[dict]]:
    """Trains the attention pooling head on frozen segment embeddings against image labels.

    Args:
      config: the model.
      run_dir: its run folder.
      bags: ``{"embedding": [N, K, D], "valid": [N, K]}`` (:func:`layout_embeddings`).
      labels: ``[N]`` 1 where the radiograph has a finding.
      progress: a progress bar.
    """
    root = jax.random.key(config.seed)
    head = attention_module(config)
    params = head.init(jax.random.fold_in(root, _ATTENTION_INIT), jnp.asarray(bags["embedding"][0]),
                       jnp.asarray(bags["valid"][0]))

    def loss_fn(params, batch, key):
        del key
        logits, _ = jax.vmap(lambda e, m: head.apply(params, e, m | ~jnp.any(m)))(batch["embedding"], batch["valid"])
        target = batch["label"].astype(jnp.float32)
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
        return loss, {"accuracy": jnp.mean((logits > 0) == (target > 0.5))}

    data = {"embedding": bags["embedding"], "valid": bags["valid"], "label": np.asarray(labels, np.float32)}
    batch_size = min(32, len(labels))
    record = {"model": {"name": "attention_pooling", "config": {"hidden": config.attention_hidden}}}
    return _run("attention", loss_fn, params, _batches(data, batch_size, config.seed + 2, tuple(data)),
                steps=config.attention_steps, batch_size=batch_size, lr=config.attention_lr,
                key=jax.random.fold_in(root, _STEPS + 2), run_dir=Path(run_dir), record=record, progress=progress)


def _whole_rate(records: list[dict]) -> dict[str, float]:
    findings = sum(r.get("num_findings", 0.0) for r in records)
    whole = sum(r.get("num_whole", 0.0) for r in records)
    return {"findings_drawn": int(findings), "whole_in_a_segment": int(whole),
            "rate": whole / findings if findings else None}


def train_chest(config: ChestConfig, out_dir: str | os.PathLike, *, force: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = None, train_data: dict | None = None,
                regions_from: str | os.PathLike | None = None) -> tuple[ChestModel, dict[str, Any]]:
    """Trains the whole chest model on phantoms into ``out_dir``.

    Args:
      config: the model and its training.
      out_dir: an empty or missing folder (with ``force``, its chest model is replaced).
      force: replace the chest model in a non-empty folder.
      progress: progress bars.
      log: called with a line of text at each stage.
      train_data: the classifier's training radiographs, when the caller has
        drawn them already (:func:`radiograph_set` of ``config.phantom_config()``).
      regions_from: the ``regions/`` run folder of another model with the same
        region net, copied instead of training one (``jaxmed chest train
        --regions-from``).

    Returns:
      ``(model, info)``: the :class:`ChestModel` and what training measured
      (timings, the finding-whole rate of the drawn training segments, final losses).
    """
    say = log or (lambda line: None)
    out_dir = prepare_out_dir(out_dir, force=force, replace=(*MODEL_PARTS, CHEST_FILE))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if regions_from is not None:
        say(f"region net: copied from {regions_from}")
        region_params, region_records = _copy_regions(config, Path(regions_from), out_dir / "regions")
    else:
        say(f"region net: {config.num_region_train * len(config.region_fovs_mm)} phantoms at "
            f"{2 * config.regions.input_size} px, {config.region_steps} steps of {config.region_batch_size}")
        region_params, region_records, _ = train_regions(config, out_dir / "regions", progress=progress)
    timings["regions_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    if train_data is None:
        say(f"classifier data: {config.num_train} phantoms of {config.grid}x{config.grid}")
        train_data = radiograph_set(training_set_key(config), config.num_train,
                                    config.phantom_config(), progress=progress, desc="training phantoms")
    timings["data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"segment classifier: {config.classifier_steps} steps of {config.classifier_batch_size} radiographs x "
        f"{config.segments.num_segments + train_data['finding_valid'].shape[1]} segments of "
        f"{config.segments.segment_size} px (windows of {config.segments.window} px)")
    classifier_params, classifier_records = train_classifier(config, out_dir / "classifier", train_data,
                                                             progress=progress)
    timings["classifier_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"attention pooling: {config.attention_steps} steps on the segment embeddings of {config.num_train} radiographs")
    bags = layout_embeddings(config, classifier_params, train_data)
    attention_params, attention_records = train_attention(config, out_dir / "attention", bags,
                                                          train_data["has_finding"], progress=progress)
    timings["attention_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    def last(records, key="loss"):
        return records[-1].get(key) if records else None

    info = {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "finding_whole_in_training": _whole_rate(classifier_records),
        "final_loss": {"regions": last(region_records), "classifier": last(classifier_records),
                       "attention": last(attention_records)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    (out_dir / CHEST_FILE).write_text(json.dumps({"jaxmed_version": jaxmed.__version__,
                                                  "config": config_to_json(config), "training": info}, indent=2) + "\n")
    return ChestModel(config, region_params, classifier_params, attention_params), info


def _copy_regions(config: ChestConfig, source: Path, target: Path) -> tuple[Any, list[dict]]:
    """A trained region run copied into ``target``; refuses one of another region net."""
    from jaxmed.train import load_config

    stored = load_config(source).get("model", {}).get("config")
    expected = json.loads(json.dumps(vars(config.regions)))
    if stored != expected:
        raise ValueError(f"{source}: its region net {stored} is not this model's {expected}")
    shutil.copytree(source, target)
    with Checkpointer(target, keep=None, create=False) as checkpointer:
        params = checkpointer.restore_params()
    return params, read_metrics(target / "metrics.jsonl")


def load_chest_model(model_dir: str | os.PathLike) -> ChestModel:
    """Reads a model folder written by :func:`train_chest` (``jaxmed chest train``).

    Raises:
      FileNotFoundError: no ``chest.json`` or a missing checkpoint.
      ValueError: a ``chest.json`` that is not a chest model's.
    """
    model_dir = Path(model_dir)
    path = model_dir / CHEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {model_dir} a chest model folder (jaxmed chest train --out)?")
    try:
        config = config_from_json(json.loads(path.read_text())["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a chest model description ({e})") from None
    params = []
    for name in MODEL_PARTS:
        with Checkpointer(model_dir / name, keep=None, create=False) as checkpointer:
            params.append(checkpointer.restore_params())
    return ChestModel(config, *params)
