"""Scoring and evaluating the study's VAE: estimator settings, test-set scores, calibration, AUROC tables, baselines.

All scores of the study come from :func:`score_test_set` (normality: higher =
more normal); AUROCs from :func:`auroc_table` (anomaly: higher = more
abnormal), with stratified bootstrap intervals from :mod:`jaxmed.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.metrics import auroc, bootstrap
from jaxmed.models import VAE
from jaxmed.models.pca import fit_pca, pca_reconstruction_error
from jaxmed.models.vae import LEARNED_SCALE_LIKELIHOODS
from jaxmed.tasks.scan_quality.config import DemoConfig
from jaxmed.tasks.scan_quality.decision import calibrate
from jaxmed.tasks.scan_quality.scorer import save_calibration
from jaxmed.tasks.scan_quality.scores import ScoreSpec, normality_scores, score_images
from jaxmed.tasks.scan_quality.test_set import TestSet

__all__ = [
    "TrainedVAE",
    "auroc_table",
    "calibrate_on_validation",
    "format_auroc_table",
    "learned_noise_scale",
    "locally_calibrated_flagged",
    "pca_scores",
    "reconstruct",
    "mean_auroc_table",
    "score_all",
    "score_specs",
    "score_test_set",
]

# Stream of a spec's seed (jax.random.fold_in) that scores the study's images.
_SCORE = 5


class TrainedVAE(NamedTuple):
    """A trained VAE and how it trained.

    Attributes:
      model: the :class:`jaxmed.models.VAE`.
      params: its variables (on the default device).
      records: the fit loop's metric records.
      run_dir: the checkpoint folder (``config.json``, ``preprocess.json``,
        ``checkpoints/``, ``metrics.jsonl``), loadable by
        :func:`jaxmed.tasks.scan_quality.load_scorer`.
      seconds: wall-clock time of training (data, initialisation,
        compilation and the fit loop).
    """

    model: Any
    params: Any
    records: list[dict[str, Any]]
    run_dir: Path
    seconds: float


def learned_noise_scale(trained: TrainedVAE) -> dict[str, float] | None:
    """The decoder's learned noise standard deviation (min, median, max over pixels), or None."""
    if trained.model.config.likelihood not in LEARNED_SCALE_LIKELIHOODS:
        return None
    std = np.exp(np.asarray(trained.model.apply(trained.params, method=VAE.noise_log_scale), np.float64))
    return {"min": float(std.min()), "median": float(np.median(std)), "max": float(std.max())}


def score_specs(config: DemoConfig) -> dict[str, Any]:
    """The :class:`~jaxmed.tasks.scan_quality.scores.ScoreSpec` of each estimator of the study.

    ``"importance"`` and ``"match"`` score the whole test set; ``"mcmc"`` and
    ``"ais"`` the subset (their options from ``config``).
    """
    def spec(method, num_samples, **options):
        return ScoreSpec(method=method, num_samples=num_samples, chunk_size=config.chunk_size,
                         batch_size=config.score_batch_size, seed=config.seed, options=options)

    mcmc = dict(config.mcmc)
    ais = dict(config.ais)
    return {
        "importance": spec("importance", config.num_samples),
        "match": spec("match", 1),
        "mcmc": spec("mcmc", mcmc.pop("num_samples"), **mcmc),
        "ais": spec("ais", ais.pop("num_samples"), **ais),
    }


