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


_COMMANDS = {
    "info": (_add_info, _run_info),
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
