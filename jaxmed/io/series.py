"""DICOM series: the files of one SeriesInstanceUID in a folder, stacked into a `Volume`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from jaxmed.io.dicom import DicomHeader, read_header
from jaxmed.io.dicom_volume import stack_files
from jaxmed.io.nifti import is_nifti_path
from jaxmed.io.volume import ImageReadError, ReadProblem, Volume

__all__ = ["FolderScan", "SeriesFiles", "list_series", "read_series", "scan_folder", "stack_series"]

_MAX_LISTED = 5


@dataclass(frozen=True, eq=False)
class SeriesFiles:
    """The image files of one series found in a folder (headers only).

    Attributes:
        series_uid: SeriesInstanceUID (None groups the files that lack one).
        headers: one per file, in path order.
    """

    series_uid: str | None
    headers: tuple[DicomHeader, ...]

    @property
    def modality(self) -> str:
        return "/".join(sorted({h.modality for h in self.headers}))

    @property
    def series_number(self) -> int | None:
        numbers = {h.series_number for h in self.headers}
        return numbers.pop() if len(numbers) == 1 else None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(h.path for h in self.headers)

    @property
    def num_frames(self) -> int:
        return sum(len(h.frames) for h in self.headers)

    def summary(self, root: str | None = None) -> dict:
        """JSON-ready description: uid, modality, series number, file and frame counts."""
        first = self.headers[0].path
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "series_number": self.series_number,
            "num_files": len(self.headers),
            "num_frames": self.num_frames,
            "first_file": os.path.relpath(first, root) if root else first,
        }


@dataclass(frozen=True, eq=False)
class FolderScan:
    """What a recursive scan of a folder found.

    Attributes:
        series: DICOM image series, ordered by series number then uid.
        nifti: NIfTI files (not read).
        problems: files that are not readable DICOM images (with the reason).
    """

    series: tuple[SeriesFiles, ...]
    nifti: tuple[str, ...]
    problems: tuple[ReadProblem, ...]


def _walk(folder: str, problems: list[ReadProblem]) -> Iterator[str]:
    # Sorted, so that results do not depend on the file system's listing order;
    # hidden entries (.DS_Store, .git) are never images.
    def unreadable(err: OSError) -> None:
        problems.append(
            ReadProblem(path=err.filename or folder, problem=f"folder cannot be listed ({err.strerror})")
        )

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def scan_folder(folder) -> FolderScan:
    """Reads the header of every file under `folder` (recursively) and groups series.

    Hidden files and folders (names starting with ".") are skipped. Only
    headers are read (no pixel data), so this is fast; pixel problems appear
    when a series is read.

    Args:
        folder: the folder.

    Returns:
        The series, NIfTI files and unreadable files found.

    Raises:
        ImageReadError: `folder` does not exist or is not a folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ImageReadError(folder, "no such folder" if not os.path.exists(folder) else "not a folder")
    groups: dict[str | None, list[DicomHeader]] = {}
    nifti, problems = [], []
    for path in _walk(folder, problems):
        if is_nifti_path(path):
            nifti.append(path)
            continue
        try:
            header = read_header(path)
        except ImageReadError as err:
            problems.append(ReadProblem(path=err.path, problem=err.problem))
            continue
        groups.setdefault(header.series_uid, []).append(header)
    series = [SeriesFiles(series_uid=uid, headers=tuple(hs)) for uid, hs in groups.items()]
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid or ""))
    return FolderScan(series=tuple(series), nifti=tuple(nifti), problems=tuple(problems))


def list_series(folder) -> list[dict]:
    """The DICOM series under `folder`, to choose one for `read_series`.

    Args:
        folder: searched recursively.

    Returns:
        One dict per series: ``series_uid``, ``modality``, ``series_number``,
        ``num_files``, ``num_frames``, ``first_file`` (relative to `folder`).
    """
    return [s.summary(os.fspath(folder)) for s in scan_folder(folder).series]


