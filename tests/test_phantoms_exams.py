"""Tests of the physical-space MRI phantom (grades, lesion maps) and of site exams (jaxmed.data.phantoms.exams)."""

import dataclasses
import functools
import json
import math

import jax
import numpy as np
import pydicom
import pytest
import scipy.ndimage

from jaxmed.data.phantoms import (
    EXAM_TISSUES,
    SITES,
    ExamConfig,
    MRIPhantomConfig,
    PatientConfig,
    make_dataset,
    sample_exam,
    sample_patient,
    write_exam,
)
from jaxmed.data.phantoms import patient as patient_model
from jaxmed.io import read_image, read_series

LABEL = {name: t.label for name, t in EXAM_TISSUES.items()}
WITH_LESIONS = PatientConfig(lesion_probability=1.0)
PHYSICAL = MRIPhantomConfig(shape=(10, 40, 40), spacing_mm=(4.0, 1.5, 1.5), patient=WITH_LESIONS)


def _grade_by_hand(adc, volume, dwi):
    score = sum(adc < t for t in (1.2, 1.0, 0.85, 0.7)) + sum(volume >= t for t in (100, 500, 1500))
    score += sum(dwi >= t for t in (1.5, 2.5))
    return 1 + sum(score >= t for t in (4, 6, 7, 8))


# --------------------------------------------------------------------------- #
# The grade rule and the patient
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "adc, volume, dwi, score, grade",
    [
        (1.3, 80.0, 1.2, 0, 1),  # a faint small lesion
        (1.2, 100.0, 1.5, 2, 1),  # thresholds: ADC strictly below, volume and DWI at or above
        (1.1, 600.0, 1.6, 4, 2),
        (0.9, 600.0, 2.0, 5, 2),
        (0.84, 600.0, 2.0, 6, 3),
        (0.8, 1000.0, 2.6, 7, 4),
        (0.69, 1000.0, 2.6, 8, 5),
        (0.65, 2000.0, 3.0, 9, 5),
    ],
)
def test_grade_rule_on_hand_picked_values(adc, volume, dwi, score, grade):
    assert int(patient_model.lesion_score(adc, volume, dwi)) == score
    assert int(jax.jit(patient_model.lesion_grade)(adc, volume, dwi)) == grade == _grade_by_hand(adc, volume, dwi)


@pytest.fixture(scope="module")
def patients():
    keys = jax.random.split(jax.random.key(0), 400)
    out = jax.jit(jax.vmap(functools.partial(sample_patient, config=PatientConfig())))(keys)
    return {k: np.asarray(v) for k, v in out.items()}


def test_patient_lesions_follow_the_rule(patients):
    p = patients
    exists = p["lesion_exists"]
    assert 0.4 < exists.any(axis=1).mean() < 0.8 and exists.sum() > 200
    expected = _grade_by_hand(p["lesion_adc"], p["lesion_volume_mm3"], p["lesion_dwi_contrast"])
    np.testing.assert_array_equal(p["lesion_grade"], np.where(exists, expected, 0))
    np.testing.assert_array_equal(p["lesion_significant"], p["lesion_grade"] >= 2)
    grades = np.bincount(p["lesion_grade"][exists], minlength=6)[1:]
    assert (grades > 0).all() and grades[0] > 0.2 * exists.sum()  # grade 1 lesions are common
    np.testing.assert_allclose(p["lesion_volume_mm3"], 4 / 3 * np.pi * p["lesion_semi_axes_mm"].prod(-1), rtol=1e-5)
    # Properties: ADC below the host zone, darker on T2, DWI contrast by the kurtosis model at b = 1400.
    zone = p["lesion_zone"][exists]
    assert set(zone.tolist()) == {LABEL["peripheral_zone"], LABEL["transition_zone"]}
    host = {t.label: t for t in EXAM_TISSUES.values()}
    host_adc = np.array([host[z].adc for z in zone])
    host_s0 = np.array([host[z].s0 for z in zone])
    adc, s0, k = p["lesion_adc"][exists], p["lesion_s0"][exists], p["lesion_kurtosis"][exists]
    assert (adc < host_adc).all() and (s0 < host_s0).all()
    bd, bd0 = 1.4 * adc, 1.4 * host_adc
    np.testing.assert_allclose(
        p["lesion_dwi_contrast"][exists], s0 * np.exp(-bd + bd**2 * k / 6) / (host_s0 * np.exp(-bd0)), rtol=1e-4
    )
    # Higher grades: lower ADC, brighter DWI (the significance is in the images, not in a hidden label).
    g = p["lesion_grade"][exists]
    assert adc[g >= 3].mean() < adc[g == 2].mean() < adc[g == 1].mean()
    assert p["lesion_dwi_contrast"][exists][g >= 3].mean() > p["lesion_dwi_contrast"][exists][g == 1].mean()
    # Kept lesions never overlap (bounding balls apart).
    for i in np.flatnonzero(exists.sum(axis=1) > 1):
        idx = np.flatnonzero(exists[i])
        for a in idx:
            for b in idx[idx > a]:
                gap = np.linalg.norm(p["lesion_centre_mm"][i, a] - p["lesion_centre_mm"][i, b])
                assert gap > p["lesion_semi_axes_mm"][i, a].max() + p["lesion_semi_axes_mm"][i, b].max()
    # BPH mimics: mildly low ADC only, never graded.
    n = p["nodule_exists"]
    assert n.any() and ((p["nodule_adc"][n] > 0.9) & (p["nodule_adc"][n] < 1.25)).all()


