"""One training run end to end: what ``jaxmed train`` calls.

``train_model(run, out_dir)`` loads the images, builds the model and the
optimiser, trains data-parallel over a device mesh with checkpoints, and
leaves in ``out_dir``: ``config.json`` (the :class:`RunConfig`, the model's
config and the data description), ``preprocess.json`` (for scans: how
``jaxmed score`` turns a volume into inputs like the training images),
``metrics.jsonl``, ``loss_curve.png`` and ``checkpoints/``. :func:`jaxmed.train.checkpoint.load_model` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxmed
from jaxmed.data.augmentation import AugmentConfig, augment_batch
from jaxmed.data.batching import batch_indices
from jaxmed.data.synth import SynthSource
from jaxmed.train.checkpoint import (
    CHECKPOINT_SUBDIR,
    CONFIG_FILE,
    PREPROCESS_FILE,
    Checkpointer,
    config_differences,
    load_config,
    save_config,
    save_preprocessing,
)
from jaxmed.train.config import OptimConfig, TrainConfig, config_from_dict, replace_fields
from jaxmed.train.loop import FitResult, fit, make_evaluator
from jaxmed.train.metrics_log import plot_loss_curve, read_metrics
from jaxmed.train.optim import make_optimizer
from jaxmed.train.parallel import jit_eval_step, jit_train_step, local_batch_slice, make_mesh, replicate
from jaxmed.train.registry import (
    LEGACY_LOSS_FIELDS,
    get_model_spec,
    loss_config_from_dict,
    model_config_to_dict,
    model_config_with,
)
from jaxmed.train.sources import load_image_splits
from jaxmed.train.state import TrainState
from jaxmed.train.step import make_eval_step, make_train_step

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
# Files a run writes; --force removes exactly these.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LOSS_CURVE_FILE, PREPROCESS_FILE, CHECKPOINT_SUBDIR)

# Streams of the run seed (jax.random.fold_in): init, steps, evaluation, augmentation.
_INIT_STREAM, _STEP_STREAM, _EVAL_STREAM, _AUGMENT_STREAM = 0, 1, 2, 3

# Fields that may change when a run is resumed: they do not change the
# numbers computed (the schedule length is checked separately).
_RESUMABLE_CHANGES = {"steps", "devices", "log_every", "eval_every", "checkpoint_every", "keep", "patience"}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that defines a training run, for any registered model.

    Nothing here belongs to one model: a model's architecture is its preset
    (with ``model_options`` replacing fields of it) and its training options
    are its own loss-config dataclass (``loss``; the registry entry's
    :attr:`~jaxmed.train.registry.ModelSpec.loss` by default).

    Attributes:
      data: ``"phantoms"``, ``"brain-mri"`` or a path (see
        :func:`jaxmed.train.sources.load_image_splits`).
      model: a key of :data:`jaxmed.train.registry.MODELS`.
      preset: a preset of that model; ``""``: the model's default preset.
      model_options: ``((field, value), ...)``: fields of the preset's config
        replaced, values as JSON values (e.g. ``(("likelihood",
        "gaussian_learned_pixel"), ("min_scale", 0.001))`` for a VAE).
      loss: the model's training options, an instance of its loss-config
        dataclass (a dict of its fields is converted); None: the registry's
        defaults for the model.
      num_train: phantoms: number of training images.
      num_val: number of validation images.
      augment: random transforms of each training image, drawn per step
        (:class:`jaxmed.data.AugmentConfig`; the default changes nothing).
      synth: ``data="brain-mri"`` only: synthetic subjects added to the
        training slices (:class:`jaxmed.data.synth.SynthSource`; the default
        adds none).
      optim: the optimiser.
      train: steps, batch size, seed, periods, devices.
    """

    data: str = "phantoms"
    model: str = "vae"
    preset: str = ""
    model_options: tuple[tuple[str, Any], ...] = ()
    loss: Any = None
    num_train: int = 2048
    num_val: int = 256
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synth: SynthSource = field(default_factory=SynthSource)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        spec = get_model_spec(self.model)  # raises for unknown names
        if not self.preset:
            object.__setattr__(self, "preset", spec.default_preset)
        options = self.model_options.items() if isinstance(self.model_options, dict) else self.model_options
        try:
            # JSON values, so that a run read back from config.json compares equal.
            options = tuple((str(k), json.loads(json.dumps(v))) for k, v in options)
        except (TypeError, ValueError):
            raise ValueError(f"model_options must be (field, JSON value) pairs, got {self.model_options!r}") from None
        object.__setattr__(self, "model_options", options)
        model_config_with(self.model, self.preset, options)  # raises for unknown presets, fields, values
        loss = self.loss
        if loss is None or isinstance(loss, dict):
            loss = loss_config_from_dict(self.model, loss)
        elif type(loss) is not type(spec.loss):
            raise ValueError(f"model {self.model!r} trains with a {type(spec.loss).__name__}, "
                             f"got a {type(loss).__name__}")
        object.__setattr__(self, "loss", loss)
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {self.num_train}, {self.num_val}")
        if self.synth.num_subjects and self.data != "brain-mri":
            raise ValueError(f"synthetic subjects come only with data 'brain-mri', not {self.data!r}")

    @property
    def model_config(self) -> Any:
        """The model's config: the preset with ``model_options`` applied."""
        return model_config_with(self.model, self.preset, self.model_options)


