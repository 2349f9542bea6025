"""Tests of jaxmed.data.phantoms: known truth, exact intensities, Rician noise."""

import functools
import math

import jax
import numpy as np
import pytest
import scipy.stats

from jaxmed.data.phantoms import PHANTOMS, TISSUES, MRIPhantomConfig, make_dataset, sample_mri

SMALL = MRIPhantomConfig(shape=(32, 32))
LABEL = {name: t.label for name, t in TISSUES.items()}


@pytest.fixture(scope="module")
def dataset():
    # 3 chunks of 16: the last one drawn through the same compiled function.
    return make_dataset(jax.random.key(3), 48, config=SMALL, chunk_size=16)


def _check_truth(d, config, n):
    shape = config.shape
    m = len(config.modalities)
    assert d["image"].shape == (n, *shape, m) and d["image"].dtype == np.float32
    for name in ["lesion_mask", "organ_mask"]:
        assert d[name].shape == (n, *shape) and d[name].dtype == bool
    assert d["tissue"].shape == (n, *shape)
    assert d["has_lesion"].shape == (n,) and d["num_lesions"].shape == (n,)
    assert d["image"].min() >= 0.0 and d["image"].max() <= 1.0
    spatial = tuple(range(1, 1 + len(shape)))
    # Label, masks and per-sample flags tell one consistent story.
    np.testing.assert_array_equal(d["has_lesion"], d["lesion_mask"].any(axis=spatial))
    np.testing.assert_array_equal(d["has_lesion"], d["num_lesions"] > 0)
    assert d["num_lesions"].max() <= config.max_lesions
    assert not (d["lesion_mask"] & ~d["organ_mask"]).any()
    np.testing.assert_array_equal(d["lesion_mask"], d["tissue"] == LABEL["lesion"])
    organ_labels = [LABEL[k] for k in ["peripheral_zone", "transition_zone", "lesion"]]
    np.testing.assert_array_equal(d["organ_mask"], np.isin(d["tissue"], organ_labels))
    # Every sample has an organ with both zones.
    assert (d["organ_mask"].sum(axis=spatial) > 0).all()
    assert ((d["tissue"] == LABEL["transition_zone"]).sum(axis=spatial) > 0).all()


def test_dataset_shapes_and_ground_truth(dataset):
    _check_truth(dataset, SMALL, 48)
    # 48 draws with probability 0.5: 24 +- 3.5 expected.
    assert 12 <= dataset["has_lesion"].sum() <= 36


def test_samples_are_keyed_by_index(dataset):
    # A data set is a prefix of a larger one, and sample i is
    # sample_mri(fold_in(key, i)) whatever the chunking.
    key = jax.random.key(3)
    head = make_dataset(key, 16, config=SMALL, chunk_size=16)
    for name in dataset:
        np.testing.assert_array_equal(head[name], dataset[name][:16])
    other = make_dataset(jax.random.key(4), 16, config=SMALL, chunk_size=16)
    assert not np.array_equal(other["image"], head["image"])


def test_lesions_dark_on_t2_and_adc_bright_on_dwi(dataset):
    image, tissue = dataset["image"], dataset["tissue"]
    channel = {m: c for c, m in enumerate(SMALL.modalities)}
    means = {
        (m, name): image[..., channel[m]][tissue == LABEL[name]].mean()
        for m in channel
        for name in ["peripheral_zone", "transition_zone", "lesion"]
    }
    for zone in ["peripheral_zone", "transition_zone"]:
        assert means["t2", "lesion"] < means["t2", zone]
        assert means["adc", "lesion"] < means["adc", zone]
        assert means["dwi", "lesion"] > 1.5 * means["dwi", zone]


