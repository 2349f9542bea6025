"""Resampling and crop/pad: identities, exact linear ramps, scipy.ndimage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from numpy.testing import assert_allclose

from jaxmed.data.spatial import (
    center_crop_or_pad,
    resample_to,
    resample_to_shape,
    resample_to_spacing,
    scaled_grid,
)


def _rotation_z(degrees):
    t = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _affine(spacing, degrees, origin):
    a = np.eye(4)
    a[:3, :3] = _rotation_z(degrees) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


SRC = _affine([2.5, 0.9, 1.1], 0.0, [-40.0, 12.0, 80.0])
DST = _affine([2.0, 1.3, 1.0], 17.0, [-38.0, 14.0, 81.0])


def test_same_grid_is_identity(rng):
    array = rng.normal(size=(5, 9, 7)).astype(np.float32)
    affine = _affine([3.0, 0.7, 0.7], 23.0, [100.0, -120.0, 60.0])
    out = jax.jit(resample_to, static_argnums=3)(array, affine, affine, array.shape)
    assert_allclose(np.asarray(out), array, atol=1e-5)


def test_linear_ramp_is_exact():
    # A field linear in world coordinates is linear in any grid's indices,
    # so trilinear interpolation reproduces it wherever no edge is involved.
    shape = (12, 20, 22)
    gradient = np.array([0.3, -0.2, 0.5])  # per mm, world axes

    def ramp(affine, idx):
        world = affine[:3, :3] @ idx + affine[:3, 3:4]
        return gradient @ world + 7.0

    src_idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    array = ramp(SRC, src_idx).reshape(shape).astype(np.float32)
    dst_shape = (8, 14, 15)
    out = np.asarray(resample_to(array, SRC, DST, dst_shape))
    dst_idx = np.indices(dst_shape).reshape(3, -1).astype(np.float64)
    expected = ramp(DST, dst_idx).reshape(dst_shape)
    src_of_dst = np.linalg.solve(SRC, DST @ np.vstack([dst_idx, np.ones(dst_idx.shape[1])]))[:3]
    inside = np.all((src_of_dst >= 0) & (src_of_dst <= np.array(shape)[:, None] - 1), axis=0).reshape(dst_shape)
    assert inside.sum() > 200  # the grids overlap enough for the test to mean something
    assert_allclose(out[inside], expected[inside], atol=2e-4)


def test_matches_scipy_map_coordinates(rng):
    array = rng.normal(size=(10, 16, 18)).astype(np.float32)
    dst_shape = (9, 15, 15)
    out = np.asarray(resample_to(array, SRC, DST, dst_shape, cval=-1.0))
    idx = np.indices(dst_shape).reshape(3, -1).astype(np.float64)
    coords = np.linalg.solve(SRC, DST @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    expected = scipy.ndimage.map_coordinates(array, coords, order=1, mode="grid-constant", cval=-1.0)
    assert_allclose(out.ravel(), expected, atol=1e-4)
    nearest = np.asarray(resample_to(array, SRC, DST, dst_shape, order=0, mode="nearest"))
    # scipy rounds halves to even, jax up; no coordinate here lands on a half.
    assert_allclose(nearest.ravel(), scipy.ndimage.map_coordinates(array, coords, order=0, mode="nearest"))


@pytest.mark.parametrize("new_shape", [(20, 7), (6, 30)])
def test_resample_to_shape_matches_scipy_zoom(rng, new_shape):
    image = rng.normal(size=(10, 14)).astype(np.float32)
    out = np.asarray(jax.jit(resample_to_shape, static_argnums=1)(image, new_shape))
    zoom = np.array(new_shape) / np.array(image.shape)
    expected = scipy.ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)
    assert out.shape == new_shape
    assert_allclose(out, expected, atol=1e-5)


def test_resample_to_spacing_keeps_world_ramp():
    spacing, new_spacing = (3.0, 1.0, 0.8), (1.5, 2.0, 0.8)
    shape = (8, 21, 10)
    affine = np.diag([*spacing, 1.0])
    idx = np.indices(shape).astype(np.float64)
    array = (2.0 * idx[0] * spacing[0] - idx[1] * spacing[1] + 0.5 * idx[2] * spacing[2]).astype(np.float32)
    out = np.asarray(resample_to_spacing(array, spacing, new_spacing))
    new_affine, new_shape = scaled_grid(affine, shape, new_spacing=new_spacing)
    assert out.shape == new_shape == (16, 10, 10)
    assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), new_spacing)
    # The field of view's centre stays put.
    assert_allclose(new_affine @ [*((np.array(new_shape) - 1) / 2), 1], affine @ [*((np.array(shape) - 1) / 2), 1])
    new_idx = np.indices(new_shape).reshape(3, -1).astype(np.float64)
    world = new_affine[:3, :3] @ new_idx + new_affine[:3, 3:4]
    expected = (2.0 * world[0] - world[1] + 0.5 * world[2]).reshape(new_shape)
    src = np.linalg.solve(affine, new_affine @ np.vstack([new_idx, np.ones(new_idx.shape[1])]))[:3]
    inside = np.all((src >= 0) & (src <= np.array(shape)[:, None] - 1), axis=0).reshape(new_shape)
    assert inside.mean() > 0.7
    assert_allclose(out[inside], expected[inside], atol=1e-4)


def test_scaled_grid_new_shape_keeps_extent():
    affine = _affine([2.0, 1.0, 1.0], 30.0, [5.0, 6.0, 7.0])
    new_affine, new_shape = scaled_grid(affine, (10, 20, 30), new_shape=(5, 40, 30))
    assert new_shape == (5, 40, 30)
    assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), [4.0, 0.5, 1.0])
    # Corner of voxel 0 (index -0.5) is the same world point on both grids.
    assert_allclose(new_affine @ [-0.5, -0.5, -0.5, 1.0], affine @ [-0.5, -0.5, -0.5, 1.0], atol=1e-12)


def test_center_crop_or_pad_by_hand():
    array = np.arange(7 * 6, dtype=np.float32).reshape(7, 6)
    out = np.asarray(jax.jit(center_crop_or_pad, static_argnums=1)(array, (4, 9)))
    expected = np.full((4, 9), -1.0, np.float32)
    expected[:, 1:7] = array[1:5]  # crop 7 -> 4 starts at 1; pad 6 -> 9 puts 1 before
    assert_allclose(np.asarray(center_crop_or_pad(array, (4, 9), cval=-1.0)), expected)
    assert out.shape == (4, 9)
    # Padding a crop back puts the kept pixels where they were.
    back = np.asarray(center_crop_or_pad(center_crop_or_pad(array, (3, 3)), array.shape))
    kept = back != 0
    assert kept.sum() == 9 and np.all(back[kept] == array[kept])


def test_vmap_equals_loop(rng):
    images = rng.normal(size=(3, 12, 12)).astype(np.float32)
    theta = np.deg2rad(np.array([0.0, 10.0, -25.0]))
    affines = np.zeros((3, 3, 3))
    affines[:, 0, 0] = affines[:, 1, 1] = np.cos(theta)
    affines[:, 0, 1], affines[:, 1, 0] = -np.sin(theta), np.sin(theta)
    affines[:, :2, 2] = 1.5
    affines[:, 2, 2] = 1.0
    eye = jnp.eye(3)
    f = jax.jit(jax.vmap(lambda im, a: resample_to(im, eye, a, (10, 11))))
    looped = np.stack([np.asarray(resample_to(im, eye, a, (10, 11))) for im, a in zip(images, affines)])
    assert_allclose(np.asarray(f(images, affines)), looped, atol=1e-5)


def test_bad_arguments(rng):
    array = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match="dst_shape must have 3 entries"):
        resample_to(array, np.eye(4), np.eye(4), (4, 5))
    with pytest.raises(ValueError, match="src_affine must be"):
        resample_to(array, np.eye(3), np.eye(4), (4, 5, 6))
    with pytest.raises(ValueError, match="order must be 0 or 1"):
        resample_to(array, np.eye(4), np.eye(4), (4, 5, 6), order=3)
    with pytest.raises(ValueError, match="exactly one"):
        scaled_grid(np.eye(4), (4, 5, 6))
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        resample_to_spacing(array, (1.0, 1.0), (1.0, 1.0, 1.0))
