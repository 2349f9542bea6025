"""The lesions task's settings: the networks, the training phases, and the study.

`TrainConfig` is what ``jaxmed lesions train`` runs (the phases of
`jaxmed.tasks.lesions.training.train_lesion_model`), stored as
``lesions.json`` in the model folder; `StudyConfig` adds the study's data
sizes, seeds and schedules (``jaxmed demo lesions``,
``experiments/lesions_multisite.py``). `demo_config` gives the study's
default and ``--quick`` settings. All are frozen and validated, and
round-trip through JSON (`config_to_json`, `config_from_json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jaxmed.data.phantoms import SITES
from jaxmed.losses import LocaliserLossConfig
from jaxmed.models import LocaliserConfig, MapClassifierConfig
from jaxmed.tasks.lesions.augment import ExamAugment
from jaxmed.tasks.lesions.preprocess import PreprocessConfig
from jaxmed.tasks.lesions.synthesis import InpaintConfig
from jaxmed.train import config_from_dict

__all__ = ["ORDERS", "PhaseConfig", "StudyConfig", "TrainConfig", "UNCERTAINTIES", "config_from_json",
           "config_to_json", "demo_config", "train_config_from_json", "with_width"]

ORDERS = ("similarity", "random")
UNCERTAINTIES = ("bald", "entropy", "random")


@dataclass(frozen=True, kw_only=True)
class PhaseConfig:
    """One training run of a phase: Adam with warm-up and cosine decay.

    Attributes:
      steps: optimiser steps (0: the phase is skipped).
      batch_size: exams per step.
      learning_rate: peak learning rate.
    """

    steps: int
    batch_size: int = 16
    learning_rate: float = 2e-3

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError(f"PhaseConfig: need steps >= 0, batch_size >= 1, learning_rate > 0; got {self}")


def _site(name: str) -> str:
    if name not in SITES:
        raise ValueError(f"unknown site {name!r}; known: {sorted(SITES)}")
    return name


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The lesion model and its training phases (one model folder).

    Phase 1 trains the localiser: ``reference`` on its own exams, then (if
    ``second`` names a site) continued on the reference's and the second
    site's exams, the second's entering in ``order`` (`ORDERS`); then, if
    ``deploy_k > 0``, fine-tuned on the ``deploy_k`` exams of the
    ``deploy`` site's annotated pool ranked first by ``uncertainty``
    (`UNCERTAINTIES`). Phase 2 trains the classifier on the images and the
    localiser's map, its encoder initialised from the localiser's: first
    with that encoder (and the localiser) frozen, then end to end.

    Attributes:
      localiser: the localisation network (``image_shape`` fixes the grid:
        ``(H, W, 3)`` for 2D exams, ``(D, H, W, 3)`` for 3D). Its fusion is
        ``"mean"`` by default, chosen on validation exams only: localisers of
        the demo (150 steps on site A) scored on 128 held-out site-A exams
        0.809 (mean), 0.783 (max), 0.788 (learned), and on the demo's 32
        site-A validation exams 0.855, 0.858, 0.814; the learned fusion was
        never the best, and the mean has no parameters to fit to one site.
      classifier: the classification network; its encoder (features,
        depth, norm_groups) must be the localiser's U-Net's.
      loss: the localiser's loss (plain or masked-region training).
      preprocess: exams -> inputs; its shape must be the localiser's.
      augment: random acquisition changes of each training exam, per step.
        Off by default, because it needs long runs: a site-A localiser at
        base width 16 with it scored 0.770 on site D after 1500 steps,
        against 0.671-0.679 without it (600 and 1200 steps); its earlier,
        milder form (no blur, shift or fading) underfit at the default
        budget (300 steps, width 8: A validation 0.68 against 0.85).
        benchmarks/RESULTS.md, "Augmentation and the study at width 16".
      reference, second, deploy: site names (``second``/``deploy`` may be "").
      order: how the second site's exams enter (`ORDERS`).
      uncertainty: how the deployment pool is ranked (`UNCERTAINTIES`).
      deploy_k: deployment exams labelled and trained on.
      mc_samples: Monte Carlo dropout samples for the uncertainty.
      reference_phase, continue_phase, deploy_phase: the localiser's runs.
      frozen_phase, joint_phase: the classifier's runs.
      joint_localiser_weight: weight of the localiser loss in the end-to-end run.
      pacing: the second site's exams all enter by this fraction of the
        continued run (linear pacing from a batch's worth).
      replay: fraction of each continued or deployment batch drawn from the
        earlier sites' exams.
      mirror_tta: predictions average each exam's and its left-right mirror's (test-time
        augmentation; `jaxmed.tasks.lesions.predict_lesions`), for models trained with the mirror
        (``augment``). Off by default.
      seed: seeds the networks, the batches and the dropout.
    """

    localiser: LocaliserConfig = field(default_factory=lambda: LocaliserConfig(image_shape=(40, 40, 3), fusion="mean"))
    classifier: MapClassifierConfig = field(default_factory=MapClassifierConfig)
    loss: LocaliserLossConfig = field(default_factory=LocaliserLossConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: ExamAugment = field(default_factory=lambda: ExamAugment(enabled=False))
    reference: str = "A"
    second: str = "B"
    deploy: str = "C"
    order: str = "similarity"
    uncertainty: str = "bald"
    deploy_k: int = 24
    mc_samples: int = 8
    reference_phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=300))
    continue_phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=450))
    deploy_phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=60, learning_rate=5e-4))
    frozen_phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=100))
    joint_phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=60, learning_rate=3e-4))
    joint_localiser_weight: float = 1.0
    pacing: float = 0.6
    replay: float = 0.5
    mirror_tta: bool = False
    seed: int = 0

    def __post_init__(self):
        _site(self.reference)
        for name in (self.second, self.deploy):
            if name:
                _site(name)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {self.uncertainty!r}")
        if self.deploy_k < 0 or self.mc_samples < 2:
            raise ValueError(f"need deploy_k >= 0 and mc_samples >= 2, got {self.deploy_k}, {self.mc_samples}")
        if self.deploy_k and not self.deploy:
            raise ValueError("deploy_k > 0 needs a deploy site")
        if tuple(self.preprocess.shape) != tuple(self.localiser.image_shape[:-1]):
            raise ValueError(f"preprocess.shape {self.preprocess.shape} must be the localiser's spatial shape "
                             f"{self.localiser.image_shape[:-1]}")
        if self.localiser.image_shape[-1] != 3:
            raise ValueError(f"the localiser takes the 3 modalities (T2, ADC, DWI), got {self.localiser.image_shape}")
        loc, cls = self.localiser, self.classifier
        if (loc.features, loc.depth, loc.norm_groups) != (cls.features, cls.depth, cls.norm_groups):
            raise ValueError("the classifier's encoder (features, depth, norm_groups) must be the localiser's U-Net's "
                             f"to take its weights: {(cls.features, cls.depth, cls.norm_groups)} vs "
                             f"{(loc.features, loc.depth, loc.norm_groups)}")
        if not 0 < self.pacing <= 1 or not 0 <= self.replay < 1:
            raise ValueError(f"need 0 < pacing <= 1 and 0 <= replay < 1, got {self.pacing}, {self.replay}")
        if self.joint_localiser_weight < 0:
            raise ValueError("joint_localiser_weight must be >= 0")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """The multi-site study: data, the model, and what is compared.

    Attributes:
      train: the lesion model and its phases (the full method).
      num_exams: exams per site: ``{"A": n, "B": n, "C": pool, "D": test}``
        as ``((site, n), ...)``; each site's patients are its own.
      num_val: reference-site validation exams (the fusion comparison, the
        synthesis map's scale).
      slices: exams' slices (1: 2D exams; must match the grid).
      seeds: seeds of the ordering and deployment studies (spread).
      deploy_schedule: numbers of labelled deployment exams ``k``.
      fusions: fusions compared (each trained on the reference site).
      synthesis: the inpainting network of the synthesis-based anomaly map.
      synthesis_steps: its training steps.
      bootstrap: case resamples of the full method's site-D intervals.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    num_exams: tuple[tuple[str, int], ...] = (("A", 240), ("B", 240), ("C", 96), ("D", 200))
    num_val: int = 64
    slices: int | None = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    deploy_schedule: tuple[int, ...] = (0, 8, 24)
    fusions: tuple[str, ...] = ("mean", "max", "learned")
    synthesis: InpaintConfig = field(default_factory=InpaintConfig)
    synthesis_steps: int = 300
    bootstrap: int = 500

    def __post_init__(self):
        object.__setattr__(self, "num_exams", tuple((str(s), int(n)) for s, n in self.num_exams))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "deploy_schedule", tuple(int(k) for k in self.deploy_schedule))
        object.__setattr__(self, "fusions", tuple(self.fusions))
        counts = dict(self.num_exams)
        needed = {self.train.reference, self.train.second, self.train.deploy, "D"} - {""}
        if missing := sorted(needed - set(counts)):
            raise ValueError(f"num_exams has no count for site(s) {missing}")
        for s, n in self.num_exams:
            _site(s)
            if n < 2:
                raise ValueError(f"site {s}: need >= 2 exams, got {n}")
        if not self.seeds or self.num_val < 2 or self.synthesis_steps < 1:
            raise ValueError("need seeds, num_val >= 2 and synthesis_steps >= 1")
        if self.deploy_schedule and max(self.deploy_schedule) > counts.get(self.train.deploy, 0):
            raise ValueError(f"deploy_schedule {self.deploy_schedule} exceeds the deployment pool "
                             f"({counts.get(self.train.deploy, 0)} exams)")
        ndim = len(self.train.preprocess.shape)
        if (self.slices == 1) != (ndim == 2):
            raise ValueError(f"slices={self.slices} needs a {'2D' if self.slices == 1 else '3D'} grid, "
                             f"got {self.train.preprocess.shape}")

    def count(self, site: str) -> int:
        return dict(self.num_exams)[site]


def with_width(config: TrainConfig, features: int) -> TrainConfig:
    """``config`` with the localiser's U-Net and the classifier's encoder (one encoder) at base width ``features``."""
    return dataclasses.replace(config, localiser=dataclasses.replace(config.localiser, features=features),
                               classifier=dataclasses.replace(config.classifier, features=features))


def config_to_json(config: Any) -> dict[str, Any]:
    """A config as JSON values (nested dataclasses as dicts)."""
    return dataclasses.asdict(config)


def config_from_json(data: dict[str, Any]) -> StudyConfig:
    """A `StudyConfig` from `config_to_json`'s form."""
    return config_from_dict(StudyConfig, data)