# --------------------------------------------------------------------------- #
# The physical mode of sample_mri (one co-registered grid)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def physical():
    return make_dataset(jax.random.key(1), 6, config=PHYSICAL, chunk_size=3)


def _voxel_bounds(semi, spacing):
    # A voxel whose centre is in the ellipsoid lies in the ellipsoid grown by half the voxel
    # diagonal d; the ellipsoid shrunk by d is covered by such voxels.
    d = 0.5 * float(np.linalg.norm(spacing))
    volume = lambda s: 4 / 3 * math.pi * float(np.prod(np.maximum(s, 0)))  # noqa: E731
    return volume(semi - d), volume(semi + d)


def _check_label_map(labels, records, affine, n_slots):
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    present = set(np.unique(labels).tolist()) - {0}
    assert present == {k + 1 for k in np.flatnonzero(records["lesion_valid"])}
    inverse = np.linalg.inv(affine)
    for k in range(n_slots):
        count = int((labels == k + 1).sum())
        assert count == records["lesion_voxels"][k]
        if not records["lesion_valid"][k]:
            assert records["lesion_grade"][k] == 0 and not records["lesion_significant"][k]
            continue
        semi = records["lesion_semi_axes_mm"][k]
        centre = inverse[:3, :3] @ records["lesion_centre_mm"][k] + inverse[:3, 3]
        margin = semi.max() / spacing
        if np.all(centre - margin > -0.5) and np.all(centre + margin < np.array(labels.shape) - 0.5):
            lo, hi = _voxel_bounds(semi, spacing)
            assert lo <= count * np.prod(spacing) <= hi, (k, count * np.prod(spacing), lo, hi)
    valid = records["lesion_valid"]
    assert records["num_lesions"] == valid.sum() and records["has_lesion"] == valid.any()
    assert records["max_grade"] == (records["lesion_grade"][valid].max() if valid.any() else 0)
    assert records["significant"] == (records["lesion_grade"][valid] >= 2).any()


def test_physical_mode_label_map_matches_records(physical):
    d = physical
    assert d["image"].shape == (6, 10, 40, 40, 3) and d["lesion_labels"].dtype == np.int32
    assert d["has_lesion"].all()
    for i in range(6):
        record = {k: v[i] for k, v in d.items()}
        _check_label_map(d["lesion_labels"][i], record, d["affine"][i].astype(float), 3)
        np.testing.assert_array_equal(d["lesion_mask"][i], d["lesion_labels"][i] > 0)
        np.testing.assert_array_equal(d["lesion_mask"][i], d["tissue"][i] == LABEL["lesion"])
    # Lesions dark on T2 and ADC, bright on DWI, against the zone they arise in.
    slot = np.maximum(d["lesion_labels"] - 1, 0)
    host = np.take_along_axis(d["lesion_zone"], slot.reshape(6, -1), axis=1).reshape(slot.shape)
    for zone in ("peripheral_zone", "transition_zone"):
        lesion = (d["lesion_labels"] > 0) & (host == LABEL[zone])
        normal = d["tissue"] == LABEL[zone]
        assert lesion.sum() > 20, zone
        t2, adc, dwi = (d["image"][..., c] for c in range(3))
        assert t2[lesion].mean() < t2[normal].mean() and adc[lesion].mean() < adc[normal].mean()
        # PZ cancers stand out on DWI; TZ ones less (a darker, lower-ADC zone), as in PI-RADS.
        assert dwi[lesion].mean() > (1.5 if zone == "peripheral_zone" else 1.0) * dwi[normal].mean()


