"""Settings of the vision-language task: the model, the data and the training, with presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["VLM_PRESETS", "VLMTaskConfig", "task_config", "task_config_from_json", "task_config_to_json"]


@dataclass(frozen=True, kw_only=True)
class VLMTaskConfig:
    """Everything ``jaxmed vlm train`` needs (the vocabulary size comes from the trained tokenizer).

    Attributes:
      image_size, patch_size, encoder, finetune_encoder, patch_features,
        width, depth, num_heads, prompt_len, answer_len, report_len:
        the model (:class:`jaxmed.tasks.vlm.model.VLMConfig`).
      num_train, num_val: training and held-out phantoms.
      vocab_size: the tokenizer's target vocabulary.
      autoencoder_steps, autoencoder_batch_size: pre-training the patch
        autoencoder (``encoder="autoencoder"``).
      epochs: passes over the training instructions (the same for curriculum and shuffled).
      report_epochs: passes over the report instructions (long answers: more passes).
      batch_size, report_batch_size: rows per step of short answers and of reports.
      learning_rate: peak (warm-up + cosine Adam).
      mask_weight, landmark_weight: weights of the Dice + BCE mask loss and of the landmark loss.
      dense_weight: weight of the dense auxiliary head's loss (the anatomy and
        finding maps under every image token); 0: no dense head.
      schedule: ``"curriculum"`` or ``"shuffled"``; replay: the share of earlier stages replayed.
      seed: seed of everything.
    """

    image_size: int = 128
    patch_size: int = 16
    encoder: str = "autoencoder"
    finetune_encoder: bool = False
    patch_features: int = 32
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    prompt_len: int = 32
    answer_len: int = 8
    report_len: int = 128
    num_train: int = 200
    num_val: int = 40
    vocab_size: int = 512
    autoencoder_steps: int = 300
    autoencoder_batch_size: int = 256
    epochs: float = 2.0
    report_epochs: float = 8.0
    batch_size: int = 32
    report_batch_size: int = 8
    learning_rate: float = 1e-3
    mask_weight: float = 1.0
    landmark_weight: float = 10.0
    dense_weight: float = 1.0
    schedule: str = "shuffled"
    replay: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in ("curriculum", "shuffled"):
            raise ValueError(f"schedule must be 'curriculum' or 'shuffled', got {self.schedule!r}")
        if min(self.num_train, self.num_val, self.batch_size, self.report_batch_size) < 1 or min(
                self.epochs, self.report_epochs) <= 0:
            raise ValueError(f"num_train, num_val, batch sizes must be >= 1 and epochs > 0: {self}")
        if self.dense_weight < 0:
            raise ValueError(f"dense_weight must be >= 0, got {self.dense_weight}")
        if self.replay < 0:
            raise ValueError(f"replay must be >= 0, got {self.replay}")


VLM_PRESETS: dict[str, dict[str, Any]] = {
    # jaxmed demo vlm: 6 minutes on 2 idle cores without AVX-512 (benchmarks/RESULTS.md), about half that with it.
    "demo": dict(num_train=250, epochs=1.5),
    # A smoke test: seconds.
    "quick": dict(image_size=64, patch_size=16, width=64, depth=2, num_train=24, num_val=6, autoencoder_steps=40,
                  epochs=1.0, report_epochs=1.0, batch_size=16, report_batch_size=4),
    # The study: longer and on more phantoms.
    "full": dict(num_train=400, num_val=100, epochs=4.0, report_epochs=12.0, autoencoder_steps=600),
}


def task_config(preset: str = "demo", **overrides: Any) -> VLMTaskConfig:
    """A preset with the given fields replaced (None values are ignored)."""
    if preset not in VLM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(VLM_PRESETS)}")
    fields = {**VLM_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return VLMTaskConfig(**fields)


def task_config_to_json(config: VLMTaskConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def task_config_from_json(data: dict[str, Any]) -> VLMTaskConfig:
    known = {f.name for f in dataclasses.fields(VLMTaskConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown vlm settings: {', '.join(unknown)}")
    return VLMTaskConfig(**data)
