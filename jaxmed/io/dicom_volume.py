"""Stacking the frames of DICOM files into one `Volume`: ordering, spacing, affine, values.

`stack_files` takes the headers of one file (single- or multi-frame) or of a
series' files (`jaxmed.io.dicom.read_header`), checks that the frames share
one plane, orientation, pixel spacing and photometric interpretation, orders
them along the slice normal and builds the affine (`jaxmed.io.volume` states
the convention); `read_dicom` reads one file that way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from jaxmed.io import geometry
from jaxmed.io.dicom import DicomHeader, FrameHeader, file_values, open_dataset, read_header
from jaxmed.io.volume import ImageReadError, UnknownSpacingWarning, Volume

__all__ = ["read_dicom", "stack_files"]

# Notes that differ from file to file (windows, rescale ranges) are listed up
# to this many times in a stacked volume, then counted.
_MAX_NOTE_VARIANTS = 3


def _label(frame: FrameHeader, root: str | None, multi: bool) -> str:
    name = os.path.relpath(frame.path, root) if root else os.path.basename(frame.path)
    return f"{name} frame {frame.frame + 1}" if multi else name


def _groups_text(keys: Sequence, labels: Sequence[str], describe) -> str:
    groups: dict = {}
    for key, label in zip(keys, labels):
        groups.setdefault(key, []).append(label)
    parts = []
    for key, members in groups.items():
        shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
        parts.append(f"{describe(key)} ({len(members)}: {shown})")
    return "; ".join(parts)


def _same(values: Sequence[tuple[float, ...]], atol: float, rtol: float = 0.0) -> bool:
    a = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.abs(a - a[0]) <= atol + rtol * np.abs(a[0])))


def _cluster(values: Sequence[tuple[float, ...]], atol: float) -> list[int]:
    """Group ids for values equal within atol (first-come clustering, for messages)."""
    centres: list[np.ndarray] = []
    ids = []
    for v in values:
        v = np.asarray(v)
        for i, c in enumerate(centres):
            if np.all(np.abs(v - c) <= atol):
                ids.append(i)
                break
        else:
            centres.append(v)
            ids.append(len(centres) - 1)
    return ids


_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _common_plane(
    frames: Sequence[FrameHeader], labels: Sequence[str], source: str, notes: list[str]
) -> tuple[tuple[float, ...] | None, tuple[float, float] | None]:
    """Size, orientation and pixel spacing (None: unknown) all frames share, or an error naming odd ones."""
    sizes = [(f.rows, f.columns) for f in frames]
    if len(set(sizes)) > 1:
        raise ImageReadError(
            source,
            "slices of different size: " + _groups_text(sizes, labels, lambda s: f"{s[0]}x{s[1]} pixels"),
        )
    orientations = [f.orientation for f in frames]
    missing = [label for label, o in zip(labels, orientations) if o is None]
    if missing and len(missing) < len(frames):
        raise ImageReadError(
            source, f"ImageOrientationPatient is missing in {len(missing)} slice(s): {', '.join(missing[:5])}"
        )
    orientation = orientations[0]
    if orientation is None:
        notes.append("no ImageOrientationPatient: axial orientation and origin 0 assumed")
    elif not _same(orientations, geometry.ORIENTATION_ATOL):
        ids = _cluster(orientations, geometry.ORIENTATION_ATOL)

        def cosines(i):
            return "[" + ", ".join(f"{v:.4g}" for v in orientations[ids.index(i)]) + "]"

        raise ImageReadError(
            source,
            "slices of different orientation (ImageOrientationPatient): "
            + _groups_text(ids, labels, cosines),
        )
    spacings = [f.pixel_spacing for f in frames]
    if all(s is None for s in spacings):
        notes.append("no pixel spacing in the header (or only 0): pixel spacing unknown, 1 mm assumed")
        return orientation, None
    if any(s is None for s in spacings) or not _same(spacings, 1e-4, 1e-3):
        raise ImageReadError(
            source,
            "slices of different pixel spacing: " + _groups_text(spacings, labels, lambda s: f"{s} mm"),
        )
    return orientation, spacings[0]


def _common_photometric(headers: Sequence[DicomHeader], label_root: str | None, source: str) -> str:
    """The PhotometricInterpretation(s) of the files, or an error if their values do not mix.

    Greyscale files must agree exactly (MONOCHROME1 values are inverted,
    MONOCHROME2 ones are not); colour files all become RGB, so they mix.
    """
    kinds = [h.photometric if h.channels == 1 else "colour (RGB)" for h in headers]
    if len(set(kinds)) > 1:
        labels = [_label(h.frames[0], label_root, False) for h in headers]
        raise ImageReadError(
            source, "slices of different photometric interpretation: " + _groups_text(kinds, labels, str)
        )
    return "/".join(sorted({h.photometric for h in headers}))


def _fallback_order(frames: Sequence[FrameHeader], single_file: bool, notes: list[str]) -> np.ndarray:
    """Slice order when positions are missing: InstanceNumber, then file, then frame."""
    n = len(frames)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    missing = sum(f.position is None for f in frames)
    why = (
        "no per-slice positions"
        if missing == n
        else f"ImagePositionPatient missing in {missing} of {n} slices"
    )
    if single_file:
        keys, how = [(0, f.path, f.frame) for f in frames], "frame order"
    elif any(f.instance_number is None for f in frames):
        keys, how = [(0, f.path, f.frame) for f in frames], "file name and frame order"
    else:
        keys, how = [(f.instance_number, f.path, f.frame) for f in frames], "InstanceNumber"
    notes.append(f"{why}: slices ordered by {how}")
    return np.asarray(sorted(range(n), key=keys.__getitem__), dtype=np.int64)


def _fallback_gap(frames: Sequence[FrameHeader], has_orientation: bool, notes: list[str]) -> float | None:
    """Slice spacing (mm) from the header when it cannot come from positions; None: unknown."""
    gap = frames[0].slice_gap
    if gap is None or gap <= 0:
        if len(frames) > 1 or not has_orientation:
            notes.append("slice spacing unknown: 1 mm assumed")
        return None
    if len(frames) > 1:
        notes.append(f"slice spacing {gap:g} mm from SpacingBetweenSlices/SliceThickness, not from positions")
    return gap


def _order_and_affine(
    frames: Sequence[FrameHeader],
    *,
    orientation: tuple[float, ...] | None,
    pixel_spacing: tuple[float, float],
    labels: Sequence[str],
    source: str,
    single_file: bool,
    spacing_rtol: float,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Slice order, affine, and whether the slice spacing is known (from positions or the header)."""
    positions = [f.position for f in frames]
    if orientation is not None and len(frames) > 1 and all(p is not None for p in positions):
        try:
            stack = geometry.stack_geometry(
                np.asarray(positions), orientation, pixel_spacing, labels=labels, spacing_rtol=spacing_rtol
            )
        except geometry.GeometryError as err:
            raise ImageReadError(source, str(err)) from None
        return stack.order, stack.affine, True
    order = _fallback_order(frames, single_file, notes)
    gap = _fallback_gap(frames, orientation is not None, notes)
    first = positions[order[0]]
    if orientation is not None and first is None:
        notes.append("no ImagePositionPatient: origin 0 assumed")
    origin = first if orientation is not None and first is not None else (0.0, 0.0, 0.0)
    orientation = orientation or _AXIAL
    step = geometry.slice_normal(orientation) * (gap or 1.0)
    return order, geometry.slice_affine(orientation, origin, pixel_spacing, step), gap is not None


