"""``jaxmed vlm``: train the vision-language model on phantoms, ask it about a radiograph; its study for ``jaxmed demo``."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "vlm"
HELP = "vision-language model on chest radiographs: instructions from reports, masks, points, answers, reports"
TOP_LEVEL_VERBS: tuple[str, ...] = ()
DESCRIPTION = ("An anatomically aware vision-language model: image patch tokens (a patch autoencoder, or a small "
               "ViT) and an instruction into a prefix-LM transformer with text, mask and landmark heads, trained "
               "on instructions generated from phantoms' reports (segment, relations, presence, find, size, "
               "report), stage by stage or shuffled. train: on phantoms; ask: one instruction about a radiograph.")


def _add_settings(p) -> None:
    p.add_argument("--preset", choices=("demo", "quick", "full"), help="settings (default demo)")
    p.add_argument("--schedule", choices=("curriculum", "shuffled"), help="training order (default shuffled: it won the study, benchmarks/RESULTS.md)")
    p.add_argument("--encoder", choices=("autoencoder", "vit", "conv"),
                   help="image tokens: a frozen patch autoencoder, a linear patch embedding (ViT) or a convolutional "
                        "stem, the last two trained end to end (default: the preset's)")
    p.add_argument("--finetune-encoder", action="store_true", default=None,
                   help="train the patch autoencoder's encoder with the model (default frozen)")
    p.add_argument("--dense-weight", type=float, metavar="W",
                   help="weight of the dense anatomy and finding maps under the image tokens (0: none)")
    p.add_argument("--epochs", type=float, metavar="E", help="passes over the training instructions")
    p.add_argument("--num-train", type=int, metavar="N", help="training phantoms")
    p.add_argument("--num-val", type=int, metavar="N", help="held-out phantoms (demo)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of everything (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args, stored=None):
    """The settings: the preset's (default demo) or, without --preset, ``stored``'s, with the options given."""
    import dataclasses

    from jaxmed.tasks.vlm import task_config

    given = {k: v for k, v in {"schedule": args.schedule, "encoder": args.encoder,
                                "finetune_encoder": args.finetune_encoder, "dense_weight": args.dense_weight,
                                "epochs": args.epochs, "num_train": args.num_train, "num_val": args.num_val,
                                "seed": args.seed}.items() if v is not None}
    if stored is not None and args.preset is None:
        return dataclasses.replace(stored, **given)
    return task_config(args.preset or "demo", **given)


def add_demo(subparsers) -> None:
    """Registers the task's study as ``jaxmed demo vlm``."""
    p = subparsers.add_parser(
        NAME, help="train the vision-language model on chest phantoms and score it on held-out ones",
        description=(
            "Train the vision-language model on chest phantoms (reports, instructions generated from them, "
            "tokenizer, patch autoencoder, the model stage by stage) and score it on held-out phantoms: Dice per "
            "structure and finding, landmark error in mm, closed-question accuracy, size error, findings F1 of "
            "generated reports, per curriculum stage. Writes summary.json, answers.csv, instructions.png and "
            "model/ (usable by jaxmed vlm ask --model OUT/model) into --out, which must be empty unless --force. "
            "A few minutes on 2 CPU cores; --quick: a smoke test."))
    p.add_argument("--out", default="jaxmed-demo-vlm", metavar="DIR", help="output folder (default jaxmed-demo-vlm)")
    p.add_argument("--quick", action="store_true", help="small images and model, few steps (a smoke test)")
    _add_settings(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from jaxmed.tasks.vlm import run_demo

    if args.quick:
        args.preset = "quick"
    try:
        summary = run_demo(_config(args), args.out, force=args.force, progress=not args.no_progress,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed demo vlm: error: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    t = summary["timings_s"]
    print(f"\n{t['total_s']:.0f} s in all (training {t['train_s']:.0f} s, evaluation {t['evaluation_s']:.0f} s); "
          f"load average {summary['load_average']['start']}")
    print(f"wrote {args.out}: {', '.join(summary['files'])}")
    return 0


def _add_train(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "train", help="train the vision-language model on chest phantoms" + note,
        description=("Train the vision-language model on chest phantoms into --out (vlm.json, tokenizer.json, "
                     "autoencoder/ and model/ run folders with checkpoints, metrics.jsonl and loss curves). "
                     "--out must be empty unless --force (start over) or --resume (continue its runs from their "
                     "latest checkpoints, bit for bit; the settings are read back from --out/vlm.json, and an option "
                     "given that changes them is refused)."))
    p.add_argument("--out", required=True, metavar="DIR", help="model folder")
    p.add_argument("--resume", action="store_true", help="continue the stopped runs in --out")
    _add_settings(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from jaxmed.tasks.vlm import stored_task_config, train_vlm

    try:
        stored = stored_task_config(args.out) if args.resume else None
        _, info = train_vlm(_config(args, stored), args.out, force=args.force, resume=args.resume,
                            progress=not args.no_progress,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jaxmed vlm train: error: {e}", file=sys.stderr)
        return 2
    print(f"trained in {info['timings_s']['total_s']:.0f} s: {info['steps']} steps on {info['instructions']} "
          f"instructions; final loss {info['final_loss']:.3f}; wrote {args.out}")
    return 0


def _add_ask(subparsers, *, note: str = "") -> None:
    p = subparsers.add_parser(
        "ask", help="ask the model one instruction about a radiograph" + note,
        description=(
            "Answer one instruction about a radiograph (DICOM, NIfTI, or a .npy array) with a trained model, e.g. "
            "jaxmed vlm ask IMAGE \"segment the left lung\". Prints the answer; a mask is written as a PNG overlay, "
            "NIfTI and .npy, a point as a PNG, into --out (existing files only with --force). An instruction "
            "about a structure the model does not know gets the list of those it knows."))
    p.add_argument("image", metavar="IMAGE", help="a radiograph: DICOM, NIfTI or .npy")
    p.add_argument("instruction", metavar="INSTRUCTION", help="e.g. \"segment the heart\", \"is there a nodule "
                                                               "in the left lung\", \"write the findings\"")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (jaxmed vlm train --out)")
    p.add_argument("--out", default="jaxmed-vlm", metavar="DIR", help="output folder (default jaxmed-vlm)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    p.set_defaults(run=_run_ask)


def _run_ask(args) -> int:
    from jaxmed.io import ImageReadError
    from jaxmed.tasks.vlm import ask, load_radiograph, load_vlm, write_answer

    try:
        model = load_vlm(args.model)
        image = load_radiograph(args.image, size=model.config.image_size)
        answer = ask(model, image, args.instruction)
        stem = Path(args.image).name.split(".")[0]
        paths = write_answer(answer, image, args.out, stem, force=args.force)
    except (FileExistsError, FileNotFoundError, ValueError, ImageReadError) as e:
        print(f"jaxmed vlm ask: error: {e}", file=sys.stderr)
        return 2
    if answer.landmark is not None:
        print(f"{answer.text or 'point'}: (row, column) = ({answer.landmark[0]:.1f}, {answer.landmark[1]:.1f}) px of the "
              f"{model.config.image_size}-px input")
    elif answer.mask is not None:
        print(f"{answer.text or 'mask'}: {int(answer.mask.sum())} pixels of the {model.config.image_size}-px input")
    else:
        print(answer.text)
    for path in paths:
        print(f"wrote {path}")
    return 0


# Verb -> its registration, add(subparsers, *, note): jaxmed <task> <verb> (note: added to its help).
VERBS = {"train": _add_train, "ask": _add_ask}
