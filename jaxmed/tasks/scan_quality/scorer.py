"""A trained scan-quality model as scoring needs it: the VAE, its preprocessing and its calibration.

A checkpoint folder (``jaxmed train --out`` or ``jaxmed demo``'s
``checkpoint/``) holds the VAE (``config.json``, ``checkpoints/``), how scans
become its inputs (``preprocess.json``) and, after ``jaxmed calibrate``, the
decision threshold with the normal reference scores and the
:class:`~jaxmed.tasks.scan_quality.scores.ScoreSpec` they were made with
(``calibration.json``). :func:`load_scorer` reads them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxmed.data.preprocess import Preprocessing
from jaxmed.train.checkpoint import PREPROCESS_FILE, load_model, load_preprocessing
from jaxmed.tasks.scan_quality.decision import Calibration
from jaxmed.tasks.scan_quality.scores import ScoreSpec

__all__ = ["CALIBRATION_FILE", "Scorer", "load_calibration", "load_scorer", "save_calibration"]

CALIBRATION_FILE = "calibration.json"


class Scorer(NamedTuple):
    """A trained VAE and what scoring needs beside it.

    Attributes:
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      preprocessing: how files become model inputs.
      calibration: the stored threshold and normal reference scores, or None.
      calibration_spec: the :class:`ScoreSpec` the calibration was made with,
        or None.
      run_dir: the checkpoint folder.
    """

    model: Any
    params: Any
    preprocessing: Preprocessing
    calibration: Calibration | None
    calibration_spec: ScoreSpec | None
    run_dir: Path


def load_scorer(run_dir: str | os.PathLike, *, step: int | None = None) -> Scorer:
    """Loads a checkpoint folder (``jaxmed train --out`` or ``jaxmed demo``'s ``checkpoint/``).

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      ValueError: not a VAE, or malformed preprocessing/calibration files.
    """
    from jaxmed.models import VAE

    run_dir = Path(run_dir)
    model, params, config = load_model(run_dir, step=step)
    if not isinstance(model, VAE):
        raise ValueError(f"{run_dir}: holds a {type(model).__name__}; only a VAE gives likelihood scores")
    prep = load_preprocessing(run_dir, image_shape=config.image_shape)
    if tuple(prep.image_size) + (1,) != tuple(config.image_shape):
        raise ValueError(f"{run_dir / PREPROCESS_FILE}: image_size {prep.image_size} does not match the model "
                         f"input {config.image_shape}")
    calibration, spec = load_calibration(run_dir)
    return Scorer(model, params, prep, calibration, spec, run_dir)


def save_calibration(
    run_dir: str | os.PathLike,
    calibration: Calibration,
    *,
    spec: ScoreSpec,
    info: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Writes ``run_dir/calibration.json`` (the threshold, reference scores and score spec).

    Raises:
      FileExistsError: the file exists and ``force`` is False.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; refusing to overwrite it (pass --force to replace it)")
    record = {"calibration": calibration.to_dict(), "score": spec.to_dict(), **dict(info or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_calibration(run_dir: str | os.PathLike) -> tuple[Calibration | None, ScoreSpec | None]:
    """``(calibration, spec)`` from ``run_dir/calibration.json``, or ``(None, None)``.

    Raises:
      ValueError: the file exists but is malformed.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text())
        return Calibration.from_dict(record["calibration"]), ScoreSpec(**record["score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid calibration file ({e})") from None
