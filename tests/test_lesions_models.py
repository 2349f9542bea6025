"""The lesion model's pieces: fusions, per-modality maps, the encoder taken from the U-Net, the ordinal loss.

Expected values are computed independently: numpy by hand (the fusions'
formulas, the cumulative-link probabilities as differences of sigmoids) and
Flax's own record of the U-Net's intermediate outputs. Where a test checks a
function of the parameters, not their initial values, they are drawn with numpy
(``_helpers.numpy_params``) and the modules applied jitted: an eager ``init``
compiles each initialiser per shape (about a second each on CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import numpy_params

from jaxmed.losses import cumulative_link_log_probs, cumulative_link_nll, localiser_pixel_loss
from jaxmed.models import MapClassifier, MultiModalLocaliser, UNet, UNetEncoder, encoder_params_from_unet, fuse_logits
from jaxmed.models.localiser import modality_inputs

TINY = dict(features=4, depth=1, norm_groups=4)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_fusions_match_their_formulas(rng):
    logits = rng.normal(0, 4, size=(5, 7, 3)).astype(np.float32)
    logits[0, 0] = [30.0, -30.0, 0.0]  # saturated maps stay finite in the mean
    p = _sigmoid(logits.astype(np.float64))
    mean = jax.jit(lambda l: fuse_logits(l, "mean"))(logits)
    np.testing.assert_allclose(_sigmoid(np.asarray(mean, np.float64)), p.mean(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda l: fuse_logits(l, "max"))(logits), logits.max(-1))
    with pytest.raises(ValueError, match="mean' or 'max"):
        fuse_logits(logits, "learned")


def test_modality_inputs_layout():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    inputs = modality_inputs(x)
    assert inputs.shape == (6, 4, 4, 4)
    for m in range(3):
        for i in range(2):
            np.testing.assert_array_equal(inputs[m * 2 + i, ..., 0], x[i, ..., m])
            np.testing.assert_array_equal(inputs[m * 2 + i, 0, 0, 1:], np.eye(3)[m])


def test_each_modality_map_sees_only_its_own_image(rng):
    model = MultiModalLocaliser(**TINY, feature_channels=4, fusion_hidden=4, fusion="learned")
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    params = numpy_params(model, rng, x)
    apply = jax.jit(lambda p, x: model.apply(p, x, with_maps=True))
    out = apply(params, x)
    changed = apply(params, x.at[..., 2].multiply(-3.0))
    np.testing.assert_array_equal(out["maps"][..., :2], changed["maps"][..., :2])
    assert not np.allclose(out["maps"][..., 2], changed["maps"][..., 2])
    assert out["fused"].shape == (2, 16, 16, 1) and out["maps"].shape == (2, 16, 16, 3)
    assert not np.allclose(out["fused"], changed["fused"])  # the learned fusion sees every modality


def test_classifier_encoder_starts_as_the_localisers_unet_encoder(rng):
    """With the U-Net's weights the encoder gives the U-Net's own bottleneck (Flax's intermediate record)."""
    unet = UNet(**TINY, out_channels=4)
    x = jnp.asarray(rng.normal(size=(3, 16, 16, 4)), jnp.float32)  # image + 3-modality code
    unet_params = numpy_params(unet, rng, x)["params"]
    _, state = jax.jit(lambda p, x: unet.apply(p, x, capture_intermediates=True, mutable=["intermediates"]))(
        {"params": unet_params}, x)
    bottleneck = state["intermediates"]["ConvBlock_1"]["__call__"][0]
    encoder = UNetEncoder(**TINY)
    with_map = jnp.concatenate([x, jnp.asarray(rng.uniform(size=(3, 16, 16, 1)), jnp.float32)], axis=-1)
    enc_params = numpy_params(encoder, rng, with_map)["params"]
    taken = encoder_params_from_unet(unet_params, enc_params)
    np.testing.assert_allclose(jax.jit(encoder.apply)({"params": taken}, with_map), bottleneck, rtol=1e-5, atol=1e-5)
    first = taken["ConvBlock_0"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(first[..., 4, :], 0.0)  # the map's input kernel starts at 0
    with pytest.raises(ValueError, match="U-Net"):
        encoder_params_from_unet(unet_params, numpy_params(UNetEncoder(features=4, depth=2, norm_groups=4), rng,
                                                           with_map)["params"])


def test_map_classifier_outputs_increasing_cutpoints(rng):
    model = MapClassifier(**TINY, hidden=8)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    p = jnp.asarray(rng.uniform(size=(2, 16, 16)), jnp.float32)
    # The cut-points as MapClassifier initialises them; the other weights drawn with numpy (only the cut-points'
    # initial values matter here, and a jitted init that returns them alone compiles without the kernels').
    params = numpy_params(model, rng, x, p)
    cuts = jax.jit(lambda k: {n: model.init(k, x, p)["params"][n] for n in ("cut_first", "cut_gaps")})(
        jax.random.key(0))
    params = {"params": {**params["params"], **cuts}}
    out = jax.jit(model.apply)(params, x, p)
    c = np.asarray(out["cumulative_logits"])
    assert c.shape == (2, 4) and np.all(np.diff(c, axis=1) < 0)
    np.testing.assert_allclose(c[:, 0], out["score"], rtol=1e-6)  # the first cut-point starts at 0
    # One score per exam, cut-points shared by all exams (proportional odds).
    np.testing.assert_allclose(c - c[:, :1], np.broadcast_to(c[:1] - c[:1, :1], c.shape), rtol=1e-5, atol=1e-6)


def test_cumulative_link_probabilities_by_hand(rng):
    cuts = np.sort(rng.normal(0, 2, size=(6, 4)), axis=1)
    c = rng.normal(0, 3, size=(6, 1)) - cuts  # decreasing
    above = _sigmoid(c.astype(np.float64))
    expected = np.concatenate([1 - above[:, :1], above[:, :-1] - above[:, 1:], above[:, -1:]], axis=1)
    log_probs = jax.jit(cumulative_link_log_probs)(jnp.asarray(c, jnp.float32))
    np.testing.assert_allclose(np.exp(log_probs), expected, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-5)
    labels = np.array([0, 1, 2, 3, 4, 2])
    nll = jax.jit(cumulative_link_nll)(jnp.asarray(c, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(nll, -np.log(expected[np.arange(6), labels]), rtol=2e-4, atol=1e-5)


def test_cumulative_link_nll_saturated():
    """Differences of sigmoids near 1: sigmoid(40) - sigmoid(39) = e^-39 (1 - e^-1) to within e^-78."""
    c = jnp.asarray([[40.0, 39.0, -20.0, -41.0]] * 3)
    nll = jax.jit(cumulative_link_nll)(c, jnp.asarray([0, 1, 4]))
    np.testing.assert_allclose(nll, [40.0, 39.0 - np.log1p(-np.exp(-1.0)), 41.0], rtol=1e-6)
    grads = jax.jit(jax.grad(lambda c: cumulative_link_nll(c, jnp.asarray([0, 1, 4])).sum()))(c)
    assert np.all(np.isfinite(grads))


def test_localiser_pixel_loss_by_hand(rng):
    fused = rng.normal(size=(5, 5)).astype(np.float32)
    maps = rng.normal(size=(5, 5, 3)).astype(np.float32)
    target = (rng.uniform(size=(5, 5)) < 0.3).astype(np.float32)

    def bce(z, y):
        return -(y * np.log(_sigmoid(z)) + (1 - y) * np.log(1 - _sigmoid(z)))

    w = 1 + 4.0 * target
    expected = w * bce(fused, target) + 0.5 * np.mean(w[..., None] * bce(maps, target[..., None]), axis=-1)
    loss = jax.jit(lambda f, m, t: localiser_pixel_loss(f, m, t, pos_weight=5.0, modality_weight=0.5))
    np.testing.assert_allclose(loss(fused, maps, target), expected, rtol=1e-5)


def test_with_width_widens_the_one_encoder_of_both_networks():
    from jaxmed.tasks.lesions import TrainConfig, with_width

    base = TrainConfig()
    wide = with_width(base, 16)
    assert (wide.localiser.features, wide.classifier.features) == (16, 16)
    assert wide.localiser.depth == base.localiser.depth and wide.reference_phase == base.reference_phase
    shapes = jax.eval_shape(lambda: wide.localiser.make_module().init(jax.random.key(0),
                                                                      jnp.zeros((1, *wide.localiser.image_shape))))
    kernels = jax.tree_util.tree_leaves_with_path(shapes["params"]["unet"]["ConvBlock_0"])
    assert {leaf.shape[-1] for path, leaf in kernels if "kernel" in jax.tree_util.keystr(path)} == {16}


def test_mirror_averaged_prediction_is_mirror_equivariant(rng):
    """``mirror=True`` is the mean of the prediction and the mirrored prediction of the mirror (Flax's apply,
    recombined here by hand), so mirroring the input mirrors every map and leaves the exam outputs unchanged;
    without it a random network is not equivariant (so the check can fail)."""
    from jaxmed.models import LocaliserConfig, MapClassifierConfig
    from jaxmed.tasks.lesions import LesionNet, predict_lesions, predict_localiser

    loc = LocaliserConfig(image_shape=(16, 16, 3), **TINY, feature_channels=4, fusion="learned", fusion_hidden=4)
    cls = MapClassifierConfig(**TINY, hidden=8)
    x = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    net = LesionNet(localiser=loc, classifier=cls)
    params = numpy_params(net, rng, jnp.asarray(x))
    flip = x[:, :, ::-1]

    out, out_flipped = (predict_lesions(params, loc, cls, v, mirror=True) for v in (x, flip))
    raw, raw_flipped = (jax.jit(net.apply)(params, jnp.asarray(v)) for v in (x, flip))
    sig = lambda v: _sigmoid(np.asarray(v, np.float64))  # noqa: E731
    np.testing.assert_allclose(out["prob"], (np.asarray(raw["prob"]) + np.asarray(raw_flipped["prob"])[:, :, ::-1]) / 2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["maps"], (sig(raw["maps"]) + sig(raw_flipped["maps"])[:, :, ::-1]) / 2,
                               rtol=1e-5, atol=1e-6)
    significant = (sig(raw["cumulative_logits"][:, 0]) + sig(raw_flipped["cumulative_logits"][:, 0])) / 2
    np.testing.assert_allclose(out["significant"], significant, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["grade_probs"].sum(-1), 1.0, rtol=1e-5)

    np.testing.assert_allclose(out_flipped["prob"], out["prob"][:, :, ::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_flipped["maps"], out["maps"][:, :, ::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_flipped["significant"], out["significant"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_flipped["grade_probs"], out["grade_probs"], rtol=1e-5, atol=1e-6)
    plain, plain_flipped = (predict_lesions(params, loc, cls, v)["prob"] for v in (x, flip))
    assert np.abs(plain_flipped - plain[:, :, ::-1]).max() > 1e-3

    loc_params = {"params": params["params"]["localiser"]}
    alone = predict_localiser(loc_params, loc, x, mirror=True)
    np.testing.assert_allclose(alone["prob"], out["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_localiser(loc_params, loc, flip, mirror=True)["prob"], alone["prob"][:, :, ::-1],
                               rtol=1e-5, atol=1e-6)


def test_mirror_tta_survives_the_config_round_trip():
    from jaxmed.tasks.lesions import TrainConfig, config_to_json, train_config_from_json

    config = TrainConfig(mirror_tta=True)
    data = config_to_json(config)
    assert data["mirror_tta"] is True and train_config_from_json(data) == config
    del data["mirror_tta"]  # a lesions.json written before the option: the default
    assert train_config_from_json(data).mirror_tta is False
