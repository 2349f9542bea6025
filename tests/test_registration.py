"""Rigid registration: resampling between grids, transforms, metrics, recovery of known motions.

Phantoms are smooth functions of the world position (mm), so a moved copy is
evaluated exactly, never interpolated: the only error left is the
registration's. Displacement errors are measured at the fixed grid's corners
(the worst place for a rotation error), in fixed voxels along each axis.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from numpy.testing import assert_allclose
from pydicom.data import get_testdata_file

from jaxmed.data.registration import (
    RigidParams,
    apply_rigid,
    co_register,
    grid_center,
    identity_params,
    mutual_information,
    ncc,
    register_rigid,
    rigid_matrix,
    rotation_matrix,
)
from jaxmed.data.spatial import resample_to
from jaxmed.io import UnknownSpacingWarning, read_image

# (z, y, x) voxel axes along world (z_p, y_p, x_p), as an axial DICOM series.
_AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _affine(spacing, origin, rotation=None):
    d = len(spacing)
    affine = np.eye(d + 1)
    axes = _AXIAL if d == 3 else np.eye(2)[::-1]
    affine[:-1, :-1] = (np.eye(d) if rotation is None else rotation) @ axes @ np.diag(spacing)
    affine[:-1, -1] = origin
    return affine


def _world(affine, shape):
    idx = np.indices(shape).reshape(len(shape), -1).astype(np.float64)
    return affine[:-1, :-1] @ idx + affine[:-1, -1:]


class _Phantom:
    """A body with smooth edges holding Gaussian blobs, sized to a grid's field of view."""

    def __init__(self, affine, shape, seed=0):
        rng = np.random.default_rng(seed)
        d = len(shape)
        self.extent = np.abs(affine[:-1, :-1] @ np.asarray(shape, np.float64))
        self.center = np.asarray(grid_center(affine, shape), np.float64)
        self.blobs = rng.uniform(-0.35, 0.35, size=(12, d)) * self.extent
        self.widths = rng.uniform(0.08, 0.2, size=(12, d)) * self.extent
        self.amps = rng.uniform(0.3, 1.0, size=12)

    def __call__(self, points):  # [d, N] world mm -> [N]
        rel = points - self.center[:, None]
        radius = np.sqrt(np.sum((rel / (0.42 * self.extent[:, None])) ** 2, axis=0))
        body = 1.0 / (1.0 + np.exp(12.0 * (radius - 1.0)))
        blobs = sum(
            a * np.exp(-0.5 * np.sum(((rel - c[:, None]) / w[:, None]) ** 2, axis=0))
            for c, w, a in zip(self.blobs, self.widths, self.amps, strict=True)
        )
        return body * (0.3 + blobs)

    def sample(self, affine, shape, matrix=None):
        """The phantom on a grid, moved so that ``moving(matrix @ p) = phantom(p)``."""
        points = _world(affine, shape)
        if matrix is not None:
            inv = np.linalg.inv(matrix)
            points = inv[:-1, :-1] @ points + inv[:-1, -1:]
        return self(points).reshape(shape).astype(np.float32)


def _other_contrast(image):
    # Monotone but non-linear, and inverted: bright becomes dark.
    return (1.0 - np.sqrt(image / image.max())).astype(np.float32)


def _motion(degrees, translation, center):
    params = RigidParams(jnp.deg2rad(jnp.asarray(degrees, jnp.float32)), jnp.asarray(translation, jnp.float32))
    return np.asarray(rigid_matrix(params, center), np.float64)


def _errors(matrix, truth, affine, shape):
    """Worst displacement error at the grid's corners (fixed voxels, mm) and the rotation error (degrees)."""
    matrix = np.asarray(matrix, np.float64)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(len(shape), -1)
    world = affine[:-1, :-1] @ corners + affine[:-1, -1:]
    diff = (truth - matrix)[:-1, :-1] @ world + (truth - matrix)[:-1, -1:]
    in_voxels = np.linalg.solve(affine[:-1, :-1], diff)
    relative = matrix[:-1, :-1].T @ truth[:-1, :-1]
    cos = (np.trace(relative) - 1.0) / 2.0 if len(shape) == 3 else relative[0, 0]
    degrees = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return float(np.abs(in_voxels).max()), float(np.linalg.norm(diff, axis=0).max()), float(degrees)


