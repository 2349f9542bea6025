"""Exams onto the canonical grid: geometry by hand (numpy), normalisation by hand, registration of a known shift."""

import math

import numpy as np
import pytest

from jaxmed.tasks.lesions.preprocess import (
    GeometryMismatch,
    PreprocessConfig,
    canonical_grid,
    normalise_channels,
    plane_affines,
    preprocess_exams,
    to_native,
)


def _stack(rotation, spacing, centre, shape):
    """Affine of a stack of ``shape`` voxels (z, y, x) of ``spacing`` centred on ``centre``, axes = rotation's columns."""
    a = np.eye(4)
    a[:3, :3] = rotation * np.asarray(spacing)
    a[:3, 3] = np.asarray(centre) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return a


def _rot_x(deg):
    t = math.radians(deg)
    r = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    # Voxel axes (z, y, x) along world (S, P, L) rotated about left-right: columns z, y, x.
    return r @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)


def test_canonical_grid_keeps_orientation_and_centre():
    t2 = _stack(_rot_x(12), (3.0, 0.65, 0.65), (4.0, -20.0, 7.0), (24, 96, 96))
    config = PreprocessConfig(shape=(16, 48, 48), spacing_mm=(3.0, 1.25, 1.25))
    c = canonical_grid(t2, (24, 96, 96), config)
    np.testing.assert_allclose(np.linalg.norm(c[:3, :3], axis=0), [3.0, 1.25, 1.25])
    np.testing.assert_allclose(c[:3, :3] / np.linalg.norm(c[:3, :3], axis=0), _rot_x(12), atol=1e-12)
    np.testing.assert_allclose(c[:3, :3] @ [7.5, 23.5, 23.5] + c[:3, 3], [4.0, -20.0, 7.0], atol=1e-9)
    with pytest.raises(GeometryMismatch, match="2D"):
        canonical_grid(t2, (24, 96, 96), PreprocessConfig())


def test_plane_affines_by_hand():
    r = _rot_x(-8)
    t2 = _stack(r, (3.0, 0.65, 0.65), (1.0, 2.0, 3.0), (1, 96, 96))
    # The DWI slice: same plane, its centre moved 4 mm along the rows' direction within the plane.
    dwi = _stack(r, (3.0, 2.0, 2.0), np.array([1.0, 2.0, 3.0]) + 4.0 * r[:, 1], (1, 36, 36))
    planes = plane_affines({"t2": t2, "dwi": dwi}, {"t2": (1, 96, 96), "dwi": (1, 36, 36)})
    centre = np.array([1.0, 2.0, 3.0])
    for name, a, shape in (("t2", t2, 96), ("dwi", dwi, 36)):
        for y, x in ((0, 0), (5, 17), (shape - 1, 3)):
            world = a @ [0, y, x, 1]
            expected = [r[:, 1] @ (world[:3] - centre), r[:, 2] @ (world[:3] - centre)]
            np.testing.assert_allclose((planes[name] @ [y, x, 1])[:2], expected, atol=1e-9)
    np.testing.assert_allclose(planes["t2"] @ [47.5, 47.5, 1], [0, 0, 1], atol=1e-9)
    off_plane = _stack(r, (3.0, 2.0, 2.0), centre + 2.0 * r[:, 0], (1, 36, 36))
    with pytest.raises(GeometryMismatch, match="not in the t2 slice's plane"):
        plane_affines({"t2": t2, "dwi": off_plane}, {"t2": (1, 96, 96), "dwi": (1, 36, 36)})
    tilted = _stack(_rot_x(-3), (3.0, 2.0, 2.0), centre, (1, 36, 36))
    with pytest.raises(GeometryMismatch, match="degrees apart"):
        plane_affines({"t2": t2, "dwi": tilted}, {"t2": (1, 96, 96), "dwi": (1, 36, 36)})
    with pytest.raises(GeometryMismatch, match="one slice"):
        plane_affines({"t2": t2, "dwi": dwi}, {"t2": (1, 96, 96), "dwi": (3, 36, 36)})


