"""``jaxmed scan-quality``: calibrate a VAE's threshold on normal scans and score scans; its study for ``jaxmed demo``.

``jaxmed calibrate`` and ``jaxmed score`` (jaxmed 0.1.0's names) are the
same commands as ``jaxmed scan-quality calibrate`` and ``jaxmed
scan-quality score``.
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "scan-quality"
HELP = "scan-quality classification of MRI by a VAE's log p(x) and complexity-corrected scores: calibrate, score"
# Verbs also registered at the top level, under jaxmed 0.1.0's names.
TOP_LEVEL_VERBS = ("calibrate", "score")


DESCRIPTION = ("Scan-quality classification: a VAE trained on normal scans (jaxmed train, jaxmed demo) scores "
               "each slice by an estimate of log p(x), its complexity-corrected form and (with a background model) "
               "the likelihood ratio; calibrate sets the decision thresholds on normal scans (calibrate on the "
               "site's own normals), score decides for new ones.")


def add_demo(subparsers) -> None:
    """Registers the task's study as ``jaxmed demo scan-quality``."""
    _add_demo(subparsers)


def _add_score_options(p, *, what: str) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--method", choices=("importance", "mc", "mcmc", "ais", "match"),
                   help=f"estimator of the {what} scores (default: the calibration's, else importance)")
    g.add_argument("--num-samples", type=int, metavar="K",
                   help="samples (chains for ais) per slice (default: the calibration's, else 100)")
    g.add_argument("--score", choices=_SCORE_CHOICES,
                   help="the decision score: log-px (log p(x)), complexity (log p(x) corrected for the PNG code "
                        "length, Serra et al.) or likelihood-ratio (against the background model in "
                        "DIR/background, Ren et al.); every score is computed and reported (default: the "
                        "calibration's, else complexity)")
    g.add_argument("--batch-size", type=int, default=32, metavar="B", help="slices per compiled call (default 32)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the samplers (default 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


# Decision scores as typed (jaxmed.tasks.scan_quality.SCORES with dashes).
_SCORE_CHOICES = ("log-px", "complexity", "likelihood-ratio")


def _score_spec(args, stored):
    """The spec the command line asks for; options not given come from ``stored`` (a calibration's spec)."""
    from jaxmed.tasks.scan_quality import DEFAULT_SCORE, ScoreSpec

    method = args.method or (stored.method if stored else "importance")
    same_method = stored is not None and stored.method == method
    num_samples = args.num_samples or (stored.num_samples if same_method else 100)
    options = dict(stored.options) if same_method else {}
    if args.score:
        score = args.score.replace("-", "_")
    elif method == "match":
        score = "log_px"  # the match score has no corrected forms
    else:
        score = stored.score if stored is not None else DEFAULT_SCORE
    return ScoreSpec(method=method, num_samples=num_samples, batch_size=args.batch_size, seed=args.seed,
                     options=options, score=score)


def _same_scores(a, b) -> bool:
    # Seeds, batch and chunk sizes change no score's distribution; these do.
    return (a.method, dict(a.options)) == (b.method, dict(b.options)) and (
        a.method == "match" or a.num_samples == b.num_samples)


def _add_calibrate(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="set a checkpoint's decision threshold from normal scans" + note,
        description=(
            "Score the slices of NORMAL scans (not the training images) with a trained VAE and store, "
            "in DIR/calibration.json, for each score (log p(x), the complexity-corrected score and, with a "
            "background model, the likelihood ratio) the threshold that calls at most a fraction --fpr of "
            "normal slices abnormal and the normal reference scores (for p-values), with how the scores "
            "were computed; --score names the one that decides by default. Calibrate on the normal scans "
            "of the site (scanner, protocol) whose scans will be scored: a model trained elsewhere shifts "
            "every score at a new site. An existing calibration.json is replaced only with --force."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (jaxmed train --out)")
    p.add_argument("--normal", required=True, nargs="+", metavar="INPUT",
                   help="DICOM/NIfTI files or folders of normal scans")
    p.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate per slice (default 0.05)")
    p.add_argument("--force", action="store_true", help="replace an existing calibration.json")
    _add_score_options(p, what="normal")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args) -> int:
    from jaxmed.tasks.scan_quality import CALIBRATION_FILE, calibrate_paths, load_scorer, save_calibration

    path = Path(args.checkpoint) / CALIBRATION_FILE
    if path.exists() and not args.force:
        print(f"jaxmed calibrate: error: {path}: exists; refusing to overwrite it (pass --force)", file=sys.stderr)
        return 2
    try:
        scorer = load_scorer(args.checkpoint)
        # A recalibration keeps the decision score (and estimator) of the calibration it replaces.
        spec = _score_spec(args, scorer.calibration_spec)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxmed calibrate: error: {e}", file=sys.stderr)
        return 2
    if spec.score == "likelihood_ratio" and scorer.background is None:
        print(f"jaxmed calibrate: error: {args.checkpoint}: the likelihood-ratio score needs a background model "
              "in DIR/background (jaxmed train --augment-mutation ...)", file=sys.stderr)
        return 2
    try:
        calibrations, problems, num_volumes = calibrate_paths(scorer, args.normal, spec=spec, fpr=args.fpr,
                                                              progress=not args.no_progress)
    except ValueError as e:  # nothing scored, or non-finite scores
        print(f"jaxmed calibrate: error: {e}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"skipped {problem['path']}: {problem['problem']}", file=sys.stderr)
    n = calibrations[spec.score].reference_scores.size
    save_calibration(args.checkpoint, calibrations, spec=spec, force=args.force, info={
        "num_volumes": num_volumes, "num_slices": int(n), "inputs": [str(p) for p in args.normal],
        "problems": problems})
    print(f"calibrated on {n} slices of {num_volumes} volume(s) ({spec.method}, {spec.num_samples} samples) "
          f"at target false-positive rate {args.fpr} per slice; smallest possible p-value 1/{n + 1}; thresholds:")
    for kind, calibration in calibrations.items():
        print(f"  {kind}: {calibration.threshold:.6g}{' (decides)' if kind == spec.score else ''}")
    print(f"wrote {path}")
    return 0


def _add_score(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "score",
        help="score DICOM/NIfTI scans with a trained VAE: log p(x), decision, confidence" + note,
        description=(
            "Preprocess each scan as the training images were (DIR/preprocess.json), score every slice by "
            "an estimate of log p(x), its complexity-corrected form and (with a background model in "
            "DIR/background) the likelihood ratio, and decide normal/abnormal by the decision score "
            "(--score) with the threshold of DIR/calibration.json (jaxmed calibrate) or --threshold. A "
            "volume takes its lowest slice score. Writes a table, PREFIX.csv and PREFIX.json (file, series "
            "number, slice, scores, decision, p-value; no patient fields); bad inputs are listed with the "
            "reason, in the table and at the end, and the rest is scored. When the scans lie outside the "
            "calibration's normal range as a whole (most slices below every normal calibration slice), a "
            "warning says so: calibrate on the site's own normal scans. Exit status 0 if anything was "
            "scored, 1 if nothing could be. Existing outputs are overwritten only with --force."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/NIfTI files or folders")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (jaxmed train --out)")
    p.add_argument("--out", default="jaxmed-scores", metavar="PREFIX",
                   help="writes PREFIX.csv and PREFIX.json (default jaxmed-scores)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="normal if the decision score >= T (default: the calibration's threshold)")
    p.add_argument("--force", action="store_true", help="overwrite existing PREFIX.csv / PREFIX.json")
    _add_score_options(p, what="")
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from jaxmed.tasks.scan_quality import load_scorer, score_paths, write_table

    csv_path, json_path = Path(args.out + ".csv"), Path(args.out + ".json")
    existing = [str(p) for p in (csv_path, json_path) if p.exists()]
    if existing and not args.force:
        print(f"jaxmed score: error: {', '.join(existing)}: exists; refusing to overwrite (pass --force)",
              file=sys.stderr)
        return 2
    try:
        scorer = load_scorer(args.checkpoint)
        spec = _score_spec(args, scorer.calibration_spec)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxmed score: error: {e}", file=sys.stderr)
        return 2
    calibrations = scorer.calibrations
    if calibrations is not None and not _same_scores(spec, scorer.calibration_spec):
        stored = scorer.calibration_spec
        print(f"jaxmed score: warning: the calibration was made with {stored.method} ({stored.num_samples} "
              f"samples), not {spec.method} ({spec.num_samples}); its thresholds and p-values are not used "
              "(run jaxmed calibrate with these settings, or give --threshold)", file=sys.stderr)
        calibrations = None
    if calibrations is not None and spec.score not in calibrations:
        print(f"jaxmed score: warning: the calibration holds no {spec.score} score (it has "
              f"{', '.join(sorted(calibrations))}); no threshold or p-values (run jaxmed calibrate, or give "
              "--threshold)", file=sys.stderr)
    try:
        table = score_paths(scorer, args.inputs, spec=spec, calibrations=calibrations, threshold=args.threshold,
                            progress=not args.no_progress)
    except ValueError as e:
        print(f"jaxmed score: error: {e}", file=sys.stderr)
        return 2
    from jaxmed.tasks.scan_quality import SCORE_MEANINGS

    calibration = (calibrations or {}).get(spec.score)
    meta = {"checkpoint": str(Path(args.checkpoint).absolute()), "score": spec.to_dict(),
            "score_meaning": SCORE_MEANINGS[spec.score], "scores": {k: SCORE_MEANINGS[k] for k in SCORE_MEANINGS},
            "threshold": args.threshold if args.threshold is not None else (
                calibration.threshold if calibration is not None else None),
            "volume_rule": "lowest slice score; p-value Bonferroni-adjusted over the volume's slices"}
    write_table(table, csv_path=csv_path, json_path=json_path, meta=meta, force=args.force)
    volumes = [r for r in table.rows if r["level"] == "volume"]
    if volumes:
        width = max(len(r["file"]) for r in volumes)
        print(f"{'file'.ljust(width)}  slices  lowest score  decision  p-value")
        for r in volumes:
            decision = r["decision"] or "-"
            p_value = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
            score = "nan" if r["score"] is None else f"{r['score']:.6g}"
            print(f"{r['file'].ljust(width)}  {r['num_slices']:6d}  {score:>12}  {decision:8}  {p_value}")
    if calibration is None and args.threshold is None:
        print("no decisions: the checkpoint has no calibration of this score (run jaxmed calibrate) and no "
              "--threshold was given", file=sys.stderr)
    if table.check is not None and table.check["outside"]:
        check = table.check
        where = (f"{len(check['outside_groups'])} of {table.num_scored} volume(s)" if check["outside_groups"]
                 else "the scans")
        print(f"jaxmed score: warning: {where} lie outside the calibration's normal range as a whole: "
              f"{check['below_calibration_min']:.0%} of all slices score below every normal calibration slice, "
              f"{check['flagged']:.0%} are flagged at a threshold set for {check['target_fpr']} of normal slices. "
              "Either those volumes are corrupted throughout, or they come from a site or scanner the calibration "
              "did not see: a model trained on other scans shifts every score there, artefact or not. Unless the "
              "calibration was made on this site's normal scans, make it so (jaxmed calibrate --checkpoint "
              f"{args.checkpoint} --normal NORMAL_SCANS --force) before trusting these decisions.", file=sys.stderr)
    for note in table.notes:
        print(f"note: {note['path']}: {note['note']}", file=sys.stderr)
    if table.problems:
        print(f"could not score {len(table.problems)} input(s):", file=sys.stderr)
        for problem in table.problems:
            print(f"  {problem['path']}: {problem['problem']}", file=sys.stderr)
    print(f"scored {table.num_scored} volume(s); wrote {csv_path} and {json_path}")
    return 0 if table.num_scored else 1


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        NAME,
        help="the brain-MRI scan-quality study end to end (no download); also plain 'jaxmed demo'",
        description=(
            "Train the reference VAE on axial slices of the MNI152 brain template (shipped in nilearn) and on "
            "synthetic subjects made from it, and a background model on mutated inputs; calibrate thresholds on "
            "validation slices and held-out synthetic subjects; corrupt held-out slices with simulated k-space "
            "artefacts (noise, ghosting, motion, blur, bias field, spike), score them by log p(x) (importance "
            "sampling; MCMC and AIS on a subset), its complexity-corrected form and the likelihood ratio, and print "
            "AUROC per artefact beside a PCA baseline, for the template's held-out slices and for new "
            "(held-out synthetic) subjects. Writes results.csv/json, summary.json, PNG figures and checkpoint/ (usable by "
            "jaxmed score) into --out, which must be empty unless --force. A few minutes on 2 CPU cores; "
            "--quick: a smaller run under about a minute."
        ),
    )
    p.add_argument("--out", default="jaxmed-demo", metavar="DIR", help="output folder (default jaxmed-demo)")
    p.add_argument("--quick", action="store_true", help="small network on 32x32 slices, few steps (a smoke test)")
    p.add_argument("--data", choices=("brain-mri", "phantoms"), help="slices to study (default brain-mri)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--severity", type=float, metavar="S", help="artefact severity in [0, 1] (default 0.5)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of everything (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from jaxmed.tasks.scan_quality import demo_config, run_demo

    try:
        config = demo_config(quick=args.quick, data=args.data, steps=args.steps, severity=args.severity,
                             seed=args.seed)
        summary = run_demo(config, args.out, force=args.force, progress=not args.no_progress,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed demo: error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    t, c = summary["timings_s"], summary["calibration"]
    from jaxmed.tasks.scan_quality import SCORE_MEANINGS

    decide = c["decision_score"]
    training = t["train_s"] + t.get("train_background_s", 0.0)
    print(f"\nthreshold {c['thresholds'][decide]:.6g} ({decide}: {SCORE_MEANINGS[decide]}) at false-positive rate "
          f"{config.fpr} on {c['num_reference']} normal slices; {t['total_s']:.0f} s in all ({training:.0f} s "
          "training)")
    print(f"wrote {args.out}: {', '.join(summary['files'])}")
    return 0


# Verb -> its registration, add(subparsers, *, note): jaxmed <task> <verb> (note: added to its help).
VERBS = {"calibrate": _add_calibrate, "score": _add_score}
