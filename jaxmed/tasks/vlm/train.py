"""Training the vision-language model on chest phantoms through the engine.

:func:`train_vlm` draws training and held-out phantoms, writes their reports,
generates the instructions from the report text, trains the tokenizer on the
training reports and instructions, pre-trains the patch autoencoder
(``encoder="autoencoder"``), and trains the model through
:func:`jaxmed.train.fit` (jitted donated step, Orbax checkpoints,
``metrics.jsonl``) in the step plan of :func:`step_plan`. The model folder::

    MODEL_DIR/
      vlm.json          the task settings (written first: what --resume continues), then the model
                        config and what training measured (written last: the folder is a model)
      tokenizer.json    the tokenizer (HuggingFace tokenizers' format)
      autoencoder/      the patch autoencoder's run (encoder "autoencoder")
      model/            the model's run (config.json, metrics.jsonl, loss_curve.png, checkpoints/)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmed
from jaxmed.data.batching import batch_indices
from jaxmed.io import prepare_out_dir
from jaxmed.losses import autoencoder_loss_fn
from jaxmed.models import Autoencoder
from jaxmed.tasks.vlm.config import VLMTaskConfig, task_config_from_json, task_config_to_json
from jaxmed.tasks.vlm.curriculum import curriculum_schedule
from jaxmed.tasks.vlm.data import (
    DENSE_MAPS,
    HEADS,
    InstructionSet,
    answer_text,
    build_instruction_set,
    chest_samples,
    gather_batch,
    instructions_for,
    write_reports,
)
from jaxmed.tasks.vlm.model import VisionLanguageModel, VLMConfig, patchify
from jaxmed.tasks.vlm.tokenizer import Tokenizer, train_tokenizer
from jaxmed.train import Checkpointer, OptimConfig, config_differences, make_optimizer, run_phase

__all__ = ["VLM_FILE", "TOKENIZER_FILE", "VLMModel", "load_vlm", "make_vlm_loss", "model_config", "step_plan",
           "stored_task_config", "task_data", "train_vlm"]

VLM_FILE = "vlm.json"
TOKENIZER_FILE = "tokenizer.json"
# Streams of the seed (jax.random.fold_in).
Array = jax.Array
_TRAIN_DATA, _VAL_DATA, _AE_INIT, _VLM_INIT, _AE_STEPS, _VLM_STEPS = 21, 22, 23, 24, 25, 26


class VLMModel(NamedTuple):
    """A trained model: settings, architecture, module, parameters, tokenizer."""

    task: VLMTaskConfig
    config: VLMConfig
    module: VisionLanguageModel
    params: Any
    tokenizer: Tokenizer


def model_config(task: VLMTaskConfig, vocab_size: int) -> VLMConfig:
    """The architecture of ``task``'s model for a tokenizer of ``vocab_size``."""
    return VLMConfig(vocab_size=vocab_size, image_size=task.image_size, patch_size=task.patch_size,
                     encoder=task.encoder, finetune_encoder=task.finetune_encoder,
                     patch_features=task.patch_features, width=task.width, depth=task.depth,
                     num_heads=task.num_heads, prompt_len=task.prompt_len, answer_len=task.answer_len,
                     report_len=task.report_len, dense_classes=len(DENSE_MAPS) if task.dense_weight > 0 else 0)


# --------------------------------------------------------------------------- losses

def soft_dice_loss(logits: Array, target: Array) -> Array:
    """``1 - soft Dice`` of one mask: ``logits``, ``target`` ``[H, W]`` -> scalar."""
    p = jax.nn.sigmoid(logits)
    return 1.0 - (2.0 * jnp.sum(p * target) + 1.0) / (jnp.sum(p) + jnp.sum(target) + 1.0)


