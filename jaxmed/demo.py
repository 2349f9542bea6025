"""The scan-quality study on real brain MRI, as small public functions: ``jaxmed demo``.

The study: a VAE learns what normal axial slices of the MNI152 brain template
look like; held-out normal slices, and copies of them corrupted by simulated
k-space artefacts (:mod:`jaxmed.data.artefacts`: noise, ghosting, motion,
blur, bias field, spike), are scored by their estimated log p(x); each
artefact is told from normal by AUROC, beside a PCA reconstruction-error
baseline fitted on the same training slices.

Each step is one function; :func:`run_demo` chains them, and
``experiments/brain_mri_anomaly.py`` shows how to fork the study::

    data = load_demo_data(config)                   # train / val / test slices
    trained = train_vae(config, data, run_dir)      # the engine's fit loop, a checkpoint
    test = make_test_set(key, data.test, artefacts=config.artefacts, severity=config.severity)
    specs = score_specs(config)                     # importance, match, mcmc, ais
    scores = score_test_set(trained, test.images, specs={"importance": specs["importance"]})
    pca = pca_scores(data.train, test.images, num_components=20)
    table = auroc_table(key, {"VAE IS": -scores["importance"], "PCA": pca}, test)
    print(format_auroc_table(table))

Score conventions follow :mod:`jaxmed.anomaly` (normality: higher = more
normal) and :mod:`jaxmed.metrics` (anomaly: higher = more abnormal, labels 1 =
corrupted).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DemoConfig",
    "DemoData",
    "QUICK",
    "TestSet",
    "TrainedVAE",
    "auroc_table",
    "calibrate_on_validation",
    "demo_config",
    "format_auroc_table",
    "load_demo_data",
    "make_test_set",
    "model_config",
    "pca_scores",
    "reconstruct",
    "run_demo",
    "score_specs",
    "score_test_set",
    "subset_indices",
    "train_vae",
    "write_figures",
    "write_results",
]

DATA_SOURCES = ("brain-mri", "phantoms")
CHECKPOINT_DIR = "checkpoint"

# Streams of the demo seed (jax.random.fold_in): nothing shares a key.
_INIT, _STEPS, _AUGMENT, _EVAL, _TEST_SET, _SCORE, _BOOTSTRAP, _PHANTOMS = range(8)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Everything that defines one run of the study.

    Attributes:
      data: ``"brain-mri"`` (axial slices of the MNI152 template) or
        ``"phantoms"`` (normal single-contrast MRI phantoms).
      preset: architecture, a key of :data:`jaxmed.models.PRESETS`; its input
        size sets the slice size.
      likelihood: the decoder's likelihood (a key of
        :data:`jaxmed.models.LIKELIHOODS`). The unit-variance Gaussian is
        nearly flat for images in [0, 1] (a 0.1 error costs 0.005 nats per
        pixel); one learned global scale settles near the typical error
        (~0.1) and still barely separates motion from normal (AUROC ~0.55).
        The default learns one scale per pixel: tiny where every training
        slice is background, so signal leaking there (ghosts, motion, noise)
        costs many nats.
      steps: optimiser steps.
      batch_size: images per step.
      learning_rate: peak Adam learning rate (warm-up, then cosine decay).
      warmup_steps: linear warm-up length.
      beta: weight of the KL term.
      noise_scale_lr_factor: the decoder's learned noise scale (log sigma)
        trains with this times the learning rate. Adam moves a parameter by
        about the learning rate per step, so at 1e-3 log sigma would need
        thousands of steps to fall from 0 (sigma = 1) to the few percent of
        the intensity range the reconstructions support.
      min_noise_std: floor of the learned noise scale, intensity units: the
        VAE's ``min_scale`` (sigma = min_noise_std + exp(log_scale); 1e-3 is
        about a quarter of the template's 8-bit quantisation step).
        Unfloored, the scale of pixels that are background in every training
        slice falls to ~1e-7 and signal there costs ~1e14 nats; at 0.01 the
        background is too forgiving to catch motion (AUROC 0.88).
      augment: random shifts, flips and intensity scaling of the training
        slices (:func:`jaxmed.data.brain_mri.augment`; the training set is
        one template, ~70 slices).
      max_shift: largest augmentation shift, pixels.
      intensity_range: augmentation intensity factors ``(low, high)``.
      eval_every: validation loss every this many steps (0: at the end).
      devices: data-parallel devices (None: all).
      num_phantoms: phantoms only: ``(train, val, test)`` image counts.
      artefacts: artefact names (keys of :data:`jaxmed.data.artefacts.ARTEFACTS`).
      severity: artefact severity in [0, 1].
      copies: corrupted copies of each normal test slice per artefact.
      fpr: per-slice false-positive rate the threshold is calibrated to.
      num_samples: importance samples per image.
      chunk_size: samples decoded at once per image.
      score_batch_size: images per compiled scoring call.
      subset_per_group: images per group (normal and each artefact) scored
        also by MCMC and AIS.
      mcmc: options of :func:`jaxmed.likelihood.mcmc_log_px` (with
        ``num_samples``).
      ais: options of :func:`jaxmed.likelihood.ais_log_px` (with
        ``num_samples``, the number of chains).
      pca_components: components of the PCA baseline.
      num_bootstrap: bootstrap resamples of each AUROC interval.
      seed: root of every PRNG key.
    """

    data: str = "brain-mri"
    preset: str = "reference64"
    likelihood: str = "gaussian_learned_pixel"
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    beta: float = 1.0
    noise_scale_lr_factor: float = 30.0
    min_noise_std: float = 1e-3
    augment: bool = True
    max_shift: int = 2
    intensity_range: tuple[float, float] = (0.9, 1.1)
    eval_every: int = 250
    devices: int | None = 1
    num_phantoms: tuple[int, int, int] = (512, 64, 64)
    artefacts: tuple[str, ...] = ("noise", "ghosting", "motion", "blur", "bias_field", "spike")
    severity: float = 0.5
    copies: int = 1
    fpr: float = 0.05
    num_samples: int = 100
    chunk_size: int | None = 25
    score_batch_size: int = 32
    subset_per_group: int = 2
    mcmc: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        "num_samples": 32, "num_chains": 2, "num_warmup": 32, "algo": "HMC", "num_steps": 4,
        "num_fit_samples": 128})
    ais: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        "num_samples": 4, "num_steps": 32, "num_leapfrog_steps": 4, "start": "proposal",
        "num_pilot_chains": 2})
    pca_components: int = 20
    num_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        from jaxmed.data.artefacts import ARTEFACTS
        from jaxmed.models import LIKELIHOODS, PRESETS

        object.__setattr__(self, "artefacts", tuple(self.artefacts))
        object.__setattr__(self, "intensity_range", tuple(float(v) for v in self.intensity_range))
        object.__setattr__(self, "num_phantoms", tuple(int(v) for v in self.num_phantoms))
        object.__setattr__(self, "mcmc", dict(self.mcmc))
        object.__setattr__(self, "ais", dict(self.ais))
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data must be one of {DATA_SOURCES}, got {self.data!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {sorted(PRESETS)}")
        shape = PRESETS[self.preset].image_shape
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1:
            raise ValueError(f"the demo needs a square single-channel 2D preset; {self.preset!r} takes {shape}")
        if self.likelihood not in LIKELIHOODS or self.likelihood == "bernoulli":
            raise ValueError(f"likelihood must be a Gaussian of {sorted(LIKELIHOODS)}, got {self.likelihood!r}")
        unknown = [a for a in self.artefacts if a not in ARTEFACTS]
        if unknown or not self.artefacts:
            raise ValueError(f"unknown artefacts {unknown}; known: {sorted(ARTEFACTS)}")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity must be in [0, 1], got {self.severity}")
        if min(self.steps, self.batch_size, self.copies, self.num_samples, self.score_batch_size,
               self.pca_components, self.num_bootstrap, *self.num_phantoms) < 1:
            raise ValueError("steps, batch_size, copies, num_samples, score_batch_size, pca_components, "
                             "num_bootstrap and num_phantoms must be >= 1")
        if self.subset_per_group < 0 or self.eval_every < 0 or self.max_shift < 0 or self.warmup_steps < 0:
            raise ValueError("subset_per_group, eval_every, max_shift and warmup_steps must be >= 0")
        if not self.noise_scale_lr_factor > 0 or not self.min_noise_std > 0:
            raise ValueError(f"noise_scale_lr_factor and min_noise_std must be > 0, got "
                             f"{self.noise_scale_lr_factor}, {self.min_noise_std}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        lo, hi = self.intensity_range
        if not 0 < lo <= hi:
            raise ValueError(f"intensity_range must be (low, high) with 0 < low <= high, got {self.intensity_range}")
        if not 0.0 <= self.fpr < 1.0:
            raise ValueError(f"fpr must be in [0, 1), got {self.fpr}")

    @property
    def image_size(self) -> int:
        """Side of the square slices, pixels."""
        from jaxmed.models import PRESETS

        return PRESETS[self.preset].image_shape[0]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# A run of about a minute on 2 CPU cores: a small network on 32x32 slices,
# few steps and samples, no MCMC/AIS subset (their compilation alone takes
# longer). For tests and a first look, not for the numbers.
QUICK: dict[str, Any] = {
    "preset": "small32", "steps": 150, "warmup_steps": 20, "learning_rate": 3e-3, "eval_every": 0,
    "num_phantoms": (256, 32, 32), "num_samples": 16, "chunk_size": None, "subset_per_group": 0,
    "num_bootstrap": 200,
}


def demo_config(*, quick: bool = False, **overrides: Any) -> DemoConfig:
    """The default study, or the :data:`QUICK` one, with fields replaced."""
    fields = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
    return DemoConfig(**fields)


def model_config(config: DemoConfig):
    """The VAE's config: the preset's architecture with the demo's likelihood and noise floor."""
    from jaxmed.models import PRESETS

    return dataclasses.replace(PRESETS[config.preset], likelihood=config.likelihood,
                               min_scale=config.min_noise_std)


# ----------------------------------------------------------------------------
# Data


class DemoData(NamedTuple):
    """Normal slices, float32 ``[N, H, W, 1]`` in [0, 1], and their provenance.

    Attributes:
      train: training slices.
      val: validation slices (early look at the loss; threshold calibration).
      test: held-out normal slices; the test set's corrupted copies come
        from these.
      description: JSON record of the source and split.
      preprocessing: :class:`jaxmed.scoring.Preprocessing` that turns a volume
        of the same kind into such slices, or None when there is none
        (phantoms are drawn as slices).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: dict[str, Any]
    preprocessing: Any


def load_demo_data(config: DemoConfig) -> DemoData:
    """Loads the normal slices of ``config.data`` at the preset's size.

    Raises:
      ValueError: the brain template is not installed (``pip install
        nilearn``) or the phantoms' sizes are invalid.
    """
    size = config.image_size
    if config.data == "phantoms":
        return _phantom_data(config, size)
    return _brain_data(size)


def _phantom_data(config: DemoConfig, size: int) -> DemoData:
    from jaxmed.data.phantoms import MRIPhantomConfig, make_dataset

    n_train, n_val, n_test = config.num_phantoms
    phantom = MRIPhantomConfig(shape=(size, size), modalities=("t2",), lesion_probability=0.0)
    key = jax.random.fold_in(jax.random.key(config.seed), _PHANTOMS)
    images = make_dataset(key, n_train + n_val + n_test, config=phantom)["image"].astype(np.float32)
    description = {"source": "phantoms", "contrast": "t2", "lesion_probability": 0.0,
                   "num_train": n_train, "num_val": n_val, "num_test": n_test}
    return DemoData(images[:n_train], images[n_train:n_train + n_val], images[n_train + n_val:],
                    description, None)


def _brain_data(size: int) -> DemoData:
    from jaxmed.scoring import Preprocessing, load_brain_slices

    prep = Preprocessing(image_size=(size, size), method="brain_mri")
    splits = load_brain_slices(prep)
    train, val, test = (split["image"] for split in (splits.train, splits.val, splits.test))
    description = {"source": "brain-mri", "num_train": len(train), "num_val": len(val), "num_test": len(test),
                   **splits.description}
    # Stored with the checkpoint, so that `jaxmed score` slices a volume alike.
    return DemoData(train, val, test, description, prep)


# ----------------------------------------------------------------------------
# Training


class TrainedVAE(NamedTuple):
    """A trained VAE and how it trained.

    Attributes:
      model: the :class:`jaxmed.models.VAE`.
      params: its variables (on the default device).
      records: the fit loop's metric records.
      run_dir: the checkpoint folder (``config.json``, ``preprocess.json``,
        ``checkpoints/``, ``metrics.jsonl``), loadable by
        :func:`jaxmed.scoring.load_scorer`.
      seconds: wall-clock time of :func:`train_vae` (initialisation,
        compilation and the fit loop).
    """

    model: Any
    params: Any
    records: list[dict[str, Any]]
    run_dir: Path
    seconds: float


def train_vae(config: DemoConfig, data: DemoData, run_dir: str | os.PathLike, *, progress: bool = True) -> TrainedVAE:
    """Trains the VAE on ``data.train`` with the engine's fit loop; writes a checkpoint folder.

    Adam with a linear warm-up and cosine decay; batches by
    :func:`jaxmed.data.batching.batch_indices`, augmented on the fly
    (:func:`jaxmed.data.brain_mri.augment`, keys from ``fold_in(key, step)``).

    Args:
      config: the study.
      data: the slices.
      run_dir: an empty or missing folder for the checkpoint.
      progress: show the fit loop's progress bar.

    Returns:
      A :class:`TrainedVAE`.
    """
    from jaxmed.data.batching import batch_indices
    from jaxmed.data.brain_mri import augment as brain_augment
    from jaxmed.losses import vae_loss_fn
    from jaxmed.models import VAE
    from jaxmed.models.vae import LEARNED_SCALE_LIKELIHOODS
    from jaxmed.scoring import save_preprocessing
    from jaxmed.train import (
        Checkpointer, OptimConfig, TrainConfig, TrainState, fit, jit_eval_step, jit_train_step,
        make_eval_step, make_evaluator, make_mesh, make_optimizer, make_train_step, plot_loss_curve,
        read_metrics, save_config,
    )
    from jaxmed.train.registry import MODELS, model_config_to_dict
    from jaxmed.train.run import eval_batches, init_params

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = model_config(config)
    model = VAE(cfg)
    root = jax.random.key(config.seed)
    mesh = make_mesh(config.devices)
    batch_size = config.batch_size
    if len(data.train) < batch_size:
        raise ValueError(f"the batch size ({batch_size}) is larger than the training set ({len(data.train)} slices)")
    train = TrainConfig(steps=config.steps, batch_size=batch_size, seed=config.seed, log_every=10,
                        eval_every=config.eval_every, checkpoint_every=0, keep=1, devices=config.devices)
    # A learned noise scale at noise_scale_lr_factor times the rate; its floor is
    # the model's (VAEConfig.min_scale, see model_config).
    learned = cfg.likelihood in LEARNED_SCALE_LIKELIHOODS
    optim = OptimConfig(learning_rate=config.learning_rate, schedule="warmup-cosine",
                        warmup_steps=config.warmup_steps, final_lr_fraction=0.05,
                        lr_factors=(("params/log_scale", config.noise_scale_lr_factor),) if learned else ())
    params = init_params(MODELS["vae"], model, jax.random.fold_in(root, _INIT), data.train[:1])
    tx = make_optimizer(optim, total_steps=config.steps)
    state = TrainState.create(params=params, tx=tx, key=jax.random.fold_in(root, _STEPS))
    save_config(run_dir, {
        "model": {"name": "vae", "preset": config.preset, "config": model_config_to_dict(cfg)},
        "run": {"optim": dataclasses.asdict(optim), "train": dataclasses.asdict(train), "beta": config.beta},
        "data": data.description,
        "demo": config.to_dict(),
    })
    if data.preprocessing is not None:
        save_preprocessing(run_dir, data.preprocessing)

    images = data.train
    augment_key = jax.random.fold_in(root, _AUGMENT)

    @jax.jit
    def augment(step, batch):
        keys = jax.random.split(jax.random.fold_in(augment_key, step), batch.shape[0])
        one = functools.partial(brain_augment, max_shift=config.max_shift, intensity_range=config.intensity_range)
        return jax.vmap(one)(keys, batch)

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rows = batch_indices(step, num_examples=len(images), batch_size=batch_size, seed=config.seed)
        batch = images[rows]
        if config.augment:
            batch = np.asarray(augment(step, batch))
        return {"image": batch}

    loss_fn = vae_loss_fn(model, beta=config.beta)
    evaluator = make_evaluator(
        jit_eval_step(make_eval_step(loss_fn), mesh),
        eval_batches({"image": data.val}, batch_size=batch_size, num_devices=mesh.size),
        mesh=mesh, key=jax.random.fold_in(root, _EVAL),
    )
    metrics_path = run_dir / "metrics.jsonl"
    with Checkpointer(run_dir, keep=1) as checkpointer:
        result = fit(state, train_step=jit_train_step(make_train_step(loss_fn), mesh), batch_fn=batch_fn,
                     config=train, mesh=mesh, eval_fn=evaluator, checkpointer=checkpointer,
                     metrics_path=metrics_path, progress=progress)
    seconds = time.perf_counter() - t0
    plot_loss_curve(read_metrics(metrics_path), run_dir / "loss_curve.png")
    params = jax.device_put(result.state.params, jax.local_devices()[0])
    return TrainedVAE(model, params, result.records, run_dir, seconds)


def learned_noise_scale(trained: TrainedVAE) -> dict[str, float] | None:
    """The decoder's learned noise standard deviation (min, median, max over pixels), or None."""
    from jaxmed.models import VAE
    from jaxmed.models.vae import LEARNED_SCALE_LIKELIHOODS

    if trained.model.config.likelihood not in LEARNED_SCALE_LIKELIHOODS:
        return None
    std = np.exp(np.asarray(trained.model.apply(trained.params, method=VAE.noise_log_scale), np.float64))
    return {"min": float(std.min()), "median": float(np.median(std)), "max": float(std.max())}


# ----------------------------------------------------------------------------
# Test set


class TestSet(NamedTuple):
    """Normal slices and corrupted copies of them.

    Attributes:
      images: float32 ``[N, H, W, 1]``: the normal slices first, then for each
        artefact in order, ``copies`` corrupted copies of each normal slice.
      labels: int ``[N]``, 1 for corrupted.
      groups: str ``[N]``: ``"normal"`` or the artefact name.
      source: int ``[N]``: the index of the normal slice each image came from.
    """

    __test__ = False  # not a pytest class

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    source: np.ndarray

    def take(self, rows: np.ndarray) -> TestSet:
        return TestSet(self.images[rows], self.labels[rows], self.groups[rows], self.source[rows])


def make_test_set(
    key: jax.Array,
    normal: np.ndarray,
    *,
    artefacts: Sequence[str],
    severity: float,
    copies: int = 1,
) -> TestSet:
    """Held-out normal slices plus copies with each artefact at one severity.

    The corrupted image is clipped to [0, 1], the last step of the training
    slices' preprocessing. Copy ``c`` of slice ``i`` with artefact number
    ``a`` uses key ``fold_in(fold_in(fold_in(key, a), c), i)``.

    Args:
      key: PRNG key.
      normal: float32 ``[n, H, W, 1]`` normal slices.
      artefacts: names in :data:`jaxmed.data.artefacts.ARTEFACTS`.
      severity: in [0, 1] (see :mod:`jaxmed.data.artefacts`).
      copies: corrupted copies of each slice per artefact.

    Returns:
      A :class:`TestSet` of ``n * (1 + copies * len(artefacts))`` images.
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    normal = np.asarray(normal, np.float32)
    n = len(normal)
    # All copies of all slices in one call per artefact, copy-major.
    copy, row = np.divmod(np.arange(copies * n), n)
    inputs = normal[row, ..., 0]
    images = [normal]
    for a, name in enumerate(artefacts):
        base = jax.random.fold_in(key, a)
        keys = jax.vmap(lambda c, i, base=base: jax.random.fold_in(jax.random.fold_in(base, c), i))(copy, row)
        images.append(np.asarray(_corrupt(keys, inputs, jnp.float32(severity), name=name))[..., None])
    groups = np.asarray(["normal"] * n + [name for name in artefacts for _ in row])
    source = np.concatenate([np.arange(n), *[row] * len(artefacts)])
    return TestSet(np.concatenate(images), (groups != "normal").astype(np.int32), groups, source)


@functools.partial(jax.jit, static_argnames="name")
def _corrupt(keys: jax.Array, images: jax.Array, severity: jax.Array, *, name: str) -> jax.Array:
    """``ARTEFACTS[name]`` of each image, clipped to [0, 1]; severity traced: one compilation per artefact."""
    from jaxmed.data.artefacts import ARTEFACTS

    return jax.vmap(lambda k, x: jnp.clip(ARTEFACTS[name](k, x, severity=severity), 0.0, 1.0))(keys, images)


def subset_indices(test: TestSet, *, per_group: int) -> np.ndarray:
    """Rows of the first ``per_group`` images of each group, for the slow estimators.

    The same normal slices are taken in every group (corrupted copies of the
    chosen normal slices), so the groups differ only by the artefact.
    """
    rows = []
    for group in dict.fromkeys(test.groups):
        g = np.flatnonzero(test.groups == group)
        g = g[np.unique(test.source[g], return_index=True)[1]]  # the first copy of each slice
        rows.extend(g[test.source[g] < per_group])
    return np.asarray(sorted(rows), dtype=np.int64)


# ----------------------------------------------------------------------------
# Scores


def score_specs(config: DemoConfig) -> dict[str, Any]:
    """The :class:`jaxmed.scoring.ScoreSpec` of each estimator of the study.

    ``"importance"`` and ``"match"`` score the whole test set; ``"mcmc"`` and
    ``"ais"`` the subset (their options from ``config``).
    """
    from jaxmed.scoring import ScoreSpec

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
    from jaxmed.scoring import score_images

    out = {}
    for name, spec in specs.items():
        key = jax.random.fold_in(jax.random.key(spec.seed), _SCORE)
        out[name] = score_images(key, trained.model, trained.params, images, spec=spec, indices=indices,
                                 progress=progress, desc=f"scoring ({name})")
    return out


def calibrate_on_validation(trained: TrainedVAE, val_scores: np.ndarray, *, spec: Any, fpr: float):
    """Threshold at ``fpr`` from the validation slices' scores, saved as the checkpoint's ``calibration.json``.

    Args:
      trained: the VAE (its ``run_dir`` receives the file).
      val_scores: ``[n]`` normality scores of the validation slices by ``spec``.
      spec: the :class:`jaxmed.scoring.ScoreSpec` they were computed with.
      fpr: target false-positive rate per slice.

    Returns:
      The :class:`jaxmed.anomaly.Calibration`.
    """
    from jaxmed.anomaly import calibrate
    from jaxmed.scoring import save_calibration

    calibration = calibrate(val_scores, fpr=fpr)
    save_calibration(trained.run_dir, calibration, spec=spec, force=True,
                     info={"source": "the demo's validation slices", "num_slices": int(len(val_scores))})
    return calibration


def pca_scores(train: np.ndarray, images: np.ndarray, *, num_components: int) -> np.ndarray:
    """PCA reconstruction error of each image (anomaly score: higher = more abnormal).

    Args:
      train: ``[n, ...]`` training images the subspace is fitted to.
      images: ``[N, ...]`` images to score.
      num_components: subspace dimension.

    Returns:
      float64 ``[N]`` mean squared reconstruction errors.
    """
    from jaxmed.models.pca import fit_pca

    pca = fit_pca(jnp.asarray(train), num_components=num_components)
    return np.asarray(_pca_errors(pca, jnp.asarray(images)), np.float64)


@jax.jit
def _pca_errors(pca: Any, images: jax.Array) -> jax.Array:
    from jaxmed.models.pca import pca_reconstruction_error

    return jax.vmap(pca_reconstruction_error, in_axes=(None, 0))(pca, images)


def reconstruct(trained: TrainedVAE, images: np.ndarray) -> np.ndarray:
    """Decoder mean at the encoder mean, ``[N, H, W, 1]``."""
    from jaxmed.models import VAE

    def f(params, x):
        mean, _ = trained.model.apply(params, x, method=VAE.encode)
        return trained.model.apply(params, mean, method=VAE.decode)["mean"]

    return np.asarray(jax.jit(f)(trained.params, jnp.asarray(images)))


# ----------------------------------------------------------------------------
# AUROC


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
    from jaxmed.metrics import auroc, bootstrap

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


# ----------------------------------------------------------------------------
# Outputs


def write_results(
    out_dir: str | os.PathLike,
    test: TestSet,
    columns: Mapping[str, np.ndarray],
) -> tuple[Path, Path]:
    """The per-image results table as ``results.csv`` and ``results.json``.

    Args:
      out_dir: folder.
      test: the test set.
      columns: ``{name: [N] values}``, NaN where a value does not apply.
    """
    import csv

    out_dir = Path(out_dir)
    rows = []
    for i in range(len(test.labels)):
        row = {"index": i, "group": str(test.groups[i]), "label": int(test.labels[i]),
               "normal_slice": int(test.source[i])}
        for name, values in columns.items():
            v = values[i]
            if isinstance(v, (np.floating, float)):
                v = None if not math.isfinite(float(v)) else float(v)
            elif isinstance(v, (np.bool_, bool)):
                v = bool(v)
            elif isinstance(v, (np.integer, int)):
                v = int(v)
            else:
                v = None if v is None else str(v)
            row[name] = v
        rows.append(row)
    fields = list(rows[0]) if rows else []
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


def write_figures(
    out_dir: str | os.PathLike,
    *,
    test: TestSet,
    normality: Mapping[str, np.ndarray],
    pca: np.ndarray,
    threshold: float,
    reconstructions: np.ndarray,
    rows: np.ndarray,
    records: Sequence[Mapping[str, Any]],
) -> list[Path]:
    """ROC curves, score histograms, an image grid and the loss curve as PNGs.

    Args:
      out_dir: folder.
      test: the test set.
      normality: ``{"importance": [N], ...}`` normality scores.
      pca: ``[N]`` PCA errors.
      threshold: the calibrated threshold of the importance score.
      reconstructions: ``[len(rows), H, W, 1]`` reconstructions of ``test.images[rows]``.
      rows: test rows shown in the grid (one per group).
      records: the fit loop's metric records.
    """
    from jaxmed.plots import plot_image_grid, plot_roc_curves, plot_score_histograms
    from jaxmed.train import plot_loss_curve

    out_dir = Path(out_dir)
    normal = test.groups == "normal"
    artefacts = [g for g in dict.fromkeys(test.groups) if g != "normal"]

    # Corrupted slices reach -1e6 nats; the window keeps the normal range readable.
    scores = normality["importance"]
    spread = float(np.ptp(scores[normal])) or 1.0
    low = min(float(scores[normal].min()), threshold) - 3.0 * spread
    high = float(scores.max()) + 0.05 * spread

    def curves(anomaly):
        return {a: (anomaly[normal | (test.groups == a)], test.labels[normal | (test.groups == a)])
                for a in artefacts}

    paths = [
        plot_roc_curves(out_dir / "roc_vae.png", curves(-normality["importance"]),
                        title="VAE, log p(x) by importance sampling"),
        plot_roc_curves(out_dir / "roc_pca.png", curves(pca), title="PCA reconstruction error (baseline)"),
        plot_score_histograms(out_dir / "score_histograms.png",
                              {g: normality["importance"][test.groups == g] for g in dict.fromkeys(test.groups)},
                              threshold=threshold, xlabel="log p(x) [nats], importance sampling", xlim=(low, high),
                              title=f"Test slices (dashed: threshold; scores below {low:.4g} drawn at the left edge)"),
    ]
    images = test.images[rows]
    grid = [[images[i], reconstructions[i], np.abs(images[i] - reconstructions[i])] for i in range(len(rows))]
    # Error maps share the scale of the first (normal) row's largest error.
    paths.append(plot_image_grid(out_dir / "image_grid.png", grid, row_labels=[str(g) for g in test.groups[rows]],
                                 column_labels=["input", "reconstruction", "|error|"],
                                 cmaps=["gray", "gray", "magma"],
                                 ranges=[(0.0, 1.0), (0.0, 1.0), (0.0, max(0.05, float(np.max(grid[0][2]))))]))
    paths.append(plot_loss_curve(records, out_dir / "loss_curve.png"))
    return paths


# ----------------------------------------------------------------------------
# The whole study


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


def run_demo(
    config: DemoConfig,
    out_dir: str | os.PathLike,
    *,
    data: DemoData | None = None,
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
      data: the slices; loaded by :func:`load_demo_data` when None.
      force: write into a non-empty folder (its ``checkpoint/`` is replaced).
      progress: progress bars.
      log: called with a line of text at each stage (e.g. ``print``).

    Returns:
      The summary (also ``summary.json``): the AUROC tables, the printed
      table text under ``"table"``, timings and settings.

    Raises:
      FileExistsError: ``out_dir`` is not empty and ``force`` is False.
    """
    from jaxmed.anomaly import anomaly_scores, classify, two_sided_anomaly_scores

    say = log or (lambda line: None)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, force=force)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    root = jax.random.key(config.seed)

    t = time.perf_counter()
    data = load_demo_data(config) if data is None else data
    timings["data_s"] = time.perf_counter() - t
    say(f"data: {config.data}, {len(data.train)} training / {len(data.val)} validation / "
        f"{len(data.test)} test slices of {config.image_size}x{config.image_size}")

    say(f"training the VAE ({config.preset}, {config.likelihood} likelihood, {config.steps} steps of "
        f"{config.batch_size})")
    trained = train_vae(config, data, out_dir / CHECKPOINT_DIR, progress=progress)
    timings["train_s"] = trained.seconds

    specs = score_specs(config)
    t = time.perf_counter()
    test = make_test_set(jax.random.fold_in(root, _TEST_SET), data.test, artefacts=config.artefacts,
                         severity=config.severity, copies=config.copies)
    say(f"scoring {len(data.val)} validation and {len(test.labels)} test slices by importance sampling "
        f"({config.num_samples} samples) and the match score")
    # Validation and test slices in one stream (one compiled batch shape);
    # offset indices give the validation slices keys of their own.
    n_val = len(data.val)
    both = score_test_set(trained, np.concatenate([data.val, test.images]),
                          specs={k: specs[k] for k in ("importance", "match")},
                          indices=np.concatenate([10**6 + np.arange(n_val), np.arange(len(test.labels))]),
                          progress=progress)
    val_scores = both["importance"][:n_val]
    normality = {name: values[n_val:] for name, values in both.items()}
    calibration = calibrate_on_validation(trained, val_scores, spec=specs["importance"], fpr=config.fpr)
    timings["score_s"] = time.perf_counter() - t

    t = time.perf_counter()
    subset = subset_indices(test, per_group=config.subset_per_group)
    sub_scores: dict[str, np.ndarray] = {}
    if len(subset):
        say(f"scoring a subset of {len(subset)} slices by MCMC and AIS")
        sub_scores = score_test_set(trained, test.images[subset], specs={k: specs[k] for k in ("mcmc", "ais")},
                                    progress=progress)
    timings["score_subset_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pca = pca_scores(data.train, test.images, num_components=min(config.pca_components, len(data.train)))
    timings["pca_s"] = time.perf_counter() - t

    anomaly = {
        f"PCA({config.pca_components})": pca,
        "VAE IS": anomaly_scores(normality["importance"]),
        "VAE IS two-sided": two_sided_anomaly_scores(normality["importance"], val_scores),
        "VAE match": anomaly_scores(normality["match"]),
    }
    key = jax.random.fold_in(root, _BOOTSTRAP)
    table = auroc_table(key, anomaly, test, num_resamples=config.num_bootstrap)
    sub_table: dict[str, Any] = {}
    agreement: dict[str, Any] = {}
    if len(subset):
        sub_test = test.take(subset)
        sub_anomaly = {"VAE IS": anomaly_scores(normality["importance"][subset]),
                       "VAE MCMC": anomaly_scores(sub_scores["mcmc"]),
                       "VAE AIS": anomaly_scores(sub_scores["ais"])}
        sub_table = auroc_table(jax.random.fold_in(key, 1), sub_anomaly, sub_test,
                                num_resamples=config.num_bootstrap)
        for name in ("mcmc", "ais"):
            diff = sub_scores[name] - normality["importance"][subset]
            agreement[f"{name}_minus_importance_nats"] = {
                "mean": float(np.mean(diff)), "std": float(np.std(diff)),
                "correlation": float(np.corrcoef(sub_scores[name], normality["importance"][subset])[0, 1])
                if len(subset) > 1 else None}

    decisions = classify(normality["importance"], calibration)
    mcmc_column = np.full(len(test.labels), np.nan)
    ais_column = np.full(len(test.labels), np.nan)
    if len(subset):
        mcmc_column[subset], ais_column[subset] = sub_scores["mcmc"], sub_scores["ais"]
    columns = {
        "log_px_importance": normality["importance"], "match": normality["match"],
        "two_sided": anomaly["VAE IS two-sided"], "pca_error": pca,
        "decision": np.where(decisions.normal, "normal", "abnormal"), "p_value": decisions.p_value,
        "num_reference": np.full(len(test.labels), decisions.num_reference),
        "log_px_mcmc": mcmc_column, "log_px_ais": ais_column,
    }
    write_results(out_dir, test, columns)

    t = time.perf_counter()
    # The grid shows one normal slice, the one with the median score (representative, not the
    # best or worst reconstructed), and its corrupted copies.
    normal_rows = np.flatnonzero(test.groups == "normal")
    example = test.source[normal_rows[np.argsort(normality["importance"][normal_rows])[len(normal_rows) // 2]]]
    shown = np.asarray([np.flatnonzero((test.groups == g) & (test.source == example))[0]
                        for g in dict.fromkeys(test.groups)])
    figures = write_figures(out_dir, test=test, normality=normality, pca=pca, threshold=calibration.threshold,
                            reconstructions=reconstruct(trained, test.images[shown]), rows=shown,
                            records=trained.records)
    timings["figures_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    n_normal = int(np.sum(test.groups == "normal"))
    header = (f"AUROC, {n_normal} normal vs {n_normal * config.copies} corrupted test slices per artefact "
              f"(severity {config.severity}); higher is better, 0.5 is chance")
    text = header + "\n" + format_auroc_table(table)
    if sub_table:
        n_sub = int(np.sum(test.groups[subset] == "normal"))
        text += (f"\n\nEstimators on a subset ({n_sub} slices per group; MCMC: {config.mcmc}; AIS: {config.ais})\n"
                 + format_auroc_table(sub_table))
    is_rate = {str(g): float(np.mean(~decisions.normal[test.groups == g])) for g in dict.fromkeys(test.groups)}
    text += (f"\n\nCalled abnormal at the threshold calibrated on {n_val} validation slices (target "
             f"false-positive rate {config.fpr}): " + ", ".join(f"{g} {r:.0%}" for g, r in is_rate.items()))
    last = trained.records[-1] if trained.records else {}
    summary = {
        "config": config.to_dict(),
        "data": data.description,
        "model": {"preset": config.preset, "likelihood": config.likelihood,
                  "learned_noise_std": learned_noise_scale(trained),
                  "final_loss": last.get("loss"), "final_val_loss": last.get("val_loss")},
        "calibration": {"threshold": calibration.threshold, "target_fpr": config.fpr,
                        "num_reference": int(len(val_scores)), "method": "importance",
                        "flagged_fraction": is_rate},
        "auroc": table,
        "auroc_subset": sub_table,
        "estimator_agreement": agreement,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "load_average": _load_average(),
        "table": text,
        "files": sorted(p.name for p in [*figures, out_dir / "results.csv", out_dir / "results.json",
                                         out_dir / "summary.json"]) + [CHECKPOINT_DIR + "/"],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