def run_to_json(run: RunConfig) -> dict[str, Any]:
    """The ``"run"`` and ``"model"`` entries of ``config.json``.

    The loss config is stored beside the model config (``model.loss``), not
    in ``run``, so that a checkpoint folder says in one place what the model
    is and how it was trained.
    """
    fields = dataclasses.asdict(run)
    loss = fields.pop("loss")
    return {
        "run": fields,
        "model": {"name": run.model, "preset": run.preset, "config": model_config_to_dict(run.model_config),
                  "loss": loss},
    }


def run_from_json(stored: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`run_to_json`; also reads the run configs of jaxmed 0.1.0.

    Those kept the models' training options in the run config
    (:data:`jaxmed.train.registry.LEGACY_LOSS_FIELDS`); each is moved into the
    model's loss config when it has that field, and dropped otherwise (it
    did not act on that model).

    Raises:
      KeyError, TypeError, ValueError: not a run config.
    """
    fields = dict(stored["run"])
    model = fields.get("model", RunConfig.model)
    legacy = {new: fields.pop(old) for old, new in LEGACY_LOSS_FIELDS.items() if old in fields}
    loss = (stored.get("model") or {}).get("loss")
    if loss is None:
        known = {f.name for f in dataclasses.fields(get_model_spec(model).loss)}
        loss = {k: v for k, v in legacy.items() if k in known}
    return config_from_dict(RunConfig, {**fields, "loss": loss})


def _prepare_dir(out_dir: Path, run: RunConfig, *, resume: bool, force: bool) -> bool:
    """Checks/clears the output folder; returns True when resuming a run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    existing = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not existing:
        return False
    if resume and (out_dir / CONFIG_FILE).exists():
        _check_resumable(run, _stored_run(out_dir), out_dir)
        return True
    if force:
        if jax.process_index() == 0:
            for name in RUN_FILES:
                path = out_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return False
    if resume:
        raise FileExistsError(f"{out_dir}: not empty and has no {CONFIG_FILE}, so it holds no run to resume")
    raise FileExistsError(
        f"{out_dir}: not empty ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''}); "
        "refusing to overwrite it. Pass --resume to continue the run in it, --force to start "
        f"over (deletes its {', '.join(RUN_FILES)}), or choose another --out."
    )


def _stored_run(out_dir: Path) -> RunConfig:
    stored = load_config(out_dir)
    try:
        return run_from_json(stored)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{out_dir / CONFIG_FILE}: not a jaxmed run config ({e})") from None


