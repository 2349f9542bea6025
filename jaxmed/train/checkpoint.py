"""Checkpoints: the only module that reads or writes them.

A run directory holds::

    RUN_DIR/
      config.json            what made the run (model name, config and loss; data, optim, train)
      preprocess.json        scans only: how a volume becomes model inputs (jaxmed.data.Preprocessing)
      metrics.jsonl          one JSON object per logged step
      checkpoints/<step>/    Orbax: items "params" and "train" (step, opt_state, key data)

Parameters are a separate Orbax item so that :func:`load_model` restores
them without knowing the optimiser. Typed PRNG keys are stored as their raw
key data (``jax.random.key_data``) and wrapped again on restore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmed.data.preprocess import Preprocessing
from jaxmed.train.state import TrainState

CONFIG_FILE = "config.json"
PREPROCESS_FILE = "preprocess.json"
CHECKPOINT_SUBDIR = "checkpoints"
_ITEMS = ("params", "train")


def _manager(run_dir: str | os.PathLike, *, keep: int | None, create: bool) -> ocp.CheckpointManager:
    directory = Path(run_dir).absolute() / CHECKPOINT_SUBDIR
    return ocp.CheckpointManager(
        directory,
        item_handlers={name: ocp.StandardCheckpointHandler() for name in _ITEMS},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
    )


def _train_item(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "opt_state": state.opt_state, "key": jax.random.key_data(state.key)}


def _abstract(tree: Any) -> Any:
    def spec(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(spec, tree)


class Checkpointer:
    """Saves and restores :class:`TrainState` checkpoints of one run directory.

    Every process of a multi-process run must make the same calls (Orbax
    coordinates the writing). Saving is asynchronous; :meth:`wait` blocks
    until the files are complete.

    Args:
      run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
      keep: number of most recent checkpoints kept; None = all.
      create: create ``run_dir/checkpoints`` if missing; if False, a missing
        folder is an error (for readers).

    Raises:
      FileNotFoundError: ``create`` is False and there is no checkpoint folder.
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep: int | None = 3, create: bool = True):
        self.run_dir = Path(run_dir)
        if not create and not (self.run_dir / CHECKPOINT_SUBDIR).is_dir():
            raise FileNotFoundError(f"{self.run_dir / CHECKPOINT_SUBDIR}: no checkpoint folder")
        self._manager = _manager(run_dir, keep=keep, create=create)

    def all_steps(self) -> list[int]:
        """Steps that have a checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpointed step, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState) -> bool:
        """Checkpoints ``state`` under its step (no-op if that step exists).

        Returns:
          True if a checkpoint was written.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            return False
        # Orbax copies the arrays to host before returning (synchronous
        # device-to-host transfer), so the state may be donated right after.
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                train=ocp.args.StandardSave(_train_item(state)),
            ),
        )

    def restore(self, template: TrainState, *, step: int | None = None) -> TrainState:
        """Restores a checkpoint into the structure and shardings of ``template``.

        Args:
          template: a state of the same model and optimiser (e.g. freshly
            initialised and placed on the mesh); only its shapes, dtypes,
            shardings and static fields are used.
          step: which checkpoint; None = the latest.

        Returns:
          The restored state.

        Raises:
          FileNotFoundError: there is no checkpoint (or not that step).
        """
        step = self._resolve(step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(template.params)),
                train=ocp.args.StandardRestore(_abstract(_train_item(template))),
            ),
        )
        train = restored["train"]
        key = jax.random.wrap_key_data(train["key"], impl=jax.random.key_impl(template.key))
        return template.replace(
            step=train["step"], params=restored["params"], opt_state=train["opt_state"], key=key
        )

    def restore_params(self, *, step: int | None = None) -> Any:
        """Restores only the parameters, on the default device, without a template."""
        step = self._resolve(step)
        metadata = self._manager.item_metadata(step)["params"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            getattr(metadata, "tree", metadata),
        )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )
        return restored["params"]

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.run_dir / CHECKPOINT_SUBDIR}: no checkpoint found")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"{self.run_dir / CHECKPOINT_SUBDIR}: no checkpoint for step {step} (have {steps})"
            )
        return step

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Writes ``run_dir/config.json`` (process 0 only; atomic rename).

    Args:
      run_dir: the run directory (created if missing).
      config: JSON-serialisable description of the run.

    Returns:
      The path of the file.
    """
    path = Path(run_dir) / CONFIG_FILE
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return path


def config_differences(stored: Any, asked: Any, prefix: str = "") -> list[str]:
    """Where two JSON records differ, as dotted keys (``["init", "model.features"]``).

    Dicts are compared key by key (sorted), down to their leaves; a key on
    one side only differs; anything else (lists, numbers, strings) differs
    as a whole. Two different non-dicts at the top give ``["(the record)"]``.
    """
    if isinstance(stored, dict) and isinstance(asked, dict):
        out = []
        for k in sorted(set(stored) | set(asked), key=str):
            if k in stored and k in asked:
                out += config_differences(stored[k], asked[k], f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}")
        return out
    return [] if stored == asked else [prefix[:-1] or "(the record)"]


def load_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads ``run_dir/config.json``.

    Raises:
      FileNotFoundError: the run directory has no config.json.
      ValueError: config.json is not valid JSON.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a jaxmed training run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_model(run_dir: str | os.PathLike, *, step: int | None = None) -> tuple[Any, Any, Any]:
    """Loads a trained model from a run directory, with no code of the run.

    ``config.json`` names the model (a key of
    :data:`jaxmed.train.registry.MODELS`) and holds its config; the
    parameters come from the checkpoint, placed on the first local device.

    Args:
      run_dir: the directory ``jaxmed train --out`` wrote.
      step: which checkpoint; None = the latest.

    Returns:
      ``(model, params, model_config)``: the Flax module, its variables (use
      ``model.apply(params, ...)``) and its config dataclass. The whole run
      description is :func:`load_config`.

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      ValueError: config.json names an unknown model or has bad fields.
    """
    from jaxmed.train.registry import get_model_spec, model_config_from_dict

    config = load_config(run_dir)
    path = Path(run_dir) / CONFIG_FILE
    try:
        name, fields = config["model"]["name"], config["model"]["config"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: no model.name / model.config entry") from None
    try:
        model_config = model_config_from_dict(name, fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad model config ({e})") from None
    model = get_model_spec(name).build(model_config)
    with Checkpointer(run_dir, keep=None, create=False) as checkpointer:
        params = checkpointer.restore_params(step=step)
    return model, params, model_config


def save_preprocessing(run_dir: str | os.PathLike, prep: Preprocessing) -> Path:
    """Writes ``run_dir/preprocess.json``."""
    path = Path(run_dir) / PREPROCESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prep.to_dict(), indent=2) + "\n")
    return path


def load_preprocessing(run_dir: str | os.PathLike, *, image_shape: Sequence[int] | None = None) -> Preprocessing:
    """The preprocessing of a run: its ``preprocess.json``, else inferred from ``config.json``.

    Without ``preprocess.json`` (``jaxmed train`` writes one for scan data,
    not for phantoms; runs of earlier versions have none), the data source
    recorded in ``config.json`` decides: ``"brain-mri"`` runs get
    ``method="brain_mri"`` (what :mod:`jaxmed.train.sources` loads), any
    other the ``"minmax"`` default (what ``--data FILES`` does), at the
    model's input size.

    Args:
      run_dir: a checkpoint folder.
      image_shape: the model's ``(H, W, C)``, needed when there is no
        ``preprocess.json``.

    Raises:
      ValueError: a malformed ``preprocess.json``, or a model that does not
        take single-channel 2D images.
    """
    path = Path(run_dir) / PREPROCESS_FILE
    if path.is_file():
        try:
            return Preprocessing.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid preprocessing record ({e})") from None
    if image_shape is None or len(image_shape) != 3 or image_shape[-1] != 1:
        raise ValueError(f"{run_dir}: no {PREPROCESS_FILE}, and the model input {tuple(image_shape or ())} "
                         "is not a single-channel 2D image that files could be scored as")
    source = None
    config_path = Path(run_dir) / CONFIG_FILE
    if config_path.is_file():
        try:
            source = (json.loads(config_path.read_text()).get("data") or {}).get("source")
        except (json.JSONDecodeError, AttributeError):
            source = None
    method = "brain_mri" if source == "brain-mri" else "minmax"
    return Preprocessing(image_size=tuple(image_shape[:2]), method=method)
