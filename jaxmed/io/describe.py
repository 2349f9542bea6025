"""Batch reading of files and folders: `load_volumes`, and `describe_paths` for ``jaxmed info``.

Descriptions hold only technical, non-identifying fields (modality, shape,
colour, spacing, orientation, UIDs, series number, file paths); no patient
name, ID, birth date or any other patient or study attribute is ever read into
them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from jaxmed.io.dicom_volume import stack_files
from jaxmed.io.geometry import axis_codes
from jaxmed.io.nifti import is_nifti_path
from jaxmed.io.read import read_image
from jaxmed.io.series import scan_folder, stack_series
from jaxmed.io.volume import ImageReadError, ReadProblem, Volume

__all__ = ["describe_paths", "format_description", "iter_volumes", "load_volumes"]


class Found(NamedTuple):
    """One volume read by `iter_volumes`, with how it was found.

    Attributes:
        volume: the volume.
        kind: ``"dicom file"``, ``"dicom series"`` or ``"nifti"``.
        files: the files it was read from.
        series_number: DICOM SeriesNumber, or None.
    """

    volume: Volume
    kind: str
    files: tuple[str, ...]
    series_number: int | None


def _read_file(path: str) -> Found | ReadProblem:
    try:
        volume = read_image(path)
    except ImageReadError as err:
        return ReadProblem(path=err.path, problem=err.problem)
    kind = "nifti" if is_nifti_path(path) else "dicom file"
    return Found(volume=volume, kind=kind, files=(path,), series_number=None)


def iter_volumes(paths: Iterable) -> Iterator[Found | ReadProblem]:
    """Reads every file and every series under `paths`, one at a time.

    A file is read with `read_image`. A folder is searched recursively: its
    DICOM files are grouped by SeriesInstanceUID and each series is read as
    one volume (`read_series` rules), its NIfTI files one by one. Nothing
    raises for bad input: each unreadable path or series is yielded as a
    `ReadProblem`, and reading goes on with the rest.

    Args:
        paths: files and folders.

    Yields:
        `Found` for each volume, `ReadProblem` for each failure, in order.
    """
    for path in paths:
        path = os.fspath(path)
        if not os.path.isdir(path):
            yield _read_file(path)
            continue
        scan = scan_folder(path)
        for series in scan.series:
            # Name each series by the deepest folder holding all its files, so
            # that a scan of a whole archive says where each series lives.
            folder = os.path.commonpath([os.path.dirname(f) for f in series.files])
            single = len(series.headers) == 1
            try:
                if single:  # a one-file series is a file: errors name the file
                    volume = stack_files(series.headers, source=series.files[0])
                else:
                    volume = stack_series(series, folder=folder)
            except ImageReadError as err:
                yield ReadProblem(path=err.path, problem=err.problem)
                continue
            kind = "dicom file" if single else "dicom series"
            yield Found(volume=volume, kind=kind, files=series.files, series_number=series.series_number)
        yield from map(_read_file, scan.nifti)
        yield from scan.problems


def load_volumes(paths: Iterable) -> tuple[list[Volume], list[ReadProblem]]:
    """Reads all it can from files and folders; collects the failures.

    For batch commands: a bad file never stops the batch. See `iter_volumes`
    for how folders are read.

    Args:
        paths: files and folders.

    Returns:
        ``(volumes, problems)``: the volumes read, in order, and a
        `ReadProblem` (path, problem) for each file or series that failed.
    """
    volumes, problems = [], []
    for item in iter_volumes(paths):
        if isinstance(item, ReadProblem):
            problems.append(item)
        else:
            volumes.append(item.volume)
    return volumes, problems


def _describe(found: Found) -> dict:
    v = found.volume
    finite = v.array[np.isfinite(v.array)]
    return {
        "kind": found.kind,
        "path": v.source,
        "modality": v.modality,
        "shape": list(v.shape),
        "channels": v.channels,
        "photometric": v.photometric,
        "spacing": [round(s, 6) for s in v.spacing],
        "spacing_known": list(v.spacing_known),
        "orientation": axis_codes(v.affine),
        "num_slices": v.shape[0],
        "num_files": len(found.files),
        "series_uid": v.series_uid,
        "series_number": found.series_number,
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "notes": list(v.notes),
        "files": list(found.files),
    }


def describe_paths(paths: Sequence) -> dict:
    """Describes the images in files and folders, for ``jaxmed info``.

    Args:
        paths: files and folders (folders are searched recursively and grouped
            by series).

    Returns:
        A JSON-serialisable dict ``{"items": [...], "errors": [...]}``. Each
        item describes one DICOM file, DICOM series or NIfTI file: ``kind``,
        ``path``, ``modality``, ``shape`` (z, y, x), ``channels`` (1, or 3
        for RGB), ``photometric`` (the file's PhotometricInterpretation, ""
        for NIfTI), ``spacing`` (mm, z, y, x), ``spacing_known`` (per axis;
        False: 1 mm assumed), ``orientation`` (patient direction of each
        axis, e.g. ``"SPL"``), ``num_slices`` (slices or frames),
        ``num_files``, ``series_uid``, ``series_number``, ``min``/``max``
        (modality values, or colour sample values), ``notes`` (assumptions
        made) and ``files``. Each error is ``{"path", "problem"}``. No
        patient-identifying field is included.
    """
    items, errors = [], []
    for found in iter_volumes(paths):
        if isinstance(found, ReadProblem):
            errors.append(found.as_dict())
        else:
            items.append(_describe(found))
    return {"items": items, "errors": errors}


def _fmt_spacing(spacing: Sequence[float], known: Sequence[bool]) -> str:
    """``"2.5 x 0.4883 x 0.4883"``; an unknown (assumed 1 mm) spacing is shown as ``"1?"``."""
    return " x ".join(f"{s:.4g}" + ("" if k else "?") for s, k in zip(spacing, known))


def _fmt_pixels(photometric: str, channels: int) -> str:
    """What the values are: ``"MONOCHROME2"``, ``"YBR_FULL_422 -> RGB"``, ``"RGB -> grey"``, ``"-"``."""
    if channels > 1:
        return "RGB" if photometric == "RGB" else f"{photometric or '?'} -> RGB"
    if photometric and not photometric.startswith("MONOCHROME"):
        return f"{photometric} -> grey"  # a colour file converted by to_greyscale
    return photometric or "-"


def format_description(description: dict) -> str:
    """Formats `describe_paths` output as a readable table, errors at the end.

    Args:
        description: the dict returned by `describe_paths`.

    Returns:
        Multi-line text: one row per item (kind, modality, shape, pixels
        (photometric interpretation, and "-> RGB" for colour), spacing with
        "?" where unknown, orientation, files, series uid, path), each item's
        notes below it, then the list of errors.
    """
    header = (
        "KIND",
        "MODALITY",
        "SHAPE (z,y,x)",
        "PIXELS",
        "SPACING mm (z,y,x)",
        "AXES",
        "FILES",
        "SERIES UID",
        "PATH",
    )
    rows = [
        (
            item["kind"],
            item["modality"] or "-",
            " x ".join(str(n) for n in item["shape"]),
            _fmt_pixels(item.get("photometric", ""), item.get("channels", 1)),
            _fmt_spacing(item["spacing"], item.get("spacing_known", [True] * 3)),
            item["orientation"],
            str(item["num_files"]),
            item["series_uid"] or "-",
            item["path"],
        )
        for item in description["items"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(header)]
    for item, row in zip(description["items"], rows):
        out.append(line(row))
        out.extend(f"    note: {note}" for note in item.get("notes", []))
    if not description["items"]:
        out.append("(no readable images)")
    errors = description["errors"]
    if errors:
        out.append("")
        out.append(f"Errors ({len(errors)}):")
        out.extend(f"  {e['path']}: {e['problem']}" for e in errors)
    return "\n".join(out)
