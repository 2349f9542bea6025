"""The ``jaxmed`` command.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments
and ``_run_<name>(args) -> int`` runs it and returns the exit status. The
library does the work; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe DICOM/NIfTI files or folders (no patient-identifying fields)",
        description=(
            "Describe what DICOM or NIfTI files hold: modality, shape, spacing, "
            "frames and series. Folders are searched recursively and grouped by "
            "series. Unreadable files are listed with the reason. Patient name, "
            "ID and birth date are never printed."
        ),
    )
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_info(args) -> int:
    from jaxmed.io import describe_paths, format_description

    description = describe_paths(args.paths)
    if args.json:
        import json

        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    return 0 if description["items"] else 1


def _add_train(subparsers) -> None:
    from jaxmed.train.config import OPTIMIZER_NAMES, SCHEDULE_NAMES

    p = subparsers.add_parser(
        "train",
        help="train a VAE, autoencoder or lesion U-Net, data-parallel, with checkpoints",
        description=(
            "Train a model on phantoms, the brain-MRI template or DICOM/NIfTI files, "
            "data-parallel over the local devices (and over processes with "
            "--coordinator). Writes config.json, metrics.jsonl, loss_curve.png, "
            "preprocess.json (for scan data) and Orbax checkpoints into --out. A non-empty --out is never overwritten "
            "unless --resume (continue its run) or --force (start over) is given. "
            "With --resume, options not given are taken from the run's config.json. "
            "--model unet trains a lesion-map network on multi-contrast phantoms with lesion "
            "masks, plainly or (--masked-regions) with losses on disjoint random regions, "
            "each computed with one modality blanked (and one region with none blanked)."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    p.add_argument("--data", metavar="SOURCE",
                   help="phantoms (default), brain-mri, or a DICOM/NIfTI file or folder")
    p.add_argument("--model", choices=("vae", "autoencoder", "unet"), help="model kind (default vae)")
    p.add_argument("--preset", metavar="NAME",
                   help="model preset (default reference64; lesion64 for unet)")
    p.add_argument("--steps", type=int, metavar="N", help="number of optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=int, metavar="B", help="global batch size (default 64)")
    p.add_argument("--devices", type=int, metavar="D", help="devices of the data-parallel mesh (default all)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of init, data order and sampling (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start over in a non-empty --out (deletes the run's files listed above, nothing else)")
    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=OPTIMIZER_NAMES, help="default adam")
    g.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default 1e-3)")
    g.add_argument("--schedule", choices=SCHEDULE_NAMES, help="default constant")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="warm-up length for warmup-cosine")
    g.add_argument("--weight-decay", type=float, metavar="W", help="default 0")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip gradients to this global norm (0 = off)")
    g.add_argument("--lr-factor", action="append", type=_lr_factor, metavar="PATTERN=F",
                   help="parameters whose path (e.g. params/log_scale) matches the glob PATTERN learn at F times "
                        "the rate; repeatable, the first match wins")
    g = p.add_argument_group("model and data")
    g.add_argument("--beta", type=float, help="weight of the KL term of the VAE (default 1)")
    g.add_argument("--num-train", type=int, metavar="N", help="phantoms: training images (default 2048)")
    g.add_argument("--num-val", type=int, metavar="N", help="validation images (default 256)")
    g.add_argument("--masked-regions", action="store_true", default=None,
                   help="unet: masked-region training (one random region per modality, that modality "
                        "blanked, and one region with all modalities)")
    g.add_argument("--region-cell", type=int, metavar="PX", help="unet: side of the region cells (default 8)")
    g.add_argument("--pos-weight", type=float, metavar="W",
                   help="unet: weight of lesion pixels in the cross-entropy (default 5)")
    g.add_argument("--mixed-precision", action="store_true", default=None,
                   help="compute in bfloat16, keep float32 parameters (for accelerators: on CPU, even with "
                        "AVX512-BF16, it measured slower than float32; benchmarks/RESULTS.md)")
    g = p.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--log-every", type=int, metavar="N", help="log training metrics every N steps (default 10)")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate every N steps (default 100; 0 = only at the end)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps (default 500)")
    g.add_argument("--keep", type=int, metavar="K", help="checkpoints kept (default 3)")
    g.add_argument("--patience", type=int, metavar="P",
                   help="stop after P evaluations without a lower validation loss (0 = never)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("multi-process (multi-host)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 (or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes (or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (or JAX_PROCESS_ID)")


def _lr_factor(text: str) -> tuple[str, float]:
    pattern, sep, factor = text.rpartition("=")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not sep or not pattern or value is None:
        raise argparse.ArgumentTypeError(f"expected PATTERN=FACTOR (e.g. params/log_scale=30), got {text!r}")
    return pattern, value


def _run_train(args) -> int:
    # Joining a multi-process run must come before any other JAX call.
    from jaxmed.train import initialize_distributed

    try:
        initialize_distributed(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
    except ValueError as e:
        print(f"jaxmed train: error: {e}", file=sys.stderr)
        return 2

    import dataclasses

    import jax

    from jaxmed.train import NonFiniteLossError
    from jaxmed.train.run import RunConfig, stored_run_config, train_model, update_run_config

    try:
        base = (stored_run_config(args.out) if args.resume else None) or RunConfig(
            **{k: v for k, v in {"data": args.data, "model": args.model, "preset": args.preset}.items() if v}
        )
        run = update_run_config(
            base, data=args.data, model=args.model, preset=args.preset, beta=args.beta,
            num_train=args.num_train, num_val=args.num_val, masked_regions=args.masked_regions,
            region_cell=args.region_cell, pos_weight=args.pos_weight,
            optim={"optimizer": args.optimizer, "learning_rate": args.lr, "schedule": args.schedule,
                   "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay,
                   "grad_clip_norm": args.grad_clip or None,
                   "lr_factors": tuple(args.lr_factor) if args.lr_factor else None},
            train={"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                   "devices": args.devices, "log_every": args.log_every, "eval_every": args.eval_every,
                   "checkpoint_every": args.checkpoint_every, "keep": args.keep,
                   "patience": args.patience or None, "mixed_precision": args.mixed_precision},
        )
        # 0 means "off" for these two; None above means "not given".
        if args.grad_clip == 0:
            run = dataclasses.replace(run, optim=dataclasses.replace(run.optim, grad_clip_norm=None))
        if args.patience == 0:
            run = dataclasses.replace(run, train=dataclasses.replace(run.train, patience=None))
        result, info = train_model(run, args.out, resume=args.resume, force=args.force,
                                   progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"jaxmed train: stopped: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed train: error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        for problem in info["problems"]:
            print(f"skipped {problem}", file=sys.stderr)
        last = result.records[-1] if result.records else {}
        summary = ", ".join(f"{k} {last[k]:.6g}" for k in ("loss", "val_loss") if k in last)
        print(f"trained {run.model} ({run.preset}) on {info['num_devices']} device(s) x "
              f"{info['num_processes']} process(es): steps {info['start_step']} -> "
              f"{int(result.state.step)} ({result.stop_reason}){'; ' + summary if summary else ''}")
        data = info["data"]
        if "num_train" in data:
            how = f" ({data['split']})" if "split" in data else ""
            print(f"data: {data['num_train']} training / {data['num_val']} validation images{how}")
        from pathlib import Path

        written = [name + ("/" if Path(path).is_dir() else "") for name, path in info["paths"].items()
                   if Path(path).exists()]
        print(f"wrote {args.out}: {', '.join(written)}")
    return 0


def _add_score_options(p, *, what: str) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--method", choices=("importance", "mc", "mcmc", "ais", "match"),
                   help=f"estimator of the {what} scores (default: the calibration's, else importance)")
    g.add_argument("--num-samples", type=int, metavar="K",
                   help="samples (chains for ais) per slice (default: the calibration's, else 100)")
    g.add_argument("--batch-size", type=int, default=32, metavar="B", help="slices per compiled call (default 32)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the samplers (default 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _score_spec(args, stored):
    from jaxmed.scoring import ScoreSpec

    method = args.method or (stored.method if stored else "importance")
    same_method = stored is not None and stored.method == method
    num_samples = args.num_samples or (stored.num_samples if same_method else 100)
    options = dict(stored.options) if same_method else {}
    return ScoreSpec(method=method, num_samples=num_samples, batch_size=args.batch_size, seed=args.seed,
                     options=options)


def _same_scores(a, b) -> bool:
    # Seeds, batch and chunk sizes change no score's distribution; these do.
    return (a.method, dict(a.options)) == (b.method, dict(b.options)) and (
        a.method == "match" or a.num_samples == b.num_samples)


def _add_calibrate(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="set a checkpoint's decision threshold from normal scans",
        description=(
            "Score the slices of NORMAL scans (not the training images) with a trained VAE and store, "
            "in DIR/calibration.json, the threshold that calls at most a fraction --fpr of normal slices "
            "abnormal, the normal reference scores (for p-values) and how the scores were computed. "
            "An existing calibration.json is replaced only with --force."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (jaxmed train --out)")
    p.add_argument("--normal", required=True, nargs="+", metavar="INPUT",
                   help="DICOM/NIfTI files or folders of normal scans")
    p.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate per slice (default 0.05)")
    p.add_argument("--force", action="store_true", help="replace an existing calibration.json")
    _add_score_options(p, what="normal")


def _run_calibrate(args) -> int:
    from pathlib import Path

    from jaxmed.scoring import CALIBRATION_FILE, calibrate_paths, load_scorer, save_calibration

    path = Path(args.checkpoint) / CALIBRATION_FILE
    if path.exists() and not args.force:
        print(f"jaxmed calibrate: error: {path}: exists; refusing to overwrite it (pass --force)", file=sys.stderr)
        return 2
    try:
        scorer = load_scorer(args.checkpoint)
        spec = _score_spec(args, None)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxmed calibrate: error: {e}", file=sys.stderr)
        return 2
    try:
        calibration, problems, num_volumes = calibrate_paths(scorer, args.normal, spec=spec, fpr=args.fpr,
                                                             progress=not args.no_progress)
    except ValueError as e:  # nothing scored, or non-finite scores
        print(f"jaxmed calibrate: error: {e}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"skipped {problem['path']}: {problem['problem']}", file=sys.stderr)
    n = calibration.reference_scores.size
    save_calibration(args.checkpoint, calibration, spec=spec, force=args.force, info={
        "num_volumes": num_volumes, "num_slices": int(n), "inputs": [str(p) for p in args.normal],
        "problems": problems})
    print(f"calibrated on {n} slices of {num_volumes} volume(s) ({spec.method}, {spec.num_samples} samples): "
          f"threshold {calibration.threshold:.6g} at target false-positive rate {args.fpr} per slice; "
          f"smallest possible p-value 1/{n + 1}")
    print(f"wrote {path}")
    return 0


def _add_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score DICOM/NIfTI scans with a trained VAE: log p(x), decision, confidence",
        description=(
            "Preprocess each scan as the training images were (DIR/preprocess.json), score every slice by "
            "an estimate of log p(x), and decide normal/abnormal with the threshold of DIR/calibration.json "
            "(jaxmed calibrate) or --threshold. A volume takes its lowest slice score. Writes a table, "
            "PREFIX.csv and PREFIX.json (file, series number, slice, score, decision, p-value; no patient "
            "fields); bad inputs are listed with the reason, in the table and at the end, and the rest is "
            "scored. Exit status 0 if anything was scored, 1 if nothing could be. Existing outputs are "
            "overwritten only with --force."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/NIfTI files or folders")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (jaxmed train --out)")
    p.add_argument("--out", default="jaxmed-scores", metavar="PREFIX",
                   help="writes PREFIX.csv and PREFIX.json (default jaxmed-scores)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="normal if score >= T (default: the calibration's threshold)")
    p.add_argument("--force", action="store_true", help="overwrite existing PREFIX.csv / PREFIX.json")
    _add_score_options(p, what="")


def _run_score(args) -> int:
    from pathlib import Path

    from jaxmed.scoring import load_scorer, score_paths, write_table

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
    calibration = scorer.calibration
    if calibration is not None and not _same_scores(spec, scorer.calibration_spec):
        stored = scorer.calibration_spec
        print(f"jaxmed score: warning: the calibration was made with {stored.method} ({stored.num_samples} "
              f"samples), not {spec.method} ({spec.num_samples}); its threshold and p-values are not used "
              "(run jaxmed calibrate with these settings, or give --threshold)", file=sys.stderr)
        calibration = None
    table = score_paths(scorer, args.inputs, spec=spec, calibration=calibration, threshold=args.threshold,
                        progress=not args.no_progress)
    meta = {"checkpoint": str(Path(args.checkpoint).absolute()), "score": spec.to_dict(),
            "score_meaning": "log p(x) in nats" if spec.method != "match" else "-KL(q(z|x) || N(0, I)) in nats",
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
        print("no decisions: the checkpoint has no calibration.json (run jaxmed calibrate) and no --threshold "
              "was given", file=sys.stderr)
    if table.problems:
        print(f"could not score {len(table.problems)} input(s):", file=sys.stderr)
        for problem in table.problems:
            print(f"  {problem['path']}: {problem['problem']}", file=sys.stderr)
    print(f"scored {table.num_scored} volume(s); wrote {csv_path} and {json_path}")
    return 0 if table.num_scored else 1


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the brain-MRI scan-quality study end to end (no download)",
        description=(
            "Train the reference VAE on axial slices of the MNI152 brain template (shipped in nilearn), "
            "calibrate a threshold on validation slices, corrupt held-out slices with simulated k-space "
            "artefacts (noise, ghosting, motion, blur, bias field, spike), score them by log p(x) "
            "(importance sampling; MCMC and AIS on a subset) and print AUROC per artefact beside a PCA "
            "baseline. Writes results.csv/json, summary.json, PNG figures and checkpoint/ (usable by "
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


def _run_demo(args) -> int:
    from jaxmed.demo import demo_config, run_demo

    try:
        config = demo_config(quick=args.quick, data=args.data, steps=args.steps, severity=args.severity,
                             seed=args.seed)
        summary = run_demo(config, args.out, force=args.force, progress=not args.no_progress,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed demo: error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    t = summary["timings_s"]
    print(f"\nthreshold {summary['calibration']['threshold']:.6g} (log p(x), nats) at false-positive rate "
          f"{config.fpr} on {summary['calibration']['num_reference']} validation slices; "
          f"{t['total_s']:.0f} s in all ({t['train_s']:.0f} s training)")
    print(f"wrote {args.out}: {', '.join(summary['files'])}")
    return 0


_COMMANDS = {
    "info": (_add_info, _run_info),
    "train": (_add_train, _run_train),
    "calibrate": (_add_calibrate, _run_calibrate),
    "score": (_add_score, _run_score),
    "demo": (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    from jaxmed import __version__

    parser = argparse.ArgumentParser(
        prog="jaxmed",
        description="JAX library for medical-image anomaly detection research.",
    )
    parser.add_argument("--version", action="version", version=f"jaxmed {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in _COMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = _COMMANDS[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