# An axial stack of 0.5 x 0.5 mm pixels and 3 mm slices, as prostate T2.
SHAPE = (16, 48, 48)
ANISO = _affine((3.0, 0.5, 0.5), (-12.0, -8.0, 30.0))
DEGREES, SHIFT_MM = (3.0, 3.0, 3.0), (2.3, -1.7, 1.1)  # 1.7 mm = 3.4 in-plane voxels


# --------------------------------------------------------------------------
# Resampling between grids (jaxmed.data.spatial.resample_to, the one resampler)


def test_resample_integer_shift_is_exact(rng):
    array = rng.normal(size=(6, 9, 8)).astype(np.float32)
    src = _affine((2.0, 0.7, 0.7), (10.0, -5.0, 3.0))
    shift = np.array([1, 2, -1])  # target voxel j is source voxel j + shift
    dst = src.copy()
    dst[:3, 3] = src[:3, :3] @ shift + src[:3, 3]
    out = np.asarray(jax.jit(resample_to, static_argnums=3)(array, src, dst, (4, 6, 8)))
    expected = np.zeros((4, 6, 8), np.float32)
    expected[:, :, 1:] = array[1:5, 2:8, 0:7]  # x index -1 falls outside: the fill, 0
    assert_allclose(out, expected, atol=1e-5)


def test_resample_2x_downsampling_picks_every_other_voxel(rng):
    array = rng.normal(size=(8, 10, 12)).astype(np.float32)
    src = _affine((1.0, 0.5, 0.5), (3.0, 4.0, 5.0), rotation=np.asarray(rotation_matrix(jnp.array([0.1, -0.2, 0.3]))))
    dst = src @ np.diag([2.0, 2.0, 2.0, 1.0])
    out = np.asarray(resample_to(array, src, dst, (4, 5, 6)))
    assert_allclose(out, array[::2, ::2, ::2], atol=1e-5)


def test_resample_matches_scipy_affine_transform(rng):
    array = rng.normal(size=(10, 14, 12)).astype(np.float32)
    src = _affine((2.5, 0.9, 1.1), (-40.0, 12.0, 80.0))
    oblique = np.asarray(rotation_matrix(jnp.array([0.05, 0.1, 0.3])))
    dst = _affine((2.0, 1.3, 1.0), (-38.0, 14.0, 81.0), rotation=oblique)
    out = np.asarray(resample_to(array, src, dst, (9, 12, 11), mode="nearest"))
    dst_to_src = np.linalg.solve(src, dst)  # output index o -> input index M o + offset
    expected = scipy.ndimage.affine_transform(
        array, dst_to_src[:3, :3], offset=dst_to_src[:3, 3], output_shape=(9, 12, 11), order=1, mode="nearest"
    )
    assert_allclose(out, expected, atol=1e-4)


def test_resample_rejects_a_singular_affine():
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="src_affine is not invertible"):
        resample_to(np.zeros((3, 4, 5)), singular, np.eye(4), (3, 4, 5))


# --------------------------------------------------------------------------
# Transforms and metrics


def test_rigid_matrix_by_hand():
    center = np.array([10.0, -4.0, 2.0])
    # 90 degrees about world z: x -> y, y -> -x, about the centre; then shift.
    params = RigidParams(jnp.array([0.0, 0.0, np.pi / 2]), jnp.array([1.0, 2.0, 3.0]))
    matrix = np.asarray(jax.jit(rigid_matrix)(params, center))
    point = center + np.array([5.0, 0.0, 7.0])
    expected = center + np.array([0.0, 5.0, 7.0]) + np.array([1.0, 2.0, 3.0])
    assert_allclose(matrix @ np.append(point, 1.0), np.append(expected, 1.0), atol=1e-5)
    rotation = np.asarray(rotation_matrix(jnp.array([0.3, -0.2, 0.5])))
    assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
    assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-6)
    # Composition order R = R_z R_y R_x, about the world axes.
    assert_allclose(rotation, scipy_rotation([0.3, -0.2, 0.5]), atol=1e-6)
    # 2D: one angle, counter-clockwise from world axis 0 to axis 1.
    m2 = np.asarray(rigid_matrix(RigidParams(jnp.array([np.pi / 2]), jnp.zeros(2)), np.zeros(2)))
    assert_allclose(m2 @ [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], atol=1e-6)
    assert_allclose(np.asarray(rigid_matrix(identity_params(3), center)), np.eye(4))


