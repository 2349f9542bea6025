"""The ``jaxmed`` command: builds the parser from the command modules and dispatches.

* :mod:`jaxmed.cli.core`: the task-free commands, ``info`` and ``train``;
* one module per task (:data:`TASKS`), each with its verbs (``VERBS``,
  registered as ``jaxmed <task> <verb>``) and its study (``add_demo``,
  ``jaxmed demo <task>``).

Every subcommand's parser sets ``run``, a function ``run(args) -> int`` (the
exit status); the library does the work, the command modules parse and print.
``jaxmed demo`` without a task runs the scan-quality study (the README's
first command).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxmed.cli import chest, core, lesions, scan_quality, vlm

# Task name (as typed) -> its command module.
TASKS = {scan_quality.NAME: scan_quality, chest.NAME: chest, lesions.NAME: lesions, vlm.NAME: vlm}
DEFAULT_DEMO = scan_quality.NAME


def build_parser() -> argparse.ArgumentParser:
    """The whole ``jaxmed`` parser."""
    from jaxmed import __version__

    parser = argparse.ArgumentParser(
        prog="jaxmed",
        description="JAX library for medical-image anomaly detection and classification research.",
        epilog=("tasks: " + "; ".join(f"{name}: {module.HELP}" for name, module in TASKS.items())
                + f". 'jaxmed demo' alone runs the {DEFAULT_DEMO} study."),
    )
    parser.add_argument("--version", action="version", version=f"jaxmed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core.add_commands(commands)
    demo = commands.add_parser(
        "demo", help=f"run a task's study end to end (default: {DEFAULT_DEMO}); jaxmed demo TASK --help",
        description=(f"Run a task's study on data that ships with jaxmed: jaxmed demo [TASK] [--quick] "
                     f"[--out DIR] ...; without TASK, the {DEFAULT_DEMO} study."),
    )
    studies = demo.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, module in TASKS.items():
        module.add_demo(studies)
        task = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        verbs = task.add_subparsers(dest="verb", required=True, metavar="VERB")
        for add in module.VERBS.values():
            add(verbs, note="")
    for name, module in TASKS.items():
        # jaxmed 0.1.0's top-level names of the task's verbs.
        for verb in module.TOP_LEVEL_VERBS:
            module.VERBS[verb](commands, note=f" (= jaxmed {name} {verb})")
    return parser


def _with_default_task(argv: list[str]) -> list[str]:
    """``jaxmed demo [options]`` -> ``jaxmed demo <default task> [options]``."""
    if argv[:1] == ["demo"] and (len(argv) == 1 or argv[1] not in (*TASKS, "-h", "--help")):
        return ["demo", DEFAULT_DEMO, *argv[1:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxmed`` with ``argv`` (default: the process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_with_default_task(argv))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
