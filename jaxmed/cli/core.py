"""The task-free commands: ``jaxmed info`` (what files hold) and ``jaxmed train`` (the engine, any model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("info", "train")


def add_commands(subparsers) -> None:
    """Registers ``info`` and ``train``."""
    _add_info(subparsers)
    _add_train(subparsers)


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
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from jaxmed.io import describe_paths, format_description

    description = describe_paths(args.paths)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_description(description))
    return 0 if description["items"] else 1


def _add_train(subparsers) -> None:
    from jaxmed.train.config import OPTIMIZER_NAMES, SCHEDULE_NAMES
    from jaxmed.train.registry import MODELS

    p = subparsers.add_parser(
        "train",
        help=f"train any registered model ({', '.join(MODELS)}), data-parallel, with checkpoints",
        description=(
            "Train a model on phantoms, the brain-MRI template or DICOM/NIfTI files, "
            "data-parallel over the local devices (and over processes with "
            "--coordinator). Writes config.json, metrics.jsonl, loss_curve.png, "
            "preprocess.json (for scan data) and Orbax checkpoints into --out. A non-empty --out is never overwritten "
            "unless --resume (continue its run) or --force (start over) is given. "
            "With --resume, options not given are taken from the run's config.json. "
            "--model unet trains a lesion-map network on multi-contrast phantoms with lesion "
            "masks, plainly or (--masked-regions) with losses on disjoint random regions, "
            "each computed with one modality blanked (and one region with none blanked). "
            "A model's training options (its loss config, stored in config.json beside the model config) "
            "are set with --loss-option FIELD=VALUE or the flags of the 'training options' group."
        ),
    )
    p.set_defaults(run=_run_train)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    p.add_argument("--data", metavar="SOURCE",
                   help="phantoms (default), brain-mri, or a DICOM/NIfTI file or folder")
    p.add_argument("--model", choices=tuple(MODELS), help="model kind (default vae)")
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
    g.add_argument("--model-option", action="append", type=_field_value, metavar="FIELD=VALUE",
                   help="replace a field of the preset's model config, e.g. likelihood=gaussian_learned_pixel "
                        "or min_scale=0.001 (VALUE as JSON, else a string); repeatable")
    g.add_argument("--num-train", type=int, metavar="N", help="phantoms: training images (default 2048)")
    g.add_argument("--num-val", type=int, metavar="N", help="validation images (default 256)")
    g.add_argument("--augment-shift", type=int, metavar="PX",
                   help="augmentation: random whole-pixel shifts up to PX per axis (default 0: none)")
    g.add_argument("--augment-flip", type=float, metavar="P",
                   help="augmentation: left-right flip with probability P (default 0)")
    g.add_argument("--augment-intensity", type=_range, metavar="LOW,HIGH",
                   help="augmentation: intensity factor uniform in [LOW, HIGH] (default 1,1: none)")
    g.add_argument("--augment-mutation", type=float, metavar="RATE",
                   help="augmentation: replace this fraction of pixels by uniform noise, to train a background "
                        "model for likelihood-ratio scores (Ren et al. 2019; default 0: none)")
    g.add_argument("--synth-subjects", type=int, metavar="K",
                   help="brain-mri: add K synthetic subjects (deformed, re-contrasted, biased, blurred, noisy "
                        "versions of the template, jaxmed.data.synth) to the training slices (default 0)")
    g.add_argument("--synth-off", action="append", metavar="FAMILY",
                   help="switch off one family of the synthetic subjects' variation (deformation, affine, "
                        "contrast, bias, resolution, noise); repeatable")
    g.add_argument("--synth-option", action="append", type=_field_value, metavar="FIELD=VALUE",
                   help="set a field of jaxmed.data.synth.SynthConfig (e.g. bias_amplitude=[0,0.05]); repeatable")
    g.add_argument("--mixed-precision", action="store_true", default=None,
                   help="compute in bfloat16, keep float32 parameters (for accelerators: on CPU, even with "
                        "AVX512-BF16, it measured slower than float32; benchmarks/RESULTS.md)")
    g = p.add_argument_group("training options (the model's loss config)")
    g.add_argument("--loss-option", action="append", type=_field_value, metavar="FIELD=VALUE",
                   help="set a field of the model's loss config (vae: beta; unet: masked, cell, include_none, "
                        "blank_value, pos_weight); VALUE as JSON, else a string; repeatable")
    g.add_argument("--beta", type=float, help="vae: weight of the KL term (default 1); = --loss-option beta=B")
    g.add_argument("--masked-regions", action="store_true", default=None,
                   help="unet: masked-region training (one random region per modality, that modality "
                        "blanked, and one region with all modalities); = --loss-option masked=true")
    g.add_argument("--region-cell", type=int, metavar="PX",
                   help="unet: side of the region cells (default 8); = --loss-option cell=PX")
    g.add_argument("--pos-weight", type=float, metavar="W",
                   help="unet: weight of lesion pixels in the cross-entropy (default 5); "
                        "= --loss-option pos_weight=W")
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


def _field_value(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (e.g. min_scale=0.001), got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.9,1.1), got {text!r}") from None
    return low, high


def _loss_fields(args) -> dict[str, Any]:
    """The loss-config fields the command line sets: --loss-option pairs and the named flags."""
    from jaxmed.train.registry import LEGACY_LOSS_FIELDS

    # The named flags are jaxmed 0.1.0's run-config fields; argparse names them alike.
    fields = dict(args.loss_option or ())
    for flag, name in LEGACY_LOSS_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            fields[name] = value
    return fields


def _synth_fields(args) -> dict[str, Any]:
    """SynthSource fields the command line sets: the count, the families switched off, the options."""
    from jaxmed.data.synth import off_fields

    fields = {"num_subjects": args.synth_subjects}
    fields.update(off_fields(*(args.synth_off or ())))
    fields.update(dict(args.synth_option or ()))
    return fields


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
            base, data=args.data, model=args.model, preset=args.preset, num_train=args.num_train,
            num_val=args.num_val, model_options=tuple(args.model_option) if args.model_option else None,
            loss=_loss_fields(args),
            synth=_synth_fields(args),
            augment={"max_shift": args.augment_shift, "flip_probability": args.augment_flip,
                     "intensity_range": args.augment_intensity, "mutation_rate": args.augment_mutation},
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
        for note in info["data"].get("notes", ()):
            print(f"note: {note}", file=sys.stderr)
        last = result.records[-1] if result.records else {}
        summary = ", ".join(f"{k} {last[k]:.6g}" for k in ("loss", "val_loss") if k in last)
        print(f"trained {run.model} ({run.preset}) on {info['num_devices']} device(s) x "
              f"{info['num_processes']} process(es): steps {info['start_step']} -> "
              f"{int(result.state.step)} ({result.stop_reason}){'; ' + summary if summary else ''}")
        data = info["data"]
        if "num_train" in data:
            how = f" ({data['split']})" if "split" in data else ""
            print(f"data: {data['num_train']} training / {data['num_val']} validation images{how}")
        written = [name + ("/" if Path(path).is_dir() else "") for name, path in info["paths"].items()
                   if Path(path).exists()]
        print(f"wrote {args.out}: {', '.join(written)}")
    return 0
