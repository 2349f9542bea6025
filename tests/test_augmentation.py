"""Training augmentation (jaxmed.data.augmentation), checked against its definition by hand."""

import jax
import numpy as np
import pytest

from jaxmed.data import AugmentConfig, augment_batch, augment_image


def test_augment_is_a_flip_shift_and_scale(rng):
    image = rng.uniform(size=(16, 16, 1)).astype(np.float32)
    key = jax.random.key(1)
    flipped = augment_image(key, image, max_shift=0, flip_probability=1.0, intensity_range=(1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(flipped), image[:, ::-1])
    keys = jax.random.split(key, 8)
    out = np.asarray(jax.jit(jax.vmap(lambda k, x: augment_image(k, x, flip_probability=0.0, intensity_range=(1.0, 1.0))))(
        keys, np.broadcast_to(image, (8, 16, 16, 1))))
    for o in out:
        # Some shift in [-3, 3]^2 with zero fill reproduces the output exactly.
        padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
        matches = [np.array_equal(o, padded[3 - dy : 19 - dy, 3 - dx : 19 - dx]) for dy in range(-3, 4) for dx in range(-3, 4)]
        assert sum(matches) == 1
    scaled = np.asarray(augment_image(key, image, max_shift=0, flip_probability=0.0, intensity_range=(0.5, 0.5)))
    np.testing.assert_allclose(scaled, image * 0.5, rtol=1e-6)


def test_batch_rows_have_keys_of_their_own_position(rng):
    images = rng.uniform(size=(8, 12, 12, 1)).astype(np.float32)
    config = AugmentConfig(max_shift=2, flip_probability=0.5, intensity_range=(0.8, 1.2))
    key = jax.random.key(3)
    whole = np.asarray(augment_batch(key, images, config))
    # Two processes, each with half of the global batch and its offset, augment alike.
    halves = [np.asarray(augment_batch(key, images[i:i + 4], config, i)) for i in (0, 4)]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    # Row i is augment_image with key fold_in(key, i).
    for i in (0, 5):
        one = augment_image(jax.random.fold_in(key, i), images[i], max_shift=2, flip_probability=0.5,
                            intensity_range=(0.8, 1.2))
        np.testing.assert_array_equal(whole[i], np.asarray(one))
    assert not np.array_equal(whole, images)


def test_mutation_replaces_the_given_fraction_by_uniform_noise(rng):
    image = np.full((64, 64, 1), 0.5, np.float32)
    keys = jax.random.split(jax.random.key(0), 16)
    out = np.asarray(jax.vmap(lambda k: augment_image(k, image, max_shift=0, flip_probability=0.0,
                                                      intensity_range=(1.0, 1.0), mutation_rate=0.2))(keys))
    changed = out != 0.5
    # Binomial(16 * 4096, 0.2): 13107 +- 102; the new values are uniform on [0, 1].
    assert abs(changed.sum() - 0.2 * changed.size) < 5 * np.sqrt(changed.size * 0.2 * 0.8)
    assert abs(out[changed].mean() - 0.5) < 0.01 and abs(out[changed].var() - 1 / 12) < 0.005
    # Without mutation the same key gives the same image as before mutation existed.
    key = jax.random.key(1)
    plain = augment_image(key, image, max_shift=1, mutation_rate=0.0)
    mutated = np.asarray(augment_image(key, image, max_shift=1, mutation_rate=0.2))
    keep = mutated == np.asarray(plain)
    assert 0.7 < keep.mean() < 0.9


def test_the_default_config_changes_nothing(rng):
    images = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
    assert AugmentConfig().is_identity
    np.testing.assert_array_equal(np.asarray(augment_batch(jax.random.key(0), images, AugmentConfig())), images)
    assert not AugmentConfig(flip_probability=0.5).is_identity


@pytest.mark.parametrize("fields, message", [
    ({"max_shift": -1}, "max_shift"),
    ({"flip_probability": 1.5}, "flip_probability"),
    ({"intensity_range": (1.2, 0.8)}, "intensity_range"),
    ({"intensity_range": (0.0, 1.0)}, "intensity_range"),
    ({"mutation_rate": -0.1}, "mutation_rate"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**fields)


def test_jaxmed_train_augments_per_step_and_records_it(tmp_path):
    from jaxmed.cli import main
    from jaxmed.train import load_config
    from jaxmed.train.checkpoint import load_model

    argv = ["train", "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--num-train", "16", "--num-val", "8",
            "--eval-every", "0", "--devices", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--augment-shift", "1", "--augment-flip", "0.5", "--augment-intensity", "0.9,1.1",
                 "--out", str(tmp_path / "augmented")]) == 0
    assert load_config(tmp_path / "augmented")["run"]["augment"] == {
        "max_shift": 1, "flip_probability": 0.5, "intensity_range": [0.9, 1.1], "mutation_rate": 0.0}
    assert load_config(tmp_path / "plain")["run"]["augment"] == {
        "max_shift": 0, "flip_probability": 0.0, "intensity_range": [1.0, 1.0], "mutation_rate": 0.0}
    plain, augmented = (jax.tree.leaves(load_model(tmp_path / name)[1]) for name in ("plain", "augmented"))
    # Same initialisation and data order; only the augmented batches differ.
    assert any(not np.array_equal(a, b) for a, b in zip(plain, augmented, strict=True))
