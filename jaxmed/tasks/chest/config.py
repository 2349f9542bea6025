"""Settings of the chest task: what ``jaxmed chest train`` trains (:class:`ChestConfig`) and its presets.

Everything the models see lives on one *working grid*: a square radiograph of
``grid`` pixels over the phantoms' 400 mm field of view (0.39 mm at 1024).
Phantoms are drawn on it; a DICOM radiograph is padded to a square and
resampled onto it (:mod:`jaxmed.tasks.chest.predict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jaxmed.data.phantoms import FINDING_TYPES, ChestPhantomConfig
from jaxmed.losses import ClassifierLossConfig
from jaxmed.models import CLASSIFIER_PRESETS, ClassifierConfig
from jaxmed.tasks.chest.regions import RegionNetConfig
from jaxmed.tasks.chest.segments import SegmentConfig

__all__ = ["PRESETS", "ChestConfig", "chest_config", "config_from_json", "config_to_json"]

_FOV_MM = 400.0


@dataclass(frozen=True, kw_only=True)
class ChestConfig:
    """Everything that defines a chest model and how it is trained on phantoms.

    Attributes:
      grid: side of the working grid, pixels (phantoms at the 400 mm field of
        view: 0.39 mm at 1024).
      regions: the region U-Net (its ``input_size`` is the reduced size).
      region_fovs_mm: fields of view of the region net's training phantoms,
        drawn at twice its input size: smaller fields make the chest fill the
        frame, as on a collimated clinical film.
      num_region_train: region training phantoms per field of view.
      region_steps, region_batch_size, region_lr: the region net's training.
      segments: the segment layout.
      classifier: the segment classifier (``num_outputs = 1 + len(FINDING_TYPES)``).
      loss: its training options.
      phantom_findings: ``finding_probability``, ``max_findings`` and
        ``type_probabilities`` of the classifier's training phantoms.
      num_train: classifier training phantoms (working grid).
      classifier_steps, classifier_batch_size (radiographs per step), classifier_lr:
        the segment classifier's training.
      attention_hidden, attention_steps, attention_lr: the attention pooling
        head, trained on the frozen classifier's segment embeddings.
      num_eval: held-out phantoms for Dice, segment checks and image AUROC.
      threshold: a radiograph (and a segment) is called positive at this probability.
      decision: the pooling whose probability decides: ``"attention"``,
        ``"noisy_or"`` or ``"max"``.
      seed: root of every PRNG key.
    """

    grid: int = 1024
    regions: RegionNetConfig = field(default_factory=RegionNetConfig)
    region_fovs_mm: tuple[float, ...] = (400.0, 330.0, 270.0)
    num_region_train: int = 96
    region_steps: int = 400
    region_batch_size: int = 8
    region_lr: float = 2e-3
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    classifier: ClassifierConfig = field(default_factory=lambda: CLASSIFIER_PRESETS["segment272"])
    loss: ClassifierLossConfig = field(default_factory=lambda: ClassifierLossConfig(pos_weight=2.0, map_weight=3.0))
    phantom_findings: tuple[tuple[str, Any], ...] = (
        ("finding_probability", 0.6), ("max_findings", 2), ("type_probabilities", (0.7, 0.1, 0.1, 0.1)))
    num_train: int = 240
    classifier_steps: int = 600
    classifier_batch_size: int = 2
    classifier_lr: float = 2e-3
    attention_hidden: int = 64
    attention_steps: int = 300
    attention_lr: float = 3e-3
    num_eval: int = 32
    threshold: float = 0.5
    decision: str = "attention"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "region_fovs_mm", tuple(float(v) for v in self.region_fovs_mm))
        object.__setattr__(self, "phantom_findings", tuple((str(k), v) for k, v in dict(self.phantom_findings).items()))
        if self.grid < 64 or self.grid % self.regions.input_size:
            raise ValueError(f"ChestConfig.grid must be >= 64 and a multiple of the region net's input size "
                             f"{self.regions.input_size}, got {self.grid}")
        if self.segments.window > self.grid:
            raise ValueError(f"ChestConfig: segment windows ({self.segments.window} px) larger than the grid {self.grid}")
        expected = (self.segments.segment_size, self.segments.segment_size, 1)
        if self.classifier.image_shape != expected:
            raise ValueError(f"ChestConfig: the classifier takes {self.classifier.image_shape}, the segments are "
                             f"{expected}")
        if self.classifier.num_outputs != 1 + len(FINDING_TYPES):
            raise ValueError(f"ChestConfig: the classifier needs 1 + {len(FINDING_TYPES)} outputs (presence, types), "
                             f"got {self.classifier.num_outputs}")
        if self.loss.map_weight > 0 and not self.classifier.map_head:
            raise ValueError("ChestConfig: loss.map_weight > 0 needs a classifier with map_head=True")
        if self.decision not in ("attention", "noisy_or", "max"):
            raise ValueError(f"ChestConfig.decision must be attention, noisy_or or max, got {self.decision!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"ChestConfig.threshold must be in (0, 1), got {self.threshold}")
        for name in ("num_region_train", "region_steps", "region_batch_size", "num_train", "classifier_steps",
                     "classifier_batch_size", "attention_steps", "num_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"ChestConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.region_batch_size > self.num_region_train * len(self.region_fovs_mm):
            raise ValueError("ChestConfig: region_batch_size larger than the region training set")
        if self.classifier_batch_size > self.num_train:
            raise ValueError("ChestConfig: classifier_batch_size larger than the training set")
        if min(self.region_fovs_mm, default=0.0) < 120.0:
            raise ValueError(f"ChestConfig.region_fovs_mm must be >= 120 mm, got {self.region_fovs_mm}")
        self.phantom_config()  # validates the findings' settings

    @property
    def spacing_mm(self) -> float:
        """Pixel spacing of the working grid, mm."""
        return _FOV_MM / self.grid

    def phantom_config(self, **fields: Any) -> ChestPhantomConfig:
        """The classifier's training phantoms on the working grid, with ``fields`` replaced."""
        return ChestPhantomConfig(shape=(self.grid, self.grid), **{**dict(self.phantom_findings), **fields})