def scipy_rotation(angles):
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles).as_matrix()  # extrinsic x, then y, then z


def _parzen_numpy(values, lo, hi, bins):
    position = 2 + (np.clip(values, lo, hi) - lo) / (hi - lo) * (bins - 5)
    u = np.abs(position[:, None] - np.arange(bins)[None, :])
    return np.where(u < 1, 2 / 3 - u**2 + u**3 / 2, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))


def test_metrics_against_numpy(rng):
    a = rng.uniform(size=(6, 7, 8))
    b = np.sin(3 * a) + 0.1 * rng.normal(size=a.shape)
    w = (rng.uniform(size=a.shape) > 0.3).astype(np.float64)
    bins = 16
    ka = _parzen_numpy(a.ravel(), a.min(), a.max(), bins) * w.ravel()[:, None]
    kb = _parzen_numpy(b.ravel(), b.min(), b.max(), bins)
    joint = ka.T @ kb / w.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    expected_mi = np.sum(joint[nz] * np.log(joint[nz] / outer[nz]))
    mi = jax.jit(lambda a, b, w: mutual_information(a, b, weights=w, bins=bins))
    assert_allclose(float(mi(a, b, w)), expected_mi, rtol=1e-4)
    expected_ncc = np.corrcoef(a.ravel()[w.ravel() > 0], b.ravel()[w.ravel() > 0])[0, 1]
    assert_allclose(float(jax.jit(ncc)(a, b, weights=w)), expected_ncc, rtol=1e-4)
    # MI sees through a monotone remapping; NCC only through an affine one.
    assert_allclose(float(ncc(a, 3.0 * a - 1.0)), 1.0, atol=1e-5)
    ones = np.ones_like(a)
    assert float(mi(a, -np.exp(a), ones)) > 0.9 * float(mi(a, a, ones))
    big = rng.uniform(size=(20000,))
    assert float(mi(big, rng.uniform(size=big.shape), np.ones_like(big))) < 0.02  # independent: ~0


# --------------------------------------------------------------------------
# Recovery of known rigid motions


@pytest.mark.parametrize("metric", ["ncc", "mi"])
def test_recovers_a_known_motion_on_anisotropic_voxels(metric):
    phantom = _Phantom(ANISO, SHAPE)
    truth = _motion(DEGREES, SHIFT_MM, grid_center(ANISO, SHAPE))
    fixed = phantom.sample(ANISO, SHAPE)
    moving = phantom.sample(ANISO, SHAPE, truth)
    if metric == "mi":
        moving = _other_contrast(moving)
    result = register_rigid(fixed, moving, fixed_affine=ANISO, moving_affine=ANISO, metric=metric)
    voxels, mm, degrees = _errors(result.matrix, truth, ANISO, SHAPE)
    # Measured: 0.05 (ncc) and 0.03 (mi) voxel, 0.06 and 0.03 degree.
    assert voxels < 0.5 and degrees < 1.0
    assert mm < 0.25  # right in mm: half an in-plane voxel, a sixth of a slice
    assert_allclose(np.asarray(result.params.translation), SHIFT_MM, atol=0.25)
    assert_allclose(np.rad2deg(np.asarray(result.params.angles)), DEGREES, atol=1.0)
    history = np.asarray(result.metric_history)
    assert history.shape == (3 * 60,) and history[59] > history[0]