def test_physical_mode_geometry_is_in_mm(physical):
    # A 4 x 1.5 x 1.5 mm axial grid (SPL) centred on the isocentre, and the patient of fold_in(key, 0).
    affine = physical["affine"][0].astype(float)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), PHYSICAL.spacing_mm)
    np.testing.assert_allclose(affine[:3, :3] @ ((np.array(PHYSICAL.shape) - 1) / 2) + affine[:3, 3], 0, atol=1e-5)
    np.testing.assert_allclose(affine, patient_model.axial_affine(PHYSICAL.shape, PHYSICAL.spacing_mm), atol=1e-6)
    patient = jax.jit(functools.partial(sample_patient, config=WITH_LESIONS))(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 0), 0)
    )
    np.testing.assert_allclose(np.asarray(patient["lesion_centre_mm"]), physical["lesion_centre_mm"][0], rtol=1e-6)


def test_physical_mode_2d_benign_and_deterministic(physical):
    again = make_dataset(jax.random.key(1), 6, config=PHYSICAL, chunk_size=3)
    for name in again:
        np.testing.assert_array_equal(again[name], physical[name], err_msg=name)
    flat = MRIPhantomConfig(shape=(48, 48), spacing_mm=(1.0, 1.0), patient=PatientConfig(lesion_probability=0.0))
    d = make_dataset(jax.random.key(2), 4, config=flat)
    assert d["image"].shape == (4, 48, 48, 3) and d["lesion_labels"].shape == (4, 48, 48)
    assert not d["has_lesion"].any() and not d["lesion_valid"].any() and (d["max_grade"] == 0).all()
    assert not d["significant"].any() and (d["lesion_labels"] == 0).all() and (d["lesion_grade"] == 0).all()
    assert (d["tissue"] == LABEL["peripheral_zone"]).any() and (d["num_lesions"] == 0).all()


def test_old_mode_outputs_unchanged():
    # Figures recorded with the normalised mode depend on these exact numbers
    # (checksums of the default config before the physical mode was added).
    d = make_dataset(jax.random.key(0), 4, config=MRIPhantomConfig(shape=(32, 32)))
    np.testing.assert_allclose(d["image"].sum(axis=(1, 2, 3)), OLD_MODE_IMAGE_SUMS, rtol=1e-5)
    np.testing.assert_array_equal(d["lesion_mask"].sum(axis=(1, 2)), OLD_MODE_LESION_PIXELS)
    np.testing.assert_array_equal(d["num_lesions"], OLD_MODE_NUM_LESIONS)


# Computed with the committed mri.py and _draw.py before this module existed; identical to the bit.
OLD_MODE_IMAGE_SUMS = [702.9091186523438, 589.2044067382812, 802.0003051757812, 714.365234375]
OLD_MODE_LESION_PIXELS = [20, 10, 14, 7]
OLD_MODE_NUM_LESIONS = [2, 2, 2, 1]


# --------------------------------------------------------------------------- #
# Site exams
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def exams():
    config = {s: ExamConfig(site=s, patient=WITH_LESIONS) for s in SITES}
    return {s: make_dataset(jax.random.key(5), 3, kind="mri_exam", config=c, chunk_size=3) for s, c in config.items()}


def _one(d, i):
    return {k: v[i] for k, v in d.items()}


def test_exam_shapes_and_truth(exams):
    for s, d in exams.items():
        site = SITES[s]
        assert d["t2"].shape == (3, *site.t2_shape) and d["lesion_labels"].shape == (3, *site.t2_shape)
        assert d["adc"].shape == d["dwi"].shape == d["dwi_lesion_labels"].shape == (3, *site.dwi_shape)
        for i in range(3):
            exam = _one(d, i)
            _check_label_map(exam["lesion_labels"], exam, exam["t2_affine"].astype(float), 3)
            assert (exam["lesion_labels"][exam["tissue"] == LABEL["rectum"]] == 0).all()
        assert d["has_lesion"].all()
        assert (d["t2"] >= 0).all() and (d["adc"] >= 0).all() and (d["adc"] <= 4000).all()


