"""Tests of the chest-radiograph phantom (jaxmed.data.phantoms.chest) and the drawing blocks it added.

Four compiled configs: a random 256x256 set, a 256x256 set of exactly
specified findings, the unbatched sampler for the vmap check, and one
1024x1024 image at 0.14 mm with a 5 mm nodule.
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data.phantoms import (
    FINDING_TYPES,
    LUNGS,
    PHANTOMS,
    ZONES,
    ChestPhantomConfig,
    FindingSpec,
    MRIPhantomConfig,
    chest_truth,
    make_dataset,
    sample_chest,
)
from jaxmed.data.phantoms._draw import binomial_blur, irwin_hall_normal, upsample_linear

SMALL = ChestPhantomConfig(shape=(256, 256), finding_probability=0.7)
SPECS = (
    FindingSpec(type="nodule", lung="right", zone="upper", size_mm=12.0),
    FindingSpec(type="mass", lung="left", zone="middle", size_mm=40.0),
    FindingSpec(type="consolidation", lung="right", zone="lower", size_mm=50.0),
    FindingSpec(type="effusion", lung="left", size_mm=35.0),
)
SPECIFIED = ChestPhantomConfig(shape=(256, 256), findings=SPECS)
N = 16


@pytest.fixture(scope="module")
def dataset():
    # Two chunks of 8, drawn through one compiled function.
    return make_dataset(jax.random.key(11), N, kind="chest", config=SMALL, chunk_size=8)


@pytest.fixture(scope="module")
def specified():
    return make_dataset(jax.random.key(12), 8, kind="chest", config=SPECIFIED, chunk_size=8)


def _sample(d, i):
    return {k: v[i] for k, v in d.items()}


def _centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


def test_shapes_dtypes_and_ranges(dataset):
    h, w = SMALL.shape
    f = SMALL.num_slots
    assert dataset["image"].shape == (N, h, w, 1) and dataset["image"].dtype == np.float32
    assert 0.0 <= dataset["image"].min() and dataset["image"].max() <= 1.0
    for name in ["right_lung", "left_lung", "heart"]:
        assert dataset[name].shape == (N, h, w) and dataset[name].dtype == bool
    assert dataset["finding_masks"].shape == (N, f, h, w) and dataset["finding_masks"].dtype == bool
    for name in ["finding_type", "finding_lung", "finding_zone"]:
        assert dataset[name].shape == (N, f) and dataset[name].dtype == np.int32
    assert dataset["finding_centre_px"].shape == (N, f, 2) and dataset["finding_centre_mm"].shape == (N, f, 2)
    np.testing.assert_allclose(dataset["pixel_spacing_mm"], 400.0 / 256)
    # Flags and records agree; unused slots are blank.
    valid = dataset["finding_valid"]
    np.testing.assert_array_equal(valid, dataset["finding_masks"].any(axis=(2, 3)))
    np.testing.assert_array_equal(dataset["num_findings"], valid.sum(axis=1))
    np.testing.assert_array_equal(dataset["has_finding"], valid.any(axis=1))
    assert (dataset["finding_type"][~valid] == -1).all() and (dataset["finding_size_mm"][~valid] == 0).all()
    assert set(np.unique(dataset["finding_type"][valid])) <= set(range(len(FINDING_TYPES)))
    # N draws with probability 0.7 of findings (a finding may fall outside
    # the view only in a cropped one): within 4 standard deviations.
    assert abs(dataset["has_finding"].sum() - 0.7 * N) <= 4 * math.sqrt(0.21 * N)
    assert ((dataset["cardiothoracic_ratio"] > 0.35) & (dataset["cardiothoracic_ratio"] < 0.6)).all()
    assert ((dataset["posterior_ribs"] >= 7) & (dataset["posterior_ribs"] <= 11)).all()


def test_samples_are_keyed_by_index(dataset):
    # Deterministic by key; a data set is a prefix of a larger one whatever the chunking.
    head = make_dataset(jax.random.key(11), 8, kind="chest", config=SMALL, chunk_size=8)
    for name in dataset:
        np.testing.assert_array_equal(head[name], dataset[name][:8], err_msg=name)
    assert not np.array_equal(dataset["image"][0], dataset["image"][1])


def test_sample_vmaps_over_keys(dataset):
    # The unbatched sampler, jitted and called in a loop, gives make_dataset's samples.
    one = jax.jit(functools.partial(sample_chest, config=SMALL))
    for i in [0, 5, 9]:
        out = one(jax.random.fold_in(jax.random.key(11), i))
        for name in dataset:
            got, want = np.asarray(out[name]), dataset[name][i]
            if got.dtype == bool:
                # A level within rounding of 0 may flip a boundary pixel between two compilations.
                assert (got != want).sum() <= 2, name
            else:
                np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)  # rounding of transcendentals


def test_anatomy_regions(dataset):
    h, w = SMALL.shape
    right, left, heart = dataset["right_lung"], dataset["left_lung"], dataset["heart"]
    image = dataset["image"][..., 0]
    assert not (right & left).any() and not (right & heart).any() and not (left & heart).any()
    for i in range(N):
        # Display convention: the patient's right lung on the image left, the
        # heart bulging to the image right; the left lung is the smaller.
        r_row, r_col = _centroid(right[i])
        l_row, l_col = _centroid(left[i])
        h_row, h_col = _centroid(heart[i])
        assert r_col < w / 2 < l_col
        assert h_col > w / 2 and h_col > 0.5 * (r_col + l_col)
        assert left[i].sum() < right[i].sum()
        assert max(r_row, l_row) < h_row  # the heart sits low, on the diaphragm
        # Lungs dark, mediastinum and heart bright.
        lungs = image[i][right[i] | left[i]].mean()
        assert lungs < image[i][heart[i]].mean() - 0.15
        rows = slice(int(r_row) - 10, int(r_row) + 10)
        between = np.zeros((h, w), bool)
        between[rows, int(r_col) : int(l_col)] = True
        mediastinum = between & ~right[i] & ~left[i]
        assert lungs < image[i][mediastinum].mean() - 0.15
        # Outside the body (the top corners) the film is black.
        assert image[i][:8, :8].mean() < 0.05 and image[i][:8, -8:].mean() < 0.05


def test_findings_lie_in_their_lung_and_zone(dataset, specified):
    for d in (dataset, specified):
        for i in range(len(d["image"])):
            lungs = {0: d["right_lung"][i], 1: d["left_lung"][i]}
            for j in np.flatnonzero(d["finding_valid"][i]):
                mask, lung = d["finding_masks"][i, j], lungs[int(d["finding_lung"][i, j])]
                assert not (mask & ~lung).any()
                row, col = d["finding_centre_px"][i, j]
                if d["finding_type"][i, j] != FINDING_TYPES.index("effusion"):
                    assert lung[int(round(row)), int(round(col))], (i, j)
                    assert mask[int(round(row)), int(round(col))], (i, j)
                # The zone is a third of the lung's height (apex to costophrenic
                # angle), taken in the patient's frame; rotation (<= 3 deg) moves
                # it against the image rows by a few percent at most.
                rows = np.flatnonzero(lung.any(axis=1))
                fraction = (row - rows[0]) / (rows[-1] - rows[0])
                zone = int(d["finding_zone"][i, j])
                assert zone / 3 - 0.06 <= fraction <= (zone + 1) / 3 + 0.06, (i, j, zone, fraction)


def test_finding_sizes_match_their_masks(dataset, specified):
    spacing = 400.0 / 256
    for d in (dataset, specified):
        for i, j in zip(*np.nonzero(d["finding_valid"])):
            kind = FINDING_TYPES[d["finding_type"][i, j]]
            size = float(d["finding_size_mm"][i, j])
            if kind in ("nodule", "mass") and d["finding_masks"][i, j].sum() > 0:
                # Mean of long and short axes vs the mask's area-equivalent
                # diameter (equal for an ellipse of axis ratio >= 0.7 to 1.5%),
                # within a pixel either way.
                diameter = 2.0 * math.sqrt(d["finding_masks"][i, j].sum() / math.pi) * spacing
                assert abs(diameter - size) <= 0.04 * size + 1.2 * spacing, (kind, size, diameter)
            if kind == "consolidation":
                # Patches within their envelope of mean diameter size_mm.
                rows, cols = np.nonzero(d["finding_masks"][i, j])
                extent = max(rows.max() - rows.min(), cols.max() - cols.min()) * spacing
                assert extent <= 2.0 * size


def test_specified_findings(specified):
    assert specified["finding_valid"].all()
    for j, spec in enumerate(SPECS):
        assert (specified["finding_type"][:, j] == FINDING_TYPES.index(spec.type)).all()
        assert (specified["finding_lung"][:, j] == LUNGS.index(spec.lung)).all()
        np.testing.assert_allclose(specified["finding_size_mm"][:, j], spec.size_mm)
        if spec.type != "consolidation":  # a consolidation's zone is that of its envelope's centre: drawn there
            assert (specified["finding_zone"][:, j] == ZONES.index(spec.zone or "lower")).all()
    # The effusion fills the left costophrenic angle: the lowest rows of the
    # left lung are fluid, and the fluid sits in the lung's lower part.
    for i in range(len(specified["image"])):
        left, fluid = specified["left_lung"][i], specified["finding_masks"][i, 3]
        rows = np.flatnonzero(left.any(axis=1))
        bottom = left[rows[-3] :]
        assert (fluid[rows[-3] :] | ~bottom).all()
        fluid_rows = np.flatnonzero(fluid.any(axis=1))
        assert fluid_rows[0] > rows[0] + 0.6 * (rows[-1] - rows[0])
        # Fluid is opaque: the effusion is brighter than the lung above it;
        # the mass brighter than the lung around it.
        image = specified["image"][i, ..., 0]
        assert image[fluid].mean() > image[left & ~fluid].mean() + 0.1
        mass = specified["finding_masks"][i, 1]
        r0, c0 = np.round(specified["finding_centre_px"][i, 1]).astype(int)
        box = np.zeros_like(mass)
        box[r0 - 30 : r0 + 31, c0 - 30 : c0 + 31] = True
        assert image[mass].mean() > image[box & left & ~mass & ~fluid].mean() + 0.03


def test_truth_record_is_json_and_matches_arrays(dataset, specified):
    for d in (dataset, specified):
        for i in range(3):
            sample = _sample(d, i)
            record = chest_truth(sample)
            assert json.loads(json.dumps(record)) == record
            spacing = record["pixel_spacing_mm"]
            assert record["shape"] == list(SMALL.shape)
            for name, region in record["regions"].items():
                np.testing.assert_allclose(region["area_mm2"], sample[name].sum() * spacing**2, rtol=1e-3, atol=0.051)
            assert len(record["findings"]) == sample["num_findings"]
            for finding in record["findings"]:
                j = finding["mask_index"]
                assert finding["type"] == FINDING_TYPES[sample["finding_type"][j]]
                assert finding["lung"] == LUNGS[sample["finding_lung"][j]]
                assert finding["zone"] == ZONES[sample["finding_zone"][j]]
                np.testing.assert_allclose(finding["size_mm"], sample["finding_size_mm"][j], atol=0.01)
                np.testing.assert_allclose(finding["centre_px"], sample["finding_centre_px"][j], atol=0.01)
                np.testing.assert_allclose(finding["centre_mm"], np.asarray(finding["centre_px"]) * spacing, atol=0.02)
                area = sample["finding_masks"][j].sum() * spacing**2
                np.testing.assert_allclose(finding["area_mm2"], area, rtol=1e-3, atol=0.051)  # rounded to 0.1 mm^2
    record = chest_truth(_sample(specified, 0))
    assert [(f["type"], f["lung"]) for f in record["findings"]] == [(s.type, s.lung) for s in SPECS]


def test_full_resolution_5mm_nodule_at_014mm():
    # 1024 pixels at 0.14 mm: a 143 mm detail of the chest centre, where a
    # 5 mm nodule spans 35.7 pixels.
    nodule = FindingSpec(type="nodule", lung="right", zone="middle", size_mm=5.0)
    config = ChestPhantomConfig(shape=(1024, 1024), pixel_spacing_mm=0.14, findings=(nodule,))
    assert config.render_factor == 2
    d = make_dataset(jax.random.key(13), 1, kind="chest", config=config)
    assert d["image"].shape == (1, 1024, 1024, 1)
    assert d["finding_valid"][0, 0] and d["right_lung"][0].any() and d["left_lung"][0].any()
    area = d["finding_masks"][0, 0].sum()
    circle = math.pi / 4 * (5.0 / 0.14) ** 2  # 1002 pixels; an ellipse of axis ratio 0.8 has 1.2% less
    assert 0.97 * circle <= area <= 1.01 * circle, area
    rows, cols = np.nonzero(d["finding_masks"][0, 0])
    np.testing.assert_allclose([rows.mean(), cols.mean()], d["finding_centre_px"][0, 0], atol=0.5)
    assert np.isfinite(d["image"]).all() and d["image"].std() > 0.1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"shape": (256,)}, "shape"),
        ({"shape": (32, 256)}, "shape"),
        ({"pixel_spacing_mm": -0.2}, "pixel_spacing_mm"),
        ({"shape": (512, 512), "pixel_spacing_mm": 0.14}, "field of view"),
        ({"render_downsample": 3}, "render_downsample"),
        ({"type_probabilities": (0.5, 0.5, 0.5, 0.0)}, "summing to 1"),
        ({"type_probabilities": {"nodule": 0.5, "tumour": 0.5}}, "unknown types"),
        ({"finding_probability": 1.5}, "finding_probability"),
        ({"max_findings": 0}, "max_findings"),
        ({"nodule_size_mm": (5.0, 40.0)}, "nodule_size_mm"),
        ({"mass_size_mm": (20.0, 50.0)}, "mass_size_mm"),
        ({"inspiration": (0.5, 0.2)}, "inspiration"),
        ({"findings": ({"type": "nodule"},)}, "FindingSpec"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        ChestPhantomConfig(**changes)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"type": "tumour"}, "unknown type"),
        ({"type": "nodule", "lung": "middle"}, "lung must be"),
        ({"type": "nodule", "zone": "apex"}, "zone must be"),
        ({"type": "effusion", "zone": "upper"}, "lung base"),
        ({"type": "nodule", "size_mm": 35.0}, "nodule's size_mm"),
        ({"type": "mass", "size_mm": 20.0}, "mass's size_mm"),
    ],
)
def test_finding_spec_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        FindingSpec(**fields)


def test_config_is_hashable_and_registered():
    assert hash(ChestPhantomConfig(shape=[256, 256])) == hash(ChestPhantomConfig(shape=(256, 256)))
    mapped = ChestPhantomConfig(type_probabilities={"nodule": 0.7, "effusion": 0.3})
    assert mapped.type_probabilities == (0.7, 0.0, 0.0, 0.3)
    assert ChestPhantomConfig(shape=(2048, 2048)).render_factor == 2 and SMALL.render_factor == 1
    assert ChestPhantomConfig(shape=(2048, 2048), render_downsample=4).render_factor == 4
    assert ChestPhantomConfig(shape=(2048, 2048)).spacing_mm == pytest.approx(400 / 2048)
    assert PHANTOMS["chest"].config is ChestPhantomConfig and PHANTOMS["chest"].sample is sample_chest
    with pytest.raises(ValueError, match="takes a ChestPhantomConfig"):
        make_dataset(jax.random.key(0), 2, kind="chest", config=MRIPhantomConfig())


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upsample_linear_matches_resize(factor):
    x = np.random.default_rng(0).normal(size=(2, 9, 13)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")

    @jax.jit
    def run(x, padded):
        want = jax.image.resize(x, (2, 9 * factor, 13 * factor), method="linear")
        return want, upsample_linear(x, factor), upsample_linear(padded, factor, padded=True)

    want, plain, from_padded = run(x, padded)
    np.testing.assert_allclose(plain, want, atol=1e-6)
    np.testing.assert_allclose(from_padded, want, atol=1e-6)


def test_binomial_blur_padded_matches_edge_repeat():
    x = np.random.default_rng(1).normal(size=(9, 13)).astype(np.float32)
    padded = np.pad(x, 1, mode="edge")
    got = jax.jit(functools.partial(binomial_blur, padded=True))(padded)
    kernel = np.array([0.25, 0.5, 0.25])
    columns = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, padded)
    want = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, columns)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(binomial_blur(x), want, atol=1e-6)


@pytest.mark.parametrize("terms", [2, 4])
def test_irwin_hall_normal_moments(terms):
    words = jax.random.bits(jax.random.key(1), (100_000,), jnp.uint32)
    z = np.asarray(irwin_hall_normal(words, terms=terms))
    assert z.shape == (8 // terms, 100_000)
    np.testing.assert_allclose(z.mean(), 0.0, atol=0.01)
    np.testing.assert_allclose(z.std(), 1.0, atol=0.01)
    assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 0.01
    assert np.abs(z).max() <= 7.5 * terms / math.sqrt(85 * terms / 4) + 1e-6
