"""The scan-quality study on real brain MRI, end to end: ``jaxmed demo``.

The study: a VAE learns what normal axial slices of the MNI152 brain template
look like; held-out normal slices, and copies of them corrupted by simulated
k-space artefacts (:mod:`jaxmed.data.artefacts`: noise, ghosting, motion,
blur, bias field, spike), are scored by their estimated log p(x); each
artefact is told from normal by AUROC, beside a PCA reconstruction-error
baseline fitted on the same training slices.

Each step is a public function of this package; :func:`run_demo` chains them,
and ``experiments/brain_mri_anomaly.py`` shows how to fork the study::

    data = load_demo_data(config)                   # train / val / test slices
    trained = train_vae(config, run_dir)            # jaxmed.train.train_model: a checkpoint folder
    test = make_test_set(key, data.test, artefacts=config.artefacts, severity=config.severity)
    specs = score_specs(config)                     # importance, match, mcmc, ais
    scores = score_test_set(trained, test.images, specs={"importance": specs["importance"]})
    pca = pca_scores(data.train, test.images, num_components=20)
    table = auroc_table(key, {"VAE IS": -scores["importance"], "PCA": pca}, test)
    print(format_auroc_table(table))

Score conventions follow :mod:`jaxmed.tasks.scan_quality.decision`
(normality: higher = more normal) and :mod:`jaxmed.metrics` (anomaly: higher
= more abnormal, labels 1 = corrupted).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmed.tasks.scan_quality.config import DemoConfig, run_config
from jaxmed.tasks.scan_quality.decision import anomaly_scores, classify, two_sided_anomaly_scores
from jaxmed.tasks.scan_quality.evaluation import (
    TrainedVAE,
    auroc_table,
    calibrate_on_validation,
    format_auroc_table,
    learned_noise_scale,
    pca_scores,
    reconstruct,
    score_specs,
    score_test_set,
)
from jaxmed.tasks.scan_quality.outputs import write_figures, write_results
from jaxmed.tasks.scan_quality.test_set import TestSet, make_test_set, subset_indices

__all__ = ["CHECKPOINT_DIR", "DemoData", "load_demo_data", "run_demo", "train_vae"]

CHECKPOINT_DIR = "checkpoint"

# Streams of the study's seed (jax.random.fold_in) beside the training run's own.
_TEST_SET, _BOOTSTRAP = 4, 6


class DemoData(NamedTuple):
    """Normal slices, float32 ``[N, H, W, 1]`` in [0, 1], and their provenance.

    Attributes:
      train: training slices (what the training run loads too).
      val: validation slices (early look at the loss; threshold calibration).
      test: held-out normal slices; the test set's corrupted copies come
        from these.
      description: JSON record of the source and split.
      preprocessing: the :class:`jaxmed.data.Preprocessing` that turns a
        volume of the same kind into such slices, or None when there is none
        (phantoms are drawn as slices).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: dict[str, Any]
    preprocessing: Any


def load_demo_data(config: DemoConfig) -> DemoData:
    """The normal slices of ``config.data`` at the preset's size, from the training engine's data source.

    The training and validation slices are exactly those :func:`train_vae`
    trains and validates on (:func:`jaxmed.train.load_image_splits` with the
    run's settings); the test slices are the source's held-out ones (the
    template's test blocks; more phantoms of the same stream).

    Raises:
      ValueError: the brain template is not installed (``pip install
        nilearn``) or the phantoms' sizes are invalid.
    """
    from jaxmed.train import load_image_splits

    run = run_config(config)
    splits = load_image_splits(run.data, image_shape=tuple(run.model_config.image_shape), seed=run.train.seed,
                               num_train=run.num_train, num_val=run.num_val, num_test=config.num_phantoms[2])
    return DemoData(splits.train["image"], splits.val["image"], splits.test["image"], splits.description,
                    splits.preprocessing)


def train_vae(config: DemoConfig, run_dir: str | os.PathLike, *, progress: bool = True) -> TrainedVAE:
    """Trains the study's VAE through :func:`jaxmed.train.train_model`; ``run_dir`` becomes its checkpoint folder.

    The same path as ``jaxmed train``, with the run of
    :func:`~jaxmed.tasks.scan_quality.config.run_config`.

    Args:
      config: the study.
      run_dir: an empty or missing folder.
      progress: show the fit loop's progress bar.

    Returns:
      A :class:`~jaxmed.tasks.scan_quality.evaluation.TrainedVAE`.
    """
    from jaxmed.train import train_model

    t0 = time.perf_counter()
    run = run_config(config)
    result, _ = train_model(run, run_dir, progress=progress)
    params = jax.device_put(result.state.params, jax.local_devices()[0])
    from jaxmed.models import VAE

    return TrainedVAE(VAE(run.model_config), params, result.records, Path(run_dir), time.perf_counter() - t0)