def _merge_notes(per_file: Sequence[Sequence[str]]) -> list[str]:
    """Distinct notes of many files; a kind of note (text before ':') listed at most a few times."""
    distinct = list(dict.fromkeys(n for notes in per_file for n in notes))
    shown, counts = [], {}
    for note in distinct:
        kind = note.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] <= _MAX_NOTE_VARIANTS:
            shown.append(note)
    extra = [
        f"{kind}: {n - _MAX_NOTE_VARIANTS} more variant(s) in other files"
        for kind, n in counts.items()
        if n > _MAX_NOTE_VARIANTS
    ]
    return shown + extra


def _stacked_values(
    headers: Sequence[DicomHeader], order: np.ndarray, *, voi: bool
) -> tuple[np.ndarray, list[str]]:
    """Values of all frames, file by file, placed at their sorted slice; and the pixel notes."""
    if len(headers) == 1 and np.array_equal(order, np.arange(len(order))):
        return file_values(headers[0], voi=voi)  # no copy: multi-frame colour files are large
    first = headers[0]
    slot = np.empty(len(order), dtype=np.int64)
    slot[order] = np.arange(len(order))
    channels = () if first.channels == 1 else (first.channels,)
    array = np.empty((len(order), first.frames[0].rows, first.frames[0].columns, *channels), dtype=np.float32)
    start, per_file = 0, []
    for h in headers:
        values, notes = file_values(h, voi=voi)
        array[slot[start : start + len(h.frames)]] = values
        per_file.append(notes)
        start += len(h.frames)
    return array, _merge_notes(per_file)


def _warn_unknown_spacing(source: str, known: tuple[bool, bool, bool], n_slices: int) -> None:
    unknown = [] if all(known[1:]) else ["pixel spacing"]
    if not known[0] and n_slices > 1:
        unknown.append("slice spacing")
    if unknown:
        warnings.warn(
            f"{source}: {' and '.join(unknown)} unknown, 1 mm assumed (Volume.spacing_known says which axes)",
            UnknownSpacingWarning,
            stacklevel=3,  # the caller of stack_files
        )


