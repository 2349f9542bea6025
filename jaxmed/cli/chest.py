"""``jaxmed chest``: train the chest model on phantoms and predict DICOM radiographs; its study for ``jaxmed demo``."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "chest"
HELP = "chest radiographs: body regions, full-resolution segments, segment classifier: train, predict"
# No jaxmed 0.1.0 names to keep at the top level.
TOP_LEVEL_VERBS: tuple[str, ...] = ()
DESCRIPTION = ("Chest radiographs: a U-Net finds the lungs and the heart at a reduced size; overlapping segments "
               "inside them at (near) full resolution (scale >= 0.8, one lung per segment, pixels outside the "
               "region blanked) go through a segment classifier; max, noisy-OR and attention pooling of the "
               "segment predictions decide for the image. train: on phantoms; predict: DICOM radiographs.")


def add_demo(subparsers) -> None:
    """Registers the task's study as ``jaxmed demo chest``."""
    p = subparsers.add_parser(
        NAME,
        help="the chest-radiograph segment study end to end on phantoms and the real RG1 radiograph (no download)",
        description=(
            "Train the chest model on phantoms (region U-Net, segment classifier, attention pooling), measure region "
            "Dice at full resolution, the segment constraints and image-level AUROC on held-out phantoms, and run it "
            "on pydicom-data's real chest radiograph RG1_UNCR.dcm (regions and heat map as PNGs, no number claimed). "
            "Writes summary.json, PNG figures and model/ (usable by jaxmed chest predict --model OUT/model) into "
            "--out, which must be empty unless --force. A few minutes on 2 CPU cores; --quick: a 256-pixel grid "
            "and small networks, about a minute (a smoke test)."),
    )
    p.add_argument("--out", default="jaxmed-demo-chest", metavar="DIR", help="output folder (default jaxmed-demo-chest)")
    p.add_argument("--quick", action="store_true", help="small grid and networks, few steps (a smoke test)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of everything (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from jaxmed.tasks.chest import chest_config, run_demo

    try:
        config = chest_config("quick" if args.quick else "demo", seed=args.seed)
        summary = run_demo(config, args.out, force=args.force, progress=not args.no_progress,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed demo chest: error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    t = summary["timings_s"]
    print(f"\n{t['total_s']:.0f} s in all (regions {t['regions_s']:.0f} s, classifier {t['classifier_s']:.0f} s, "
          f"evaluation {t['evaluation_s']:.0f} s); load average {summary['load_average']['start']}")
    print(f"wrote {args.out}: {', '.join(summary['files'])}")
    return 0


def _add_train(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "train", help="train the chest model on phantoms" + note,
        description=(
            "Train the region U-Net, the segment classifier (segments drawn in every step so that each finding "
            "lies whole in at least one) and the attention pooling head on chest phantoms, into --out (regions/, "
            "classifier/, attention/ run folders with checkpoints, metrics.jsonl and loss curves, and chest.json). "
            "--preset full is the default model (about 25 minutes on 2 CPU cores), demo trains it shorter, quick "
            "is a 256-pixel smoke test. --out must be empty unless --force."),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="model folder")
    p.add_argument("--preset", choices=("full", "demo", "quick"), default="full", help="settings (default full)")
    p.add_argument("--region-steps", type=int, metavar="N", help="region U-Net steps")
    p.add_argument("--classifier-steps", type=int, metavar="N", help="segment classifier steps")
    p.add_argument("--num-train", type=int, metavar="N", help="classifier training phantoms")
    p.add_argument("--regions-from", metavar="DIR", help="copy the trained region net of this model folder's "
                                                            "regions/ instead of training one")
    p.add_argument("--seed", type=int, metavar="S", help="seed of everything (default 0)")
    p.add_argument("--force", action="store_true", help="replace the chest model in a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from jaxmed.tasks.chest import chest_config, train_chest

    try:
        config = chest_config(args.preset, region_steps=args.region_steps, classifier_steps=args.classifier_steps,
                              num_train=args.num_train, seed=args.seed)
        regions = None if args.regions_from is None else Path(args.regions_from) / "regions"
        _, info = train_chest(config, args.out, force=args.force, progress=not args.no_progress,
                              log=lambda line: print(line, file=sys.stderr, flush=True), regions_from=regions)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed chest train: error: {e}", file=sys.stderr)
        return 2
    whole = info["finding_whole_in_training"]
    rate = "-" if whole["rate"] is None else f"{whole['rate']:.3f}"
    print(f"trained in {info['timings_s']['total_s']:.0f} s; findings whole in a drawn training segment: "
          f"{whole['whole_in_a_segment']} of {whole['findings_drawn']} ({rate}); wrote {args.out}")
    return 0


def _add_predict(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "predict", help="predict DICOM chest radiographs: probability, findings, heat map" + note,
        description=(
            "For each DICOM radiograph: regions, segments and their probabilities; the image probability (the "
            "model's pooling; max, noisy-OR and attention scores all reported), the segments at or above "
            "--threshold as findings (type, box in the file's pixels), a heat-map overlay and a regions overlay "
            "PNG in --out. Writes --out/predictions.csv and predictions.json (one row per radiograph, no patient "
            "fields). A radiograph with no lungs (another body part) is a row with status 'no lungs found'; files "
            "that cannot be used (unreadable, colour, several frames, a lateral view, too small) are listed with "
            "the reason and the rest go on. Exit status 0 if any radiograph was predicted, 1 if none could be. "
            "Existing outputs are overwritten only with --force."),
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help="DICOM radiographs")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (jaxmed chest train --out)")
    p.add_argument("--out", default="jaxmed-chest", metavar="DIR", help="output folder (default jaxmed-chest)")
    p.add_argument("--threshold", type=float, metavar="P", help="probability of a positive image or segment "
                                                                 "(default: the model's, 0.5)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from jaxmed.tasks.chest import load_chest_model, predict_paths, write_predictions

    out = Path(args.out)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    existing = [str(p) for p in (csv_path, json_path) if p.exists()]
    if existing and not args.force:
        print(f"jaxmed chest predict: error: {', '.join(existing)}: exists; refusing to overwrite (pass --force)",
              file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        print(f"jaxmed chest predict: error: --threshold must be in (0, 1), got {args.threshold}", file=sys.stderr)
        return 2
    try:
        model = load_chest_model(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxmed chest predict: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    table = predict_paths(model, args.inputs, out_dir=out, threshold=args.threshold, progress=not args.no_progress)
    meta = {"model": str(Path(args.model).absolute()), "grid": model.config.grid, "decision": model.config.decision,
            "threshold": args.threshold if args.threshold is not None else model.config.threshold}
    write_predictions(table, csv_path=csv_path, json_path=json_path, meta=meta)
    if table.rows:
        width = max(len(Path(r["file"]).name) for r in table.rows)
        print(f"{'file'.ljust(width)}  {'status':<24} probability  findings  segments")
        for r in table.rows:
            p = "-" if r["probability"] is None else f"{r['probability']:.3f}"
            print(f"{Path(r['file']).name.ljust(width)}  {r['status']:<24} {p:>11}  {r['num_findings']:8d}  "
                  f"{r['num_segments']:8d}")
    if table.problems:
        print(f"could not predict {len(table.problems)} file(s):", file=sys.stderr)
        for problem in table.problems:
            print(f"  {problem['path']}: {problem['problem']}", file=sys.stderr)
    print(f"predicted {len(table.rows)} radiograph(s); wrote {csv_path}, {json_path} and overlays in {out}")
    return 0 if table.rows else 1


# Verb -> its registration, add(subparsers, *, note): jaxmed <task> <verb> (note: added to its help).
VERBS = {"train": _add_train, "predict": _add_predict}
