"""Scan quality on subjects the model never saw: training variation, likelihoods and scores compared.

Each variant trains the study's VAE (``jaxmed demo``'s settings, through
``jaxmed.train.train_model``) with one choice of likelihood and of synthetic
subjects (``jaxmed.data.synth``), then scores:

* ``template``: the template's held-out test slices and their corrupted
  copies (the demo's in-distribution table);
* ``new``: synthetic subjects from a stream no training run draws from, at
  the test slice levels, clean and corrupted; AUROC per subject (its
  corrupted slices against its own clean ones, as a user checks one scan)
  and pooled;
* ``calibration``: other held-out synthetic subjects at the validation
  levels, and the template's validation slices: the thresholds (target
  false-positive rate 0.05) whose false-positive rate on the new subjects'
  clean slices is reported, and after calibrating on half of each new
  subject's clean slices, on the other half.

Scores: log p(x) by importance sampling (100 samples), the
complexity-corrected score (Serra et al.) and, for variants with a
background model, the likelihood ratio (Ren et al.).

Command::

    python experiments/scan_quality_new_subject.py OUT_DIR [VARIANT ...]

Runtime: 3-5 minutes per variant on 2 idle CPU cores. Results: one JSON per
variant in OUT_DIR and ``summary.json``; the figures are in
``benchmarks/RESULTS.md`` ("Scan quality on new subjects").
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxmed.data import load_brain_mri
from jaxmed.data.synth import SynthConfig, SynthSource, load_synth_template, synth_pool
from jaxmed.metrics import auroc
from jaxmed.tasks.scan_quality import (
    ScoreSpec,
    anomaly_scores,
    calibrate,
    demo_config,
    make_test_set,
    normality_scores,
    run_config,
)
from jaxmed.train import train_model

ARTEFACTS = ("noise", "ghosting", "motion", "blur", "bias_field", "spike")
SEVERITY = 0.5
NUM_NEW, NUM_CALIBRATION = 6, 8  # held-out synthetic subjects
SYNTH_SUBJECTS = 48  # training subjects of the variants with synth
# Streams of the experiment's seed, apart from every training run's.
_NEW, _CALIBRATION, _TEST, _SCORE = 9001, 9002, 9003, 9004

VARIANTS = {
    # name: (model options, synth source, augmentation family note)
    "baseline": ({"likelihood": "gaussian_learned_pixel", "min_scale": 1e-3}, SynthSource()),
    "synth": ({"likelihood": "gaussian_learned_pixel", "min_scale": 1e-3},
              SynthSource(num_subjects=SYNTH_SUBJECTS)),
    "synth-t": ({"likelihood": "student_t_learned_pixel", "min_scale": 1e-3},
                SynthSource(num_subjects=SYNTH_SUBJECTS)),
    "synth-floor0.01": ({"likelihood": "gaussian_learned_pixel", "min_scale": 1e-2},
                        SynthSource(num_subjects=SYNTH_SUBJECTS)),
    "synth-global": ({"likelihood": "gaussian_learned_global", "min_scale": 1e-3},
                     SynthSource(num_subjects=SYNTH_SUBJECTS)),
    "synth-unit": ({"likelihood": "gaussian_unit"}, SynthSource(num_subjects=SYNTH_SUBJECTS)),
    **{f"synth-no-{family}": ({"likelihood": "gaussian_learned_pixel", "min_scale": 1e-3},
                              SynthSource(num_subjects=SYNTH_SUBJECTS, config=SynthConfig().without(family)))
       for family in ("deformation", "affine", "contrast", "bias", "resolution", "noise")},
    # Longer training (the demo's other settings).
    "synth-2000": ({"likelihood": "gaussian_learned_pixel", "min_scale": 1e-3},
                   SynthSource(num_subjects=SYNTH_SUBJECTS), {"steps": 2000, "warmup_steps": 200}),
}


def held_out_sets(seed: int) -> dict:
    """Template test/validation slices and held-out synthetic subjects (clean)."""
    splits = load_brain_mri(size=64)
    template = load_synth_template(size=64)
    root = jax.random.key(seed)
    test_positions, val_positions = splits.test["slice_index"], splits.val["slice_index"]
    new = synth_pool(jax.random.fold_in(root, _NEW), template, test_positions, num_subjects=NUM_NEW)
    calibration = synth_pool(jax.random.fold_in(root, _CALIBRATION), template, val_positions,
                             num_subjects=NUM_CALIBRATION)
    return {"template_test": splits.test["image"], "template_val": splits.val["image"],
            "new": new.reshape(NUM_NEW, len(test_positions), 64, 64, 1), "calibration": calibration}


def corrupted(key, clean: np.ndarray):
    """The test set of clean slices: normal first, then each artefact (one copy)."""
    return make_test_set(key, clean, artefacts=ARTEFACTS, severity=SEVERITY)


def _auroc(normal: np.ndarray, abnormal: np.ndarray) -> float:
    scores = np.concatenate([anomaly_scores(normal), anomaly_scores(abnormal)])
    labels = np.concatenate([np.zeros(len(normal)), np.ones(len(abnormal))])
    return float(auroc(scores, labels))


def evaluate(variant: str, out_dir: Path, sets: dict, *, seed: int = 0, background: bool = False) -> dict:
    options, synth, *overrides = VARIANTS[variant]
    config = demo_config(seed=seed, **(overrides[0] if overrides else {}))
    run = dataclasses.replace(run_config(config), model_options=tuple(options.items()), synth=synth)
    if "min_scale" not in options:
        run = dataclasses.replace(run, optim=dataclasses.replace(run.optim, lr_factors=()))
    t0 = time.perf_counter()
    result, _ = train_model(run, out_dir / variant, progress=False)
    train_s = time.perf_counter() - t0
    from jaxmed.models import VAE

    model, params = VAE(run.model_config), jax.device_put(result.state.params, jax.local_devices()[0])
    bg = None
    if background:
        bg_run = dataclasses.replace(run, augment=dataclasses.replace(run.augment, mutation_rate=0.2))
        bg_result, _ = train_model(bg_run, out_dir / variant / "background", progress=False)
        bg = (VAE(bg_run.model_config), jax.device_put(bg_result.state.params, jax.local_devices()[0]))
    spec = ScoreSpec(method="importance", num_samples=100, chunk_size=25, batch_size=32)
    key = jax.random.fold_in(jax.random.key(seed), _SCORE)

    def score(images, offset):
        return normality_scores(key, model, params, images, spec=spec, background=bg,
                                indices=offset + np.arange(len(images)))

    root = jax.random.key(seed)
    template_test = corrupted(jax.random.fold_in(root, _TEST), sets["template_test"])
    s_template = score(template_test.images, 0)
    s_val = score(sets["template_val"], 10**6)
    s_cal = score(sets["calibration"], 2 * 10**6)
    kinds = list(s_template)
    report = {"variant": variant, "options": options, "synth": dataclasses.asdict(synth), "train_s": train_s,
              "final": result.records[-1] if result.records else {}}
    normal = template_test.groups == "normal"
    report["template_auroc"] = {k: {a: _auroc(s_template[k][normal], s_template[k][template_test.groups == a])
                                    for a in ARTEFACTS} for k in kinds}
    saved = {f"template_{k}": v for k, v in s_template.items()}
    saved.update({f"val_{k}": v for k, v in s_val.items()})
    saved.update({f"calibration_{k}": v for k, v in s_cal.items()})
    saved["template_groups"] = template_test.groups
    new_auroc = {k: {a: [] for a in ARTEFACTS} for k in kinds}
    new_clean = {k: [] for k in kinds}
    local = {k: [] for k in kinds}
    for s, clean in enumerate(sets["new"]):
        test = corrupted(jax.random.fold_in(jax.random.fold_in(root, _TEST), s + 1), clean)
        scores = score(test.images, (3 + s) * 10**6)
        normal = test.groups == "normal"
        saved.update({f"new{s}_{k}": v for k, v in scores.items()})
        saved[f"new{s}_groups"] = test.groups
        for k in kinds:
            new_clean[k].append(scores[k][normal])
            for a in ARTEFACTS:
                new_auroc[k][a].append(_auroc(scores[k][normal], scores[k][test.groups == a]))
            # Local calibration on alternate blocks of 3 slices, flagged fraction on the others.
            block = (np.arange(normal.sum()) // 3) % 2 == 0
            threshold = calibrate(scores[k][normal][block], fpr=0.05).threshold
            local[k].append(float(np.mean(scores[k][normal][~block] < threshold)))
    report["new_auroc_per_subject_mean"] = {k: {a: float(np.mean(v)) for a, v in d.items()}
                                            for k, d in new_auroc.items()}
    report["new_auroc_per_subject_min"] = {k: {a: float(np.min(v)) for a, v in d.items()}
                                           for k, d in new_auroc.items()}
    report["fpr_new"] = {}
    for k in kinds:
        clean_all = np.concatenate(new_clean[k])
        report["fpr_new"][k] = {
            "template_val_threshold": float(np.mean(clean_all < calibrate(s_val[k], fpr=0.05).threshold)),
            "synth_calibration_threshold": float(np.mean(clean_all < calibrate(s_cal[k], fpr=0.05).threshold)),
            "both": float(np.mean(clean_all < calibrate(np.concatenate([s_val[k], s_cal[k]]), fpr=0.05).threshold)),
            "local_half": float(np.mean(local[k])),
        }
    (out_dir / f"{variant}.json").write_text(json.dumps(report, indent=2) + "\n")
    np.savez(out_dir / f"{variant}_scores.npz", **saved)
    return report


def _line(report: dict, kind: str) -> str:
    t = report["template_auroc"][kind]
    n = report["new_auroc_per_subject_mean"][kind]
    f = report["fpr_new"][kind]
    return (f"{report['variant']:22s} {kind:16s} " + " ".join(f"{t[a]:.2f}" for a in ARTEFACTS) + " | "
            + " ".join(f"{n[a]:.2f}" for a in ARTEFACTS)
            + f" | fpr val {f['template_val_threshold']:.2f} synth {f['synth_calibration_threshold']:.2f} "
              f"both {f['both']:.2f} local {f['local_half']:.2f}")


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "scan-quality-new-subject")
    names = sys.argv[2:] or list(VARIANTS)
    background = "--background" in names
    names = [n for n in names if n != "--background"]
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = held_out_sets(0)
    print("template AUROC " + " ".join(ARTEFACTS) + " | new subjects (per-subject mean) | FPR on new subjects")
    reports = []
    for name in names:
        report = evaluate(name, out_dir, sets, background=background)
        reports.append(report)
        for kind in report["template_auroc"]:
            print(_line(report, kind), flush=True)
    (out_dir / "summary.json").write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