def _series_label(s: SeriesFiles) -> str:
    number = f", series number {s.series_number}" if s.series_number is not None else ""
    uid = s.series_uid or "(no SeriesInstanceUID)"
    return f"{uid} ({s.modality or 'no modality'}, {len(s.headers)} file(s){number})"


def _skipped_note(problems, folder: str) -> list[str]:
    if not problems:
        return []
    listed = "; ".join(f"{os.path.relpath(p.path, folder)} ({p.problem})" for p in problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return [f"skipped {len(problems)} file(s) that are not readable DICOM images: {listed}{more}"]


def stack_series(
    series: SeriesFiles, *, folder: str, spacing_rtol: float = 0.01, notes=(), voi: bool = False
) -> Volume:
    """Stacks a scanned series (see `stack_files`); errors name `folder` and the series."""
    try:
        return stack_files(
            series.headers, source=folder, label_root=folder, spacing_rtol=spacing_rtol, notes=notes, voi=voi
        )
    except ImageReadError as err:
        raise ImageReadError(
            folder, f"series {_series_label(series)}: {err.problem if err.path == folder else str(err)}"
        ) from None


def read_series(
    folder, *, series_uid: str | None = None, spacing_rtol: float = 0.01, voi: bool = False
) -> Volume:
    """Reads the DICOM series in a folder as one `Volume`.

    Files are found recursively and grouped by SeriesInstanceUID; files that
    are not DICOM images (DICOMDIR, text, structure sets) are skipped and
    listed in ``Volume.notes``. Slices (single-frame files, or the frames of
    enhanced multi-frame files, with per-frame positions and rescale from the
    functional groups) are sorted by position along the slice normal
    (ImagePositionPatient . normal of ImageOrientationPatient); InstanceNumber
    is used only when positions are missing. The slice spacing is computed
    from the positions, not from SliceThickness. Uneven spacing is an error
    (the message lists the gaps and their positions), as are duplicate
    positions and slices of different size, orientation, pixel spacing or
    photometric interpretation (greyscale with colour, MONOCHROME1 with
    MONOCHROME2). Colour series stack to ``(z, y, x, 3)``. Axis order, LPS
    and intensity convention: `jaxmed.io.volume`.

    Args:
        folder: the folder.
        series_uid: which series to read when the folder holds several (see
            `list_series`); None reads the only one.
        spacing_rtol: allowed relative deviation of a gap from the median gap.
        voi: apply each file's VOI LUT or first window (greyscale only).

    Returns:
        The volume, float32 modality values (rescale applied per file/frame),
        or VOI output with `voi`; RGB for colour series.

    Raises:
        ImageReadError: the message names the folder (and file) and the
            problem; with several series it lists them.
    """
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        raise ImageReadError(folder, "is a file, not a folder; use read_image(path) for one file")
    scan = scan_folder(folder)
    if not scan.series:
        reasons = "; ".join(
            f"{os.path.relpath(p.path, folder)}: {p.problem}" for p in scan.problems[:_MAX_LISTED]
        )
        found = (
            f" ({len(scan.problems)} unreadable file(s): {reasons})"
            if scan.problems
            else " (the folder is empty)"
        )
        raise ImageReadError(folder, f"no DICOM image files found{found}")
    if series_uid is not None:
        chosen = [s for s in scan.series if s.series_uid == series_uid]
        if not chosen:
            available = "; ".join(_series_label(s) for s in scan.series)
            raise ImageReadError(folder, f"no series with SeriesInstanceUID {series_uid}; found: {available}")
        series = chosen[0]
    elif len(scan.series) > 1:
        available = "; ".join(_series_label(s) for s in scan.series)
        raise ImageReadError(
            folder,
            f"the folder holds {len(scan.series)} series; choose one with "
            f"read_series(folder, series_uid=...): {available}",
        )
    else:
        series = scan.series[0]
    return stack_series(
        series, folder=folder, spacing_rtol=spacing_rtol, notes=_skipped_note(scan.problems, folder), voi=voi
    )