def test_one_patient_at_every_site(exams):
    # fold_in(key, 0) draws the patient: the same key is the same patient everywhere, and the
    # same anatomy in mm on four different grids (organ and lesion volumes agree).
    ref = exams["A"]
    volume = {}
    for s, d in exams.items():
        for name in ("lesion_centre_mm", "lesion_semi_axes_mm", "lesion_adc", "organ_centre_mm"):
            np.testing.assert_allclose(d[name], ref[name], rtol=1e-6, err_msg=name)
        both = d["lesion_valid"] & ref["lesion_valid"]
        np.testing.assert_array_equal(d["lesion_grade"][both], ref["lesion_grade"][both])
        volume[s] = d["organ_mask"].sum(axis=(1, 2, 3)) * np.prod(SITES[s].t2_spacing_mm)
    for s in SITES:
        np.testing.assert_allclose(volume[s], volume["A"], rtol=0.08, err_msg=s)


def test_sites_geometry_from_the_affines(exams):
    for s, d in exams.items():
        site = SITES[s]
        for i in range(3):
            t2, dwi = d["t2_affine"][i].astype(float), d["dwi_affine"][i].astype(float)
            np.testing.assert_allclose(np.linalg.norm(t2[:3, :3], axis=0), site.t2_spacing_mm, rtol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(dwi[:3, :3], axis=0), site.dwi_spacing_mm, rtol=1e-5)
            np.testing.assert_array_equal(d["adc_affine"][i], d["dwi_affine"][i])
            # Axial oblique: tilted about left-right by at most the site's obliquity; same plan for both.
            tilt = math.degrees(math.acos(min(1.0, t2[2, 0] / site.t2_spacing_mm[0])))
            assert tilt <= site.obliquity_deg + 1e-3
            np.testing.assert_allclose(t2[:3, :3] / np.linalg.norm(t2[:3, :3], axis=0), dwi[:3, :3] / np.linalg.norm(dwi[:3, :3], axis=0), atol=1e-6)
            centre_t2 = t2[:3, :3] @ ((np.array(site.t2_shape) - 1) / 2) + t2[:3, 3]
            assert np.abs(centre_t2 - d["organ_centre_mm"][i]).max() <= site.plan_jitter_mm + 1e-3
    # Documented differences: thicker slices at B and D, coarsest DWI at D.
    thickness = {s: SITES[s].t2_spacing_mm[0] for s in SITES}
    assert thickness["A"] == thickness["C"] == 3.0 < thickness["B"] < thickness["D"]
    assert max(SITES[s].dwi_spacing_mm[1] for s in SITES) == SITES["D"].dwi_spacing_mm[1]


def test_misregistration_within_range_and_applied(exams):
    for s, d in exams.items():
        site = SITES[s]
        for i in range(3):
            exam = _one(d, i)
            assert np.abs(exam["misregistration_rotation_deg"]).max() <= site.misregistration_deg + 1e-4
            assert np.abs(exam["misregistration_translation_mm"]).max() <= site.misregistration_mm + 1e-4
            m = exam["misregistration"].astype(float)
            np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)
            assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-5)
            # The lesion seen on the DWI grid sits where M moves it (not where the affine alone says).
            for k in np.flatnonzero(exam["lesion_valid"]):
                mask = exam["dwi_lesion_labels"] == k + 1
                if mask.sum() < 8:
                    continue
                index = np.argwhere(mask).mean(axis=0)
                seen = exam["dwi_affine"].astype(float) @ np.append(index, 1.0)
                moved = m @ np.append(exam["lesion_centre_mm"][k], 1.0)
                voxel = np.linalg.norm(site.dwi_spacing_mm)
                assert np.linalg.norm(seen[:3] - moved[:3]) < 0.5 * voxel, (s, i, k)


def _air(mask, iterations=2):
    # Interior of the rectal gas: away from tissue in-plane and in the neighbouring slices.
    return scipy.ndimage.binary_erosion(mask, iterations=iterations, border_value=0)


