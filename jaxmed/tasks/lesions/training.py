"""Training the lesion model in phases through the engine: localiser (reference site, second site in order,
deployment fine-tuning), then classifier (frozen encoder, then end to end).

Every phase is one engine run (:func:`jaxmed.train.fit`: a jitted step with
the state donated, step keys ``fold_in(key, step)``, batches a pure function
of the step, Orbax checkpoints, ``metrics.jsonl``) in its own folder of the
model folder, so each phase resumes bit for bit::

    MODEL_DIR/
      lesions.json                 the TrainConfig, the data and what each phase did
      metrics.jsonl                every phase's records, with "phase" and a global "step"
      phase1_reference/ phase1_continue/ phase1_deploy/ phase2_frozen/ phase2_joint/
                                   config.json, metrics.jsonl, loss_curve.png, checkpoints/

`train_lesion_model` runs them all (one command: ``jaxmed lesions train``);
a phase whose folder holds a finished run of the same settings is loaded,
not trained again. `load_lesion_model` reads a model folder back.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmed
from jaxmed.losses import cumulative_link_nll, localiser_pixel_loss, make_localiser_loss
from jaxmed.losses.masked_region import blank_modalities
from jaxmed.train import (
    Checkpointer,
    OptimConfig,
    make_optimizer,
    run_phase,
)
from jaxmed.tasks.lesions.augment import augment_batch
from jaxmed.tasks.lesions.config import PhaseConfig, TrainConfig, config_to_json, train_config_from_json
from jaxmed.tasks.lesions.models import LesionNet, init_classifier, init_localiser, join_params, predict_localiser
from jaxmed.tasks.lesions.ordering import exam_embeddings, mc_dropout_probs, similarity_order, uncertainty_order

__all__ = ["LESIONS_FILE", "PHASES", "LesionModel", "continue_localiser", "deploy_localiser", "load_lesion_model",
           "fingerprint", "lesion_phase", "paced_batches", "save_model_record", "train_classifier", "train_lesion_model", "train_localiser",
           "uniform_batches"]

LESIONS_FILE = "lesions.json"
PHASES = ("phase1_reference", "phase1_continue", "phase1_deploy", "phase2_frozen", "phase2_joint")
BatchFn = Callable[[int], dict[str, np.ndarray]]
# Streams of the seed (jax.random.fold_in).
_INIT, _STEPS, _ORDER, _MC = 21, 22, 23, 24


class LesionModel(NamedTuple):
    """A trained lesion model.

    Attributes:
      config: its `TrainConfig`.
      params: `LesionNet` variables.
      localiser: the localiser's variables (``params["params"]["localiser"]``).
      info: what training recorded (``lesions.json``).
    """

    config: TrainConfig
    params: Any
    localiser: Any
    info: dict[str, Any]

    @property
    def net(self) -> LesionNet:
        return LesionNet(localiser=self.config.localiser, classifier=self.config.classifier)


# --------------------------------------------------------------------------
# Batches: pure functions of the step


def _rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step])


def _take(data: dict[str, np.ndarray], rows: np.ndarray, keys) -> dict[str, np.ndarray]:
    return {k: data[k][rows] for k in keys}


def uniform_batches(data: dict[str, np.ndarray], *, batch_size: int, seed: int, keys) -> BatchFn:
    """Batches drawn uniformly with replacement from ``data``: ``batch_fn(step)``."""
    n = len(data[keys[0]])
    return lambda step: _take(data, _rng(seed, step).integers(0, n, batch_size), keys)


def paced_batches(new: dict[str, np.ndarray], order: np.ndarray, old: dict[str, np.ndarray] | None, *,
                  batch_size: int, steps: int, pacing: float, replay: float, seed: int, keys) -> BatchFn:
    """Batches in which ``new``'s exams enter in ``order``, mixed with ``old``'s.

    At step ``t`` of ``steps`` the ``new`` exams available are the first
    ``max(b, ceil(n (t + 1) / (pacing * steps)))`` of ``order`` (all of them
    from ``pacing * steps`` on), ``b`` the batch's ``new`` part; each batch
    has ``round(replay * batch_size)`` exams drawn uniformly from ``old``
    (none without it) and the rest uniformly from the available ``new`` ones.

    Args:
      new: the exams entering.
      order: indices into ``new``, first to enter first.
      old: exams trained on before (replayed), or None.
      batch_size, steps: of the run.
      pacing: fraction of the run by which every new exam has entered.
      replay: fraction of each batch from ``old``.
      seed: the draws.
      keys: batch entries.
    """
    order = np.asarray(order)
    n = len(order)
    n_old = 0 if old is None else round(replay * batch_size)
    n_new = batch_size - n_old
    ramp = max(1.0, pacing * steps)

    def batch_fn(step):
        rng = _rng(seed, step)
        available = min(n, max(min(n, n_new), math.ceil(n * (step + 1) / ramp)))
        batch = _take(new, order[rng.integers(0, available, n_new)], keys)
        if n_old:
            extra = _take(old, rng.integers(0, len(old[keys[0]]), n_old), keys)
            batch = {k: np.concatenate([batch[k], extra[k]]) for k in keys}
        return batch

    return batch_fn


def fingerprint(*sets: dict[str, np.ndarray]) -> str:
    """SHA-1 of the images and targets of exam sets: a run's record names the data it was trained on."""
    digest = hashlib.sha1()
    for data in sets:
        for k in ("image", "lesion_mask", "grade", "prob"):
            if k in data:
                digest.update(np.ascontiguousarray(data[k]).tobytes())
    return digest.hexdigest()


