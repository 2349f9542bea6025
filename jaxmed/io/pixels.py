"""DICOM pixel values: decoding, colour conversion, modality LUT, MONOCHROME1 inversion, VOI.

Pixel data are decoded only by pydicom (``get_decoder(uid).as_array``), which
calls the installed plugins: pydicom itself for native and RLE data, GDCM
(``python-gdcm``, a jaxmed dependency) for JPEG, JPEG lossless, JPEG-LS and
JPEG 2000, and Pillow. The LUTs are pydicom's own: ``apply_modality_lut``,
``apply_voi_lut``, ``convert_color_space`` and ``apply_color_lut``. What the
values mean (modality values, higher is brighter, RGB channels last) is stated
in `jaxmed.io.volume`.

Enhanced multi-frame images carry a rescale and a window per frame in their
functional groups; each such frame is given to pydicom as a small stand-in data
set holding that frame's values, so that the arithmetic stays pydicom's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from jaxmed.io.volume import ImageReadError, short_error

if TYPE_CHECKING:  # only for annotations: dicom.py imports this module
    from jaxmed.io.dicom import FrameHeader

__all__ = ["COLOUR", "GREYSCALE", "decode", "frame_window", "install_hint", "pixel_values"]

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Colour interpretations pydicom turns into RGB: YBR_FULL(_422) by
# convert_color_space, PALETTE COLOR by apply_color_lut; the JPEG 2000 decoders
# undo YBR_ICT/YBR_RCT themselves and report RGB.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_YBR = ("YBR_FULL", "YBR_FULL_422")
# pydicom names a missing plugin by its import name; pip knows some otherwise.
_PIP_NAMES = {"gdcm": "python-gdcm"}
# Module elements a frame's stand-in data set copies from the file when the
# functional groups do not override them.
_IMAGE_PIXEL = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation")
_MODALITY_LUT = ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept")
_VOI_LUT = ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction")


def install_hint(decoder, lead: str) -> str:
    """pip names of the plugins pydicom knows but cannot use, e.g. "; install one of: python-gdcm".

    Args:
        decoder: a pydicom pixel-data decoder (``pydicom.pixels.get_decoder``).
        lead: the words before the list.

    Returns:
        ``"; <lead>: a + b, c"`` (one entry per plugin, its packages joined by
        "+"), or "" when no plugin is missing.
    """
    options = []
    for line in decoder.missing_dependencies:
        # pydicom writes "label - requires a, b and c" (versions attached: "pylibjpeg>=2.0").
        _, _, needs = line.partition(" - requires ")
        names = []
        for req in needs.replace(" and ", ", ").split(","):
            name = req.strip().split(">")[0].split("=")[0].split("<")[0].strip()
            if name and name != "numpy":
                names.append(_PIP_NAMES.get(name, name))
        if names:
            options.append(" + ".join(names))
    return f"; {lead}: " + ", ".join(options) if options else ""


def _decode_problem(ds, err: BaseException) -> str:
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.TransferSyntaxUID
    name = getattr(uid, "name", str(uid))
    if not getattr(uid, "is_compressed", False):
        return f"pixel data could not be read ({short_error(err)})"
    decoder = get_decoder(uid)
    if not decoder.is_available:
        hint = install_hint(decoder, "install one of")
        return f"pixel data are compressed as {name!r} ({uid}) and no installed package decodes it{hint}"
    plugins = ", ".join(decoder.available_plugins)
    return (
        f"pixel data compressed as {name!r} ({uid}) could not be decoded by the installed "
        f"decoder(s) ({plugins}): {short_error(err)}{install_hint(decoder, 'other decoders')}"
    )


def _check_native_length(ds, path: str) -> None:
    from pydicom.pixels.utils import get_expected_length

    if ds.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in ds:
        return
    try:
        expected = int(get_expected_length(ds))
    except Exception:  # malformed group 0028 values; pydicom's decoder will say more
        return
    actual = len(ds.PixelData)
    if actual < expected:
        raise ImageReadError(
            path,
            f"pixel data truncated: {actual} of {expected} bytes present "
            "(file cut short or wrong image size)",
        )


def decode(ds, path: str, *, frames: int, samples: int) -> tuple[np.ndarray, str]:
    """Decodes the stored samples of a file, without any colour conversion.

    Args:
        ds: the data set, with its pixel data.
        path: the file, for errors.
        frames: number of frames the header announces.
        samples: SamplesPerPixel.

    Returns:
        ``(samples, photometric)``: the stored values, ``[frames, rows,
        columns]`` (one sample per pixel) or ``[frames, rows, columns, 3]``,
        in pydicom's dtype; and the photometric interpretation they are in
        (a JPEG 2000 decoder reports "RGB" for YBR_ICT/YBR_RCT data).

    Raises:
        ImageReadError: truncated data, a transfer syntax pydicom cannot
            decode, no decoder installed (naming the packages to install), or
            a decoder failure.
    """
    from pydicom.pixels import get_decoder

    _check_native_length(ds, path)
    uid = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(
            path,
            f"pixel data are encoded as {getattr(uid, 'name', uid)!r} ({uid}), which pydicom cannot decode",
        ) from None
    try:
        # raw=True: no YCbCr -> RGB here, so that the conversion below is the only one.
        array, meta = decoder.as_array(ds, raw=True)
    except Exception as err:  # pydicom's decoders and their plugins raise many types
        raise ImageReadError(path, _decode_problem(ds, err)) from None
    rows, columns = int(ds.Rows), int(ds.Columns)
    shape = (frames, rows, columns) + ((samples,) if samples > 1 else ())
    if array.size != int(np.prod(shape)):
        raise ImageReadError(
            path, f"decoded pixel data has shape {array.shape}, expected {' x '.join(map(str, shape))}"
        )
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation)).strip()
    return array.reshape(shape), photometric


class _Window(NamedTuple):
    center: float
    width: float
    function: str


def frame_window(item) -> _Window | None:
    """The first window of a FrameVOILUTSequence item, or None if it has none."""
    if item is None or "WindowCenter" not in item or "WindowWidth" not in item:
        return None
    first = [
        float(item[k].value[0] if item[k].VM > 1 else item[k].value) for k in ("WindowCenter", "WindowWidth")
    ]
    return _Window(first[0], first[1], str(item.get("VOILUTFunction", "LINEAR") or "LINEAR").strip())


def _frame_dataset(ds, frame: FrameHeader):
    """The data set pydicom's LUTs see for one frame: `ds`, or a stand-in with its functional groups."""
    from pydicom.dataset import Dataset

    if frame.rescale is None and frame.window is None:
        return ds
    proxy = Dataset()
    proxy.file_meta = ds.file_meta  # LUT data stored as OW need the byte order
    for keyword in _IMAGE_PIXEL:
        if keyword in ds:
            proxy[keyword] = ds[keyword]
    if frame.rescale is not None:
        proxy.RescaleSlope, proxy.RescaleIntercept = frame.rescale
    else:
        for keyword in _MODALITY_LUT:
            if keyword in ds:
                proxy[keyword] = ds[keyword]
    if frame.window is not None:
        proxy.WindowCenter, proxy.WindowWidth, proxy.VOILUTFunction = frame.window
    else:
        for keyword in _VOI_LUT:
            if keyword in ds:
                proxy[keyword] = ds[keyword]
    return proxy