def test_site_noise_measured_in_background(exams):
    for s, d in exams.items():
        site = SITES[s]
        t2_x, dwi_x = [], []
        for i in range(3):
            air = _air(d["tissue"][i] == LABEL["rectum"])
            # Stored T2 = gain * x ** gamma; in gas x is Rayleigh with sigma = t2_noise: rms(x) = sigma sqrt(2).
            t2_x.append((d["t2"][i][air] / d["t2_gain"][i]) ** (1.0 / site.t2_gamma))
            dwi_air = _air(d["adc"][i] == 0, iterations=1)
            dwi_x.append(d["dwi"][i][dwi_air] / d["dwi_gain"][i])
        t2_x, dwi_x = np.concatenate(t2_x), np.concatenate(dwi_x)
        assert t2_x.size > 500 and dwi_x.size > 50, s
        np.testing.assert_allclose(np.sqrt(np.mean(t2_x**2) / 2), site.t2_noise, rtol=0.1, err_msg=s)
        np.testing.assert_allclose(np.sqrt(np.mean(dwi_x**2) / 2), site.dwi_noise, rtol=0.2, err_msg=s)
        np.testing.assert_allclose(d["t2_noise_std"], d["t2_gain"] * site.t2_noise, rtol=1e-5)
        lo, hi = site.t2_gain
        assert ((d["t2_gain"] >= lo * 0.999) & (d["t2_gain"] <= hi * 1.001)).all()
    noise = {s: SITES[s].t2_noise for s in SITES}
    assert noise["D"] > noise["B"] > noise["A"] == noise["C"]


def test_adc_is_quantitative_and_bias_cancels(exams):
    # ADC in 1e-6 mm^2/s: the peripheral zone near its 1.8e-3 mm^2/s at every site (bias and gain cancel).
    for s, d in exams.items():
        values = []
        for i in range(3):
            pz = scipy.ndimage.binary_erosion(d["dwi_lesion_labels"][i] == 0)
            t2_pz = d["tissue"][i] == LABEL["peripheral_zone"]
            values.append(np.median(d["adc"][i][pz & (d["adc"][i] > 1500)]) if t2_pz.any() else np.nan)
        assert 1500 < np.nanmedian(values) < 2100, (s, values)


def test_exams_deterministic_and_vmap_equals_loop(exams):
    config = ExamConfig(site="D", patient=WITH_LESIONS)
    again = make_dataset(jax.random.key(5), 3, kind="mri_exam", config=config, chunk_size=3)
    for name in again:
        np.testing.assert_array_equal(again[name], exams["D"][name], err_msg=name)
    single = jax.jit(functools.partial(sample_exam, config=config))
    for i in (0, 2):
        out = single(jax.random.fold_in(jax.random.key(5), i))
        for name in out:
            # Batched and single programs round differently (~1e-6 relative), never more.
            np.testing.assert_allclose(np.asarray(out[name]), exams["D"][name][i], rtol=2e-5, atol=1e-4, err_msg=name)
    other = single(jax.random.key(6))
    assert not np.array_equal(np.asarray(other["t2"]), exams["D"]["t2"][0])


def test_two_dimensional_exam_shapes():
    config = ExamConfig(site="B", slices=1)
    d = jax.eval_shape(functools.partial(sample_exam, config=config), jax.random.key(3))
    assert d["t2"].shape == (1, 80, 80) and d["adc"].shape == d["dwi"].shape == (1, 32, 32)
    assert d["lesion_labels"].shape == (1, 80, 80) and d["t2_affine"].shape == (4, 4)
    assert config.t2_shape == (1, 80, 80) and ExamConfig(site="B", slices=4).dwi_shape == (4, 32, 32)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ExamConfig(site="Z"), "unknown site"),
        (lambda: ExamConfig(site=3), "SiteProfile"),
        (lambda: ExamConfig(slice_samples=2), "slice_samples"),
        (lambda: ExamConfig(slices=0), "slices"),
        (lambda: ExamConfig(patient={"lesion_probability": 1}), "PatientConfig"),
        (lambda: dataclasses.replace(SITES["A"], b_values=(800, 500)), "b_values"),
        (lambda: dataclasses.replace(SITES["A"], t2_shape=(0, 8, 8)), "t2_shape"),
        (lambda: dataclasses.replace(SITES["A"], dwi_noise=-1.0), "dwi_noise"),
        (lambda: dataclasses.replace(SITES["A"], role="test"), "role"),
        (lambda: dataclasses.replace(SITES["A"], t2_gain=(5.0, 1.0)), "t2_gain"),
        (lambda: PatientConfig(lesion_probability=2.0), "lesion_probability"),
        (lambda: PatientConfig(lesion_radius_mm=(5.0, 2.0)), "lesion_radius_mm"),
        (lambda: PatientConfig(lesion_radius_mm=(2.0, 30.0)), "smallest organ semi-axis"),
        (lambda: PatientConfig(max_nodules=-1), "max_nodules"),
        (lambda: MRIPhantomConfig(shape=(16, 16), spacing_mm=(1.0,)), "spacing_mm"),
        (lambda: MRIPhantomConfig(shape=(16, 16), spacing_mm=(1.0, 0.0)), "spacing_mm"),
        (lambda: MRIPhantomConfig(patient=PatientConfig()), "physical mode"),
    ],
)
def test_bad_configs_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_site_table_is_documented_and_distinct():
    assert list(SITES) == ["A", "B", "C", "D"]
    assert [SITES[s].role for s in SITES] == ["train", "train", "deploy", "unseen"]
    assert len({(s.b_values, s.t2_te_ms, s.t2_spacing_mm, s.dwi_spacing_mm) for s in SITES.values()}) == 4
    assert SITES["C"].bias_gradient > 0 and SITES["C"].t2_gamma < 1
    assert SITES["D"].misregistration_deg == max(s.misregistration_deg for s in SITES.values())
    assert SITES["D"].b_values[1] == min(s.b_values[1] for s in SITES.values())
    json.dumps({s: p.as_dict() for s, p in SITES.items()})