def _concat(*sets: dict[str, np.ndarray], keys) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in sets]) for k in keys}


# --------------------------------------------------------------------------
# One phase = one engine run


# Losses, optimisers and jitted steps are cached by their settings, so that runs of the same kind (A and B
# alone; both continued orders; every deployment run; each seed) share one compilation.
@functools.lru_cache(maxsize=32)
def _optimizer(phase: PhaseConfig, frozen: str | None = None) -> optax.GradientTransformation:
    """Adam with warm-up and cosine decay; parameters whose path starts with ``frozen`` do not move."""
    tx = make_optimizer(OptimConfig(learning_rate=phase.learning_rate, schedule="warmup-cosine",
                                    warmup_steps=max(1, phase.steps // 10), grad_clip_norm=1.0),
                        total_steps=phase.steps)
    if frozen is None:
        return tx

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if jax.tree_util.keystr(path, simple=True, separator="/").startswith(frozen)
            else "train", params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def lesion_phase(name: str, loss_fn, params, tx, batch_fn: BatchFn, *, phase: PhaseConfig, key: jax.Array,
                 run_dir: Path, record: dict, progress: bool, force: bool) -> tuple[Any, list[dict]]:
    """One phase of the lesion model: :func:`jaxmed.train.run_phase` with the phase's settings in ``config.json``.

    Args:
      name: the phase (stored in ``config.json``).
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)``.
      params: the starting variables.
      tx: the optimiser (None: Adam, warm-up and cosine decay, as ``phase`` says).
      batch_fn: ``batch_fn(step)``, a pure function of the step.
      phase: steps, batch size, learning rate.
      key: the run's root key (step ``s`` uses ``fold_in(key, s)``).
      run_dir: the run's folder: resumed when it holds the same run, loaded
        when that run is finished.
      record: what else ``config.json`` says (model, data).
      progress: a progress bar.
      force: start over in a folder holding another run (else `FileExistsError`).

    Returns:
      ``(variables, records)`` after ``phase.steps`` steps.
    """
    return run_phase(loss_fn, params, _optimizer(phase) if tx is None else tx, batch_fn, steps=phase.steps, key=key,
                     run_dir=run_dir, record={"jaxmed_version": jaxmed.__version__, "task": "lesions", "phase": name,
                                              **record, "optim": dataclasses.asdict(phase)},
                     progress=progress, force=force, batch_size=phase.batch_size)


def _augmented(loss_fn, config: TrainConfig, target_key: str = "lesion_mask"):
    """``loss_fn`` on batches changed by ``config.augment`` (images and ``target_key`` alike, the lesion contrast
    by the batch's ``lesion_mask``), per step."""
    if not config.augment.enabled:
        return loss_fn

    def wrapped(params, batch, key):
        augment_key, key = jax.random.split(key)
        image, target = augment_batch(augment_key, batch["image"], batch[target_key], config.augment,
                                      batch.get("lesion_mask"))
        return loss_fn(params, {**batch, "image": image, target_key: target}, key)

    return wrapped


def _localiser_loss(config: TrainConfig):
    return _localiser_loss_for(_loss_settings(config))


def _loss_settings(config: TrainConfig) -> TrainConfig:
    """The fields a loss depends on (the others, e.g. the seed, set to their defaults): the cache key."""
    return TrainConfig(localiser=config.localiser, classifier=config.classifier, loss=config.loss,
                       augment=config.augment, preprocess=config.preprocess,
                       joint_localiser_weight=config.joint_localiser_weight)


@functools.lru_cache(maxsize=32)
def _localiser_loss_for(config: TrainConfig):
    model = config.localiser.make_module()

    def apply(params, x, key):
        return model.apply(params, x, deterministic=False, with_maps=True, rngs={"dropout": key})

    return _augmented(make_localiser_loss(apply, config.loss, shape=config.localiser.image_shape[:-1],
                                          num_modalities=config.localiser.num_modalities), config)


_LOCALISER_KEYS = ("image", "lesion_mask")


def train_localiser(config: TrainConfig, train: dict[str, np.ndarray], run_dir, *, params=None, progress=True,
                    force=False, name="phase1_reference", batch_fn: BatchFn | None = None,
                    phase: PhaseConfig | None = None, record: dict | None = None) -> tuple[Any, list[dict]]:
    """Trains (or continues) the localiser: one engine run.

    Args:
      config: the model and the training settings.
      train: exams (``"image"``, ``"lesion_mask"``).
      run_dir: the run's folder.
      params: variables to start from (None: fresh, from the seed).
      progress: a progress bar.
      force: start over in a folder holding another run.
      name: the phase's name (its records and streams).
      batch_fn: the batches (None: uniform draws from ``train``).
      phase: the run's settings (None: ``config.reference_phase``).
      record: what to store about the data in ``config.json``.

    Returns:
      ``(variables, records)``.
    """
    phase = phase or config.reference_phase
    stream = PHASES.index(name) if name in PHASES else len(PHASES)
    root = jax.random.key(config.seed)
    if params is None:
        params = init_localiser(jax.random.fold_in(root, _INIT), config.localiser)
    if batch_fn is None:
        batch_fn = uniform_batches(train, batch_size=phase.batch_size, seed=config.seed * 100 + stream,
                                   keys=_LOCALISER_KEYS)
    from jaxmed.train.registry import model_config_to_dict

    model = {"name": "localiser", "preset": "", "config": model_config_to_dict(config.localiser),
             "loss": dataclasses.asdict(config.loss)}
    return lesion_phase(name, _localiser_loss(config), params, _optimizer(phase), batch_fn, phase=phase,
                key=jax.random.fold_in(jax.random.fold_in(root, _STEPS), stream), run_dir=Path(run_dir),
                record={"model": model, "data": {"num_exams": int(len(train["image"])),
                                                 "fingerprint": fingerprint(train), **(record or {})}},
                progress=progress, force=force)


def continue_localiser(config: TrainConfig, params, reference: dict, second: dict, run_dir, *, order: str | None = None,
                       progress=True, force=False, seed_offset: int = 0) -> tuple[Any, list[dict], dict]:
    """Continues the localiser on the reference site's and the second site's exams, the second's in an order.

    The order (`jaxmed.tasks.lesions.ordering`): ``"similarity"`` ranks the
    second site's exams by the maximum mean discrepancy of their localiser
    embeddings to the reference site's (most similar first); ``"random"`` a
    random permutation. They enter by `paced_batches`.

    Returns:
      ``(variables, records, info)``: ``info`` holds the order and the scores.
    """
    order = order or config.order
    phase = config.continue_phase
    seed = config.seed * 100 + 1 + seed_offset
    if order == "similarity":
        emb_ref = exam_embeddings(params, config.localiser, reference["image"], progress=progress)
        emb_new = exam_embeddings(params, config.localiser, second["image"], progress=progress)
        ranking, scores = similarity_order(emb_new, emb_ref)
    else:
        ranking = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), _ORDER),
                                                    len(second["image"])))
        scores = np.zeros(len(ranking))
    batch_fn = paced_batches(second, ranking, reference, batch_size=phase.batch_size, steps=phase.steps,
                             pacing=config.pacing, replay=config.replay, seed=seed, keys=_LOCALISER_KEYS)
    info = {"order": order, "ranking": [int(i) for i in ranking], "scores": [float(s) for s in scores]}
    params, records = train_localiser(config, second, run_dir, params=params, progress=progress, force=force,
                                      name="phase1_continue", batch_fn=batch_fn, phase=phase,
                                      record={"order": order, "reference": fingerprint(reference),
                                              "num_reference": int(len(reference["image"])),
                                              "num_second": int(len(second["image"])), "seed": seed,
                                              "ranking": info["ranking"]})
    return params, records, info