def run_differences(a: RunConfig, b: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Fields that differ, as ``{"train.steps": (a_value, b_value), ...}``."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    out = {}
    for name in da:
        if isinstance(da[name], dict):
            out.update({f"{name}.{k}": (da[name][k], db[name][k]) for k in da[name] if da[name][k] != db[name][k]})
        elif da[name] != db[name]:
            out[name] = (da[name], db[name])
    return out


def _check_resumable(run: RunConfig, stored: RunConfig, out_dir: Path) -> None:
    diffs = run_differences(stored, run)
    fixed = {k: v for k, v in diffs.items() if not (k.startswith("train.") and k[6:] in _RESUMABLE_CHANGES)}
    if "train.steps" in diffs and stored.optim.schedule != "constant":
        fixed["train.steps"] = diffs["train.steps"]
    if fixed:
        listing = "; ".join(f"{k}: {old!r} in the run, {new!r} asked for" for k, (old, new) in fixed.items())
        raise ValueError(
            f"{out_dir}: cannot resume with different settings ({listing}). Resume with the "
            "run's settings (omit the options), or train into a new --out."
        )


def _check_same_data(stored: Any, loaded: dict[str, Any], out_dir: Path) -> None:
    """A resumed run must see the data, and the train/validation split, it started with."""
    loaded = json.loads(json.dumps(loaded))  # as config.json holds it
    if stored is None or stored == loaded:
        return
    keys = config_differences(stored, loaded)
    raise ValueError(
        f"{out_dir}: cannot resume: the data or its train/validation split changed since the run started "
        f"(differs in {', '.join(keys)}; e.g. files added, or a jaxmed version that splits differently). "
        "Train into a new --out."
    )


def stored_run_config(out_dir: str | os.PathLike) -> RunConfig | None:
    """The :class:`RunConfig` saved in ``out_dir/config.json``, or None if there is none."""
    out_dir = Path(out_dir)
    return _stored_run(out_dir) if (out_dir / CONFIG_FILE).is_file() else None


def update_run_config(
    base: RunConfig,
    *,
    loss: dict[str, Any] | None = None,
    augment: dict[str, Any] | None = None,
    synth: dict[str, Any] | None = None,
    optim: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    **fields: Any,
) -> RunConfig:
    """``base`` with the given fields replaced; None values leave a field as it is.

    Args:
      base: the starting configuration.
      loss: fields of the model's loss config (of ``base.loss``, or of the
        new model's defaults when ``fields`` names another model).
      augment: :class:`jaxmed.data.AugmentConfig` fields.
      synth: ``"num_subjects"`` and :class:`jaxmed.data.synth.SynthConfig`
        fields (as JSON values), for :class:`jaxmed.data.synth.SynthSource`.
      optim: :class:`OptimConfig` fields.
      train: :class:`TrainConfig` fields.
      **fields: top-level :class:`RunConfig` fields.

    Returns:
      The new, validated configuration.

    Raises:
      ValueError: a field the model's loss config does not have (the message
        names the model and lists its options), or a bad value.
    """
    def given(d):
        return {k: v for k, v in (d or {}).items() if v is not None}

    top = given(fields)
    model = top.get("model", base.model)
    if model != base.model:
        # Another model: its own default preset and training options.
        top.setdefault("preset", "")
        top.setdefault("loss", None)
        top.setdefault("model_options", ())
    run = dataclasses.replace(base, **top)
    loss_fields = given(loss)
    if loss_fields:
        try:
            run = dataclasses.replace(run, loss=replace_fields(run.loss, loss_fields))
        except ValueError as e:
            raise ValueError(f"model {run.model!r}: {e}") from None
    synth_fields = given(synth)
    source = run.synth
    if synth_fields:
        num_subjects = synth_fields.pop("num_subjects", source.num_subjects)
        source = SynthSource(num_subjects=num_subjects, config=replace_fields(source.config, synth_fields))
    return dataclasses.replace(
        run,
        synth=source,
        augment=dataclasses.replace(run.augment, **given(augment)),
        optim=dataclasses.replace(run.optim, **given(optim)),
        train=dataclasses.replace(run.train, **given(train)),
    )


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def init_params(spec: Any, model: Any, key: jax.Array, x: np.ndarray) -> Any:
    """``spec.init(key, model, x)`` compiled without XLA's backend optimisations.

    Args:
      spec: a :class:`jaxmed.train.registry.ModelSpec`.
      model: the module it builds.
      key: PRNG key.
      x: a batch of one example.
    """
    # Initialisation runs once: XLA's backend optimisations of the unrolled
    # initialisers cost seconds of compilation (24 s vs 1.5 s for the tiny VAE
    # on a busy 2-core CPU) and save nothing.
    init = jax.jit(lambda key, x: spec.init(key, model, x)).lower(key, x)
    return init.compile(compiler_options={"xla_backend_optimization_level": 0})(key, x)


def eval_batches(data: dict[str, np.ndarray], *, batch_size: int, num_devices: int) -> list[dict[str, np.ndarray]]:
    """Validation samples as equal batches for :func:`jaxmed.train.loop.make_evaluator`.

    Batches of ``min(batch_size, n)`` rounded down to a multiple of
    ``num_devices``; the remainder (fewer than one batch) is not evaluated,
    so the mean of batch means is the mean over the samples evaluated. Each
    process keeps its rows of every batch.

    Raises:
      ValueError: fewer samples than devices.
    """
    n = len(data["image"])
    size = min(batch_size, (n // num_devices) * num_devices)
    if size < 1:
        raise ValueError(f"the validation set ({n} images) is smaller than the number of devices ({num_devices})")
    rows = local_batch_slice(size)
    return [{k: v[i : i + size][rows] for k, v in data.items()} for i in range(0, n - size + 1, size)]


def train_model(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> tuple[FitResult, dict[str, Any]]:
    """Trains a model as ``run`` says, writing everything into ``out_dir``.

    Args:
      run: the run configuration.
      out_dir: output folder; must be empty or missing unless ``resume`` (it
        holds this run: continue from its latest checkpoint) or ``force``
        (delete the files of the run in it and start over).
      resume: continue the run in ``out_dir`` (a missing or empty folder
        starts a new run).
      force: start over in a non-empty ``out_dir``.
      progress: show a progress bar.

    Returns:
      ``(result, info)``: the :class:`~jaxmed.train.loop.FitResult`, and
      ``info`` with ``"start_step"``, ``"problems"`` (unreadable files) and the
      paths written.

    Raises:
      FileExistsError: ``out_dir`` is not empty and neither flag allows it.
      ValueError: bad settings, unusable data, or a resume with changed
        settings.
      jaxmed.train.NonFiniteLossError: the loss became NaN/Inf (the last good
        checkpoint is kept).
    """
    out_dir = Path(out_dir)
    resuming = _prepare_dir(out_dir, run, resume=resume, force=force)
    _sync("jaxmed-train-prepare-dir")
    spec = get_model_spec(run.model)
    model_config = run.model_config
    cfg = run.train
    root = jax.random.key(cfg.seed)

    data = load_image_splits(run.data, image_shape=tuple(model_config.image_shape), seed=cfg.seed,
                             num_train=run.num_train, num_val=run.num_val, targets=spec.targets, synth=run.synth)
    if resuming:
        _check_same_data(load_config(out_dir).get("data"), data.description, out_dir)
    num_train = len(data.train["image"])
    if num_train < cfg.batch_size:
        raise ValueError(f"the batch size ({cfg.batch_size}) is larger than the training set ({num_train} images)")
    mesh = make_mesh(cfg.devices)
    if cfg.batch_size % mesh.size:
        raise ValueError(f"the batch size ({cfg.batch_size}) must be divisible by the number of devices ({mesh.size})")

    model = spec.build(model_config)
    loss_fn = spec.loss_fn(model, model_config, run.loss)
    params = init_params(spec, model, jax.random.fold_in(root, _INIT_STREAM), data.train["image"][:1])
    tx = make_optimizer(run.optim, total_steps=cfg.steps)
    state = TrainState.create(params=params, tx=tx, key=jax.random.fold_in(root, _STEP_STREAM))
    state = replicate(state, mesh)

    checkpointer = Checkpointer(out_dir, keep=cfg.keep)
    if resuming and checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
    start_step = int(state.step)
    save_config(out_dir, {"jaxmed_version": jaxmed.__version__, **run_to_json(run), "data": data.description})
    if data.preprocessing is not None and jax.process_index() == 0:
        save_preprocessing(out_dir, data.preprocessing)

    augment_key = jax.random.fold_in(root, _AUGMENT_STREAM)
    first_row = local_batch_slice(cfg.batch_size).start

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rows = batch_indices(step, num_examples=num_train, batch_size=cfg.batch_size, seed=cfg.seed,
                             process_index=jax.process_index(), process_count=jax.process_count())
        batch = {k: v[rows] for k, v in data.train.items()}
        if not run.augment.is_identity:
            batch["image"] = np.asarray(augment_batch(jax.random.fold_in(augment_key, step), batch["image"],
                                                      run.augment, first_row))
        return batch

    evaluator = make_evaluator(
        jit_eval_step(make_eval_step(loss_fn, mixed_precision=cfg.mixed_precision), mesh),
        eval_batches(data.val, batch_size=cfg.batch_size, num_devices=mesh.size),
        mesh=mesh, key=jax.random.fold_in(root, _EVAL_STREAM),
    )
    metrics_path = out_dir / METRICS_FILE
    try:
        result = fit(
            state,
            train_step=jit_train_step(make_train_step(loss_fn, mixed_precision=cfg.mixed_precision), mesh),
            batch_fn=batch_fn, config=cfg, mesh=mesh, eval_fn=evaluator,
            checkpointer=checkpointer, metrics_path=metrics_path, progress=progress,
        )
    finally:
        checkpointer.close()
        if jax.process_index() == 0 and metrics_path.exists():
            plot_loss_curve(read_metrics(metrics_path), out_dir / LOSS_CURVE_FILE)
    info = {
        "start_step": start_step,
        "problems": data.problems,
        "num_devices": mesh.size,
        "num_processes": jax.process_count(),
        "data": data.description,
        "paths": {name: str(out_dir / name) for name in RUN_FILES},
    }
    return result, info