def score_test_set(
    trained: TrainedVAE,
    images: np.ndarray,
    *,
    specs: Mapping[str, Any],
    indices: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Normality scores of ``images`` by each spec (higher = more normal).

    Args:
      trained: the VAE.
      images: ``[N, H, W, 1]``.
      specs: ``{name: ScoreSpec}``.
      indices: ``[N]`` ints naming each image's key (default ``arange(N)``);
        image ``i`` is scored with ``fold_in(fold_in(key(spec.seed), 5),
        indices[i])``.
      progress: tqdm bars.

    Returns:
      ``{name: float64 [N]}``; log p(x) in nats, or -KL for ``"match"``.
    """
    out = {}
    for name, spec in specs.items():
        key = jax.random.fold_in(jax.random.key(spec.seed), _SCORE)
        out[name] = score_images(key, trained.model, trained.params, images, spec=spec, indices=indices,
                                 progress=progress, desc=f"scoring ({name})")
    return out


def score_all(
    trained: TrainedVAE,
    images: np.ndarray,
    *,
    spec: ScoreSpec,
    background: TrainedVAE | None = None,
    indices: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> dict[str, np.ndarray]:
    """Every score of :data:`~jaxmed.tasks.scan_quality.scores.SCORES` that applies (higher = more normal).

    :func:`~jaxmed.tasks.scan_quality.scores.normality_scores` with the
    study's keys: image ``i`` is scored with ``fold_in(fold_in(key(spec.seed),
    5), indices[i])``, by the VAE and its background model alike.
    """
    key = jax.random.fold_in(jax.random.key(spec.seed), _SCORE)
    bg = None if background is None else (background.model, background.params)
    return normality_scores(key, trained.model, trained.params, images, spec=spec, background=bg,
                            indices=indices, progress=progress, desc=desc)


def calibrate_on_validation(
    trained: TrainedVAE,
    val_scores: Mapping[str, np.ndarray],
    *,
    spec: Any,
    fpr: float,
    source: str = "the demo's validation slices",
) -> dict[str, Any]:
    """Thresholds at ``fpr`` from normal slices' scores, saved as the checkpoint's ``calibration.json``.

    Args:
      trained: the VAE (its ``run_dir`` receives the file).
      val_scores: ``{score: [n] normality scores}`` of normal slices (scores
        of :data:`~jaxmed.tasks.scan_quality.scores.SCORES`) by ``spec``.
      spec: the :class:`~jaxmed.tasks.scan_quality.scores.ScoreSpec` they were
        computed with; its ``score`` decides by default.
      fpr: target false-positive rate per slice.
      source: what the slices are, for the record.

    Returns:
      ``{score: Calibration}``.
    """
    calibrations = {kind: calibrate(values, fpr=fpr) for kind, values in val_scores.items()}
    num_slices = len(next(iter(val_scores.values())))
    save_calibration(trained.run_dir, calibrations, spec=spec, force=True,
                     info={"source": source, "num_slices": int(num_slices)})
    return calibrations


def locally_calibrated_flagged(test: TestSet, normality: np.ndarray, *, fpr: float, block: int = 3) -> dict[str, float]:
    """Flagged fractions per group after calibrating on the subject's own clean slices, two-fold.

    The workflow the README recommends for a new site ("train on many,
    calibrate on the site's own normals"), measured on one subject: its clean
    slices are cut into consecutive blocks of ``block`` (neighbouring slices
    are near-copies, so single alternate slices would leak); the threshold is
    calibrated (:func:`~jaxmed.tasks.scan_quality.decision.calibrate`, at
    ``fpr``) on the even blocks and applied to the clean slices of the odd
    blocks and to every corrupted copy of them, then the other way round.

    Args:
      test: one subject's test set (``source`` says which clean slice each
        image came from).
      normality: ``[N]`` normality scores of ``test.images`` (higher = more
        normal).
      fpr: target false-positive rate of each calibration.
      block: slices per block.

    Returns:
      ``{group: fraction called abnormal}`` over both folds (``"normal"``:
      the false-positive rate).
    """
    normality = np.asarray(normality, dtype=np.float64)
    clean = np.flatnonzero(test.groups == "normal")
    order = clean[np.argsort(test.source[clean])]
    fold_of_source = {int(test.source[i]): (k // block) % 2 for k, i in enumerate(order)}
    fold = np.asarray([fold_of_source[int(s)] for s in test.source])
    called = np.zeros(len(normality), bool)
    for f in (0, 1):
        threshold = calibrate(normality[clean[fold[clean] == f]], fpr=fpr).threshold
        held = fold != f
        called[held] = normality[held] < threshold
    return {str(g): float(np.mean(called[test.groups == g])) for g in dict.fromkeys(test.groups)}


def pca_scores(train: np.ndarray, images: np.ndarray, *, num_components: int) -> np.ndarray:
    """PCA reconstruction error of each image (anomaly score: higher = more abnormal).

    Args:
      train: ``[n, ...]`` training images the subspace is fitted to.
      images: ``[N, ...]`` images to score.
      num_components: subspace dimension.

    Returns:
      float64 ``[N]`` mean squared reconstruction errors.
    """
    pca = fit_pca(jnp.asarray(train), num_components=num_components)
    return np.asarray(_pca_errors(pca, jnp.asarray(images)), np.float64)


@jax.jit
def _pca_errors(pca: Any, images: jax.Array) -> jax.Array:
    return jax.vmap(pca_reconstruction_error, in_axes=(None, 0))(pca, images)


def reconstruct(trained: TrainedVAE, images: np.ndarray) -> np.ndarray:
    """Decoder mean at the encoder mean, ``[N, H, W, 1]``."""
    def f(params, x):
        mean, _ = trained.model.apply(params, x, method=VAE.encode)
        return trained.model.apply(params, mean, method=VAE.decode)["mean"]

    return np.asarray(jax.jit(f)(trained.params, jnp.asarray(images)))


def auroc_table(
    key: jax.Array,
    anomaly: Mapping[str, np.ndarray],
    test: TestSet,
    *,
    num_resamples: int = 1000,
) -> dict[str, dict[str, dict[str, float]]]:
    """AUROC of each method for each artefact against the normal slices, with a CI.

    Args:
      key: PRNG key of the bootstraps.
      anomaly: ``{method: [N] anomaly scores}`` (higher = more abnormal), rows
        matching ``test``.
      test: the test set (or a subset of it).
      num_resamples: stratified bootstrap resamples (95% percentile interval).

    Returns:
      ``{method: {artefact: {"auroc", "low", "high", "num_normal",
      "num_corrupted"}}}``.
    """
    normal = test.groups == "normal"
    artefacts = [g for g in dict.fromkeys(test.groups) if g != "normal"]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for m, (method, scores) in enumerate(anomaly.items()):
        scores = np.asarray(scores, np.float64)
        table[method] = {}
        for a, artefact in enumerate(artefacts):
            rows = normal | (test.groups == artefact)
            k = jax.random.fold_in(jax.random.fold_in(key, m), a)
            interval = bootstrap(k, auroc, jnp.asarray(scores[rows]), jnp.asarray(test.labels[rows]),
                                 num_resamples=num_resamples)
            table[method][artefact] = {
                "auroc": float(interval.estimate), "low": float(interval.low), "high": float(interval.high),
                "num_normal": int(normal.sum()), "num_corrupted": int((test.groups == artefact).sum()),
            }
    return table


def mean_auroc_table(tables: Sequence[Mapping[str, Mapping[str, Mapping[str, float]]]]) -> dict[str, Any]:
    """The mean of several subjects' :func:`auroc_table` s, with the lowest and highest subject's AUROC.

    Returns:
      ``{method: {artefact: {"auroc": mean, "low": min, "high": max,
      "num_subjects", "per_subject": [...]}}}`` (``format_auroc_table``
      prints it; its ``intervals`` are then the range over subjects).
    """
    out: dict[str, Any] = {}
    for method in tables[0]:
        out[method] = {}
        for artefact in tables[0][method]:
            values = [t[method][artefact]["auroc"] for t in tables]
            out[method][artefact] = {"auroc": float(np.mean(values)), "low": float(np.min(values)),
                                     "high": float(np.max(values)), "num_subjects": len(values),
                                     "per_subject": values}
    return out


def format_auroc_table(table: Mapping[str, Mapping[str, Mapping[str, float]]], *, intervals: bool = False) -> str:
    """A plain-text table: one row per artefact, one column per method."""
    methods = list(table)
    artefacts = list(next(iter(table.values()))) if table else []

    def cell(entry):
        text = f"{entry['auroc']:.3f}"
        return f"{text} [{entry['low']:.2f}, {entry['high']:.2f}]" if intervals else text

    rows = [["artefact", *methods]] + [[a, *(cell(table[m][a]) for m in methods)] for a in artefacts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
