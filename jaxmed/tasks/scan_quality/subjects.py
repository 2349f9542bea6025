"""Subjects the study's VAE never saw: held-out synthetic subjects for calibration and the "new subject" table.

Both sets are drawn by :func:`jaxmed.data.synth.synth_pool` from streams of
the study's seed that no training run draws from (the training pool uses the
data source's own stream), so no subject is both trained on and tested:

* calibration subjects at the template's *validation* slice levels: with the
  template's validation slices they set the shipped thresholds, which then
  account for how much a normal scan varies between subjects, not only
  between neighbouring slices of one template;
* new subjects at the template's *test* slice levels: each is corrupted slice
  by slice like the template's test slices, and its corrupted slices are
  ranked against its own clean ones (as one checks one scan).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxmed.tasks.scan_quality.config import DemoConfig

__all__ = ["HeldOutSubjects", "held_out_subjects"]

# Streams of the study's seed (jax.random.fold_in), apart from the others of the study.
_CALIBRATION_SUBJECTS, _NEW_SUBJECTS = 7, 8


class HeldOutSubjects(NamedTuple):
    """Clean slices of held-out synthetic subjects, float32 in [0, 1].

    Attributes:
      calibration: ``[C * n_val, H, W, 1]``: ``C`` subjects at the template's
        validation slice levels, subject after subject.
      new: ``[S, n_test, H, W, 1]``: ``S`` subjects at its test slice levels.
    """

    calibration: np.ndarray
    new: np.ndarray


def held_out_subjects(config: DemoConfig) -> HeldOutSubjects | None:
    """The study's held-out synthetic subjects, or None for phantoms (no template to vary).

    They vary as the training pool's subjects do (``config.synth.config``).
    """
    if config.data != "brain-mri":
        return None
    from jaxmed.data import load_brain_mri
    from jaxmed.data.synth import load_synth_template, synth_pool

    size = config.image_size
    splits = load_brain_mri(size=size)
    template = load_synth_template(size=size)
    root = jax.random.key(config.seed)
    synth = config.synth.config
    calibration = synth_pool(jax.random.fold_in(root, _CALIBRATION_SUBJECTS), template, splits.val["slice_index"],
                             num_subjects=config.calibration_subjects, config=synth)
    new = synth_pool(jax.random.fold_in(root, _NEW_SUBJECTS), template, splits.test["slice_index"],
                     num_subjects=config.new_subjects, config=synth)
    return HeldOutSubjects(calibration, new.reshape(config.new_subjects, len(splits.test["slice_index"]), size,
                                                    size, 1))