def stack_files(
    headers: Sequence[DicomHeader],
    *,
    source: str,
    label_root: str | None = None,
    spacing_rtol: float = 0.01,
    notes: Sequence[str] = (),
    voi: bool = False,
) -> Volume:
    """Stacks the frames of one or more DICOM files into a `Volume`.

    Frames are sorted by position along the slice normal
    (ImagePositionPatient . (row cosine x column cosine)) and must be evenly
    spaced; the slice spacing is computed from the positions. Only when
    positions are missing are frames ordered by InstanceNumber (then file
    name, then frame index), with the gap taken from SpacingBetweenSlices,
    else SliceThickness, else unknown (1 mm); this is recorded in
    ``Volume.notes``. Without ImageOrientationPatient the orientation is taken
    as axial (identity) with the origin at 0, also noted. Without a usable
    pixel spacing it is unknown (1 mm, `UnknownSpacingWarning`, see
    `jaxmed.io.volume`). Colour files stack like greyscale ones, to
    ``(z, y, x, 3)``.

    Args:
        headers: `read_header` results, all of one series.
        source: the file or folder named in errors and ``Volume.source``.
        label_root: file names in messages are relative to this folder.
        spacing_rtol: allowed relative deviation of a gap from the median gap.
        notes: notes to carry into the volume.
        voi: apply each file's VOI LUT or first window (greyscale only).

    Returns:
        The volume (convention in `jaxmed.io.volume`).

    Raises:
        ImageReadError: frames of different size, orientation, pixel spacing
            or photometric interpretation (greyscale with colour, MONOCHROME1
            with MONOCHROME2); duplicate positions; uneven spacing (gaps
            listed); pixel data problems of any file.
    """
    frames = [f for h in headers for f in h.frames]
    multi = any(len(h.frames) > 1 for h in headers)
    labels = [_label(f, label_root, multi) for f in frames]
    notes = list(dict.fromkeys([*notes, *(n for h in headers for n in h.notes)]))
    photometric = _common_photometric(headers, label_root, source)
    orientation, pixel_spacing = _common_plane(frames, labels, source, notes)
    order, affine, gap_known = _order_and_affine(
        frames,
        orientation=orientation,
        pixel_spacing=pixel_spacing or (1.0, 1.0),
        labels=labels,
        source=source,
        single_file=len(headers) == 1,
        spacing_rtol=spacing_rtol,
        notes=notes,
    )
    spacing_known = (gap_known, pixel_spacing is not None, pixel_spacing is not None)
    array, pixel_notes = _stacked_values(headers, order, voi=voi)
    _warn_unknown_spacing(source, spacing_known, len(frames))

    # SOPInstanceUIDs in slice order (a multi-frame file once, at its first slice).
    sop_by_path = {h.path: h.sop_instance_uid for h in headers}
    paths_in_order = dict.fromkeys(frames[k].path for k in order)
    modalities = sorted({h.modality for h in headers})
    series = sorted({h.series_uid for h in headers if h.series_uid})
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
        affine=affine,
        modality="/".join(modalities),
        series_uid=series[0] if len(series) == 1 else None,
        instance_uids=tuple(sop_by_path[p] for p in paths_in_order),
        source=source,
        notes=tuple(dict.fromkeys([*notes, *pixel_notes])),
        photometric=photometric,
        spacing_known=spacing_known,
    )


def read_dicom(path, *, voi: bool = False, spacing_rtol: float = 0.01) -> Volume:
    """Reads one DICOM image file, single- or multi-frame, greyscale or colour, as a `Volume`.

    A single-frame image gives ``z == 1`` (the z column of the affine is the
    slice normal times SpacingBetweenSlices, else SliceThickness, else 1 mm).
    The frames of a multi-frame image are stacked like a series (see
    `stack_files`): sorted by position along the normal when positions are
    given, so the volume's slice order can differ from the file's frame order.

    Args:
        path: the file.
        voi: apply the file's VOI LUT or first window to the modality values
            (greyscale only; see `jaxmed.io.volume`).
        spacing_rtol: allowed relative deviation of a frame gap from the median.

    Returns:
        The volume, float32 ``(z, y, x)`` modality values or ``(z, y, x, 3)``
        RGB (convention: `jaxmed.io.volume`).

    Raises:
        ImageReadError: names the file and the problem.
    """
    path = os.fspath(path)
    ds = open_dataset(path, stop_before_pixels=False)
    header = read_header(path, dataset=ds)
    return stack_files([header], source=path, spacing_rtol=spacing_rtol, voi=voi)