# --------------------------------------------------------------------------- #
# Exams as files
# --------------------------------------------------------------------------- #
def test_write_exam_round_trip(tmp_path, exams):
    exam = _one(exams["C"], 0)  # oblique stacks, strong bias, a nonlinear T2 curve
    paths = write_exam(tmp_path / "exam", exam, "C", uid_seed="exam-0")
    for name, key in (("T2", "t2"), ("ADC", "adc"), ("DWI", "dwi")):
        volume = read_series(paths[name])
        tolerance = (exam[key].max() - exam[key].min()) / 65535 / 2 * (1 + 1e-6) + 1e-6 * np.abs(exam[key]).max()
        assert np.abs(volume.array - exam[key]).max() <= tolerance, name
        np.testing.assert_allclose(volume.affine, exam[f"{key}_affine"], atol=1e-4, err_msg=name)
    headers = {n: pydicom.dcmread(sorted((tmp_path / "exam" / n).iterdir())[0]) for n in ("T2", "ADC", "DWI")}
    truth = json.loads((tmp_path / "exam" / "truth.json").read_text())
    frames = {h.FrameOfReferenceUID for h in headers.values()}
    assert frames == {truth["dicom"]["frame_of_reference_uid"]}  # one session, one frame of reference
    assert len({h.SeriesInstanceUID for h in headers.values()}) == 3
    assert len({h.StudyInstanceUID for h in headers.values()}) == 1
    assert float(headers["DWI"].DiffusionBValue) == SITES["C"].b_values[1]
    assert float(headers["T2"].EchoTime) == SITES["C"].t2_te_ms and headers["T2"].PatientName == "PHANTOM^SYNTHETIC"
    orientation = np.array(headers["T2"].ImageOrientationPatient, float)
    assert orientation[4] < 0.9999 or abs(exam["t2_affine"][2, 0] / 3.0 - 1) < 1e-6  # oblique unless no tilt drawn
    mask = read_image(paths["lesion_mask"])
    np.testing.assert_array_equal(mask.array, exam["lesion_labels"])
    np.testing.assert_allclose(mask.affine, read_series(paths["T2"]).affine, atol=1e-4)
    assert truth["max_grade"] == int(exam["max_grade"]) and truth["site"]["name"] == "C"
    assert [l["label"] for l in truth["lesions"]] == [int(k) + 1 for k in np.flatnonzero(exam["lesion_valid"])]
    assert {l["grade"] for l in truth["lesions"]} <= {1, 2, 3, 4, 5}
    with pytest.raises(FileExistsError, match="lesion_mask.nii.gz"):
        write_exam(tmp_path / "exam", exam, "C")
    write_exam(tmp_path / "again", exam, "C", uid_seed="exam-0")
    again = pydicom.dcmread(sorted((tmp_path / "again" / "T2").iterdir())[0])
    assert again.SOPInstanceUID == headers["T2"].SOPInstanceUID  # seeded UIDs: the same files