def deploy_localiser(config: TrainConfig, params, pool: dict, replay: dict, run_dir, *, k: int | None = None,
                     uncertainty: str | None = None, progress=True, force=False,
                     seed_offset: int = 0) -> tuple[Any, list[dict], dict]:
    """Fine-tunes the localiser on the ``k`` deployment exams ranked first by uncertainty (or at random).

    ``"bald"`` and ``"entropy"`` rank the pool by the model's Monte Carlo
    dropout uncertainty (`jaxmed.tasks.lesions.ordering.mc_dropout_probs`),
    most uncertain first; ``"random"`` by a random permutation. Batches mix
    the chosen exams with ``replay`` exams of the earlier sites.

    Returns:
      ``(variables, records, info)`` (``info``: the ranking and the scores).
    """
    k = config.deploy_k if k is None else k
    uncertainty = uncertainty or config.uncertainty
    seed = config.seed * 100 + 2 + seed_offset
    n = len(pool["image"])
    if uncertainty == "random":
        ranking = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), _ORDER), n))
        scores = np.zeros(n)
    else:
        probs = mc_dropout_probs(jax.random.fold_in(jax.random.key(seed), _MC), params, config.localiser,
                                 pool["image"], num_samples=config.mc_samples, progress=progress)
        ranking, scores = uncertainty_order(probs, kind=uncertainty)
    chosen = ranking[:k]
    info = {"uncertainty": uncertainty, "k": int(k), "ranking": [int(i) for i in ranking],
            "scores": [float(s) for s in scores], "chosen_significant": int(np.sum(pool["significant"][chosen]))}
    if k == 0 or config.deploy_phase.steps == 0:
        return params, [], info
    phase = config.deploy_phase
    batch_fn = paced_batches(pool, chosen, replay, batch_size=phase.batch_size, steps=phase.steps, pacing=1e-9,
                             replay=config.replay, seed=seed, keys=_LOCALISER_KEYS)
    params, records = train_localiser(config, pool, run_dir, params=params, progress=progress, force=force,
                                      name="phase1_deploy", batch_fn=batch_fn, phase=phase,
                                      record={"uncertainty": uncertainty, "k": int(k), "chosen": info["ranking"][:k],
                                              "replay": fingerprint(replay),
                                              "num_replay": int(len(replay["image"])), "seed": seed})
    return params, records, info