def _prepare_out_dir(out_dir: Path, *, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    existing = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if existing and not force:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise FileExistsError(f"{out_dir}: not empty ({shown}); refusing to write into it. "
                              "Pass --force to overwrite, or choose another --out.")
    if force and (out_dir / CHECKPOINT_DIR).is_dir():
        # A stale checkpoint would be restored or mixed with the new one.
        shutil.rmtree(out_dir / CHECKPOINT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class _Scores(NamedTuple):
    """Scores of one study run (normality: higher = more normal)."""

    val: np.ndarray  # [n_val] importance scores of the validation slices
    test: dict[str, np.ndarray]  # "importance", "match": [N] over the test set
    subset_rows: np.ndarray  # rows of the test set scored by MCMC and AIS too
    subset: dict[str, np.ndarray]  # "mcmc", "ais": [len(subset_rows)]


def _score(config: DemoConfig, trained: TrainedVAE, data: DemoData, test: TestSet, *, progress: bool,
           say: Callable[[str], None]) -> _Scores:
    specs = score_specs(config)
    n_val = len(data.val)
    say(f"scoring {n_val} validation and {len(test.labels)} test slices by importance sampling "
        f"({config.num_samples} samples) and the match score")
    # Validation and test slices in one stream (one compiled batch shape);
    # offset indices give the validation slices keys of their own.
    both = score_test_set(trained, np.concatenate([data.val, test.images]),
                          specs={k: specs[k] for k in ("importance", "match")},
                          indices=np.concatenate([10**6 + np.arange(n_val), np.arange(len(test.labels))]),
                          progress=progress)
    rows = subset_indices(test, per_group=config.subset_per_group)
    subset: dict[str, np.ndarray] = {}
    if len(rows):
        say(f"scoring a subset of {len(rows)} slices by MCMC and AIS")
        subset = score_test_set(trained, test.images[rows], specs={k: specs[k] for k in ("mcmc", "ais")},
                                progress=progress)
    return _Scores(both["importance"][:n_val], {k: v[n_val:] for k, v in both.items()}, rows, subset)


def _subset_tables(key: jax.Array, config: DemoConfig, scores: _Scores, test: TestSet) -> tuple[dict, dict]:
    """AUROCs of the estimators on the subset, and how far MCMC and AIS lie from importance sampling."""
    rows = scores.subset_rows
    if not len(rows):
        return {}, {}
    importance = scores.test["importance"][rows]
    anomaly = {"VAE IS": anomaly_scores(importance), "VAE MCMC": anomaly_scores(scores.subset["mcmc"]),
               "VAE AIS": anomaly_scores(scores.subset["ais"])}
    table = auroc_table(key, anomaly, test.take(rows), num_resamples=config.num_bootstrap)
    agreement = {}
    for name in ("mcmc", "ais"):
        diff = scores.subset[name] - importance
        agreement[f"{name}_minus_importance_nats"] = {
            "mean": float(np.mean(diff)), "std": float(np.std(diff)),
            "correlation": float(np.corrcoef(scores.subset[name], importance)[0, 1]) if len(rows) > 1 else None}
    return table, agreement


def _grid_rows(test: TestSet, importance: np.ndarray) -> np.ndarray:
    """The normal test slice with the median score (representative, not the best or worst
    reconstructed) and its corrupted copies: one row of the image grid per group."""
    normal_rows = np.flatnonzero(test.groups == "normal")
    example = test.source[normal_rows[np.argsort(importance[normal_rows])[len(normal_rows) // 2]]]
    return np.asarray([np.flatnonzero((test.groups == g) & (test.source == example))[0]
                       for g in dict.fromkeys(test.groups)])


def _table_text(config: DemoConfig, table: dict, sub_table: dict, test: TestSet, flagged: dict[str, float],
                num_val: int) -> str:
    n_normal = int(np.sum(test.groups == "normal"))
    text = (f"AUROC, {n_normal} normal vs {n_normal * config.copies} corrupted test slices per artefact "
            f"(severity {config.severity}); higher is better, 0.5 is chance\n" + format_auroc_table(table))
    if sub_table:
        n_sub = next(iter(sub_table.values()))[config.artefacts[0]]["num_normal"]
        text += (f"\n\nEstimators on a subset ({n_sub} slices per group; MCMC: {config.mcmc}; AIS: {config.ais})\n"
                 + format_auroc_table(sub_table))
    text += (f"\n\nCalled abnormal at the threshold calibrated on {num_val} validation slices (target "
             f"false-positive rate {config.fpr}): " + ", ".join(f"{g} {r:.0%}" for g, r in flagged.items()))
    return text


def run_demo(
    config: DemoConfig,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs the whole study and writes its outputs into ``out_dir``.

    Writes: ``results.csv``/``results.json`` (one row per test image),
    ``summary.json``, ``roc_vae.png``, ``roc_pca.png``,
    ``score_histograms.png``, ``image_grid.png``, ``loss_curve.png``, and the
    checkpoint folder ``checkpoint/`` (with ``calibration.json``: usable by
    ``jaxmed score --checkpoint OUT/checkpoint``).

    Args:
      config: the study.
      out_dir: an empty or missing folder (any folder with ``force``).
      force: write into a non-empty folder (its ``checkpoint/`` is replaced).
      progress: progress bars.
      log: called with a line of text at each stage (e.g. ``print``).

    Returns:
      The summary (also ``summary.json``): the AUROC tables, the printed
      table text under ``"table"``, timings and settings.

    Raises:
      FileExistsError: ``out_dir`` is not empty and ``force`` is False.
    """
    say = log or (lambda line: None)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, force=force)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    root = jax.random.key(config.seed)

    t = time.perf_counter()
    data = load_demo_data(config)
    timings["data_s"] = time.perf_counter() - t
    say(f"data: {config.data}, {len(data.train)} training / {len(data.val)} validation / "
        f"{len(data.test)} test slices of {config.image_size}x{config.image_size}")

    say(f"training the VAE ({config.preset}, {config.likelihood} likelihood, {config.steps} steps of "
        f"{config.batch_size})")
    trained = train_vae(config, out_dir / CHECKPOINT_DIR, progress=progress)
    timings["train_s"] = trained.seconds

    t = time.perf_counter()
    test = make_test_set(jax.random.fold_in(root, _TEST_SET), data.test, artefacts=config.artefacts,
                         severity=config.severity, copies=config.copies)
    scores = _score(config, trained, data, test, progress=progress, say=say)
    calibration = calibrate_on_validation(trained, {"log_px": scores.val}, spec=score_specs(config)["importance"],
                                          fpr=config.fpr)["log_px"]
    timings["score_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pca = pca_scores(data.train, test.images, num_components=min(config.pca_components, len(data.train)))
    timings["pca_s"] = time.perf_counter() - t

    importance = scores.test["importance"]
    anomaly = {
        f"PCA({config.pca_components})": pca,
        "VAE IS": anomaly_scores(importance),
        "VAE IS two-sided": two_sided_anomaly_scores(importance, scores.val),
        "VAE match": anomaly_scores(scores.test["match"]),
    }
    key = jax.random.fold_in(root, _BOOTSTRAP)
    table = auroc_table(key, anomaly, test, num_resamples=config.num_bootstrap)
    sub_table, agreement = _subset_tables(jax.random.fold_in(key, 1), config, scores, test)

    decisions = classify(importance, calibration)
    estimates = {name: np.full(len(test.labels), np.nan) for name in ("mcmc", "ais")}
    for name, values in scores.subset.items():
        estimates[name][scores.subset_rows] = values
    write_results(out_dir, test, {
        "log_px_importance": importance, "match": scores.test["match"],
        "two_sided": anomaly["VAE IS two-sided"], "pca_error": pca,
        "decision": np.where(decisions.normal, "normal", "abnormal"), "p_value": decisions.p_value,
        "num_reference": np.full(len(test.labels), decisions.num_reference),
        "log_px_mcmc": estimates["mcmc"], "log_px_ais": estimates["ais"],
    })

    t = time.perf_counter()
    shown = _grid_rows(test, importance)
    figures = write_figures(out_dir, test=test, normality=scores.test, pca=pca, threshold=calibration.threshold,
                            reconstructions=reconstruct(trained, test.images[shown]), rows=shown,
                            records=trained.records)
    timings["figures_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    flagged = {str(g): float(np.mean(~decisions.normal[test.groups == g])) for g in dict.fromkeys(test.groups)}
    last = trained.records[-1] if trained.records else {}
    summary = {
        "config": config.to_dict(),
        "data": data.description,
        "model": {"preset": config.preset, "likelihood": config.likelihood,
                  "learned_noise_std": learned_noise_scale(trained),
                  "final_loss": last.get("loss"), "final_val_loss": last.get("val_loss")},
        "calibration": {"threshold": calibration.threshold, "target_fpr": config.fpr,
                        "num_reference": int(len(scores.val)), "method": "importance",
                        "flagged_fraction": flagged},
        "auroc": table,
        "auroc_subset": sub_table,
        "estimator_agreement": agreement,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "load_average": _load_average(),
        "table": _table_text(config, table, sub_table, test, flagged, len(data.val)),
        "files": sorted(p.name for p in [*figures, out_dir / "results.csv", out_dir / "results.json",
                                         out_dir / "summary.json"]) + [CHECKPOINT_DIR + "/"],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
