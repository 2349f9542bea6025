"""The multi-site lesion study on phantoms, end to end: ``jaxmed demo lesions`` and ``experiments/lesions_multisite.py``.

On 2D (or 3D) mpMRI exams of four sites (`jaxmed.data.phantoms.SITES`: A
and B train, C is the deployment site with an annotated pool, D is never
trained on), per seed:

1. **Ordering.** The localiser is trained on A; then continued on A and B
   with B's exams entering in similarity order (MMD of localiser embeddings
   to A's) and, separately, in random order; a localiser of B alone has as
   many steps as the two A+B runs (A's and the continued one together). Each is scored on D (`jaxmed.tasks.lesions.evaluation`).
2. **Deployment.** From the similarity-ordered model, C's pool is ranked by
   BALD, by predictive entropy (Monte Carlo dropout) and at random, and the
   model fine-tuned on the top ``k`` for each ``k`` of the schedule; each
   scored on D: the learning curves.
3. **Full method.** The similarity-ordered, BALD-deployed (``train.deploy_k``)
   localiser, then phase 2 (classifier from the localiser's encoder, frozen,
   then end to end); its fused map scored on D (with case-bootstrap
   intervals) and its exam classification.

Once: the fusions (mean, max, learned) each trained on A and scored on A's
validation exams and on D; and the synthesis-based anomaly map (an
inpainting network trained on the lesion-free exams of A and B) against
the full method's map on D, by pixel AUROC, case AUROC and ranking score.

`run_study` writes ``summary.json``, ``results.md`` (the tables) and PNGs
(``roc.png``, ``froc.png``, ``deployment_curve.png``, ``overlays.png``,
``synthesis.png``) into the output folder, the runs under ``runs/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmed.io import prepare_out_dir
from jaxmed.metrics import bootstrap_detection
from jaxmed.plots import plot_roc_curves
from jaxmed.tasks.lesions.config import PhaseConfig, StudyConfig, TrainConfig, config_to_json
from jaxmed.tasks.lesions.data import site_exams, subset
from jaxmed.tasks.lesions.evaluation import classification_metrics, detection_summary, evaluate_maps, pixel_auroc
from jaxmed.tasks.lesions.figures import plot_froc, plot_learning_curves, plot_overlays
from jaxmed.tasks.lesions.models import predict_lesions, predict_localiser
from jaxmed.tasks.lesions.synthesis import anomaly_maps, anomaly_probabilities, init_inpainter, inpaint_loss
from jaxmed.tasks.lesions.training import (
    continue_localiser,
    deploy_localiser,
    fingerprint,
    lesion_phase,
    save_model_record,
    train_classifier,
    train_localiser,
    uniform_batches,
)

__all__ = ["ORDER_ROWS", "load_study_data", "run_study", "study_data_key", "study_table"]

ORDER_ROWS = ("A alone", "A+B random order", "A+B similarity order", "B alone", "full method")
_METRICS = ("score", "auroc", "ap", "dice")
_DATA_STREAM = 7


def study_data_key(train: TrainConfig) -> jax.Array:
    """The key the study's exams are drawn from (`load_study_data`): a function of ``train.seed`` only."""
    return jax.random.fold_in(jax.random.key(train.seed), _DATA_STREAM)


def load_study_data(config: StudyConfig, *, progress: bool = True, cache: str | os.PathLike | None = None,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, np.ndarray]]:
    """The study's exams: ``"reference"``, ``"val"`` (reference site, split 1), ``"second"``, ``"deploy"``, ``"test"`` (D).

    Args:
      config: the study.
      progress: progress bars.
      cache: an ``.npz`` file: loaded if it exists and holds the same settings, else written.
      log: progress lines.
    """
    t = config.train
    key = study_data_key(t)
    plan = {"reference": (t.reference, config.count(t.reference), 0), "val": (t.reference, config.num_val, 1),
            "second": (t.second, config.count(t.second), 0) if t.second else None,
            "deploy": (t.deploy, config.count(t.deploy), 0) if t.deploy else None, "test": ("D", config.count("D"), 0)}
    plan = {k: v for k, v in plan.items() if v is not None}
    stamp = json.dumps({"plan": plan, "preprocess": dataclasses.asdict(t.preprocess), "slices": config.slices,
                        "seed": t.seed})
    if cache is not None and Path(cache).is_file():
        stored = np.load(cache, allow_pickle=True)
        if str(stored["stamp"]) == stamp:
            return stored["sets"].item()
    sets = {}
    for name, (site, n, split) in plan.items():
        start = time.perf_counter()
        sets[name] = site_exams(key, site, n, preprocess=t.preprocess, slices=config.slices, split=split,
                                progress=progress)
        log(f"{name}: {n} exams of site {site} in {time.perf_counter() - start:.0f} s "
            f"({int(sets[name]['significant'].sum())} with significant cancer)")
    if cache is not None:
        np.savez(cache, sets=np.array(sets, dtype=object), stamp=stamp)
    return sets