def train_config_from_json(data: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from `config_to_json`'s form."""
    return config_from_dict(TrainConfig, data)


def demo_config(*, quick: bool = False, seed: int | None = None, **overrides: Any) -> StudyConfig:
    """``jaxmed demo lesions``'s settings: the demo (one seed, 40x40 exams, short phases) or ``quick``.

    The experiment (``experiments/lesions_multisite.py``) runs `StudyConfig()`
    (more exams, longer phases, all fusions) with its own seeds and continued-run steps.

    Args:
      quick: 32x32 exams, a small network, few exams and steps, one seed (a smoke test). Its fusion is
        the learned one: with 60 steps of this small network the mean fusion's maps stayed below the
        lesions' (site-A validation score 0.309, AP 0 on site D) against 0.617 for the learned fusion.
      seed: the first seed (others follow it).
      **overrides: `StudyConfig` fields replaced.
    """
    if quick:
        shape = (32, 32)
        train = TrainConfig(
            localiser=LocaliserConfig(image_shape=(*shape, 3), features=4, depth=2, norm_groups=4,
                                      feature_channels=4, fusion_hidden=8, fusion="learned"),
            classifier=MapClassifierConfig(features=4, depth=2, norm_groups=4, hidden=16),
            preprocess=PreprocessConfig(shape=shape, spacing_mm=(1.8, 1.8), num_steps=20),
            reference_phase=PhaseConfig(steps=60, batch_size=8, learning_rate=3e-3),
            continue_phase=PhaseConfig(steps=30, batch_size=8, learning_rate=2e-3),
            deploy_phase=PhaseConfig(steps=15, batch_size=8, learning_rate=5e-4),
            frozen_phase=PhaseConfig(steps=20, batch_size=8),
            joint_phase=PhaseConfig(steps=10, batch_size=8, learning_rate=3e-4),
            deploy_k=8, mc_samples=4,
        )
        config = StudyConfig(train=train, num_exams=(("A", 48), ("B", 48), ("C", 24), ("D", 48)), num_val=16,
                             seeds=(0,), deploy_schedule=(0, 8), fusions=("learned",), synthesis_steps=40,
                             synthesis=InpaintConfig(patch=8, features=4, depth=2), bootstrap=100)
    else:
        train = TrainConfig(
            preprocess=PreprocessConfig(shape=(40, 40), spacing_mm=(1.5, 1.5), num_steps=40),
            reference_phase=PhaseConfig(steps=150), continue_phase=PhaseConfig(steps=80),
            deploy_phase=PhaseConfig(steps=30, learning_rate=5e-4), frozen_phase=PhaseConfig(steps=40),
            joint_phase=PhaseConfig(steps=20, learning_rate=3e-4), deploy_k=16, mc_samples=6,
        )
        config = StudyConfig(train=train, num_exams=(("A", 160), ("B", 160), ("C", 64), ("D", 120)), num_val=32,
                             seeds=(0,), deploy_schedule=(0, 16), fusions=("mean", "max", "learned"),
                             synthesis_steps=100,
                             bootstrap=300)
    if seed is not None:
        config = dataclasses.replace(config, seeds=tuple(seed + i for i in range(len(config.seeds))),
                                     train=dataclasses.replace(config.train, seed=seed))
    return dataclasses.replace(config, **overrides) if overrides else config