def _modality_range(fds) -> tuple[float, float]:
    """Range of values the modality LUT can output, as pydicom's ``apply_windowing`` computes it."""
    if fds.get("ModalityLUTSequence"):
        bits = int(fds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(fds.BitsStored)
    if int(fds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if fds.get("RescaleSlope") is not None and fds.get("RescaleIntercept") is not None:
        slope, intercept = float(fds.RescaleSlope), float(fds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _voi_kind(fds) -> str | None:
    """Which VOI transform pydicom's ``apply_voi_lut`` applies (same tests, LUT preferred), in words."""
    items = fds.get("VOILUTSequence")
    if items and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData")):
        explanation = str(items[0].get("LUTExplanation", "") or "").strip()
        return "VOI LUT Sequence" + (f" ({explanation})" if explanation else "")
    if fds.get("WindowCenter") is None or fds.get("WindowWidth") is None:
        return None
    center, width = fds["WindowCenter"], fds["WindowWidth"]
    count = f", first of {center.VM}" if center.VM > 1 else ""
    c = center.value[0] if center.VM > 1 else center.value
    w = width.value[0] if width.VM > 1 else width.value
    function = str(fds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip()
    return f"window center {float(c):g}, width {float(w):g} ({function}{count})"


def _voi_range(fds, kind: str) -> tuple[float, float]:
    if kind.startswith("VOI LUT Sequence"):
        bits = int(fds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    return _modality_range(fds)


def _grey_frames(raw: np.ndarray, fds, photometric: str, *, voi: bool) -> tuple[np.ndarray, list[str]]:
    """Modality (then VOI) values of frames that share one data set; MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    notes = []
    values = apply_modality_lut(raw, fds)
    lo, hi = _modality_range(fds)
    if voi:
        kind = _voi_kind(fds)
        if kind is None:
            notes.append("voi=True, but the file has no VOI LUT or window: modality values kept")
        else:
            values = apply_voi_lut(values, fds)
            lo, hi = _voi_range(fds, kind)
            notes.append(f"VOI applied: {kind}; output range {min(lo, hi):g}..{max(lo, hi):g}")
    if photometric == "MONOCHROME1":
        # A reflection over the whole possible range, not over the observed
        # pixels, so that every slice of a series is inverted alike.
        values = (lo + hi) - np.asarray(values, dtype=np.float64)
        notes.append(
            f"MONOCHROME1 inverted so that higher is brighter: v' = {lo + hi:g} - v "
            f"(range {min(lo, hi):g}..{max(lo, hi):g} kept)"
        )
    return np.asarray(values, dtype=np.float32), notes


def _grey_values(
    raw: np.ndarray, ds, frames: Sequence[FrameHeader], photometric: str, *, voi: bool
) -> tuple[np.ndarray, list[str]]:
    if all(f.rescale is None and f.window is None for f in frames):
        return _grey_frames(raw, ds, photometric, voi=voi)
    out = np.empty(raw.shape, dtype=np.float32)
    notes: list[str] = []
    for k, frame in enumerate(frames):
        out[k], frame_notes = _grey_frames(raw[k], _frame_dataset(ds, frame), photometric, voi=voi)
        notes.extend(n for n in frame_notes if n not in notes)
    return out, notes


def _colour_values(samples: np.ndarray, ds, photometric: str, *, voi: bool) -> tuple[np.ndarray, list[str]]:
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(samples, ds)
    elif photometric in _YBR:
        # per_frame: converted in place frame by frame, so that an ultrasound
        # cine does not need a float32 copy of all its frames at once.
        rgb = convert_color_space(samples, photometric, "RGB", per_frame=True)
    elif photometric == "RGB":
        rgb = samples
    else:
        raise ValueError(f"pydicom gives no conversion from {photometric} to RGB")
    notes = ["voi=True ignored: VOI LUTs and windows apply to greyscale images only"] if voi else []
    return np.asarray(rgb, dtype=np.float32), notes


def pixel_values(
    ds, path: str, frames: Sequence[FrameHeader], *, photometric: str, samples: int, voi: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Decoded, converted values of every frame of a file (convention: `jaxmed.io.volume`).

    Args:
        ds: the data set, with its pixel data.
        path: the file, for errors.
        frames: the file's frame headers (per-frame rescale and window).
        photometric: PhotometricInterpretation of the file.
        samples: SamplesPerPixel (1 or 3).
        voi: apply the VOI LUT or first window (greyscale only).

    Returns:
        ``(values, notes)``: float32 ``[frames, rows, columns]`` (greyscale:
        modality values, or VOI output with `voi`; MONOCHROME1 inverted) or
        ``[frames, rows, columns, 3]`` (RGB); and what was done, in words.

    Raises:
        ImageReadError: the pixel data cannot be decoded or converted; the
            problem says why (and which package would decode it).
    """
    raw, decoded_as = decode(ds, path, frames=len(frames), samples=samples)
    try:
        if photometric in GREYSCALE:
            return _grey_values(raw, ds, frames, photometric, voi=voi)
        return _colour_values(raw, ds, decoded_as, voi=voi)
    except Exception as err:  # malformed LUTs, rescale values or colour data of a bad file
        stage = (
            "modality LUT / rescale / VOI" if photometric in GREYSCALE else f"{photometric} -> RGB conversion"
        )
        raise ImageReadError(path, f"{stage} could not be applied ({short_error(err)})") from None
