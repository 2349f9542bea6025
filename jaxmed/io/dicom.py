"""DICOM files: opening, headers and per-frame geometry, and their values.

Headers are read here (`read_header`); stacking the frames of one or more
files into a `Volume` is `jaxmed.io.dicom_volume`; pixel values (decoding, colour conversion, modality
LUT, MONOCHROME1 inversion, VOI) are computed by pydicom through
`jaxmed.io.pixels`. For enhanced multi-frame images the rescale and window
come from each frame's functional groups. The axis order, the
patient-coordinate convention and what the values mean are in
`jaxmed.io.volume`.

Greyscale (MONOCHROME1/MONOCHROME2) and colour images (RGB, YBR_FULL,
YBR_FULL_422, YBR_ICT, YBR_RCT, PALETTE COLOR) are read; other photometric
interpretations raise `ImageReadError` naming them.

Files without the 128-byte preamble and ``DICM`` prefix (raw data sets, as
written by some old software) are read when their first bytes are a group
0x0002 or 0x0008 tag; the transfer syntax is then taken from what pydicom
detects (implicit/explicit VR, byte order). Anything else without the prefix
is reported as "not a DICOM file" without being parsed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxmed.io import geometry
from jaxmed.io.pixels import COLOUR, GREYSCALE, frame_window, pixel_values
from jaxmed.io.volume import ImageReadError, short_error

__all__ = ["DicomHeader", "FrameHeader", "file_values", "open_dataset", "read_header"]

# First two bytes of a raw (prefix-less) data set: a tag of group 0x0002 or
# 0x0008 in little- or big-endian byte order.
_RAW_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class FrameHeader(NamedTuple):
    """Geometry and identity of one 2D frame, read from the header only.

    Attributes:
        path: the file holding the frame.
        frame: index of the frame within the file (0 for single-frame files).
        rows, columns: frame size in pixels.
        position: ImagePositionPatient ``(x, y, z)`` LPS mm, or None.
        orientation: ImageOrientationPatient (6 cosines), or None.
        pixel_spacing: ``(row spacing, column spacing)`` mm, or None.
        slice_gap: SpacingBetweenSlices, else SliceThickness (mm), or None;
            used only when positions are missing.
        instance_number: InstanceNumber, or None.
        rescale: ``(slope, intercept)`` from the frame's functional groups
            (enhanced multi-frame), or None: then the top-level modality LUT
            applies.
        window: ``(center, width, function)`` of the first window in the
            frame's FrameVOILUTSequence (enhanced multi-frame), or None: then
            the top-level VOI LUT module applies.
    """

    path: str
    frame: int
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_gap: float | None
    instance_number: int | None
    rescale: tuple[float, float] | None
    window: tuple[float, float, str] | None = None


@dataclass(frozen=True, eq=False)
class DicomHeader:
    """What one DICOM image file holds, without its pixel values.

    Attributes:
        path: the file.
        dataset: the pydicom data set (read with or without pixel data).
        frames: one `FrameHeader` per frame, in file order.
        modality: Modality, or "".
        series_uid: SeriesInstanceUID, or None.
        sop_instance_uid: SOPInstanceUID, or "".
        series_number: SeriesNumber, or None.
        notes: assumptions made while reading the header.
        photometric: PhotometricInterpretation (checked: greyscale or a
            colour interpretation jaxmed converts to RGB).
        samples: SamplesPerPixel, 1 or 3.
    """

    path: str
    dataset: object
    frames: tuple[FrameHeader, ...]
    modality: str
    series_uid: str | None
    sop_instance_uid: str
    series_number: int | None
    notes: tuple[str, ...] = ()
    photometric: str = "MONOCHROME2"
    samples: int = 1

    @property
    def channels(self) -> int:
        """Channels of the values: 1 for greyscale, 3 for colour (palette colour included)."""
        return 1 if self.photometric in GREYSCALE else 3


def open_dataset(path: str, *, stop_before_pixels: bool):
    """dcmread with every failure turned into an ImageReadError naming the file."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not os.path.exists(path):
        raise ImageReadError(path, "no such file")
    if not os.path.isfile(path):
        # FIFOs and devices would block a read; folders belong to read_series.
        raise ImageReadError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        raise ImageReadError(path, f"cannot be opened ({short_error(err)})") from None
    if not head:
        raise ImageReadError(path, "empty file")
    has_prefix = len(head) == 132 and head[128:132] == b"DICM"
    if not has_prefix and head[:2] not in _RAW_DATASET_STARTS:
        raise ImageReadError(
            path, "not a DICOM file (no 'DICM' prefix at byte 128 and no DICOM data set at the start)"
        )
    try:
        ds = pydicom.dcmread(path, force=not has_prefix, stop_before_pixels=stop_before_pixels)
    except Exception as err:  # pydicom raises many types for corrupt or cut-short data
        raise ImageReadError(
            path, f"DICOM data could not be parsed, file corrupt or truncated? ({short_error(err)})"
        ) from None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        if has_prefix:
            raise ImageReadError(
                path,
                "the file meta information has no Transfer Syntax UID (0002,0010), so its data cannot be "
                "interpreted (file truncated or written incorrectly?)",
            )
        implicit, little = ds.original_encoding
        if meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _floats(value, n: int) -> tuple[float, ...] | None:
    """`n` finite floats from a DS/FD value, or None if absent or malformed."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return values


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _group_item(ds, frame: int, sequence: str):
    """The item of a functional-group macro for one frame: per-frame, else shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index:
            macro = items[index].get(sequence)
            if macro is not None and len(macro) > 0:
                return macro[0]
    return None