# --------------------------------------------------------------------------
# Phase 2: the classifier


def _blank_some(key, x, num_modalities: int, blank_value: float):
    """Masked-region models: half the examples get one random modality blanked (a missing modality)."""
    n = x.shape[0]
    k1, k2 = jax.random.split(key)
    which = jax.random.randint(k1, (n,), 0, num_modalities)
    on = jax.random.bernoulli(k2, 0.5, (n,))
    blank = (jnp.arange(num_modalities)[None, :] == which[:, None]) & on[:, None]
    return jax.vmap(lambda xi, bi: blank_modalities(xi, bi, blank_value))(x, blank)


def _frozen_loss(config: TrainConfig):
    return _frozen_loss_for(_loss_settings(config))


@functools.lru_cache(maxsize=32)
def _frozen_loss_for(config: TrainConfig):
    model = config.classifier.make_module()

    def loss_fn(params, batch, key):
        x = batch["image"]
        if config.loss.masked:
            x = _blank_some(jax.random.fold_in(key, 1), x, x.shape[-1], config.loss.blank_value)
        out = model.apply(params, x, batch["prob"], deterministic=False, rngs={"dropout": key})
        nll = jnp.mean(cumulative_link_nll(out["cumulative_logits"], batch["grade"]))
        return nll, {"grade_nll": nll}

    # The map was computed from the unchanged images; it is mirrored with them.
    return _augmented(loss_fn, config, target_key="prob")


def _joint_loss(config: TrainConfig):
    return _joint_loss_for(_loss_settings(config))


@functools.lru_cache(maxsize=32)
def _joint_loss_for(config: TrainConfig):
    net = LesionNet(localiser=config.localiser, classifier=config.classifier)
    loss_cfg = config.loss

    def loss_fn(params, batch, key):
        x = batch["image"]
        if loss_cfg.masked:
            x = _blank_some(jax.random.fold_in(key, 1), x, x.shape[-1], loss_cfg.blank_value)
        out = net.apply(params, x, deterministic=False, rngs={"dropout": key})
        nll = jnp.mean(cumulative_link_nll(out["cumulative_logits"], batch["grade"]))
        pixel = jax.vmap(lambda f, m, t: localiser_pixel_loss(f, m, t, pos_weight=loss_cfg.pos_weight,
                                                              modality_weight=loss_cfg.modality_weight))(
            out["fused"][..., 0], out["maps"], batch["lesion_mask"])
        localiser = jnp.mean(pixel)
        return nll + config.joint_localiser_weight * localiser, {"grade_nll": nll, "localiser_loss": localiser}

    return _augmented(loss_fn, config)


