"""The chest task's networks and losses: ConvClassifier, presence + type losses, the region net's inputs and targets.

Expected values by hand or numpy: the binary and categorical cross-entropies
written out with logs; percentiles by ``numpy.percentile``; area fractions of
block-aligned masks; the argmax of upsampled probabilities. Parameters are
drawn with numpy (``_helpers.numpy_params``) and the functions under test
jitted: an eager ``init``/``apply`` compiles every primitive separately, the
bulk of these tests' time on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.losses import ClassifierLossConfig, finding_map_loss, make_classifier_loss, presence_type_losses
from jaxmed.models import CLASSIFIER_PRESETS, ClassifierConfig, ConvClassifier
from jaxmed.tasks.chest import (
    RegionNetConfig,
    make_region_loss,
    normalise_radiograph,
    pack_findings,
    region_targets,
    regions_from_probabilities,
    unpack_findings,
)
from jaxmed.train.registry import MODELS


def test_conv_classifier_shapes_and_embedding(rng):
    model = ConvClassifier(channels=(4, 8), num_outputs=5)
    x = jnp.asarray(rng.uniform(size=(3, 16, 16, 1)), jnp.float32)
    params = numpy_params(model, rng, x)
    logits, emb = jax.jit(lambda p, x: model.apply(p, x, with_embedding=True))(params, x)
    assert logits.shape == (3, 5) and emb.shape == (3, 16)
    # The head is one dense layer on the embedding.
    head = params["params"]["head"]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(emb) @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        model.apply(params, jnp.zeros((1, 18, 18, 1)))
    with pytest.raises(ValueError, match="divisible"):
        ClassifierConfig(image_shape=(30, 30, 1), channels=(4, 8))
    assert MODELS["classifier"].presets is CLASSIFIER_PRESETS


def _bce(z, y):
    return -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))


def test_presence_type_losses_by_hand():
    logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0, 0.5], [-1.0, 0.3, 0.2, 0.1, 0.0], [0.5, 0.0, 0.0, 3.0, 0.0]])
    label = jnp.asarray([1.0, 0.0, 1.0])
    kind = jnp.asarray([0, -1, 2])
    total, presence = jax.jit(lambda a, b, c: presence_type_losses(a, b, c, pos_weight=2.0, type_weight=0.5))(
        logits, label, kind)
    z, y = np.asarray(logits[:, 0], np.float64), np.asarray(label, np.float64)
    expected_presence = _bce(z, y) * (1 + y)
    t = np.asarray(logits[:, 1:], np.float64)
    log_softmax = t - np.log(np.exp(t).sum(1, keepdims=True))
    typed = np.asarray([-log_softmax[0, 0], 0.0, -log_softmax[2, 2]])
    np.testing.assert_allclose(np.asarray(presence), expected_presence, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(total), expected_presence + 0.5 * typed, rtol=1e-5)


def test_classifier_loss_weights_examples():
    model = ConvClassifier(channels=(4,), num_outputs=5)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 8, 8, 1)), jnp.float32)
    params = numpy_params(model, np.random.default_rng(1), x)
    loss_fn = make_classifier_loss(model.apply, ClassifierLossConfig(pos_weight=1.0, type_weight=0.0))
    batch = {"image": x, "label": jnp.asarray([1.0, 0.0, 1.0, 0.0]), "finding_type": jnp.asarray([0, -1, 1, -1]),
             "weight": jnp.asarray([1.0, 0.0, 0.0, 1.0])}
    loss, _ = jax.jit(loss_fn)(params, batch, jax.random.key(2))
    z = np.asarray(jax.jit(model.apply)(params, x)[:, 0], np.float64)
    expected = (_bce(z[0], 1.0) + _bce(z[3], 0.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_normalise_radiograph_uses_the_percentiles(rng):
    image = rng.gamma(2.0, 100.0, size=(64, 48)).astype(np.float32)
    out = np.asarray(jax.jit(normalise_radiograph)(image))
    lo, hi = np.percentile(image[::4, ::4], [0.5, 99.5])
    np.testing.assert_allclose(out[..., 0], np.clip((image - lo) / (hi - lo), 0, 1), atol=2e-6)
    assert out.shape == (64, 48, 1)
    assert float(np.asarray(normalise_radiograph(np.full((8, 8), 3.0))).max()) == 0.0


def test_region_targets_are_area_fractions():
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 1  # block-aligned halves
    labels[8:24, 8:24] = 3
    targets = np.asarray(region_targets(jnp.asarray(labels), 16))
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    # Far from every boundary the target is one class; each class keeps its area.
    assert targets[1, 12, 1] == pytest.approx(1.0) and targets[12, 1, 0] == pytest.approx(1.0)
    for c in range(4):
        assert targets[..., c].mean() == pytest.approx(np.mean(labels == c), abs=1e-3)


def test_regions_from_probabilities_is_the_upsampled_argmax():
    probs = np.zeros((4, 4, 4), np.float32)
    probs[..., 0] = 1.0
    probs[1:3, 1:3] = [0.0, 0.0, 0.0, 1.0]
    labels = np.asarray(regions_from_probabilities(jnp.asarray(probs), (16, 16)))
    assert labels.dtype == np.uint8
    assert np.all(labels[6:10, 6:10] == 3) and labels[0, 0] == 0 and labels[15, 15] == 0


def test_region_loss_is_the_soft_cross_entropy():
    config = RegionNetConfig(input_size=16, features=4, depth=2)
    model = config.make_module()
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 1)), jnp.float32)
    params = numpy_params(model, np.random.default_rng(0), x)
    target = jax.nn.softmax(jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 4))), axis=-1)
    loss_fn = make_region_loss(model, config, augment=False)
    loss, _ = jax.jit(lambda p, b: loss_fn(p, b, None))(params, {"image": x, "target": target})
    logits = np.asarray(jax.jit(model.apply)(params, x), np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(loss) == pytest.approx(float(-(np.asarray(target) * log_p).sum(-1).mean()), rel=1e-5)


def test_finding_bits_round_trip(rng):
    masks = rng.uniform(size=(2, 3, 8, 8)) > 0.6
    bits = pack_findings(masks)
    assert bits.dtype == np.uint8 and bits.shape == (2, 8, 8)
    np.testing.assert_array_equal(np.asarray(unpack_findings(jnp.asarray(bits[1]), 3)), masks[1])


def test_conv_classifier_centres_its_input_and_reads_presence_from_the_map(rng):
    x = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)), jnp.float32)
    plain = ConvClassifier(channels=(4, 8), num_outputs=3)
    centred = ConvClassifier(channels=(4, 8), num_outputs=3, input_mean=0.5, input_std=0.25)
    plain_params = numpy_params(plain, rng, x)
    np.testing.assert_allclose(np.asarray(jax.jit(centred.apply)(plain_params, x)),
                               np.asarray(jax.jit(plain.apply)(plain_params, (x - 0.5) / 0.25)), atol=1e-5)
    mapped = ConvClassifier(channels=(4, 8), num_outputs=3, map_head=True)
    params = numpy_params(mapped, rng, x)
    logits, emb, cells = jax.jit(lambda p, x: mapped.apply(p, x, with_embedding=True, with_map=True))(params, x)
    assert cells.shape == (2, 4, 4) and emb.shape == (2, 16)
    head = params["params"]["head"]
    dense = np.asarray(emb) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(cells).max(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits[:, 1:]), dense[:, 1:], atol=1e-5)
    with pytest.raises(ValueError, match="map_head"):
        plain.apply(plain_params, x, with_map=True)


def test_finding_map_loss_by_hand():
    # A map covered by 0.1 everywhere resizes to 0.1 in every cell: target 4 * 0.1 = 0.4.
    finding_map = jnp.full((1, 4, 4), 0.1)
    cell_logits = jnp.array([[[0.0, 1.0], [-1.0, 2.0]]])
    got = float(finding_map_loss(cell_logits, finding_map, pos_weight=3.0)[0])

    def bce(z, t):
        p = 1.0 / (1.0 + np.exp(-z))
        return -(t * np.log(p) + (1.0 - t) * np.log(1.0 - p))

    weight = 1.0 + 2.0 * 0.4  # 1 + (pos_weight - 1) * target
    want = weight * (bce(0.0, 0.4) + bce(1.0, 0.4) + bce(-1.0, 0.4) + bce(2.0, 0.4)) / 4.0
    assert got == pytest.approx(want, rel=1e-5)


def test_classifier_loss_adds_the_map_term_and_asks_for_the_map():
    model = ConvClassifier(channels=(4,), num_outputs=2, map_head=True)
    x = jnp.ones((2, 8, 8, 1))
    params = numpy_params(model, np.random.default_rng(0), x)
    batch = {"image": x, "label": jnp.array([1.0, 0.0]), "finding_type": jnp.array([0, -1]),
             "finding_map": jnp.zeros((2, 8, 8)).at[0].set(1.0)}
    plain = make_classifier_loss(model.apply, ClassifierLossConfig(map_weight=0.0))
    mapped = make_classifier_loss(model.apply, ClassifierLossConfig(map_weight=2.0, map_pos_weight=5.0))
    base, _ = jax.jit(lambda p, b: plain(p, b, None))(params, batch)
    total, metrics = jax.jit(lambda p, b: mapped(p, b, None))(params, batch)
    _, cells = jax.jit(lambda p, x: model.apply(p, x, with_map=True))(params, x)
    z = np.asarray(cells, np.float64)  # [2, 4, 4]; image 0 wholly covered -> target 1, image 1 none -> 0
    target = np.zeros_like(z)
    target[0] = 1.0
    p = 1.0 / (1.0 + np.exp(-z))
    dense = -(target * np.log(p) + (1.0 - target) * np.log(1.0 - p)) * (1.0 + 4.0 * target)
    assert float(metrics["map"]) == pytest.approx(dense.mean(), rel=1e-5)
    assert float(total) == pytest.approx(float(base) + 2.0 * dense.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="finding_map"):
        mapped(params, {k: v for k, v in batch.items() if k != "finding_map"}, None)
