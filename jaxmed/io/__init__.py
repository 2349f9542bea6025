"""jaxmed.io: images in. DICOM files, multi-frame files and series, and NIfTI.

Every reader returns a `Volume`: a float32 ``(z, y, x)`` array of modality
values, spacing in mm and an affine to LPS patient coordinates (the convention
is stated in `jaxmed.io.volume`). Bad input raises `ImageReadError`, whose
message names the file and the problem; batch readers (`load_volumes`,
`describe_paths`) collect `ReadProblem`s instead and go on.
"""

from jaxmed.io.describe import describe_paths, format_description, iter_volumes, load_volumes
from jaxmed.io.dicom import read_dicom
from jaxmed.io.geometry import axis_codes
from jaxmed.io.nifti import read_nifti
from jaxmed.io.read import read_image
from jaxmed.io.series import list_series, read_series
from jaxmed.io.volume import ImageReadError, ReadProblem, Volume

__all__ = [
    "ImageReadError",
    "ReadProblem",
    "Volume",
    "axis_codes",
    "describe_paths",
    "format_description",
    "iter_volumes",
    "list_series",
    "load_volumes",
    "read_dicom",
    "read_image",
    "read_nifti",
    "read_series",
]