_CLASSIFIER_KEYS = ("image", "lesion_mask", "grade")


def train_classifier(config: TrainConfig, localiser_params, train: dict[str, np.ndarray], model_dir, *,
                     progress=True, force=False) -> tuple[Any, dict[str, list[dict]]]:
    """Phase 2: the classifier from the localiser's encoder, frozen, then the whole model end to end.

    Returns:
      ``(LesionNet variables, {"phase2_frozen": records, "phase2_joint": records})``.
    """
    model_dir = Path(model_dir)
    root = jax.random.key(config.seed)
    shape = config.localiser.image_shape
    classifier = init_classifier(jax.random.fold_in(root, _INIT + 1), config.classifier, localiser_params, shape)
    probs = predict_localiser(localiser_params, config.localiser, train["image"], progress=progress)["prob"]
    data = {**{k: train[k] for k in _CLASSIFIER_KEYS}, "prob": probs.astype(np.float32)}
    phase = config.frozen_phase
    record = {"model": {"name": "map_classifier", "config": dataclasses.asdict(config.classifier)},
              "data": {"num_exams": int(len(train["image"])), "fingerprint": fingerprint(data)}}
    records = {}
    if phase.steps:
        batches = uniform_batches(data, batch_size=phase.batch_size, seed=config.seed * 100 + 3,
                                  keys=(*_CLASSIFIER_KEYS, "prob"))
        # The encoder (taken from the localiser) stays frozen; the head learns.
        classifier, records["phase2_frozen"] = lesion_phase(
            "phase2_frozen", _frozen_loss(config), classifier,
            _optimizer(phase, frozen="params/encoder"), batches, phase=phase,
            key=jax.random.fold_in(jax.random.fold_in(root, _STEPS), 3), run_dir=model_dir / "phase2_frozen",
            record=record, progress=progress, force=force)
    params = join_params(localiser_params, classifier)
    phase = config.joint_phase
    if phase.steps:
        batches = uniform_batches(data, batch_size=phase.batch_size, seed=config.seed * 100 + 4,
                                  keys=_CLASSIFIER_KEYS)
        params, records["phase2_joint"] = lesion_phase(
            "phase2_joint", _joint_loss(config), params, _optimizer(phase), batches, phase=phase,
            key=jax.random.fold_in(jax.random.fold_in(root, _STEPS), 4), run_dir=model_dir / "phase2_joint",
            record={**record, "model": {"name": "lesion_net", "localiser": dataclasses.asdict(config.localiser),
                                        "classifier": dataclasses.asdict(config.classifier),
                                        "loss": dataclasses.asdict(config.loss),
                                        "localiser_weight": config.joint_localiser_weight}},
            progress=progress, force=force)
    return params, records


# --------------------------------------------------------------------------
# Everything


