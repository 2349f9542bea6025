"""A trained scan-quality model as scoring needs it: the VAE, its background model, preprocessing and calibration.

A checkpoint folder (``jaxmed train --out`` or ``jaxmed demo``'s
``checkpoint/``) holds the VAE (``config.json``, ``checkpoints/``), how scans
become its inputs (``preprocess.json``), optionally a background model for
likelihood-ratio scores (a run folder ``background/`` inside it: the same
kind of VAE trained on mutated inputs, ``jaxmed train --augment-mutation``)
and, after ``jaxmed calibrate``, a decision threshold and the normal
reference scores for each score, with the
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

__all__ = ["BACKGROUND_DIR", "CALIBRATION_FILE", "Scorer", "load_calibration", "load_scorer", "save_calibration"]

CALIBRATION_FILE = "calibration.json"
BACKGROUND_DIR = "background"


class Scorer(NamedTuple):
    """A trained VAE and what scoring needs beside it.

    Attributes:
      model: the :class:`jaxmed.models.VAE`.
      params: its variables.
      preprocessing: how files become model inputs.
      calibrations: the stored threshold and normal reference scores of each
        score (``{"log_px": ..., "complexity": ..., ...}``), or None.
      calibration_spec: the :class:`ScoreSpec` the calibration was made with
        (its ``score`` the decision score by default), or None.
      run_dir: the checkpoint folder.
      background: ``(model, params)`` of the background model, or None.
    """

    model: Any
    params: Any
    preprocessing: Preprocessing
    calibrations: dict[str, Calibration] | None
    calibration_spec: ScoreSpec | None
    run_dir: Path
    background: tuple[Any, Any] | None = None


def load_scorer(run_dir: str | os.PathLike, *, step: int | None = None) -> Scorer:
    """Loads a checkpoint folder (``jaxmed train --out`` or ``jaxmed demo``'s ``checkpoint/``).

    A background model is loaded from ``run_dir/background/`` when there is
    one; it must take the model's inputs.

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      ValueError: not a VAE, a background model of another input shape, or
        malformed preprocessing/calibration files.
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
    background = None
    if (run_dir / BACKGROUND_DIR / "config.json").is_file():
        bg_model, bg_params, bg_config = load_model(run_dir / BACKGROUND_DIR)
        if not isinstance(bg_model, VAE) or tuple(bg_config.image_shape) != tuple(config.image_shape):
            raise ValueError(f"{run_dir / BACKGROUND_DIR}: the background model must be a VAE of the model's input "
                             f"shape {tuple(config.image_shape)}")
        background = (bg_model, bg_params)
    calibrations, spec = load_calibration(run_dir)
    return Scorer(model, params, prep, calibrations, spec, run_dir, background)


def save_calibration(
    run_dir: str | os.PathLike,
    calibrations: Mapping[str, Calibration],
    *,
    spec: ScoreSpec,
    info: Mapping[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Writes ``run_dir/calibration.json``: per score the threshold and reference scores, and the score spec.

    Args:
      run_dir: the checkpoint folder.
      calibrations: ``{score: Calibration}``, scores of
        :data:`~jaxmed.tasks.scan_quality.scores.SCORES`; must hold
        ``spec.score``.
      spec: how the scores were computed (its ``score`` decides by default).
      info: more JSON fields to store (sources, counts).
      force: replace an existing file.

    Raises:
      FileExistsError: the file exists and ``force`` is False.
      ValueError: no calibration of the decision score.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; refusing to overwrite it (pass --force to replace it)")
    if spec.score not in calibrations:
        raise ValueError(f"no calibration of the decision score {spec.score!r}; have {sorted(calibrations)}")
    record = {"calibrations": {k: c.to_dict() for k, c in calibrations.items()}, "score": spec.to_dict(),
              **dict(info or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_calibration(run_dir: str | os.PathLike) -> tuple[dict[str, Calibration] | None, ScoreSpec | None]:
    """``({score: calibration}, spec)`` from ``run_dir/calibration.json``, or ``(None, None)``.

    Files of jaxmed 0.1.0 hold one calibration, of log p(x).

    Raises:
      ValueError: the file exists but is malformed.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text())
        stored = record["calibrations"] if "calibrations" in record else {"log_px": record["calibration"]}
        return {k: Calibration.from_dict(v) for k, v in stored.items()}, ScoreSpec(**record["score"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid calibration file ({e})") from None