def _localiser_probs(params, config: TrainConfig, images, mirror: bool | None = None):
    mirror = config.mirror_tta if mirror is None else mirror
    return predict_localiser(params, config.localiser, images, mirror=mirror)["prob"]


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    return float(np.nanmean(values)), float(np.nanstd(values))


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def study_table(rows: dict[str, list[dict]], *, metrics=_METRICS, label: str = "training") -> str:
    """A markdown table of ``{row: [per-seed metric dicts]}``: mean ± std over seeds."""
    lines = [f"| {label} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, runs in rows.items():
        cells = [_fmt(*_mean_std([r[m] for r in runs]), len(runs)) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _train_inpainter(config: StudyConfig, normal: dict, run_dir: Path, *, progress: bool, force: bool):
    t = config.train
    shape = t.localiser.image_shape
    params = init_inpainter(jax.random.fold_in(jax.random.key(t.seed), 31), config.synthesis, shape)
    phase = PhaseConfig(steps=config.synthesis_steps, batch_size=t.reference_phase.batch_size, learning_rate=2e-3)
    batches = uniform_batches(normal, batch_size=phase.batch_size, seed=t.seed * 100 + 9, keys=("image",))
    params, _ = lesion_phase("synthesis", inpaint_loss(config.synthesis, shape[:-1], shape[-1]), params,
                          None, batches, phase=phase, key=jax.random.fold_in(jax.random.key(t.seed), 32),
                          run_dir=run_dir, record={"model": {"name": "inpainter",
                                                             **dataclasses.asdict(config.synthesis)},
                                                   "data": {"num_exams": int(len(normal["image"])),
                                                            "fingerprint": fingerprint(normal)}},
                          progress=progress, force=force)
    return params


def run_study(config: StudyConfig, out_dir, *, force: bool = False, progress: bool = True,
              data: dict | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Runs the study (module docstring) into ``out_dir``; returns the summary (also ``summary.json``).

    Args:
      config: the study.
      out_dir: the output folder; must be empty or missing unless ``force``
        (then finished runs of the same settings in it are reused).
      force: write into a non-empty ``out_dir``.
      progress: progress bars.
      data: the exams (`load_study_data`), or None to draw them.
      log: progress lines (e.g. ``print`` to stderr).
    """
    out_dir = prepare_out_dir(out_dir, force=force)
    runs = out_dir / "runs"
    timings = {}
    start = time.perf_counter()
    data = data or load_study_data(config, progress=progress, log=log)
    timings["data_s"] = time.perf_counter() - start
    ref, val, second, pool, test = (data[k] for k in ("reference", "val", "second", "deploy", "test"))
    base = config.train
    per_seed: dict[str, list[dict]] = {name: [] for name in ORDER_ROWS}
    # With mirror_tta, each row's site-D figures without it too (what the mirror adds).
    unmirrored: dict[str, list[dict]] = {name: [] for name in ORDER_ROWS}

    def record(name: str, probs_fn: Callable[[bool], np.ndarray], mirror: bool):
        per_seed[name].append(detection_summary(probs_fn(mirror), test["lesion_mask"]))
        if mirror:
            unmirrored[name].append(detection_summary(probs_fn(False), test["lesion_mask"]))

    deployment: dict[str, dict[int, list[dict]]] = {u: {k: [] for k in config.deploy_schedule}
                                                    for u in ("bald", "entropy", "random")}
    classification, full_probs, seen_order = [], None, {}
    t_train = time.perf_counter()
    for seed in config.seeds:
        t = dataclasses.replace(base, seed=seed)
        where = runs / f"seed{seed}"
        log(f"seed {seed}: localiser on site {t.reference}")
        params_a, _ = train_localiser(t, ref, where / "A", progress=progress, force=force)
        record("A alone", lambda m: _localiser_probs(params_a, t, test["image"], m), t.mirror_tta)
        models = {}
        for order in ("random", "similarity"):
            log(f"seed {seed}: continued on {t.second} in {order} order")
            models[order], _, info = continue_localiser(t, params_a, ref, second, where / f"AB_{order}", order=order,
                                                        progress=progress, force=force)
            seen_order[f"seed{seed}_{order}"] = info
            record(f"A+B {order} order", lambda m: _localiser_probs(models[order], t, test["image"], m),
                   t.mirror_tta)
        log(f"seed {seed}: localiser on site {t.second} alone")
        # As many steps as the reference site's and the continued run together.
        alone = dataclasses.replace(t.reference_phase, steps=t.reference_phase.steps + t.continue_phase.steps)
        params_b, _ = train_localiser(t, second, where / "B", progress=progress, force=force, name="phase1_b_alone",
                                      phase=alone)
        record("B alone", lambda m: _localiser_probs(params_b, t, test["image"], m), t.mirror_tta)
        seen = {k: np.concatenate([ref[k], second[k]]) for k in ("image", "lesion_mask", "grade", "significant")}
        deployed = {}
        for uncertainty in deployment:
            for k in config.deploy_schedule:
                log(f"seed {seed}: deployment, top {k} of site {t.deploy} by {uncertainty}")
                params_k, _, info = deploy_localiser(t, models["similarity"], pool, seen,
                                                     where / f"deploy_{uncertainty}_{k}", k=k,
                                                     uncertainty=uncertainty, progress=progress, force=force)
                scores = detection_summary(_localiser_probs(params_k, t, test["image"]), test["lesion_mask"])
                deployment[uncertainty][k].append({**scores, "chosen_significant": info["chosen_significant"]})
                deployed[(uncertainty, k)] = (params_k, info)
        # The full method: BALD deployment at deploy_k (trained above when the schedule has it), then phase 2.
        params_d, info = deployed.get(("bald", t.deploy_k)) or deploy_localiser(
            t, models["similarity"], pool, seen, where / f"deploy_bald_{t.deploy_k}", progress=progress, force=force)
        chosen = np.asarray(info["ranking"][: t.deploy_k], int)
        train2 = {k: np.concatenate([seen[k], pool[k][chosen]]) for k in seen}
        log(f"seed {seed}: phase 2, classifier")
        joint, _ = train_classifier(t, params_d, train2, where / "full", progress=progress, force=force)
        save_model_record(where / "full", t, {"phases": {"phase1_deploy": {k: info[k] for k in ("uncertainty", "k")}},
                                              "note": "the study's full method (jaxmed lesions predict --model)"})
        out = predict_lesions(joint, t.localiser, t.classifier, test["image"], mirror=t.mirror_tta)
        record("full method", lambda m: out["prob"] if m == t.mirror_tta else
               predict_lesions(joint, t.localiser, t.classifier, test["image"], mirror=m)["prob"], t.mirror_tta)
        classification.append(classification_metrics(out["significant"], out["grade_probs"], test["significant"],
                                                     test["grade"]))
        if full_probs is None:
            full_probs, full_out, first = out["prob"], out, {"A": params_a, "AB_random": models["random"],
                                                             "AB_similarity": models["similarity"], "B": params_b}
    timings["orders_and_deployment_s"] = time.perf_counter() - t_train

    # Fusions, on the first seed.
    t0 = dataclasses.replace(base, seed=config.seeds[0])
    fusion_rows = {}
    t_fusion = time.perf_counter()
    for fusion in config.fusions:
        tf = dataclasses.replace(t0, localiser=dataclasses.replace(t0.localiser, fusion=fusion))
        if fusion == t0.localiser.fusion:
            params_f = first["A"]
        else:
            log(f"fusion {fusion}: localiser on site {tf.reference}")
            params_f, _ = train_localiser(tf, ref, runs / f"fusion_{fusion}", progress=progress, force=force)
        fusion_rows[fusion] = {"val": detection_summary(_localiser_probs(params_f, tf, val["image"]), val["lesion_mask"]),
                               "test": detection_summary(_localiser_probs(params_f, tf, test["image"]),
                                                         test["lesion_mask"])}
        if tf.mirror_tta:  # the validation evidence for the mirror: the reference site's own held-out exams
            fusion_rows[fusion]["val_unmirrored"] = detection_summary(
                _localiser_probs(params_f, tf, val["image"], False), val["lesion_mask"])
    timings["fusions_s"] = time.perf_counter() - t_fusion

    # Synthesis-based anomaly map.
    t_syn = time.perf_counter()
    log("synthesis: inpainting network on lesion-free exams")
    normal = subset(ref, ~ref["has_lesion"])
    normal_b = subset(second, ~second["has_lesion"])
    normal = {"image": np.concatenate([normal["image"], normal_b["image"]])}
    inpainter = _train_inpainter(config, normal, runs / "synthesis", progress=progress, force=force)
    test_maps = anomaly_maps(inpainter, config.synthesis, test["image"], progress=progress)
    val_normal = anomaly_maps(inpainter, config.synthesis, val["image"][~val["has_lesion"]], progress=progress)
    syn_probs, scale = anomaly_probabilities(test_maps, val_normal)
    mask = test["lesion_mask"]
    case = test["significant"]
    synthesis = {}
    for name, maps in (("synthesis (inpainting error)", syn_probs), ("localiser (full method)", full_probs)):
        d = detection_summary(maps, mask)
        synthesis[name] = {"pixel_auroc": pixel_auroc(maps, mask),
                           "case_auroc": pixel_auroc(maps.reshape(len(maps), -1).max(1), case),
                           "score": d["score"], "ap": d["ap"]}
    timings["synthesis_s"] = time.perf_counter() - t_syn

    # Figures and intervals (first seed).
    result, detections = evaluate_maps(full_probs, mask)
    intervals = bootstrap_detection(jax.random.key(config.seeds[0]), result.cases, num_resamples=config.bootstrap)
    curves, frocs = {}, {}
    for name, params in (("A alone", first["A"]), ("A+B similarity", first["AB_similarity"]),
                         ("B alone", first["B"])):
        r, _ = evaluate_maps(_localiser_probs(params, t0, test["image"]), mask)
        curves[name], frocs[name] = (r.case_scores, r.case_targets), r.froc
    curves["full method"], frocs["full method"] = (result.case_scores, result.case_targets), result.froc
    files = [plot_roc_curves(out_dir / "roc.png", curves, title="site D, case level (csPCa)").name,
             plot_froc(out_dir / "froc.png", frocs, title="site D, lesion level (csPCa)").name]
    ks = list(config.deploy_schedule)
    if ks:
        lc = {u: (np.array([_mean_std([r["score"] for r in deployment[u][k]])[0] for k in ks]),
                  np.array([_mean_std([r["score"] for r in deployment[u][k]])[1] for k in ks])) for u in deployment}
        files.append(plot_learning_curves(out_dir / "deployment_curve.png", ks, lc, ylabel="site-D ranking score",
                                          title=f"fine-tuning on site {base.deploy}, mean ± std over "
                                                f"{len(config.seeds)} seed(s)").name)
    shown = _showcase(test)
    t2 = [_slice(test["image"][i, ..., 0]) for i in shown]
    files.append(plot_overlays(out_dir / "overlays.png", t2, [_slice(full_probs[i]) for i in shown],
                               detections=[_slice(detections[i]) for i in shown],
                               truths=[_slice(mask[i]) for i in shown],
                               titles=[f"D{i}: P(csPCa) {full_out['significant'][i]:.2f}" for i in shown]).name)
    files.append(plot_overlays(out_dir / "synthesis.png", t2, [_slice(syn_probs[i]) for i in shown],
                               truths=[_slice(mask[i]) for i in shown], titles=[f"D{i}" for i in shown],
                               map_label="synthesis anomaly (1 - exp(-a/q))").name)

    tables = {
        "orders": study_table(per_seed),
        **({"orders_unmirrored": study_table(unmirrored)} if base.mirror_tta else {}),
        "deployment": _deployment_table(deployment, ks),
        "synthesis": study_table({k: [v] for k, v in synthesis.items()}, metrics=("pixel_auroc", "case_auroc",
                                                                                  "score", "ap"), label="map"),
        "fusion": _fusion_table(fusion_rows),
        "classification": study_table({"full method": classification},
                                      metrics=("significance_auroc", "significance_ap", "grade_accuracy",
                                               "grade_mae", "grade_kappa"), label="classifier"),
    }
    timings["total_s"] = time.perf_counter() - start
    summary = {
        "config": config_to_json(config),
        "site_d": {name: {"per_seed": rows, **{m: dict(zip(("mean", "std"), _mean_std([r[m] for r in rows])))
                                               for m in _METRICS}} for name, rows in per_seed.items()},
        **({"site_d_unmirrored": {name: {"per_seed": rows} for name, rows in unmirrored.items()}}
           if base.mirror_tta else {}),
        "full_method_intervals": {k: dict(zip(("estimate", "low", "high"), getattr(intervals, k)))
                                  for k in ("score", "auroc", "ap")},
        "deployment": {u: {str(k): rows for k, rows in d.items()} for u, d in deployment.items()},
        "classification": classification, "fusion": fusion_rows, "synthesis": {**synthesis, "scale_q99": scale},
        "orders": {k: {"order": v["order"], "first": v["ranking"][:10]} for k, v in seen_order.items()},
        "tables": tables, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()], "files": files,
        "model": str(runs / f"seed{config.seeds[0]}" / "full"),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (out_dir / "results.md").write_text(_results_md(tables))
    return summary


def _deployment_table(deployment, ks) -> str:
    orders = list(deployment)
    lines = ["| k | " + " | ".join(orders) + " |", "|---" * (len(orders) + 1) + "|"]
    for k in ks:
        cells = [_fmt(*_mean_std([r["score"] for r in deployment[u][k]]), len(deployment[u][k])) for u in orders]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fusion_table(rows) -> str:
    plain = all("val_unmirrored" in r for r in rows.values())
    extra = " validation score without the mirror |" if plain else ""
    lines = ["| fusion | reference-site validation score |" + extra + " site-D score | site-D AUROC | site-D AP |",
             "|---|---|---|---|---|" + ("---|" if plain else "")]
    for name, r in rows.items():
        cell = f" {r['val_unmirrored']['score']:.3f} |" if plain else ""
        lines.append(f"| {name} | {r['val']['score']:.3f} |{cell} {r['test']['score']:.3f} | "
                     f"{r['test']['auroc']:.3f} | {r['test']['ap']:.3f} |")
    return "\n".join(lines)


def _results_md(tables: dict[str, str]) -> str:
    titles = {"orders": "Site D (never trained on): PI-CAI ranking score, AUROC, AP, Dice",
              "orders_unmirrored": "The same without the mirror at test time",
              "deployment": "Site-D ranking score after fine-tuning on k labelled site-C exams",
              "synthesis": "Synthesis-based anomaly map against the localiser on site D",
              "fusion": "Fusion of the per-modality maps (trained on site A)",
              "classification": "Exam classification on site D (full method)"}
    return "".join(f"## {titles[k]}\n\n{v}\n\n" for k, v in tables.items())


def _showcase(test: dict, n: int = 4) -> list[int]:
    """Exams to show: significant ones first, then others."""
    pos = list(np.flatnonzero(test["significant"])[: n - 1])
    neg = list(np.flatnonzero(~test["significant"])[: n - len(pos)])
    return pos + neg


def _slice(a: np.ndarray) -> np.ndarray:
    """2D arrays as they are; a 3D map's slice of largest total."""
    a = np.asarray(a)
    return a if a.ndim == 2 else a[int(np.argmax(a.reshape(len(a), -1).sum(1)))]