def _merge_metrics(model_dir: Path, records: dict[str, list[dict]]) -> Path:
    """One ``metrics.jsonl`` for the model: every phase's records with ``phase``, ``phase_step`` and a global step."""
    path = model_dir / "metrics.jsonl"
    offset, lines = 0, []
    for name in PHASES:
        if name not in records:
            continue
        for r in records[name]:
            lines.append(json.dumps({**r, "phase": name, "phase_step": r["step"], "step": offset + r["step"]}))
        offset += max((r["step"] for r in records[name]), default=0)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def train_lesion_model(config: TrainConfig, data: dict[str, dict[str, np.ndarray]], model_dir, *,
                       progress: bool = True, force: bool = False,
                       log: Callable[[str], None] = lambda s: None) -> LesionModel:
    """All phases (module docstring), into ``model_dir``.

    Args:
      config: the model and its phases.
      data: ``{"reference": exams, "second": exams (if config.second), "deploy": the annotated pool (if
        config.deploy_k)}`` (`jaxmed.tasks.lesions.data.site_exams`).
      model_dir: the model folder; finished phases of the same settings in it are loaded.
      progress: progress bars.
      force: start over phases whose folders hold other runs.
      log: where to say what each phase does.

    Returns:
      The `LesionModel`.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    records, info = {}, {"config": config_to_json(config), "phases": {}}
    ref = data["reference"]
    log(f"phase 1: localiser on site {config.reference} ({len(ref['image'])} exams, {config.reference_phase.steps} "
        "steps)")
    params, records["phase1_reference"] = train_localiser(config, ref, model_dir / "phase1_reference",
                                                          progress=progress, force=force)
    seen = ref
    if config.second and config.continue_phase.steps:
        second = data["second"]
        log(f"phase 1: continued with site {config.second} in {config.order} order ({len(second['image'])} exams)")
        params, records["phase1_continue"], order_info = continue_localiser(
            config, params, ref, second, model_dir / "phase1_continue", progress=progress, force=force)
        info["phases"]["phase1_continue"] = order_info
        seen = _concat(ref, second, keys=_CLASSIFIER_KEYS)
    if config.deploy_k and config.deploy_phase.steps:
        pool = data["deploy"]
        log(f"phase 1: fine-tuned on the {config.deploy_k} of {len(pool['image'])} site-{config.deploy} exams "
            f"ranked first by {config.uncertainty}")
        params, records["phase1_deploy"], deploy_info = deploy_localiser(
            config, params, pool, seen, model_dir / "phase1_deploy", progress=progress, force=force)
        info["phases"]["phase1_deploy"] = deploy_info
        chosen = np.asarray(deploy_info["ranking"][: config.deploy_k])
        seen = _concat(seen, {k: pool[k][chosen] for k in _CLASSIFIER_KEYS}, keys=_CLASSIFIER_KEYS)
    log(f"phase 2: classifier on {len(seen['image'])} exams (encoder frozen, then end to end)")
    joint, phase2 = train_classifier(config, params, seen, model_dir, progress=progress, force=force)
    records.update(phase2)
    _merge_metrics(model_dir, records)
    info["phases"].update({name: {"steps": max((r["step"] for r in rs), default=0),
                                  "final_loss": rs[-1]["loss"] if rs else None} | info["phases"].get(name, {})
                           for name, rs in records.items()})
    save_model_record(model_dir, config, info)
    return LesionModel(config=config, params=joint, localiser={"params": joint["params"]["localiser"]}, info=info)


def save_model_record(model_dir, config: TrainConfig, info: dict | None = None) -> Path:
    """Writes ``model_dir/lesions.json`` (the config and what training did): `load_lesion_model` reads the folder.

    ``info["config"]`` is set from ``config``; the folder must hold the
    phase-2 runs (``phase2_joint``, or ``phase2_frozen`` with a phase-1 run).
    """
    path = Path(model_dir) / LESIONS_FILE
    record = {**(info or {}), "config": config_to_json(config)}
    path.write_text(json.dumps({"jaxmed_version": jaxmed.__version__, **record}, indent=1))
    return path


def load_lesion_model(model_dir) -> LesionModel:
    """A model folder written by `train_lesion_model` (its last phase's checkpoint).

    Raises:
      FileNotFoundError: no ``lesions.json`` or no finished phase.
      ValueError: a malformed ``lesions.json``.
    """
    model_dir = Path(model_dir)
    path = model_dir / LESIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {model_dir} a model folder of jaxmed lesions train?")
    try:
        info = json.loads(path.read_text())
        config = train_config_from_json(info["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a lesion model record ({e})") from None
    template = jax.eval_shape(LesionNet(localiser=config.localiser, classifier=config.classifier).init,
                              jax.random.key(0), jnp.zeros((1, *config.localiser.image_shape)))
    for name in ("phase2_joint", "phase2_frozen"):
        run = model_dir / name
        if (run / "checkpoints").is_dir():
            with Checkpointer(run, keep=None, create=False) as checkpointer:
                params = checkpointer.restore_params()
            if name == "phase2_frozen":
                last = max((p for p in PHASES[:3] if (model_dir / p / "checkpoints").is_dir()), key=PHASES.index)
                with Checkpointer(model_dir / last, keep=None, create=False) as checkpointer:
                    params = join_params(checkpointer.restore_params(), params)
            jax.tree.map(lambda a, b: None, template, params)  # same structure, or an error
            return LesionModel(config=config, params=params, localiser={"params": params["params"]["localiser"]},
                               info=info)
    raise FileNotFoundError(f"{model_dir}: no finished classifier phase (phase2_joint or phase2_frozen)")