def test_recovers_a_known_motion_on_a_real_mr_volume():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownSpacingWarning)  # in-plane spacing: 1 mm assumed
        volume = read_image(get_testdata_file("emri_small.dcm"))  # real multi-frame MR, 10 x 64 x 64
    fixed, affine = volume.array, volume.affine
    truth = _motion((-3.0, 2.0, 4.0), (-1.5, 2.0, -1.0), grid_center(affine, volume.shape))
    # moving(truth @ p) = fixed(p). "nearest" so that the 10-slice slab's end
    # slices are not darkened by blending with a zero fill.
    moving = resample_to(fixed, affine, np.linalg.inv(truth) @ affine, volume.shape, mode="nearest")
    result = register_rigid(fixed, moving, fixed_affine=affine, moving_affine=affine, metric="ncc")
    voxels, _, degrees = _errors(result.matrix, truth, affine, volume.shape)
    assert voxels < 0.5 and degrees < 1.0  # measured: 0.06 voxel, 0.07 degree


def test_batch_of_exams_equals_each_alone():
    affines = np.stack([ANISO, _affine((3.0, 0.5, 0.5), (40.0, 2.0, -7.0))])
    phantoms = [_Phantom(a, SHAPE, seed=s) for s, a in enumerate(affines)]
    truths = [
        _motion(DEGREES, SHIFT_MM, grid_center(affines[0], SHAPE)),
        _motion((-2.0, 1.0, 4.0), (-1.0, 0.8, 2.0), grid_center(affines[1], SHAPE)),
    ]
    fixed = np.stack([p.sample(a, SHAPE) for p, a in zip(phantoms, affines, strict=True)])
    moving = np.stack([p.sample(a, SHAPE, t) for p, a, t in zip(phantoms, affines, truths, strict=True)])
    batch = register_rigid(fixed, moving, fixed_affine=affines, moving_affine=affines, metric="ncc")
    assert batch.matrix.shape == (2, 4, 4) and batch.metric_history.shape == (2, 180)
    for k in range(2):
        alone = register_rigid(fixed[k], moving[k], fixed_affine=affines[k], moving_affine=affines[k], metric="ncc")
        assert_allclose(np.asarray(batch.matrix[k]), np.asarray(alone.matrix), atol=1e-4)
        assert_allclose(np.asarray(batch.metric_history[k]), np.asarray(alone.metric_history), atol=1e-5)
        voxels, _, degrees = _errors(batch.matrix[k], truths[k], affines[k], SHAPE)
        assert voxels < 0.5 and degrees < 1.0


def test_2d_in_plane_registration():
    shape = (64, 64)
    affine = _affine((0.8, 0.8), (-20.0, 15.0))
    phantom = _Phantom(affine, shape)
    truth = _motion((4.0,), (1.9, -1.3), grid_center(affine, shape))
    fixed = phantom.sample(affine, shape)
    moving = _other_contrast(phantom.sample(affine, shape, truth))
    # Two levels: a third of the compile time; the default three are tested in 3D.
    result = register_rigid(fixed, moving, fixed_affine=affine, moving_affine=affine, metric="mi", levels=(2, 1))
    assert result.params.angles.shape == (1,) and result.matrix.shape == (3, 3)
    voxels, _, degrees = _errors(result.matrix, truth, affine, shape)
    assert voxels < 0.5 and degrees < 1.0  # measured: 0.014 voxel, 0.014 degree