def test_normalise_channels_by_hand(rng):
    x = np.zeros((20, 20, 3), np.float32)
    x[2:, 3:] = rng.gamma(2.0, 100.0, size=(18, 17, 3))
    x[5, 5, 0] = 1e5  # an outlier the percentile clip removes
    out = np.asarray(normalise_channels(x, PreprocessConfig(shape=(20, 20), spacing_mm=(1.0, 1.0))))
    covered = x[..., 0] != 0
    for c in (0, 2):
        v = x[..., c][covered]
        lo, hi = np.percentile(v, [1.0, 99.0])
        clipped = np.clip(v, lo, hi)
        np.testing.assert_allclose(out[..., c][covered], (clipped - clipped.mean()) / clipped.std(), rtol=1e-3,
                                   atol=1e-4)
        np.testing.assert_array_equal(out[..., c][~covered], 0.0)
    np.testing.assert_allclose(out[..., 1], x[..., 1] * 1e-3, rtol=1e-6)  # ADC: 1e-6 -> 1e-3 mm^2/s


def _blobs(world_y, world_x):
    return (np.exp(-((world_y - 6) ** 2 + (world_x + 9) ** 2) / 60.0)
            + 0.7 * np.exp(-((world_y + 12) ** 2 + (world_x - 5) ** 2) / 30.0))


def test_preprocess_recovers_a_known_in_plane_shift():
    """A 2D exam whose ADC and DWI image the anatomy moved by (2.5, -1.5) mm in the plane."""
    r = _rot_x(6)
    centre = np.array([0.0, 10.0, -5.0])
    t2_aff = _stack(r, (3.0, 0.8, 0.8), centre, (1, 80, 80))
    dwi_aff = _stack(r, (3.0, 2.0, 2.0), centre, (1, 32, 32))
    shift = np.array([2.5, -1.5])

    def image(aff, n, moved):
        yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        world = np.einsum("ij,jyx->iyx", aff[:3, :3], np.stack([np.zeros_like(yy), yy, xx])) + aff[:3, 3, None, None]
        u = np.einsum("i,iyx->yx", r[:, 1], world - centre[:, None, None])
        v = np.einsum("i,iyx->yx", r[:, 2], world - centre[:, None, None])
        if moved:  # the anatomy at plane position p appears at p + shift
            u, v = u - shift[0], v - shift[1]
        return (100.0 + 900.0 * _blobs(u, v))[None].astype(np.float32)

    dwi = image(dwi_aff, 32, True)
    exam = {"t2": image(t2_aff, 80, False)[None], "adc": (3000.0 - dwi)[None], "dwi": dwi[None],
            "t2_affine": t2_aff[None], "adc_affine": dwi_aff[None], "dwi_affine": dwi_aff[None]}
    config = PreprocessConfig(shape=(32, 32), spacing_mm=(2.0, 2.0), num_steps=40)
    prepared = preprocess_exams(exam, config)
    assert prepared.image.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(prepared.motion_mm[0], np.hypot(*shift), atol=0.4)
    t2, dwi = prepared.image[0, 4:-4, 4:-4, 0], prepared.image[0, 4:-4, 4:-4, 2]
    assert np.corrcoef(t2.ravel(), dwi.ravel())[0, 1] > 0.98
    # Back to the T2 grid: a linear ramp in plane mm survives the round trip (linear interpolation is exact on it).
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    plane = np.einsum("ij,jyx->iyx", prepared.affine[0][:2, :2], np.stack([yy, xx])) + prepared.affine[0][:2, 2, None, None]
    ramp = plane[0] + 2 * plane[1]
    native = to_native(ramp, prepared.affine[0], prepared.t2_affine[0], (1, 80, 80))
    ty, tx = np.meshgrid(np.arange(80), np.arange(80), indexing="ij")
    t2_plane = np.einsum("ij,jyx->iyx", prepared.t2_affine[0][:2, :2], np.stack([ty, tx])) \
        + prepared.t2_affine[0][:2, 2, None, None]
    inside = (np.abs(t2_plane[0]) < 28) & (np.abs(t2_plane[1]) < 28)
    np.testing.assert_allclose(native[0][inside], (t2_plane[0] + 2 * t2_plane[1])[inside], atol=1e-3)


def test_site_exams_refuses_sites_outside_the_table():
    """A site is a name in SITES or a profile named by one (its patients come from that name's key)."""
    import dataclasses

    import jax

    from jaxmed.data.phantoms import SITES
    from jaxmed.tasks.lesions import site_exams

    config = PreprocessConfig(shape=(32, 32), spacing_mm=(1.8, 1.8), num_steps=2)
    with pytest.raises(ValueError, match="unknown site 'Z'"):
        site_exams(jax.random.key(0), "Z", 2, preprocess=config)
    with pytest.raises(ValueError, match="unknown site 'E'"):
        site_exams(jax.random.key(0), dataclasses.replace(SITES["D"], name="E"), 2, preprocess=config)
