"""3D -> 2D slicing: which slices, in which orientation, with which indices."""

from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from jaxmed.data.slicing import Slices, slice_volume


@pytest.fixture
def volume(rng):
    return rng.normal(size=(5, 6, 7)).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_every_slice_along_each_axis(volume, axis):
    slices = slice_volume(volume, axis=axis)
    assert isinstance(slices, Slices)
    n = volume.shape[axis]
    assert_array_equal(slices.indices, np.arange(n))
    for i in range(n):
        assert_array_equal(slices.images[i], np.take(volume, i, axis=axis))
    assert slices.images.dtype == np.float32


def test_axis_1_keeps_z_then_x(volume):
    slices = slice_volume(volume, axis=1)
    assert slices.images.shape == (6, 5, 7)
    assert slices.images[2, 4, 3] == volume[4, 2, 3]


def test_skips_slices_with_little_foreground():
    vol = np.zeros((6, 10, 10), np.float32)
    # Foreground fraction per slice (threshold 0.5): 0, 0.05, 0.2, 0.5, 0.2, 0.01.
    for z, count in enumerate([0, 5, 20, 50, 20, 1]):
        vol[z].flat[:count] = 1.0
    vol[0].flat[:90] = 0.4  # bright-ish but below threshold
    slices = slice_volume(vol, min_foreground=0.2, threshold=0.5)
    assert_array_equal(slices.indices, [2, 3, 4])
    assert_array_equal(slices.images, vol[[2, 3, 4]])
    assert_array_equal(slice_volume(vol, min_foreground=0.05, threshold=0.5, step=2).indices, [2, 4])
    assert_array_equal(slice_volume(vol, min_foreground=0.05, threshold=0.0).indices, [0, 1, 2, 3, 4])
    empty = slice_volume(vol, min_foreground=1.0, threshold=0.5)
    assert empty.images.shape == (0, 10, 10) and empty.indices.shape == (0,)


def test_accepts_a_volume(volume):
    from jaxmed.io import Volume

    vol = Volume(
        array=volume,
        spacing=(2.0, 1.0, 1.0),
        affine=np.diag([2.0, 1.0, 1.0, 1.0]),
        modality="MR",
        series_uid=None,
        instance_uids=(),
        source="brain.nii.gz",
    )
    slices = slice_volume(vol, axis=2, step=3)
    assert_array_equal(slices.indices, [0, 3, 6])
    assert_array_equal(slices.images, np.moveaxis(volume, 2, 0)[[0, 3, 6]])


def test_bad_input_names_the_source(volume):
    with pytest.raises(ValueError, match=r"scan\.dcm: expected a 3D volume.*\(6, 7\)"):
        slice_volume(SimpleNamespace(array=volume[0], source="scan.dcm"))
    bad = volume.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"scan\.dcm: volume holds NaN"):
        slice_volume(SimpleNamespace(array=bad, source="scan.dcm"))
    with pytest.raises(ValueError, match="axis"):
        slice_volume(volume, axis=3)
    with pytest.raises(ValueError, match="min_foreground"):
        slice_volume(volume, min_foreground=1.5)
