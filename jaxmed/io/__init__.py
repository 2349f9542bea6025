"""jaxmed.io: images in (DICOM files, multi-frame files and series, NIfTI) and out (`write_dicom_series`, `write_nifti`; output folders: `prepare_out_dir`).

Every reader returns a `Volume`: a float32 ``(z, y, x)`` array of modality
values (higher is brighter; MONOCHROME1 inverted), or ``(z, y, x, 3)`` RGB for
colour images, spacing in mm (unknown spacing: 1 mm, flagged and warned) and
an affine to LPS patient coordinates (the convention is stated in
`jaxmed.io.volume`). `to_greyscale` turns a colour volume into one channel.
Bad input raises `ImageReadError`, whose message names the file and the
problem; batch readers (`load_volumes`, `describe_paths`) collect
`ReadProblem`s instead and go on.
"""

from jaxmed.io.describe import describe_paths, format_description, iter_volumes, load_volumes
from jaxmed.io.dicom_volume import read_dicom
from jaxmed.io.geometry import axis_codes
from jaxmed.io.nifti import read_nifti
from jaxmed.io.outputs import load_average, prepare_out_dir
from jaxmed.io.read import read_image
from jaxmed.io.series import list_series, read_series
from jaxmed.io.volume import ImageReadError, ReadProblem, UnknownSpacingWarning, Volume, to_greyscale
from jaxmed.io.write import write_dicom_series, write_nifti

__all__ = [
    "ImageReadError",
    "ReadProblem",
    "UnknownSpacingWarning",
    "Volume",
    "axis_codes",
    "describe_paths",
    "format_description",
    "iter_volumes",
    "list_series",
    "load_average",
    "load_volumes",
    "prepare_out_dir",
    "read_dicom",
    "read_image",
    "read_nifti",
    "read_series",
    "to_greyscale",
    "write_dicom_series",
    "write_nifti",
]