def _attr(item, keyword):
    return None if item is None else item.get(keyword)


def _frame_count(ds, path: str) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    count = _int(value)
    if count is None or count < 1:
        # pydicom keeps an invalid IS value as its text, which would surface
        # later as a TypeError deep inside the pixel-size arithmetic.
        raise ImageReadError(path, f"NumberOfFrames (0028,0008) is {str(value)!r}, not a positive integer")
    return count


def _orientation(values: tuple[float, ...] | None, path: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    row, col = np.asarray(values[:3]), np.asarray(values[3:])
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 0.5 or nc < 0.5:
        raise ImageReadError(
            path, f"ImageOrientationPatient {list(values)} does not hold two direction cosines"
        )
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > 0.01:
        raise ImageReadError(
            path, f"ImageOrientationPatient {list(values)}: row and column directions are not perpendicular"
        )
    return tuple(float(v) for v in np.concatenate([row, col]))


class _Plane(NamedTuple):
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    gap: float | None
    rescale: tuple[float, float] | None = None
    window: tuple[float, float, str] | None = None


_SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def _check_image(ds, path: str, *, with_pixels: bool) -> tuple[str, int]:
    """Checks that `ds` is an image jaxmed reads; returns ``(photometric, samples per pixel)``."""
    rows, columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
    has_pixels = any(k in ds for k in _PIXEL_DATA)
    if not rows or not columns or (with_pixels and not has_pixels):
        sop = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
        kind = getattr(sop, "name", None) or (str(sop) if sop else "unknown SOP class")
        if rows or kind.endswith("Image Storage"):
            raise ImageReadError(path, f"no pixel data although it is a {kind} object (file truncated?)")
        raise ImageReadError(path, f"no pixel data: not an image ({kind})")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = _int(ds.get("SamplesPerPixel")) or 1
    expected = 1 if photometric in GREYSCALE or photometric == "PALETTE COLOR" else 3
    if photometric not in GREYSCALE and photometric not in COLOUR:
        raise ImageReadError(
            path,
            f"PhotometricInterpretation {photometric!r} is not supported; jaxmed reads "
            + ", ".join(GREYSCALE + COLOUR),
        )
    if samples != expected:
        raise ImageReadError(
            path,
            f"PhotometricInterpretation {photometric} needs {expected} sample(s) per pixel, "
            f"the file says {samples}",
        )
    return photometric, samples


def _pixel_spacing(ds, keywords: Sequence[str], notes: list[str]) -> tuple[float, float] | None:
    """The first positive spacing among `keywords` of `ds`; zero or negative ones are noted and skipped."""
    for keyword in keywords:
        spacing = _floats(ds.get(keyword), 2) if ds is not None else None
        if spacing is None:
            continue
        if min(spacing) <= 0:
            notes.append(f"{keyword} is {list(spacing)}, not a spacing: ignored")
            continue
        if keyword != "PixelSpacing":
            notes.append(f"pixel spacing from {keyword} (not calibrated at the patient)")
        return spacing
    return None


def _top_plane(ds, path: str, notes: list[str]) -> _Plane:
    """Geometry from the top-level attributes (single-frame and legacy multi-frame images)."""
    gap = _floats(ds.get("SpacingBetweenSlices"), 1) or _floats(ds.get("SliceThickness"), 1)
    return _Plane(
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_orientation(_floats(ds.get("ImageOrientationPatient"), 6), path),
        pixel_spacing=_pixel_spacing(ds, _SPACING_KEYWORDS, notes),
        gap=gap[0] if gap else None,
    )


def _enhanced_plane(ds, frame: int, top: _Plane, path: str, notes: list[str]) -> _Plane:
    """One frame's geometry, rescale and window from the functional groups (per-frame, else shared)."""
    plane = _group_item(ds, frame, "PlanePositionSequence")
    orient = _group_item(ds, frame, "PlaneOrientationSequence")
    measures = _group_item(ds, frame, "PixelMeasuresSequence")
    transform = _group_item(ds, frame, "PixelValueTransformationSequence")
    gap = _floats(_attr(measures, "SpacingBetweenSlices"), 1) or _floats(_attr(measures, "SliceThickness"), 1)
    slope = _floats(_attr(transform, "RescaleSlope"), 1)
    intercept = _floats(_attr(transform, "RescaleIntercept"), 1)
    return _Plane(
        position=_floats(_attr(plane, "ImagePositionPatient"), 3) or top.position,
        orientation=_orientation(_floats(_attr(orient, "ImageOrientationPatient"), 6), path)
        or top.orientation,
        pixel_spacing=_pixel_spacing(measures, ("PixelSpacing",), notes) or top.pixel_spacing,
        gap=gap[0] if gap else top.gap,
        rescale=(slope[0], intercept[0]) if slope and intercept else None,
        window=frame_window(_group_item(ds, frame, "FrameVOILUTSequence")),
    )


def _legacy_frame_plane(top: _Plane, offsets: tuple[float, ...] | None, frame: int) -> _Plane:
    """A frame of a multi-frame image without functional groups."""
    if offsets is None or top.position is None or top.orientation is None:
        # One ImagePositionPatient for many frames is not a per-frame position.
        return top._replace(position=None)
    # GridFrameOffsetVector (RT Dose): offsets along the normal, relative to the
    # first frame (its first value is 0, or the first frame's z when absolute).
    shift = (offsets[frame] - offsets[0]) * geometry.slice_normal(top.orientation)
    return top._replace(position=tuple(float(v) for v in np.asarray(top.position) + shift))


def _frame_planes(ds, path: str, notes: list[str]) -> list[_Plane]:
    n_frames = _frame_count(ds, path)
    top = _top_plane(ds, path, notes)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        planes = [_enhanced_plane(ds, k, top, path, notes) for k in range(n_frames)]
        notes[:] = list(dict.fromkeys(notes))  # one note per distinct fact, not per frame
        return planes
    if n_frames == 1:
        return [top]
    offsets = _floats(ds.get("GridFrameOffsetVector"), n_frames)
    return [_legacy_frame_plane(top, offsets, k) for k in range(n_frames)]


def read_header(path, *, dataset=None) -> DicomHeader:
    """Reads the header of a DICOM image file (no pixel decoding).

    Args:
        path: the file.
        dataset: an already-read data set of `path`, with its pixel data
            (skips reading).

    Returns:
        The header, with one `FrameHeader` per frame. Enhanced multi-frame
        geometry, rescale and window come from the functional groups
        (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence,
        PixelValueTransformationSequence, FrameVOILUTSequence; per-frame
        before shared); RT Dose frame positions from GridFrameOffsetVector.
        A zero PixelSpacing is ignored (noted), as if absent.

    Raises:
        ImageReadError: not DICOM, unparsable, no image (no pixel data), an
            unsupported photometric interpretation, malformed NumberOfFrames,
            or malformed geometry.
    """
    path = os.fspath(path)
    ds = dataset if dataset is not None else open_dataset(path, stop_before_pixels=True)
    try:
        photometric, samples = _check_image(ds, path, with_pixels=dataset is not None)
        notes: list[str] = []
        planes = _frame_planes(ds, path, notes)
        rows, columns = int(ds.Rows), int(ds.Columns)
        instance_number = _int(ds.get("InstanceNumber"))
        series_uid = ds.get("SeriesInstanceUID")
        frames = tuple(
            FrameHeader(
                path=path,
                frame=k,
                rows=rows,
                columns=columns,
                position=p.position,
                orientation=p.orientation,
                pixel_spacing=p.pixel_spacing,
                slice_gap=p.gap,
                instance_number=instance_number,
                rescale=p.rescale,
                window=p.window,
            )
            for k, p in enumerate(planes)
        )
        return DicomHeader(
            path=path,
            dataset=ds,
            frames=frames,
            modality=str(ds.get("Modality", "") or ""),
            series_uid=str(series_uid) if series_uid else None,
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
            series_number=_int(ds.get("SeriesNumber")),
            notes=tuple(notes),
            photometric=photometric,
            samples=samples,
        )
    except ImageReadError:
        raise
    except Exception as err:  # pydicom converts values lazily; malformed ones raise here
        raise ImageReadError(path, f"malformed DICOM header ({short_error(err)})") from None


def file_values(header: DicomHeader, *, voi: bool = False) -> tuple[np.ndarray, list[str]]:
    """Decodes a file's pixels and computes its values (see `jaxmed.io.pixels`).

    Args:
        header: from `read_header`; the file is read again if its data set was
            read without pixel data.
        voi: apply the VOI LUT or first window (greyscale only).

    Returns:
        ``(values, notes)``: float32 ``[frames, rows, columns]`` (greyscale) or
        ``[frames, rows, columns, 3]`` (RGB), frames in file order; and notes
        on what was done (MONOCHROME1 inverted, VOI applied).

    Raises:
        ImageReadError: no pixel data, truncated, no decoder installed, a
            shape that does not match the header, or values that cannot be
            computed.
    """
    ds = header.dataset
    path = header.path
    if not any(k in ds for k in _PIXEL_DATA):
        ds = open_dataset(path, stop_before_pixels=False)
        if not any(k in ds for k in _PIXEL_DATA):
            raise ImageReadError(
                path,
                "no pixel data element (7FE0,0010) although the header describes an image (file truncated?)",
            )
    return pixel_values(
        ds, path, header.frames, photometric=header.photometric, samples=header.samples, voi=voi
    )
