"""The scan-quality study on real brain MRI, end to end: ``jaxmed demo``.

The study: a VAE learns what normal axial slices of the MNI152 brain template
look like, and, through synthetic subjects made from it (deformations,
contrast, bias fields, resolution, noise: :mod:`jaxmed.data.synth`), what
normal slices of other heads and scanners look like; a background model is
the same VAE trained on randomly mutated inputs. Normal slices, and copies of
them corrupted by simulated k-space artefacts (:mod:`jaxmed.data.artefacts`:
noise, ghosting, motion, blur, bias field, spike), are scored by their
estimated log p(x), its complexity-corrected form and the likelihood ratio
(:mod:`jaxmed.tasks.scan_quality.scores`); each artefact is told from normal
by AUROC, beside a PCA reconstruction-error baseline, twice: on the
template's held-out slices (in distribution) and on held-out synthetic
subjects, each against its own clean slices (new subjects). The shipped
thresholds are calibrated on the template's validation slices and on other
held-out synthetic subjects.

Each step is a public function of this package; :func:`run_demo` chains them,
and ``experiments/brain_mri_anomaly.py`` shows how to fork the study::

    data = load_demo_data(config)                   # train / val / test slices
    trained = train_vae(config, run_dir)            # jaxmed.train.train_model: a checkpoint folder
    subjects = held_out_subjects(config)            # synthetic subjects never trained on
    test = make_test_set(key, data.test, artefacts=config.artefacts, severity=config.severity)
    spec = score_specs(config)["importance"]
    scores = score_all(trained, test.images, spec=spec)   # log_px, complexity
    pca = pca_scores(data.train, test.images, num_components=20)
    table = auroc_table(key, {"complexity": -scores["complexity"], "PCA": pca}, test)
    print(format_auroc_table(table))

Score conventions follow :mod:`jaxmed.tasks.scan_quality.decision`
(normality: higher = more normal) and :mod:`jaxmed.metrics` (anomaly: higher
= more abnormal, labels 1 = corrupted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmed.io.outputs import load_average, prepare_out_dir
from jaxmed.tasks.scan_quality.config import DemoConfig, background_run_config, run_config
from jaxmed.tasks.scan_quality.decision import anomaly_scores, classify, two_sided_anomaly_scores
from jaxmed.tasks.scan_quality.evaluation import (
    TrainedVAE,
    auroc_table,
    calibrate_on_validation,
    format_auroc_table,
    learned_noise_scale,
    locally_calibrated_flagged,
    mean_auroc_table,
    pca_scores,
    reconstruct,
    score_all,
    score_specs,
    score_test_set,
)
from jaxmed.tasks.scan_quality.outputs import write_figures, write_results
from jaxmed.tasks.scan_quality.scorer import BACKGROUND_DIR
from jaxmed.tasks.scan_quality.subjects import HeldOutSubjects, held_out_subjects
from jaxmed.tasks.scan_quality.test_set import TestSet, make_test_set, subset_indices

__all__ = ["CHECKPOINT_DIR", "COLUMNS", "DemoData", "load_demo_data", "run_demo", "train_background", "train_vae"]

CHECKPOINT_DIR = "checkpoint"

# Streams of the study's seed (jax.random.fold_in) beside the training run's own.
_TEST_SET, _BOOTSTRAP = 4, 6
# Key indices of the scored images: each set its own range (image i of a set: offset + i).
_VAL_OFFSET, _CALIBRATION_OFFSET, _NEW_OFFSET = 10**6, 2 * 10**6, 3 * 10**6
# Local calibration of a new subject: alternate blocks of this many neighbouring slices.
_LOCAL_BLOCK = 3

# Table column of each VAE score (jaxmed.tasks.scan_quality.SCORES), and its axis label.
COLUMNS = {"log_px": "log p(x)", "complexity": "complexity", "likelihood_ratio": "LR"}
_LABELS = {"log_px": "log p(x) [nats], importance sampling",
           "complexity": "log2 P(x) + L(x) [bits]: complexity-corrected log-likelihood",
           "likelihood_ratio": "log p(x) - log p_background(x) [nats]"}


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
    return _train(run_config(config), run_dir, progress=progress)


def train_background(config: DemoConfig, run_dir: str | os.PathLike, *, progress: bool = True) -> TrainedVAE:
    """Trains the background model (the study's VAE on mutated inputs) into ``run_dir``.

    ``CHECKPOINT/background`` is where :func:`~jaxmed.tasks.scan_quality.load_scorer`
    finds it for likelihood-ratio scores.
    """
    return _train(background_run_config(config), run_dir, progress=progress)


def _train(run, run_dir, *, progress: bool) -> TrainedVAE:
    from jaxmed.models import VAE
    from jaxmed.train import train_model

    t0 = time.perf_counter()
    result, _ = train_model(run, run_dir, progress=progress)
    params = jax.device_put(result.state.params, jax.local_devices()[0])
    return TrainedVAE(VAE(run.model_config), params, result.records, Path(run_dir), time.perf_counter() - t0)


class _Sets(NamedTuple):
    """The scored test sets: the template's held-out slices, and each new subject's."""

    template: TestSet
    new: list[TestSet]


def _test_sets(config: DemoConfig, data: DemoData, subjects: HeldOutSubjects | None) -> _Sets:
    key = jax.random.fold_in(jax.random.key(config.seed), _TEST_SET)

    def corrupt(k, clean):
        return make_test_set(k, clean, artefacts=config.artefacts, severity=config.severity, copies=config.copies)

    new = [] if subjects is None else [corrupt(jax.random.fold_in(key, s + 1), clean)
                                       for s, clean in enumerate(subjects.new)]
    return _Sets(corrupt(key, data.test), new)


def _anomaly(config: DemoConfig, scores: dict[str, np.ndarray], reference: np.ndarray, pca: np.ndarray,
             match: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each method's anomaly scores (higher = more abnormal), in the tables' column order."""
    out = {f"PCA({config.pca_components})": pca}
    out.update({COLUMNS[k]: anomaly_scores(v) for k, v in scores.items()})
    out["log p two-sided"] = two_sided_anomaly_scores(scores["log_px"], reference)
    if match is not None:
        out["match"] = anomaly_scores(match)
    return out


def _subset_tables(key: jax.Array, config: DemoConfig, trained: TrainedVAE, test: TestSet, importance: np.ndarray,
                   *, progress: bool, say: Callable[[str], None]) -> tuple[dict, dict, dict]:
    """MCMC and AIS on a subset: their AUROCs beside importance sampling's, and how far apart they lie."""
    rows = subset_indices(test, per_group=config.subset_per_group)
    if not len(rows):
        return {}, {}, {"rows": rows}
    specs = score_specs(config)
    say(f"scoring a subset of {len(rows)} slices by MCMC and AIS")
    subset = score_test_set(trained, test.images[rows], specs={k: specs[k] for k in ("mcmc", "ais")},
                            progress=progress)
    anomaly = {"IS": anomaly_scores(importance[rows]), "MCMC": anomaly_scores(subset["mcmc"]),
               "AIS": anomaly_scores(subset["ais"])}
    table = auroc_table(key, anomaly, test.take(rows), num_resamples=config.num_bootstrap)
    agreement = {}
    for name in ("mcmc", "ais"):
        diff = subset[name] - importance[rows]
        agreement[f"{name}_minus_importance_nats"] = {
            "mean": float(np.mean(diff)), "std": float(np.std(diff)),
            "correlation": float(np.corrcoef(subset[name], importance[rows])[0, 1]) if len(rows) > 1 else None}
    return table, agreement, {"rows": rows, **subset}


def _grid_rows(test: TestSet, scores: np.ndarray) -> np.ndarray:
    """The normal test slice with the median score (representative, not the best or worst
    reconstructed) and its corrupted copies: one row of the image grid per group."""
    normal_rows = np.flatnonzero(test.groups == "normal")
    example = test.source[normal_rows[np.argsort(scores[normal_rows])[len(normal_rows) // 2]]]
    return np.asarray([np.flatnonzero((test.groups == g) & (test.source == example))[0]
                       for g in dict.fromkeys(test.groups)])


def _flagged(normal: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): float(np.mean(~normal[groups == g])) for g in dict.fromkeys(groups)}


def _table_text(config: DemoConfig, tables: dict, sets: _Sets, flagged: dict, num_calibration: int) -> str:
    n = int(np.sum(sets.template.groups == "normal"))
    text = (f"AUROC in distribution: {n} normal vs {n * config.copies} corrupted held-out slices of the training "
            f"template per artefact (severity {config.severity}); higher is better, 0.5 is chance\n"
            + format_auroc_table(tables["template"]))
    if sets.new:
        m = int(np.sum(sets.new[0].groups == "normal"))
        text += (f"\n\nAUROC on new subjects: {len(sets.new)} synthetic subjects never trained on, each {m} clean vs "
                 f"{m * config.copies} corrupted slices per artefact; mean over subjects\n"
                 + format_auroc_table(tables["new"]))
    if tables["subset"]:
        n_sub = next(iter(tables["subset"].values()))[config.artefacts[0]]["num_normal"]
        text += (f"\n\nEstimators of log p(x) on a subset ({n_sub} template slices per group; MCMC: {config.mcmc}; "
                 f"AIS: {config.ais})\n" + format_auroc_table(tables["subset"]))
    text += (f"\n\nCalled abnormal at the shipped threshold ({config.decision_score}, calibrated on {num_calibration} "
             f"normal slices: the template's validation slices and {config.calibration_subjects if sets.new else 0} "
             f"held-out synthetic subjects; target false-positive rate {config.fpr}):")
    for name, rates in flagged.items():
        if name.endswith("calibrated locally"):
            text += (f"\nCalled abnormal after calibrating on each new subject's own clean slices (threshold from "
                     f"alternate blocks of {_LOCAL_BLOCK} slices, rates on the others, two-fold; the workflow of "
                     f"`jaxmed calibrate` at a new site):")
            name = "new subjects"
        text += f"\n  {name}: " + ", ".join(f"{g} {r:.0%}" for g, r in rates.items())
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

    Writes: ``results.csv``/``results.json`` (one row per scored test
    image), ``summary.json``, ``roc_template.png``, ``roc_pca.png``,
    ``score_histograms.png``, ``roc_new_subjects.png`` and
    ``score_histograms_new_subjects.png`` (brain-mri), ``image_grid.png``,
    ``loss_curve.png``, and the checkpoint folder
    ``checkpoint/`` (with ``background/`` and ``calibration.json``: usable by
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
    prepare_out_dir(out_dir, force=force, replace=(CHECKPOINT_DIR,))
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    root = jax.random.key(config.seed)
    checkpoint = out_dir / CHECKPOINT_DIR

    t = time.perf_counter()
    data = load_demo_data(config)
    subjects = held_out_subjects(config)
    timings["data_s"] = time.perf_counter() - t
    say(f"data: {config.data}, {len(data.train)} training / {len(data.val)} validation / {len(data.test)} test "
        f"slices of {config.image_size}x{config.image_size}" + (
            f"; {config.synth.num_subjects} synthetic training subjects, {config.calibration_subjects} held out "
            f"for calibration, {config.new_subjects} as new subjects" if subjects is not None else ""))

    say(f"training the VAE ({config.preset}, {config.likelihood} likelihood, {config.steps} steps of "
        f"{config.batch_size})")
    trained = train_vae(config, checkpoint, progress=progress)
    timings["train_s"] = trained.seconds
    background = None
    if config.background_mutation:
        say(f"training the background model (inputs mutated at rate {config.background_mutation}, "
            f"{config.background_steps or config.steps} steps)")
        background = train_background(config, checkpoint / BACKGROUND_DIR, progress=progress)
        timings["train_background_s"] = background.seconds

    t = time.perf_counter()
    spec = dataclasses.replace(score_specs(config)["importance"], score=config.decision_score)
    sets = _test_sets(config, data, subjects)

    def score(images, offset, desc):
        return score_all(trained, images, spec=spec, background=background,
                         indices=offset + np.arange(len(images)), progress=progress, desc=desc)

    say(f"scoring validation, calibration and test slices by importance sampling ({config.num_samples} samples)")
    normal_scores = score(data.val, _VAL_OFFSET, "scoring (validation)")
    if subjects is not None and len(subjects.calibration):
        extra = score(subjects.calibration, _CALIBRATION_OFFSET, "scoring (calibration subjects)")
        normal_scores = {k: np.concatenate([v, extra[k]]) for k, v in normal_scores.items()}
    calibrations = calibrate_on_validation(
        trained, normal_scores, spec=spec, fpr=config.fpr,
        source="the demo's template validation slices and held-out synthetic subjects")
    scores = {"template": score(sets.template.images, 0, "scoring (template test)")}
    for s, test in enumerate(sets.new):
        scores[f"new subject {s + 1}"] = score(test.images, _NEW_OFFSET + s * 10**5, f"scoring (new subject {s + 1})")
    match_spec = score_specs(config)["match"]
    match = score_test_set(trained, sets.template.images, specs={"match": match_spec})["match"]
    timings["score_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_pca = min(config.pca_components, len(data.train))
    pca = {name: pca_scores(data.train, test.images, num_components=n_pca)
           for name, test in zip(scores, [sets.template, *sets.new], strict=True)}
    timings["pca_s"] = time.perf_counter() - t

    key = jax.random.fold_in(root, _BOOTSTRAP)
    anomaly = {name: _anomaly(config, scores[name], normal_scores["log_px"], pca[name],
                              match if name == "template" else None) for name in scores}
    tables = {"template": auroc_table(key, anomaly["template"], sets.template, num_resamples=config.num_bootstrap)}
    if sets.new:
        tables["new"] = mean_auroc_table([
            auroc_table(jax.random.fold_in(key, 2 + s), anomaly[f"new subject {s + 1}"], test,
                        num_resamples=config.num_bootstrap) for s, test in enumerate(sets.new)])
    tables["subset"], agreement, subset = _subset_tables(jax.random.fold_in(key, 1), config, trained, sets.template,
                                                          scores["template"]["log_px"], progress=progress, say=say)

    calibration = calibrations[config.decision_score]
    decisions = {name: classify(values[config.decision_score], calibration) for name, values in scores.items()}
    flagged = {"template": _flagged(decisions["template"].normal, sets.template.groups)}
    if sets.new:
        flagged["new subjects"] = _flagged(np.concatenate([decisions[f"new subject {s + 1}"].normal
                                                           for s in range(len(sets.new))]),
                                           np.concatenate([test.groups for test in sets.new]))
        local = [locally_calibrated_flagged(test, scores[f"new subject {s + 1}"][config.decision_score],
                                            fpr=config.fpr, block=_LOCAL_BLOCK) for s, test in enumerate(sets.new)]
        flagged["new subjects, calibrated locally"] = {g: float(np.mean([r[g] for r in local])) for g in local[0]}
    estimates = {name: np.full(len(sets.template.labels), np.nan) for name in ("mcmc", "ais")}
    for name in estimates:
        if name in subset:
            estimates[name][subset["rows"]] = subset[name]
    tables_by_set = {}
    for name, test in zip(scores, [sets.template, *sets.new], strict=True):
        columns = {**scores[name], "two_sided": anomaly[name]["log p two-sided"], "pca_error": pca[name],
                   "decision": np.where(decisions[name].normal, "normal", "abnormal"),
                   "p_value": decisions[name].p_value,
                   "num_reference": np.full(len(test.labels), decisions[name].num_reference)}
        if name == "template":
            columns.update(match=match, log_px_mcmc=estimates["mcmc"], log_px_ais=estimates["ais"])
        tables_by_set[name] = (test, columns)
    write_results(out_dir, tables_by_set)

    t = time.perf_counter()
    decide = config.decision_score
    shown = _grid_rows(sets.template, scores["template"][decide])
    grid = {"template": (sets.template, shown)}
    if sets.new:
        grid["new subject 1"] = (sets.new[0], _grid_rows(sets.new[0], scores["new subject 1"][decide]))
    figures = write_figures(
        out_dir, sets={name: (test, scores[name][decide], anomaly[name][f"PCA({config.pca_components})"])
                       for name, test in zip(scores, [sets.template, *sets.new], strict=True)},
        score_name=_LABELS[decide], threshold=calibration.threshold,
        grid={name: (test, rows, reconstruct(trained, test.images[rows])) for name, (test, rows) in grid.items()},
        records=trained.records)
    timings["figures_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    last = trained.records[-1] if trained.records else {}
    summary = {
        "config": config.to_dict(),
        "data": data.description,
        "model": {"preset": config.preset, "likelihood": config.likelihood,
                  "learned_noise_std": learned_noise_scale(trained),
                  "final_loss": last.get("loss"), "final_val_loss": last.get("val_loss"),
                  "background": None if background is None else {
                      "mutation_rate": config.background_mutation,
                      "final_loss": (background.records[-1] if background.records else {}).get("loss")}},
        "calibration": {"decision_score": decide, "target_fpr": config.fpr,
                        "thresholds": {k: c.threshold for k, c in calibrations.items()},
                        "num_reference": int(calibration.reference_scores.size),
                        "flagged_fraction": flagged},
        "auroc": tables["template"],
        "auroc_new_subjects": tables.get("new", {}),
        "auroc_subset": tables["subset"],
        "estimator_agreement": agreement,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "load_average": load_average(),
        "table": _table_text(config, tables, sets, flagged, int(calibration.reference_scores.size)),
        "files": sorted(p.name for p in [*figures, out_dir / "results.csv", out_dir / "results.json",
                                         out_dir / "summary.json"]) + [CHECKPOINT_DIR + "/"],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
