"""The scan-quality study's settings: :class:`DemoConfig`, its quick variant, and the training run it makes.

``jaxmed demo`` runs :func:`jaxmed.tasks.scan_quality.run_demo` with
:func:`demo_config`; the VAE trains through the engine's own path
(:func:`jaxmed.train.train_model`) with the run :func:`run_config` builds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxmed.data.augmentation import AugmentConfig
from jaxmed.data.synth import SynthSource
from jaxmed.tasks.scan_quality.scores import DEFAULT_SCORE

__all__ = ["DATA_SOURCES", "QUICK", "DemoConfig", "background_run_config", "demo_config", "run_config"]

DATA_SOURCES = ("brain-mri", "phantoms")


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
      augment: random shifts, left-right flips and intensity scaling of the
        training slices, drawn per step by the training engine
        (:class:`jaxmed.data.AugmentConfig`; ``AugmentConfig()`` for none).
      synth: brain-mri only: synthetic subjects added to the template's ~70
        training slices (:class:`jaxmed.data.synth.SynthSource`: deformed,
        re-contrasted, biased, blurred and noisy versions of the template at
        its training slice levels), so that what the model calls normal
        holds across subjects and scanners, not only for the template.
        ``SynthSource()`` for none.
      background_mutation: the background model for the likelihood-ratio
        score is the same VAE trained on inputs with this fraction of pixels
        replaced by uniform noise (Ren et al. 2019); 0 = no background model
        and no likelihood-ratio score.
      background_steps: its optimiser steps (None: ``steps``).
      calibration_subjects: brain-mri only: held-out synthetic subjects (at
        the validation slice levels) that calibrate the shipped thresholds
        with the template's validation slices.
      new_subjects: brain-mri only: held-out synthetic subjects (at the test
        slice levels), clean and corrupted: the "new subject" table.
      decision_score: the score that decides (a key of
        :data:`jaxmed.tasks.scan_quality.SCORES`), stored with the
        calibration as ``jaxmed score``'s default.
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
    augment: AugmentConfig = AugmentConfig(max_shift=2, flip_probability=0.5, intensity_range=(0.9, 1.1))
    synth: SynthSource = SynthSource(num_subjects=48)
    background_mutation: float = 0.2
    background_steps: int | None = None
    calibration_subjects: int = 6
    new_subjects: int = 4
    decision_score: str = DEFAULT_SCORE
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
        if isinstance(self.augment, Mapping):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        if isinstance(self.synth, Mapping):
            object.__setattr__(self, "synth", SynthSource(**self.synth))
        from jaxmed.tasks.scan_quality.scores import SCORES

        if self.decision_score not in SCORES:
            raise ValueError(f"decision_score must be one of {SCORES}, got {self.decision_score!r}")
        if self.decision_score == "likelihood_ratio" and not self.background_mutation:
            raise ValueError("the likelihood-ratio decision score needs a background model (background_mutation > 0)")
        if not 0.0 <= self.background_mutation < 1.0:
            raise ValueError(f"background_mutation must be in [0, 1), got {self.background_mutation}")
        if self.background_steps is not None and self.background_steps < 1:
            raise ValueError(f"background_steps must be >= 1 or None, got {self.background_steps}")
        if self.calibration_subjects < 0 or self.new_subjects < 0:
            raise ValueError("calibration_subjects and new_subjects must be >= 0")
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
            raise ValueError(f"likelihood must be a Gaussian or Student-t of {sorted(LIKELIHOODS)}, "
                             f"got {self.likelihood!r}")
        unknown = [a for a in self.artefacts if a not in ARTEFACTS]
        if unknown or not self.artefacts:
            raise ValueError(f"unknown artefacts {unknown}; known: {sorted(ARTEFACTS)}")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity must be in [0, 1], got {self.severity}")
        if min(self.steps, self.batch_size, self.copies, self.num_samples, self.score_batch_size,
               self.pca_components, self.num_bootstrap, *self.num_phantoms) < 1:
            raise ValueError("steps, batch_size, copies, num_samples, score_batch_size, pca_components, "
                             "num_bootstrap and num_phantoms must be >= 1")
        if self.subset_per_group < 0 or self.eval_every < 0 or self.warmup_steps < 0:
            raise ValueError("subset_per_group, eval_every and warmup_steps must be >= 0")
        if not self.noise_scale_lr_factor > 0 or not self.min_noise_std > 0:
            raise ValueError(f"noise_scale_lr_factor and min_noise_std must be > 0, got "
                             f"{self.noise_scale_lr_factor}, {self.min_noise_std}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
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
    "num_bootstrap": 200, "synth": SynthSource(num_subjects=4), "background_steps": 50,
    "calibration_subjects": 2, "new_subjects": 2,
}


def demo_config(*, quick: bool = False, **overrides: Any) -> DemoConfig:
    """The default study, or the :data:`QUICK` one, with fields replaced."""
    fields = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
    return DemoConfig(**fields)


def run_config(config: DemoConfig):
    """The engine's :class:`jaxmed.train.RunConfig` that trains the study's VAE.

    Adam with a linear warm-up and cosine decay to 5% of the peak; the
    decoder's learned noise scale (``params/log_scale``) at
    ``noise_scale_lr_factor`` times the rate; the study's likelihood and noise
    floor as model options; augmentation drawn per step; the synthetic
    subjects (brain-mri only); one checkpoint, at the end.
    """
    from jaxmed.losses import VAELossConfig
    from jaxmed.models.vae import LEARNED_SCALE_LIKELIHOODS
    from jaxmed.train import OptimConfig, RunConfig, TrainConfig

    learned = config.likelihood in LEARNED_SCALE_LIKELIHOODS
    n_train, n_val, _ = config.num_phantoms
    return RunConfig(
        data=config.data, model="vae", preset=config.preset,
        model_options=(("likelihood", config.likelihood), ("min_scale", config.min_noise_std)),
        loss=VAELossConfig(beta=config.beta), num_train=n_train, num_val=n_val, augment=config.augment,
        synth=config.synth if config.data == "brain-mri" else SynthSource(),
        optim=OptimConfig(learning_rate=config.learning_rate, schedule="warmup-cosine",
                          warmup_steps=config.warmup_steps, final_lr_fraction=0.05,
                          lr_factors=(("params/log_scale", config.noise_scale_lr_factor),) if learned else ()),
        train=TrainConfig(steps=config.steps, batch_size=config.batch_size, seed=config.seed, log_every=10,
                          eval_every=config.eval_every, checkpoint_every=0, keep=1, devices=config.devices),
    )


def background_run_config(config: DemoConfig):
    """The run that trains the background model: the study's, on mutated inputs (Ren et al. 2019)."""
    import dataclasses as dc

    run = run_config(config)
    steps = config.background_steps or config.steps
    warmup = min(config.warmup_steps, steps // 10)
    return dc.replace(run, augment=dc.replace(run.augment, mutation_rate=config.background_mutation),
                      optim=dc.replace(run.optim, warmup_steps=warmup),
                      train=dc.replace(run.train, steps=steps, eval_every=0))
