"""Output folders of studies and commands: nothing the user wrote is overwritten without asking.

:func:`prepare_out_dir` is how every ``jaxmed demo`` study (and any command
that writes a folder of results) claims its folder; :func:`load_average` is
the machine's load, recorded beside a study's timings so that a wall time can
be read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_average", "prepare_out_dir"]


def prepare_out_dir(out_dir: str | os.PathLike, *, force: bool, replace: Sequence[str] = ()) -> Path:
    """Creates ``out_dir`` if missing; refuses a non-empty one unless ``force``.

    Args:
      out_dir: the folder.
      force: write into a non-empty folder: files of the same names are
        overwritten, others are left alone.
      replace: entries of ``out_dir`` removed first under ``force`` (e.g. a
        checkpoint folder, which would otherwise be resumed from or mixed
        with the new one).

    Returns:
      ``out_dir`` as a Path.

    Raises:
      FileExistsError: ``out_dir`` is a file, or is not empty and ``force`` is
        False; the message names up to five of its entries.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    existing = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if existing and not force:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise FileExistsError(f"{out_dir}: not empty ({shown}); refusing to write into it. "
                              "Pass --force to overwrite, or choose another --out.")
    for name in replace if force else ():
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded to 0.01, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