def test_intensities_follow_tissue_physics_with_rician_noise():
    # No texture: each tissue's pixels are Rice(A / sigma, scale=sigma) with A
    # computed here from TISSUES by the stated signal equations.
    sigma, b = 0.05, 1000.0
    config = MRIPhantomConfig(shape=(32, 32), texture_strength=0.0, noise_std=sigma, b_value=b, lesion_probability=1.0)
    d = make_dataset(jax.random.key(5), 24, config=config)
    s0 = np.array([t.s0 for t in TISSUES.values()])
    adc = np.array([t.adc for t in TISSUES.values()])
    signals = {"t2": s0, "adc": adc, "dwi": s0 * np.exp(-b * 1e-3 * adc)}
    for c, m in enumerate(config.modalities):
        expected = 0.8 * signals[m] / signals[m].max()
        for (name, t), a in zip(TISSUES.items(), expected, strict=True):
            pixels = d["image"][..., c][d["tissue"] == t.label]
            assert pixels.size > 100, name
            rice = scipy.stats.rice(a / sigma, scale=sigma)
            se = rice.std() / math.sqrt(pixels.size)
            assert abs(pixels.mean() - rice.mean()) < 5 * se + 1e-4, (m, name)
            np.testing.assert_allclose(pixels.std(), rice.std(), rtol=0.1, err_msg=f"{m} {name}")
    # Background is pure Rayleigh noise: mean sigma * sqrt(pi / 2).
    background = d["image"][d["tissue"] == LABEL["background"]]
    np.testing.assert_allclose(background.mean(), sigma * math.sqrt(math.pi / 2), rtol=0.03)


def test_3d_volumes_with_channel_order():
    config = MRIPhantomConfig(shape=(8, 16, 16), modalities=("dwi", "t2"), lesion_probability=1.0, max_lesions=3)
    d = make_dataset(jax.random.key(6), 6, config=config)
    _check_truth(d, config, 6)
    assert d["has_lesion"].all()
    lesion, pz = d["tissue"] == LABEL["lesion"], d["tissue"] == LABEL["peripheral_zone"]
    assert d["image"][..., 0][lesion].mean() > d["image"][..., 0][pz].mean()  # DWI first
    assert d["image"][..., 1][lesion].mean() < d["image"][..., 1][pz].mean()  # then T2


def test_normal_single_channel_training_set():
    config = MRIPhantomConfig(shape=(16, 16), modalities=("t2",), lesion_probability=0.0)
    d = make_dataset(jax.random.key(7), 5, config=config)
    assert d["image"].shape == (5, 16, 16, 1)
    assert not d["has_lesion"].any() and not d["lesion_mask"].any()
    assert (d["num_lesions"] == 0).all()


def test_sample_vmaps_over_keys(dataset):
    # The documented batching of sample_mri gives make_dataset's samples.
    index = np.array([0, 1, 20, 37])
    keys = jax.vmap(functools.partial(jax.random.fold_in, jax.random.key(3)))(index)
    out = jax.jit(jax.vmap(functools.partial(sample_mri, config=SMALL)))(keys)
    for name in dataset:
        np.testing.assert_allclose(np.asarray(out[name]), dataset[name][index], atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"shape": (64,)}, "shape"),
        ({"shape": (4, 64)}, "shape"),
        ({"modalities": ("t1",)}, "unknown modalities"),
        ({"modalities": ()}, "at least one"),
        ({"lesion_probability": 1.5}, "lesion_probability"),
        ({"max_lesions": 0}, "max_lesions"),
        ({"lesion_radius": (0.3, 0.1)}, "lesion_radius"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"b_value": -1.0}, "b_value"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        MRIPhantomConfig(**changes)


def test_config_is_hashable_and_registry_explicit():
    assert hash(MRIPhantomConfig(shape=[32, 32])) == hash(MRIPhantomConfig(shape=(32, 32)))
    assert PHANTOMS["mri"].config is MRIPhantomConfig and PHANTOMS["mri"].sample is sample_mri
    with pytest.raises(ValueError, match="unknown phantom kind 'ultrasound'"):
        make_dataset(jax.random.key(0), 2, kind="ultrasound")
    with pytest.raises(ValueError, match="takes a MRIPhantomConfig"):
        make_dataset(jax.random.key(0), 2, config={"shape": (32, 32)})
    with pytest.raises(ValueError, match="n and chunk_size"):
        make_dataset(jax.random.key(0), 0)