def dense_loss(logits: Array, target: Array) -> Array:
    """The dense head's loss: per map, mean cell BCE + soft Dice over the whole batch; summed over the maps.

    ``logits``, ``target`` ``[B, C, C, K]`` (targets: covered shares). The
    Dice is over the batch, not per image, so that a batch's radiographs
    without a finding do not reward predicting none everywhere.
    """
    p = jax.nn.sigmoid(logits)
    bce = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(0, 1, 2))
    dice = 1.0 - (2.0 * jnp.sum(p * target, (0, 1, 2)) + 1.0) / (jnp.sum(p + target, (0, 1, 2)) + 1.0)
    return jnp.sum(bce + dice)


def make_vlm_loss(module: VisionLanguageModel, *, mask_weight: float, landmark_weight: float,
                  dense_weight: float = 0.0) -> Callable:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` for the engine.

    ``loss = text + mask_weight * mask + landmark_weight * landmark + dense_weight * dense``:
    ``text`` the mean cross-entropy of the answer tokens (``answer_mask``);
    ``mask`` the mean over mask rows of soft Dice loss + mean pixel BCE;
    ``landmark`` the mean over landmark rows of the squared error of
    ``(row, column)`` in image extents. Rows of other heads weigh nothing in
    those two. ``dense`` (:func:`dense_loss`, models with a dense head) is
    over every row's radiograph.
    """

    def loss_fn(params, batch, key):
        del key
        out = module.apply(params, batch["images"], batch["prompt"], batch["prompt_mask"], batch["answer_in"],
                           batch["answer_mask"], batch["query_index"], method=VisionLanguageModel.heads)
        tokens = batch["answer_mask"].astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(out["text"], batch["answer_out"])
        text = jnp.sum(ce * tokens) / jnp.maximum(jnp.sum(tokens), 1.0)
        is_mask = (batch["head"] == HEADS["mask"]).astype(jnp.float32)
        is_loc = (batch["head"] == HEADS["landmark"]).astype(jnp.float32)
        dice = jax.vmap(soft_dice_loss)(out["mask"], batch["mask"])
        bce = optax.sigmoid_binary_cross_entropy(out["mask"], batch["mask"]).mean(axis=(1, 2))
        mask = jnp.sum((dice + bce) * is_mask) / jnp.maximum(jnp.sum(is_mask), 1.0)
        loc = jnp.sum(jnp.sum(jnp.square(out["landmark"] - batch["landmark"]), -1) * is_loc)
        loc = loc / jnp.maximum(jnp.sum(is_loc), 1.0)
        loss = text + mask_weight * mask + landmark_weight * loc
        metrics = {"text": text, "mask": mask, "landmark": loc}
        if "dense" in out:
            metrics["dense"] = dense_loss(out["dense"], batch["dense"])
            loss = loss + dense_weight * metrics["dense"]
        return loss, {"loss": loss, **metrics}

    return loss_fn


# --------------------------------------------------------------------------- the step plan

def step_plan(data: InstructionSet, task: VLMTaskConfig, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """The batches of training, in order: ``[(stage, table, rows), ...]``.

    The instructions are put in the order of
    :func:`~jaxmed.tasks.vlm.curriculum.curriculum_schedule` (stage by stage
    with replay, or one shuffled phase), each phase repeated ``task.epochs``
    times (``report_epochs`` for reports; reshuffled), and cut into batches per table (``short`` rows in
    batches of ``batch_size``, ``report`` rows of ``report_batch_size``), the
    two kinds interleaved evenly within a phase. Curriculum and shuffled
    plans see the same number of rows per table.
    """
    where = {}
    for table in ("short", "report"):
        for row, index in enumerate(getattr(data, table)["index"]):
            where[int(index)] = (table, row)
    index_of = {id(ins): k for k, (_, ins) in enumerate(data.instructions)}
    phases = curriculum_schedule([ins for _, ins in data.instructions], rng, mode=task.schedule, replay=task.replay)
    sizes = {"short": task.batch_size, "report": task.report_batch_size}
    plan = []
    for stage, instructions in phases:
        rows = {"short": [], "report": []}
        for ins in instructions:
            table, row = where[index_of[id(ins)]]
            rows[table].append(row)
        batches = []
        for table, chosen in rows.items():
            if not chosen:
                continue
            chosen = np.asarray(chosen)
            epochs = task.report_epochs if table == "report" else task.epochs
            n = max(1, int(round(epochs * len(chosen) / sizes[table])))
            order = np.concatenate([rng.permutation(chosen) for _ in range(int(np.ceil(n * sizes[table] / len(chosen))) + 1)])
            for b in range(n):
                # Evenly interleaved: sort key = position of the batch within its kind's run.
                batches.append(((b + 0.5) / n, table, order[b * sizes[table]:(b + 1) * sizes[table]]))
        batches.sort(key=lambda t: t[0])
        plan += [(stage, table, rows_) for _, table, rows_ in batches]
    return plan


# --------------------------------------------------------------------------- training

def task_data(task: VLMTaskConfig, tokenizer: Tokenizer | None = None, *, split: str = "train"
              ) -> tuple[InstructionSet, Tokenizer]:
    """The training (or held-out, ``split="val"``) instruction set; trains the tokenizer when none is given."""
    root = jax.random.key(task.seed)
    n = task.num_train if split == "train" else task.num_val
    images, samples, truths = chest_samples(jax.random.fold_in(root, _TRAIN_DATA if split == "train" else _VAL_DATA),
                                            n, image_size=task.image_size)
    seed = task.seed * 2 + (0 if split == "train" else 1)
    config = model_config(task, 1)
    dense_cells = config.grid * config.mask_subcells if split == "train" and config.dense_classes else None
    reports = write_reports(truths, seed)
    instructions = instructions_for(reports, seed)
    if tokenizer is None:
        corpus = reports + [ins.prompt for _, ins in instructions] + [answer_text(ins) for _, ins in instructions]
        tokenizer = train_tokenizer(corpus, vocab_size=task.vocab_size)
    data = build_instruction_set(images, samples, truths, reports, instructions, tokenizer,
                                 prompt_len=task.prompt_len, answer_len=task.answer_len, report_len=task.report_len,
                                 dense_cells=dense_cells)
    return data, tokenizer


def phase_schedule(phase_steps: list[int], learning_rate: float) -> optax.Schedule:
    """Warm-up + cosine decay (to a tenth of the peak) restarted for each phase of the plan.

    One cosine over the whole run would leave the last curriculum stages
    (quantities, reports) only the tail of the decay; a restart per stage
    gives each stage the same schedule. The shuffled plan is one phase.
    """
    parts = [optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps=max(1, n // 10), decay_steps=max(n, 2),
                                                end_value=0.1 * learning_rate) for n in phase_steps]
    return optax.join_schedules(parts, list(np.cumsum(phase_steps)[:-1]))


def _run(loss_fn, params, tx, batch_fn, *, steps: int, key, run_dir: Path, record: dict, progress: bool,
         force: bool) -> tuple[Any, list[dict]]:
    """One engine run (:func:`jaxmed.train.run_phase`: resumed when ``run_dir`` holds the same run), 8 checkpoints."""
    params, records = run_phase(loss_fn, params, tx, batch_fn, steps=steps, key=key, run_dir=run_dir,
                                record={"jaxmed_version": jaxmed.__version__, "task": "vlm", **record},
                                progress=progress, force=force, log_every=10, checkpoint_every=max(1, steps // 8))
    return jax.device_put(params, jax.local_devices()[0]), records


def train_autoencoder(task: VLMTaskConfig, images: np.ndarray, run_dir: Path, *, progress: bool, force: bool = False
                      ) -> tuple[Any, list]:
    """Pre-trains the patch autoencoder on every patch of the training radiographs (resumed in ``run_dir``)."""
    cfg = model_config(task, 1).autoencoder_config()
    module = Autoencoder(cfg)
    patches = np.asarray(patchify(jnp.asarray(images), task.patch_size)).reshape(-1, *cfg.image_shape)
    root = jax.random.key(task.seed)
    params = module.init(jax.random.fold_in(root, _AE_INIT), jnp.zeros((1, *cfg.image_shape)))

    batch_size = min(task.autoencoder_batch_size, len(patches))

    def batch_fn(step):
        rows = batch_indices(step, num_examples=len(patches), batch_size=batch_size, seed=task.seed)
        return {"image": patches[rows]}

    steps, lr = task.autoencoder_steps, 2e-3
    tx = make_optimizer(OptimConfig(learning_rate=lr, schedule="warmup-cosine", warmup_steps=max(1, steps // 20),
                                    grad_clip_norm=1.0), total_steps=steps)
    record = {"part": "autoencoder", "model": {"name": "autoencoder", "config": {**vars(cfg)}},
              "data": {"patches": int(len(patches))},
              "optim": {"learning_rate": lr, "schedule": "warmup-cosine", "steps": steps, "batch_size": batch_size}}
    return _run(autoencoder_loss_fn(module), params, tx, batch_fn, steps=steps, key=jax.random.fold_in(root, _AE_STEPS),
                run_dir=run_dir, record=record, progress=progress, force=force)


def init_params(task: VLMTaskConfig, config: VLMConfig, module: VisionLanguageModel, autoencoder_params=None):
    """The model's initial parameters, the pre-trained patch encoder put in."""
    s, p, a = config.image_size, config.prompt_len, config.answer_len
    params = module.init(jax.random.fold_in(jax.random.key(task.seed), _VLM_INIT), jnp.zeros((1, s, s, 1)),
                         jnp.zeros((1, p), jnp.int32), jnp.ones((1, p), bool), jnp.zeros((1, a), jnp.int32),
                         jnp.ones((1, a), bool), jnp.ones((1,), jnp.int32), method=VisionLanguageModel.heads)
    if autoencoder_params is not None:
        params = {"params": {**params["params"], "patch_encoder": autoencoder_params["params"]}}
    return params


def train_vlm(task: VLMTaskConfig, out_dir: str | os.PathLike, *, force: bool = False, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] = lambda line: None) -> tuple[VLMModel, dict]:
    """Trains the model into ``out_dir`` (module docstring).

    Args:
      task: the settings.
      out_dir: the model folder; it must be empty unless ``force`` (start
        over: ``model/`` and ``autoencoder/`` are removed) or ``resume``.
      resume: continue the runs in ``out_dir`` from their latest checkpoints,
        bit for bit (the data, the tokenizer and the step plan are redrawn
        from the seed); a run of other settings is refused (`FileExistsError`).
      progress: progress bars.
      log: where the phases are announced.

    Returns:
      ``(model, info)``: the trained :class:`VLMModel` and what training
      measured (timings, steps, instructions per stage).
    """
    if resume and force:
        raise ValueError("resume and force exclude each other: resume continues the runs, force starts them over")
    out = prepare_out_dir(out_dir, force=force or resume, replace=() if resume else ("model", "autoencoder"))
    stored = stored_task_config(out) if resume else None
    if stored is not None and stored != task:
        changed = config_differences(task_config_to_json(stored), task_config_to_json(task))
        raise FileExistsError(f"{out}: holds another run (its {VLM_FILE} differs in {', '.join(changed)}); "
                              "resume it with its own settings, or start over with force")
    (out / VLM_FILE).write_text(json.dumps({"jaxmed_version": jaxmed.__version__, "task": task_config_to_json(task),
                                            "training": None}, indent=2) + "\n")
    t0 = time.perf_counter()
    log(f"data: {task.num_train} training phantoms at {task.image_size} px, reports, instructions, tokenizer")
    data, tokenizer = task_data(task)
    tokenizer.save(out / TOKENIZER_FILE)
    config = model_config(task, tokenizer.vocab_size)
    module = VisionLanguageModel(config)
    t_data = time.perf_counter()
    ae_params, ae_records = None, []
    if task.encoder == "autoencoder":
        log(f"patch autoencoder: {task.autoencoder_steps} steps")
        ae_params, ae_records = train_autoencoder(task, data.images, out / "autoencoder", progress=progress)
    t_ae = time.perf_counter()
    params = init_params(task, config, module, ae_params)
    plan = step_plan(data, task, np.random.default_rng([task.seed, 7]))

    def batch_fn(step):
        _, table, rows = plan[step]
        return gather_batch(data, table, rows)

    stages = {}
    for stage, table, rows in plan:
        stages.setdefault(stage, {"steps": 0, "rows": 0})
        stages[stage]["steps"] += 1
        stages[stage]["rows"] += len(rows)
    per_stage = ", ".join(f"{k} {v['steps']}" for k, v in stages.items())
    log(f"model: {len(plan)} steps ({task.schedule}; {per_stage})")
    schedule = phase_schedule([v["steps"] for v in stages.values()], task.learning_rate)
    record = {"part": "model", "task_settings": task_config_to_json(task),
              "model": {"name": "vlm", "config": {**vars(config)}},
              "data": {"phantoms": task.num_train, "instructions": len(data.instructions)},
              "optim": {"learning_rate": task.learning_rate, "schedule": "warm-up + cosine to 0.1 per phase",
                        "phase_steps": [v["steps"] for v in stages.values()], "clip": 1.0}}
    params, records = _run(make_vlm_loss(module, mask_weight=task.mask_weight, landmark_weight=task.landmark_weight,
                                         dense_weight=task.dense_weight),
                           params, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule)), batch_fn,
                           steps=len(plan), key=jax.random.fold_in(jax.random.key(task.seed), _VLM_STEPS),
                           run_dir=out / "model", record=record, progress=progress, force=False)
    t_end = time.perf_counter()
    info = {"steps": len(plan), "stages": stages, "instructions": len(data.instructions),
            "vocab_size": tokenizer.vocab_size,
            "final_loss": records[-1]["loss"] if records else None,
            "autoencoder_final_mse": ae_records[-1]["loss"] if ae_records else None,
            "timings_s": {"data_s": round(t_data - t0, 1), "autoencoder_s": round(t_ae - t_data, 1),
                          "model_s": round(t_end - t_ae, 1), "total_s": round(t_end - t0, 1)}}
    (out / VLM_FILE).write_text(json.dumps({"jaxmed_version": jaxmed.__version__, "task": task_config_to_json(task),
                                            "model": {**vars(config), "autoencoder_channels":
                                                      list(config.autoencoder_channels)},
                                            "training": info}, indent=2) + "\n")
    return VLMModel(task, config, module, params, tokenizer), info


def stored_task_config(model_dir: str | os.PathLike) -> VLMTaskConfig | None:
    """The task settings a (possibly unfinished) model folder was trained with, or None where it has no ``vlm.json``.

    Raises:
      ValueError: naming the file, where it is unreadable.
    """
    path = Path(model_dir) / VLM_FILE
    if not path.is_file():
        return None
    try:
        return task_config_from_json(json.loads(path.read_text())["task"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable vlm settings ({e})") from e


def load_vlm(model_dir: str | os.PathLike) -> VLMModel:
    """Reads a model folder written by :func:`train_vlm`.

    Raises:
      FileNotFoundError / ValueError: naming the folder and what is missing or wrong.
    """
    root = Path(model_dir)
    path = root / VLM_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a vlm model folder (no {VLM_FILE}; train one with jaxmed vlm train)")
    try:
        meta = json.loads(path.read_text())
        task = task_config_from_json(meta["task"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable vlm settings ({e})") from e
    if not meta.get("training"):
        raise ValueError(f"{root}: its training did not finish; continue it with jaxmed vlm train --out {root} --resume")
    tokenizer = Tokenizer.load(root / TOKENIZER_FILE)
    config = model_config(task, tokenizer.vocab_size)
    module = VisionLanguageModel(config)
    try:
        with Checkpointer(root / "model", keep=None, create=False) as checkpointer:
            params = checkpointer.restore_params()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{root}: the model's checkpoint is missing ({e})") from e
    return VLMModel(task, config, module, params, tokenizer)
