"""Tests for jaxmed.models.transformer: the prefix-LM mask, the forward pass, the KV cache and greedy decoding.

Expected values are written out independently: the mask by hand and by
big_vision's definition in Python loops, a depth-1 forward pass in float64
numpy from the parameter tree, cached decoding against the full pass, and
the eos rule against a run that never stops.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _helpers import numpy_params
from jaxmed.models import Transformer, TransformerConfig, greedy_decode, greedy_decode_uncached, make_attn_mask

VOCAB, WIDTH = 50, 32


def _model(depth=2, max_len=32, dtype="float32"):
    return Transformer(TransformerConfig(vocab_size=VOCAB, width=WIDTH, depth=depth, num_heads=4, max_len=max_len,
                                         dtype=dtype))


def _params(model, rng, t=4):
    x = jax.ShapeDtypeStruct((1, t, WIDTH), jnp.float32)
    return numpy_params(model, rng, x, jax.ShapeDtypeStruct((1, t, t), jnp.bool_))


def _sequence(model, params, rng, prefix_mask, answer):
    """``[prefix; embed(answer)]`` with the prefix-LM mask: prefix ``[B, P, D]`` random, ``answer`` ``[B, A]`` ids."""
    b, p = prefix_mask.shape
    prefix = jnp.asarray(rng.normal(size=(b, p, WIDTH)), jnp.float32)
    x = jnp.concatenate([prefix, model.apply(params, jnp.asarray(answer), method=Transformer.embed)], axis=1)
    input_mask = np.concatenate([prefix_mask, np.ones_like(answer, bool)], axis=1)
    mask_ar = np.concatenate([np.zeros_like(prefix_mask, np.int32), np.ones_like(answer, np.int32)], axis=1)
    return prefix, x, make_attn_mask(input_mask, mask_ar)


def _forward(model):
    return jax.jit(lambda params, x, mask: model.apply(params, x, mask))


# --- the mask ---------------------------------------------------------------------------------------------------


def test_make_attn_mask_by_hand():
    # Row 0: a prefix of 3 whose last token is a pad, then 3 causal tokens.
    # Row 1: three blocks, tokens {0, 1, 2}, {3, 4}, {5}, no pads.
    input_mask = np.array([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)
    mask_ar = np.array([[0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 1]])
    expected = np.array([
        [[1, 1, 0, 0, 0, 0],
         [1, 1, 0, 0, 0, 0],
         [0, 0, 0, 0, 0, 0],
         [1, 1, 0, 1, 0, 0],
         [1, 1, 0, 1, 1, 0],
         [1, 1, 0, 1, 1, 1]],
        [[1, 1, 1, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [1, 1, 1, 0, 0, 0],
         [1, 1, 1, 1, 1, 0],
         [1, 1, 1, 1, 1, 0],
         [1, 1, 1, 1, 1, 1]],
    ], bool)
    got = jax.jit(make_attn_mask)(input_mask, mask_ar)
    assert got.dtype == jnp.bool_ and got.shape == (2, 6, 6)
    np.testing.assert_array_equal(got, expected)


def test_make_attn_mask_matches_big_vision_definition(rng):
    b, t = 4, 9
    input_mask = rng.uniform(size=(b, t)) < 0.8
    mask_ar = (rng.uniform(size=(b, t)) < 0.4).astype(np.int32)
    expected = np.zeros((b, t, t), bool)
    for i in range(b):
        for q in range(t):
            for k in range(t):
                block_q, block_k = mask_ar[i, : q + 1].sum(), mask_ar[i, : k + 1].sum()
                expected[i, q, k] = block_k <= block_q and input_mask[i, q] and input_mask[i, k]
    np.testing.assert_array_equal(jax.jit(make_attn_mask)(input_mask, mask_ar.astype(bool)), expected)


# --- the forward pass -------------------------------------------------------------------------------------------


def test_prefix_is_bidirectional_and_answer_causal(rng):
    model = _model()
    params = _params(model, rng)
    prefix_mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], bool)
    answer = rng.integers(0, VOCAB, size=(2, 4))
    _, x, mask = _sequence(model, params, rng, prefix_mask, answer)
    forward = _forward(model)
    base = np.asarray(forward(params, x, mask))
    real = np.concatenate([prefix_mask, np.ones((2, 4), bool)], axis=1)

    def changed(position):
        noise = jnp.asarray(rng.normal(size=(2, 1, WIDTH)), jnp.float32)
        diff = np.abs(np.asarray(forward(params, x.at[:, position : position + 1].add(noise), mask)) - base)
        return diff.max(axis=-1)  # [B, T]

    # Answer token 6: earlier real positions untouched, it and later ones change.
    # (Pad queries average over every key, so they do see it; no real token reads them.)
    d = changed(6)
    np.testing.assert_array_equal(d[:, :6][real[:, :6]], 0.0)
    assert d[:, 6:].min() > 1e-3
    # Prefix token 2 (real in both rows) changes every real position, earlier prefix tokens included.
    d = changed(2)
    assert d[real].min() > 1e-3
    # Pad token 3 of row 0 changes no real position of row 0.
    d = changed(3)
    np.testing.assert_array_equal(d[0][real[0]], 0.0)


def _np_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_gelu(x):  # tanh approximation, flax.linen.gelu's default
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_depth_one_matches_numpy(rng):
    model = _model(depth=1)
    params = _params(model, rng)
    prefix_mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    answer = rng.integers(0, VOCAB, size=(2, 3))
    _, x, mask = _sequence(model, params, rng, prefix_mask, answer)
    hidden = jax.jit(lambda p, x, m: model.apply(p, x, m))(params, x, mask)
    logits = jax.jit(lambda p, h: model.apply(p, h, method=Transformer.logits))(params, hidden)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    blk, heads, dh = p["blocks_0"], 4, WIDTH // 4
    m = np.asarray(mask)
    t = x.shape[1]
    h = np.asarray(x, np.float64) + p["pos_embedding"][:t]
    expected = np.zeros_like(h)
    for b in range(2):
        ln = _np_layer_norm(h[b], blk["attn_norm"])
        attn_out = np.zeros((t, WIDTH))
        for head in range(heads):
            def proj(name):
                return ln @ blk[name]["kernel"][:, head, :] + blk[name]["bias"][head]
            q, k, v = proj("q_proj") / np.sqrt(dh), proj("k_proj"), proj("v_proj")
            scores = q @ k.T
            weights = np.zeros((t, t))
            for i in range(t):
                if not m[b, i].any():  # a pad query: the uniform average of all keys
                    weights[i] = 1 / t
                    continue
                e = np.exp(scores[i, m[b, i]] - scores[i, m[b, i]].max())
                weights[i, m[b, i]] = e / e.sum()
            attn_out += (weights @ v) @ blk["o_proj"]["kernel"][head]
        y = h[b] + attn_out + blk["o_proj"]["bias"]
        mlp = _np_gelu(_np_layer_norm(y, blk["mlp_norm"]) @ blk["mlp_in"]["kernel"] + blk["mlp_in"]["bias"])
        y = y + mlp @ blk["mlp_out"]["kernel"] + blk["mlp_out"]["bias"]
        expected[b] = _np_layer_norm(y, p["final_norm"])
    assert hidden.dtype == jnp.float32 and logits.dtype == jnp.float32
    np.testing.assert_allclose(hidden, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits, expected @ p["embedder"]["embedding"].T, atol=1e-5, rtol=0)


# --- the KV cache and decoding ----------------------------------------------------------------------------------


def test_cached_decoding_matches_full_pass(rng):
    model = _model()
    params = _params(model, rng)
    prefix_mask = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], bool)  # a trailing and an inner pad
    fed = rng.integers(0, VOCAB, size=(2, 4))  # bos and three answer tokens, teacher-forced
    p, a = prefix_mask.shape[1], fed.shape[1]
    prefix, x, mask = _sequence(model, params, rng, prefix_mask, fed)

    @jax.jit
    def full(params, x, mask):
        hidden = model.apply(params, x, mask)
        return hidden, model.apply(params, hidden, method=Transformer.logits)

    @jax.jit
    def cached(params, prefix, prefix_mask, fed):
        hidden, cache = model.apply(params, prefix, prefix_mask, cache_len=p + a, method=Transformer.prefill)
        logits = []
        for j in range(a):
            e = model.apply(params, fed[:, j : j + 1], method=Transformer.embed)
            h, cache = model.apply(params, e, cache, method=Transformer.decode_step)
            logits.append(model.apply(params, h, method=Transformer.logits))
        return hidden, jnp.concatenate(logits, axis=1), cache

    full_hidden, full_logits = full(params, x, mask)
    prefix_hidden, step_logits, cache = cached(params, prefix, prefix_mask, fed)
    np.testing.assert_allclose(step_logits, full_logits[:, p:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(prefix_hidden)[prefix_mask], np.asarray(full_hidden)[:, :p][prefix_mask],
                               atol=1e-5, rtol=0)
    assert cache["k"].shape == (2, 2, p + a, 4, WIDTH // 4)
    assert int(cache["pos"]) == p + a
    np.testing.assert_array_equal(cache["mask"], np.concatenate([prefix_mask, np.ones((2, a), bool)], axis=1))


def _decoders(model, **ids):
    return [jax.jit(functools.partial(f, model, **ids)) for f in (greedy_decode, greedy_decode_uncached)]


def test_greedy_decode_matches_uncached(rng):
    p, n = 6, 7
    model = _model(max_len=p + 1 + n)  # exactly long enough
    params = _params(model, rng)
    prefix = jnp.asarray(rng.normal(size=(3, p, WIDTH)), jnp.float32)
    prefix_mask = np.ones((3, p), bool)
    prefix_mask[0, 4:] = False
    prefix_mask[2, 1] = False
    cached, uncached = _decoders(model, max_new_tokens=n, bos_id=1, eos_id=VOCAB, pad_id=0)  # eos never emitted
    tokens = cached(params, prefix, prefix_mask)
    assert tokens.shape == (3, n) and tokens.dtype == jnp.int32
    np.testing.assert_array_equal(tokens, uncached(params, prefix, prefix_mask))
    assert len(np.unique(np.asarray(tokens))) > 1  # not a degenerate constant output


def test_tokens_after_eos_are_pad(rng):
    p, n, pad = 5, 6, 0
    model = _model()
    params = _params(model, rng)
    prefix = jnp.asarray(rng.normal(size=(4, p, WIDTH)), jnp.float32)
    prefix_mask = np.ones((4, p), bool)
    prefix_mask[1, 3:] = False
    free, _ = _decoders(model, max_new_tokens=n, bos_id=1, eos_id=VOCAB, pad_id=pad)
    free_tokens = np.asarray(free(params, prefix, prefix_mask))
    # Until a row emits eos its tokens do not depend on eos_id, so the run that never
    # stops gives the expected output: cut after the first eos, pads after it.
    eos = int(free_tokens[0, 2])
    expected = free_tokens.copy()
    for row in expected:
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] + 1 :] = pad
    assert (expected[0, 3:] == pad).all()
    for decode in _decoders(model, max_new_tokens=n, bos_id=1, eos_id=eos, pad_id=pad):
        np.testing.assert_array_equal(decode(params, prefix, prefix_mask), expected)


def test_decode_rejects_too_long_a_prompt(rng):
    model = _model(max_len=16)
    params = _params(model, rng)
    prefix = jnp.zeros((1, 10, WIDTH))
    for decode in (greedy_decode, greedy_decode_uncached):
        with pytest.raises(ValueError, match="exceeds the model's max_len 16"):
            decode(model, params, prefix, jnp.ones((1, 10), bool), max_new_tokens=6, bos_id=1, eos_id=2, pad_id=0)


# --- configuration and dtype ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(width=30), dict(depth=0), dict(vocab_size=0), dict(mlp_dim=0),
                                 dict(dtype="float16"), dict(max_len=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        TransformerConfig(**{"vocab_size": VOCAB, "width": WIDTH, "num_heads": 4, **bad})


def test_bfloat16_compute_returns_float32_near_float32(rng):
    params = _params(_model(), rng)
    prefix_mask = np.array([[1, 1, 1, 0]], bool)
    answer = rng.integers(0, VOCAB, size=(1, 3))
    outs = []
    for dtype in ("float32", "bfloat16"):
        model = _model(dtype=dtype)
        _, x, mask = _sequence(model, params, np.random.default_rng(1), prefix_mask, answer)
        outs.append(_forward(model)(params, x.astype(jnp.float32), mask))
    assert outs[1].dtype == jnp.float32
    np.testing.assert_allclose(outs[1], outs[0], atol=0.1)
