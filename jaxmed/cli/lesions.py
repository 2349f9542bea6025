"""``jaxmed lesions``: train the mpMRI lesion model on phantom sites, evaluate it, predict on exam folders; its study.

``jaxmed lesions train`` runs every phase (`jaxmed.tasks.lesions.train_lesion_model`),
``jaxmed lesions evaluate`` scores a model on a site's exams as PI-CAI does,
``jaxmed lesions predict`` writes detection maps for DICOM exam folders, and
``jaxmed demo lesions`` runs the multi-site study.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

NAME = "lesions"
HELP = "prostate mpMRI lesions: localiser + classifier trained in phases on several sites: train, evaluate, predict"
# No jaxmed 0.1.0 names to keep at the top level.
TOP_LEVEL_VERBS: tuple[str, ...] = ()
DESCRIPTION = (
    "Lesions on multi-parametric MRI (T2, ADC, DWI): each exam is co-registered onto one grid and normalised per "
    "modality; a localiser makes a lesion map per modality image and fuses them; a classifier on the images and the "
    "map gives P(clinically significant) and the grade group. Phase 1 trains the localiser on a reference site, "
    "continues on a second site's exams in order of similarity to the reference and fine-tunes on the deployment "
    "site's exams ranked by uncertainty; phase 2 trains the classifier from the localiser's encoder. train: on "
    "phantom sites A-D; evaluate: PI-CAI scores on a site; predict: DICOM exam folders.")


def add_demo(subparsers) -> None:
    """Registers the task's study as ``jaxmed demo lesions``."""
    p = subparsers.add_parser(
        NAME,
        help="the multi-site mpMRI lesion study end to end on phantoms (no download)",
        description=(
            "On phantom mpMRI exams of four sites (A, B train; C deployment; D never trained on): site-D PI-CAI "
            "ranking score, AUROC, AP and Dice of the localiser trained on A alone, on A then B in random and in "
            "similarity order, on B alone, and of the full method (similarity order, BALD-ranked deployment "
            "fine-tuning, phase-2 classifier); the deployment learning curve (BALD, entropy, random); the fusions; "
            "the synthesis-based anomaly map. Writes summary.json, results.md, PNG figures and runs/ into --out, "
            "which must be empty unless --force. A few minutes on 2 CPU cores; --quick: about a minute (a smoke "
            "test, numbers not meaningful)."),
    )
    p.add_argument("--out", default="jaxmed-demo-lesions", metavar="DIR",
                   help="output folder (default jaxmed-demo-lesions)")
    p.add_argument("--quick", action="store_true", help="32x32 exams, small networks, few steps (a smoke test)")
    p.add_argument("--seed", type=int, metavar="S", help="first seed (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (finished runs are reused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_demo(args) -> int:
    from jaxmed.tasks.lesions import demo_config, run_study

    try:
        config = demo_config(quick=args.quick, seed=args.seed)
        summary = run_study(config, args.out, force=args.force, progress=not args.no_progress, log=_log)
    except (FileExistsError, ValueError) as e:
        print(f"jaxmed demo lesions: error: {e}", file=sys.stderr)
        return 2
    for title, table in summary["tables"].items():
        print(f"\n{title}:\n{table}")
    t = summary["timings_s"]
    print(f"\n{t['total_s']:.0f} s in all (data {t['data_s']:.0f} s); load average {summary['load_average'][0]}")
    print(f"wrote {args.out}: {', '.join(summary['files'])}, summary.json, results.md; the full method's model "
          f"folder (for jaxmed lesions predict/evaluate --model): {summary['model']}")
    return 0


def _parse_counts(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        site, _, n = part.partition("=")
        if not n:
            raise ValueError(f"--num-exams wants SITE=N[,SITE=N...], got {text!r}")
        out[site.strip()] = int(n)
    return out


def _parse_steps(items) -> dict[str, int]:
    phases = ("reference", "continue", "deploy", "frozen", "joint")
    out = {}
    for item in items or ():
        name, _, n = item.partition("=")
        if name not in phases or not n:
            raise ValueError(f"--steps wants PHASE=N with PHASE one of {phases}, got {item!r}")
        out[name] = int(n)
    return out


def _add_train(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "train",
        help="train the lesion model on phantom sites, all phases in one command" + note,
        description=(
            "Draw phantom exams of the sites, preprocess them (registration onto one grid, normalisation) and train: "
            "phase 1 the localiser on --reference, continued on --second's exams in --order, fine-tuned on the "
            "--deploy-k exams of --deploy's pool ranked first by --uncertainty; phase 2 the classifier from the "
            "localiser's encoder, frozen then end to end. Each phase is a run folder under --out (config.json, "
            "metrics.jsonl, loss_curve.png, Orbax checkpoints); --out/metrics.jsonl has every phase's records with "
            "a 'phase' field; --out/lesions.json the settings. A non-empty --out is used only with --resume "
            "(finished phases are loaded, a stopped one continues bit for bit) or --force (phases of other "
            "settings start over)."),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the model folder")
    p.add_argument("--reference", default="A", help="reference site (default A)")
    p.add_argument("--second", default="B", help="second training site, '' for none (default B)")
    p.add_argument("--deploy", default="C", help="deployment site, '' for none (default C)")
    p.add_argument("--deploy-k", type=int, default=16, metavar="K", help="deployment exams trained on (default 16)")
    p.add_argument("--order", choices=("similarity", "random"), default="similarity",
                   help="order of the second site's exams (default similarity)")
    p.add_argument("--uncertainty", choices=("bald", "entropy", "random"), default="bald",
                   help="ranking of the deployment pool (default bald)")
    p.add_argument("--masked-regions", action="store_true",
                   help="masked-region training of the localiser (losses on disjoint regions, each with one modality "
                        "blanked): the model then predicts with a modality missing")
    p.add_argument("--augment", action="store_true",
                   help="random acquisition changes of every training exam, per step: contrast, bias field, noise, "
                        "ADC scale, in-plane blur, diffusion-to-T2 shift, faded lesion contrast "
                        "(jaxmed.tasks.lesions.augment; off by default: it needs long runs, see docs/lesions.md)")
    p.add_argument("--mirror-tta", action="store_true",
                   help="predict with each exam's left-right mirror averaged in (test-time augmentation, stored "
                        "with the model; for models trained with --augment, whose mirror it undoes)")
    p.add_argument("--fusion", choices=("mean", "max", "learned"),
                   help="fusion of the per-modality maps (default mean, the best on validation exams; learned "
                        "with --quick)")
    p.add_argument("--num-exams", default="A=240,B=240,C=96", metavar="SITE=N,...",
                   help="exams drawn per site (default A=240,B=240,C=96; C is the deployment pool)")
    p.add_argument("--steps", action="append", metavar="PHASE=N",
                   help="steps of a phase: reference, continue, deploy, frozen or joint (repeatable)")
    p.add_argument("--batch-size", type=int, metavar="B", help="exams per step in every phase (default 16)")
    p.add_argument("--quick", action="store_true", help="the quick study's small grid and networks")
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="3D exams on a 16x48x48 grid (3 x 1.25 x 1.25 mm); slow on CPU (see benchmarks/RESULTS.md)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of data, networks and batches (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the phases in a non-empty --out")
    p.add_argument("--force", action="store_true", help="start over the phases of other settings in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_train)


def _train_config(args):
    from jaxmed.tasks.lesions import PhaseConfig, PreprocessConfig, TrainConfig, demo_config

    base = demo_config(quick=True).train if args.quick else TrainConfig()
    if args.three_d:
        shape = (16, *base.preprocess.shape)
        base = dataclasses.replace(
            base, localiser=dataclasses.replace(base.localiser, image_shape=(*shape, 3)),
            preprocess=PreprocessConfig(shape=shape, spacing_mm=(3.0, *base.preprocess.spacing_mm),
                                        num_steps=base.preprocess.num_steps))
    steps = _parse_steps(args.steps)
    phases = {}
    for name in ("reference", "continue", "deploy", "frozen", "joint"):
        phase = getattr(base, f"{name}_phase")
        phases[f"{name}_phase"] = PhaseConfig(steps=steps.get(name, phase.steps),
                                              batch_size=args.batch_size or phase.batch_size,
                                              learning_rate=phase.learning_rate)
    return dataclasses.replace(
        base, reference=args.reference, second=args.second, deploy=args.deploy, deploy_k=args.deploy_k,
        order=args.order, uncertainty=args.uncertainty, seed=args.seed, mirror_tta=args.mirror_tta,
        localiser=dataclasses.replace(base.localiser, fusion=args.fusion or base.localiser.fusion),
        augment=dataclasses.replace(base.augment, enabled=args.augment),
        loss=dataclasses.replace(base.loss, masked=args.masked_regions), **phases)


def _run_train(args) -> int:
    from jaxmed.tasks.lesions import site_exams, train_lesion_model

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.force):
        print(f"jaxmed lesions train: error: {out}: not empty; pass --resume to continue its phases, --force to "
              "start over those of other settings, or choose another --out", file=sys.stderr)
        return 2
    try:
        config = _train_config(args)
        counts = _parse_counts(args.num_exams)
        needed = [s for s in (config.reference, config.second, config.deploy if config.deploy_k else "") if s]
        if missing := [s for s in needed if s not in counts]:
            raise ValueError(f"--num-exams gives no count for site(s) {', '.join(missing)}")
    except ValueError as e:
        print(f"jaxmed lesions train: error: {e}", file=sys.stderr)
        return 2
    import jax

    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    progress = not args.no_progress
    slices = None if args.three_d else 1
    sites = {"reference": config.reference, "second": config.second,
             "deploy": config.deploy if config.deploy_k else ""}
    data = {name: site_exams(key, site, counts[site], preprocess=config.preprocess, slices=slices, progress=progress)
            for name, site in sites.items() if site}
    try:
        model = train_lesion_model(config, data, out, progress=progress, force=args.force, log=_log)
    except (FileExistsError, ValueError) as e:
        print(f"jaxmed lesions train: error: {e}", file=sys.stderr)
        return 2
    for name, phase in model.info["phases"].items():
        loss = phase.get("final_loss")
        print(f"{name}: {phase.get('steps', 0)} steps" + (f", final loss {loss:.4g}" if loss is not None else ""))
    print(f"wrote {out} (lesions.json, metrics.jsonl, one folder per phase)")
    return 0


def _add_evaluate(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a lesion model on a phantom site's exams as PI-CAI does: metrics JSON, ROC and FROC PNGs" + note,
        description=(
            "Draw --num-exams held-out phantom exams of --site (a split never trained on), predict, extract lesion "
            "candidates (PI-CAI's dynamic extraction) and score them against the clinically significant lesions: "
            "ranking score, AUROC, AP (with case-bootstrap intervals), FROC, Dice; and the classifier's "
            "significance AUROC and grade agreement. Writes metrics.json, roc.png, froc.png and overlays.png into "
            "--out (existing files only with --force)."),
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (jaxmed lesions train --out)")
    p.add_argument("--site", default="D", help="site to evaluate on (default D)")
    p.add_argument("--num-exams", type=int, default=200, metavar="N", help="exams (default 200)")
    p.add_argument("--out", default="jaxmed-lesions-eval", metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the exams and the bootstrap")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    import jax
    import numpy as np

    from jaxmed.metrics import bootstrap_detection
    from jaxmed.plots import plot_roc_curves
    from jaxmed.tasks.lesions import (
        classification_metrics,
        detection_summary,
        evaluate_maps,
        load_lesion_model,
        plot_froc,
        plot_overlays,
        predict_lesions,
        site_exams,
    )

    out = Path(args.out)
    files = [out / name for name in ("metrics.json", "roc.png", "froc.png", "overlays.png")]
    if not args.force and (existing := [str(f) for f in files if f.exists()]):
        print(f"jaxmed lesions evaluate: error: {existing[0]}: exists; refusing to overwrite (pass --force)",
              file=sys.stderr)
        return 2
    try:
        model = load_lesion_model(args.model)
        key = jax.random.fold_in(jax.random.key(args.seed), 8)
        ndim = len(model.config.preprocess.shape)
        test = site_exams(key, args.site, args.num_exams, preprocess=model.config.preprocess,
                          slices=1 if ndim == 2 else None, split=2, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxmed lesions evaluate: error: {e}", file=sys.stderr)
        return 2
    c = model.config
    pred = predict_lesions(model.params, c.localiser, c.classifier, test["image"], mirror=c.mirror_tta,
                           progress=not args.no_progress)
    result, detections = evaluate_maps(pred["prob"], test["lesion_mask"])
    intervals = bootstrap_detection(jax.random.key(args.seed), result.cases, num_resamples=1000)
    metrics = {"site": args.site, "num_exams": args.num_exams, "model": str(Path(args.model).absolute()),
               "detection": detection_summary(pred["prob"], test["lesion_mask"]),
               "intervals_95": {k: dict(zip(("estimate", "low", "high"), getattr(intervals, k)))
                                for k in ("score", "auroc", "ap")},
               "classification": classification_metrics(pred["significant"], pred["grade_probs"],
                                                        test["significant"], test["grade"]),
               "froc": {"fp_per_case": [float(x) for x in result.froc.fp_per_case],
                        "sensitivity": [float(x) for x in result.froc.sensitivity]},
               "scoring": "PI-CAI: dynamic lesion candidates; csPCa (grade group >= 2) lesions; case score = map max"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    plot_roc_curves(out / "roc.png", {"detection map (case max)": (result.case_scores, result.case_targets),
                                      "classifier P(csPCa)": (pred["significant"], test["significant"])},
                    title=f"site {args.site}, case level")
    plot_froc(out / "froc.png", {"lesion model": result.froc}, title=f"site {args.site}, lesion level")
    shown = list(np.flatnonzero(test["significant"])[:3]) + list(np.flatnonzero(~test["significant"])[:1])
    mid = (lambda a: a) if ndim == 2 else (lambda a: a[len(a) // 2])
    plot_overlays(out / "overlays.png", [mid(test["image"][i, ..., 0]) for i in shown],
                  [mid(pred["prob"][i]) for i in shown], detections=[mid(detections[i]) for i in shown],
                  truths=[mid(test["lesion_mask"][i]) for i in shown],
                  titles=[f"exam {i}: P(csPCa) {pred['significant'][i]:.2f}" for i in shown])
    d, cl = metrics["detection"], metrics["classification"]
    ci = metrics["intervals_95"]["score"]
    print(f"site {args.site}, {args.num_exams} exams: ranking score {d['score']:.3f} (95% {ci['low']:.3f}-"
          f"{ci['high']:.3f}), AUROC {d['auroc']:.3f}, AP {d['ap']:.3f}, Dice {d['dice']:.3f}; classifier "
          f"significance AUROC {cl['significance_auroc']:.3f}, grade accuracy {cl['grade_accuracy']:.3f}, "
          f"kappa {cl['grade_kappa']:.3f}")
    print(f"wrote {out}: metrics.json, roc.png, froc.png, overlays.png")
    return 0


def _add_predict(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "predict",
        help="detection maps for DICOM exam folders (one exam each): NIfTI in the T2 geometry, overlays, a table"
             + note,
        description=(
            "Each EXAM_FOLDER holds the DICOM series of one mpMRI exam (T2, ADC, DWI; told apart by their headers). "
            "Each is preprocessed as in training and predicted: --out/<exam>/detection_map.nii.gz (lesion candidates "
            "at their confidence, on the T2 grid and geometry), --out/<exam>/overlay.png, and a row per exam in "
            "--out/predictions.csv and predictions.json (significant-cancer probability, grade group, candidates). "
            "A bad folder (missing modality without a masked-region model, series of different frames of reference "
            "without --register-anyway, a series that is not MR, two exams in one folder) is reported with the "
            "reason and the rest go on. No patient-identifying field is printed. Exit status 0 if any exam was "
            "predicted. Existing outputs are overwritten only with --force."),
    )
    p.add_argument("folders", nargs="+", metavar="EXAM_FOLDER", help="one exam's DICOM series each")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (jaxmed lesions train --out)")
    p.add_argument("--out", default="jaxmed-lesions", metavar="DIR", help="output folder (default jaxmed-lesions)")
    p.add_argument("--register-anyway", action="store_true",
                   help="register series of different frames of reference from their header geometry regardless")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from jaxmed.tasks.lesions import load_lesion_model, predict_folders

    try:
        model = load_lesion_model(args.model)
        rows, problems = predict_folders(model, args.folders, args.out, register_anyway=args.register_anyway,
                                         force=args.force, progress=not args.no_progress)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed lesions predict: error: {e}", file=sys.stderr)
        return 2
    if rows:
        width = max(len(r["exam"]) for r in rows)
        print(f"{'exam'.ljust(width)}  P(csPCa)  grade group  candidates  max confidence  notes")
        for r in rows:
            print(f"{r['exam'].ljust(width)}  {r['significant_probability']:8.3f}  {r['grade_group']:11d}  "
                  f"{r['num_candidates']:10d}  {r['max_confidence']:14.3f}  {'; '.join(r['notes'])}")
    if problems:
        print(f"could not predict {len(problems)} exam folder(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p['folder']}: {p['problem']}", file=sys.stderr)
    print(f"predicted {len(rows)} exam(s); wrote {args.out}/predictions.csv and predictions.json")
    return 0 if rows else 1


# Verb -> its registration, add(subparsers, *, note): jaxmed <task> <verb> (note: added to its help).
VERBS = {"train": _add_train, "evaluate": _add_evaluate, "predict": _add_predict}