def test_co_register_an_exam_on_different_grids():
    # T2 on 0.5 x 0.5 x 3 mm; "adc" and "dwi" on a 2x coarser in-plane grid,
    # shifted and rotated in their headers, and moved (patient motion).
    header_rotation = np.asarray(rotation_matrix(jnp.deg2rad(jnp.array([2.0, -1.0, 6.0]))))
    coarse_shape = (16, 28, 28)  # a field of view of 28 mm in-plane, T2's 24 mm
    coarse = _affine((3.0, 1.0, 1.0), (0.0, 0.0, 0.0), rotation=header_rotation)
    center = np.asarray(grid_center(ANISO, SHAPE))
    coarse[:3, 3] = center + np.array([1.0, -1.5, 2.0]) - np.asarray(grid_center(coarse, coarse_shape))
    phantom = _Phantom(ANISO, SHAPE)
    truths = {
        "adc": _motion((2.0, -3.0, 3.0), (1.5, -1.0, 2.0), center),
        "dwi": _motion((-2.0, 2.0, -1.0), (-1.0, 1.2, 0.0), center),
    }
    volumes = {
        "t2": (phantom.sample(ANISO, SHAPE), ANISO),
        "adc": (_other_contrast(phantom.sample(coarse, coarse_shape, truths["adc"])), coarse),
        "dwi": (phantom.sample(coarse, coarse_shape, truths["dwi"]) ** 2, coarse),
    }
    # Two levels suffice for 3 mm slices (factor 4 shrinks only the 0.5 mm axes) and compile faster.
    stacked, results = co_register(volumes, reference="t2", levels=(2, 1))
    assert stacked.shape == (*SHAPE, 3) and set(results) == {"adc", "dwi"}
    for name, truth in truths.items():
        voxels, _, degrees = _errors(results[name].matrix, truth, ANISO, SHAPE)
        assert voxels < 0.5 and degrees < 1.0, name  # measured: 0.06 and 0.15 voxel, 0.07 and 0.17 degree
    # Each channel is z-scored over the voxels its image covers.
    t2 = np.asarray(stacked[..., 0])
    assert_allclose([t2.mean(), t2.std()], [0.0, 1.0], atol=1e-3)
    # The moved contrast lands where the anatomy is: it is the T2 remapped.
    adc_truth = _other_contrast(phantom.sample(ANISO, SHAPE))
    covered = np.asarray(stacked[..., 1]) != 0
    assert covered.mean() > 0.9  # 0.94: the coarse grid is rotated against T2's
    assert np.corrcoef(np.asarray(stacked[..., 1])[covered], adc_truth[covered])[0, 1] > 0.99  # 0.9998


# --------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_errors():
    fixed = np.zeros((8, 8, 8), np.float32)
    eye = np.eye(4)
    with pytest.raises(ValueError, match="unknown metric 'ssd'"):
        register_rigid(fixed, fixed, fixed_affine=eye, moving_affine=eye, metric="ssd")
    with pytest.raises(ValueError, match="moving_affine is not invertible"):
        register_rigid(fixed, fixed, fixed_affine=eye, moving_affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    two = np.stack([eye] * 2)
    with pytest.raises(ValueError, match="batch sizes differ"):
        register_rigid(np.zeros((2, 8, 8, 8)), np.zeros((3, 8, 8, 8)), fixed_affine=two, moving_affine=two[[0, 1, 1]])
    with pytest.raises(ValueError, match="fixed must have 4 axes"):
        register_rigid(fixed, np.zeros((2, 8, 8, 8)), fixed_affine=two, moving_affine=two)
    with pytest.raises(ValueError, match="must be an array"):
        register_rigid([np.zeros((8, 8, 8)), np.zeros((6, 8, 8))], fixed, fixed_affine=eye, moving_affine=eye)
    with pytest.raises(ValueError, match="mask shape"):
        register_rigid(fixed, fixed, fixed_affine=eye, moving_affine=eye, mask=np.ones((8, 8)))
    with pytest.raises(ValueError, match="num_steps"):
        register_rigid(fixed, fixed, fixed_affine=eye, moving_affine=eye, num_steps=(10, 10))
    with pytest.raises(ValueError, match="must be concrete"):
        jax.jit(lambda a: register_rigid(fixed, fixed, fixed_affine=a, moving_affine=eye))(eye)
    with pytest.raises(ValueError, match="reference 't2' is not among"):
        co_register({"adc": (fixed, eye)}, reference="t2")
    with pytest.raises(ValueError, match="Volume or an"):
        co_register({"t2": (fixed, eye), "adc": fixed}, reference="t2")


def test_apply_rigid_identity_is_header_resampling(rng):
    moving = rng.normal(size=(6, 10, 10)).astype(np.float32)
    src = _affine((2.0, 1.0, 1.0), (1.0, 2.0, 3.0))
    dst = _affine((2.5, 1.2, 0.9), (0.0, 3.0, 4.0))
    out = apply_rigid(moving, np.eye(4), moving_affine=src, fixed_affine=dst, fixed_shape=(5, 8, 9))
    assert_allclose(np.asarray(out), np.asarray(resample_to(moving, src, dst, (5, 8, 9))), atol=1e-6)