def config_to_json(config: ChestConfig) -> dict[str, Any]:
    """A :class:`ChestConfig` as JSON values."""
    out = dataclasses.asdict(config)
    out["phantom_findings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config.phantom_findings}
    return out


def config_from_json(data: dict[str, Any]) -> ChestConfig:
    """Inverse of :func:`config_to_json`.

    Raises:
      ValueError: unknown fields or bad values.
    """
    from jaxmed.train import config_from_dict

    data = dict(data)
    findings = data.pop("phantom_findings", None)
    if findings is not None:
        data["phantom_findings"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in findings.items())
    return config_from_dict(ChestConfig, data)


# "full": the default model (jaxmed chest train; experiments/chest_segments.py);
# "demo": a 512-pixel grid (0.78 mm), the region net at 128, segments of 180 px windows at 0.8
#   (144 px), trained shorter (jaxmed demo chest, about 5 minutes on 2 CPU cores; the classifier
#   600 steps: at 200 its held-out AUROC was at chance, at 1000 about 0.64);
# "quick": a 256-pixel grid and small networks (jaxmed demo chest --quick, tests).
PRESETS: dict[str, ChestConfig] = {
    "full": ChestConfig(),
    "demo": ChestConfig(
        grid=512, regions=RegionNetConfig(input_size=128, features=8, depth=4), num_region_train=32,
        region_steps=200, region_batch_size=8, segments=SegmentConfig(segment_size=144, scale=0.8, margin=4, jitter=16),
        classifier=ClassifierConfig(image_shape=(144, 144, 1), channels=(16, 32, 64, 128), num_outputs=5,
                                    input_mean=0.5, input_std=0.25, map_head=True),
        num_train=96, classifier_steps=600, classifier_batch_size=2, attention_steps=200, num_eval=24),
    "quick": ChestConfig(
        grid=256, regions=RegionNetConfig(input_size=64, features=8, depth=3), region_fovs_mm=(360.0,),
        num_region_train=16, region_steps=40, region_batch_size=8, region_lr=3e-3,
        segments=SegmentConfig(segment_size=68, scale=0.8, margin=2, jitter=8),
        classifier=ClassifierConfig(image_shape=(68, 68, 1), channels=(8, 16), num_outputs=5, input_mean=0.5,
                                    input_std=0.25, map_head=True),
        num_train=16, classifier_steps=20, classifier_batch_size=2, attention_steps=30, num_eval=6),
}


def chest_config(preset: str = "full", **fields: Any) -> ChestConfig:
    """The preset ``preset`` with fields replaced (None values leave a field as it is).

    Raises:
      ValueError: an unknown preset or field, or a bad value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown chest preset {preset!r}; presets: {sorted(PRESETS)}")
    given = {k: v for k, v in fields.items() if v is not None}
    known = {f.name for f in dataclasses.fields(ChestConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"ChestConfig has no field(s) {unknown}")
    return dataclasses.replace(PRESETS[preset], **given)
