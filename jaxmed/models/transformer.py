"""A decoder-only prefix-LM transformer with an explicit KV cache, for the vision-language model.

The sequence the model sees is ``[prefix; bos; answer]``: the prefix (image
tokens and the embedded instruction, padded on the right or anywhere, with
``input_mask`` False on the pads) attends to itself bidirectionally, and
``bos`` and the answer tokens attend causally to everything before them
(PaliGemma's prefix-LM, :func:`make_attn_mask`). Token ``t`` of the sequence
always has position ``t``, pads included, so the cached path
(:meth:`Transformer.prefill` then :meth:`Transformer.decode_step`) computes the
same numbers as one full forward pass (:meth:`Transformer.__call__`).

The caller embeds: :meth:`Transformer.embed` maps token ids to embeddings
(no positions) and image tokens come from an image encoder projected to
``width``; the two are concatenated before :meth:`Transformer.__call__`.
:meth:`Transformer.logits` reads the next-token logits through the tied
embedding. :func:`greedy_decode` generates with the cache;
:func:`greedy_decode_uncached` is its reference, recomputing the whole
sequence at every step.

Parameters come from ``model.init(key, x, attn_mask)`` (which also creates the
token embedding) and are passed to :func:`greedy_decode` as that variables
dict.

References:
  Beyer et al., "PaliGemma: A versatile 3B VLM for transfer", 2024, Sec. 3.2
  (prefix-LM masking); big_vision ``models/ppp/gemma.py`` (``make_attn_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmed.models.layers import at_least_f32

Array = jax.Array

DTYPES = ("float32", "bfloat16")


def make_attn_mask(input_mask: Array, mask_ar: Array) -> Array:
    """Prefix-LM attention mask, with big_vision's (PaliGemma's) semantics.

    Token ``q`` may attend to token ``k`` when both are real tokens and
    ``cumsum(mask_ar)[k] <= cumsum(mask_ar)[q]``. So a run of zeros in
    ``mask_ar`` is one block of full attention (a leading run of zeros is the
    bidirectional prefix), and a 1 starts a new block that sees every earlier
    block: ones after the prefix make the answer causal.

    .. note::
       A padded query (``input_mask`` False) gets an all-False row; the
       attention in :class:`Transformer` then averages uniformly over all
       keys for that row. Its output is meaningless but finite, and no real
       token attends to it.

    Args:
      input_mask: ``[B, T]`` bool, True for real tokens, False for pads.
      mask_ar: ``[B, T]`` int or bool, 1 where a token starts a new causal
        block, 0 where it attends within its block.

    Returns:
      ``[B, T, T]`` bool, ``[b, q, k]`` True where query ``q`` attends to key ``k``.
    """
    input_mask = jnp.asarray(input_mask, bool)
    cumsum = jnp.cumsum(jnp.asarray(mask_ar, jnp.int32), axis=1)
    attn = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return attn & valid


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Architecture of a :class:`Transformer`.

    Attributes:
      vocab_size: number of token ids (embedding rows, logits per position).
      width: model width ``D`` (embedding and residual stream).
      depth: number of transformer blocks.
      num_heads: attention heads ``H``; each has ``D // H`` dimensions.
      mlp_dim: hidden width of each block's MLP; None: ``4 * width``.
      max_len: learned absolute positions ``0 .. max_len - 1``; the longest
        sequence (prefix + bos + answer) the model takes.
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"``; parameters stay
        float32, attention softmax, hidden states and logits are returned in
        float32.
    """

    vocab_size: int
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    max_len: int = 512
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "width", "depth", "num_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mlp_dim is not None and self.mlp_dim < 1:
            raise ValueError(f"mlp_dim must be >= 1 or None, got {self.mlp_dim}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head, ``width // num_heads``."""
        return self.width // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """The MLP's hidden width (``mlp_dim``, or ``4 * width`` when None)."""
        return 4 * self.width if self.mlp_dim is None else self.mlp_dim

    @property
    def compute_dtype(self) -> jnp.dtype:
        """``dtype`` as a numpy dtype."""
        return jnp.dtype(self.dtype)


def _attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Masked softmax attention.

    Args:
      q: ``[B, Tq, H, Dh]`` queries, already scaled by ``Dh ** -0.5``.
      k: ``[B, S, H, Dh]`` keys.
      v: ``[B, S, H, Dh]`` values.
      mask: ``[B, Tq, S]`` bool, True where a query may attend to a key.

    Returns:
      ``[B, Tq, H, Dh]`` in the dtype of ``v``.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    # A large finite negative rather than -inf: an all-masked (padded) row
    # becomes a uniform average instead of NaN, which would leak through 0 * NaN.
    logits = jnp.where(mask[:, None, :, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class _Block(nn.Module):
    """Pre-LN block: LayerNorm -> multi-head attention -> residual; LayerNorm -> MLP(gelu) -> residual.

    Split in two (:meth:`qkv`, :meth:`finish`) so that the cached path can
    store the keys and values and attend to the stored ones.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        dt, heads = cfg.compute_dtype, (cfg.num_heads, cfg.head_dim)
        self.attn_norm = nn.LayerNorm(dtype=dt)
        self.q_proj = nn.DenseGeneral(heads, dtype=dt)
        self.k_proj = nn.DenseGeneral(heads, dtype=dt)
        self.v_proj = nn.DenseGeneral(heads, dtype=dt)
        self.o_proj = nn.DenseGeneral(cfg.width, axis=(-2, -1), dtype=dt)
        self.mlp_norm = nn.LayerNorm(dtype=dt)
        self.mlp_in = nn.Dense(cfg.hidden_dim, dtype=dt)
        self.mlp_out = nn.Dense(cfg.width, dtype=dt)

    def qkv(self, x: Array) -> tuple[Array, Array, Array]:
        """``[B, T, D]`` -> scaled queries, keys, values, each ``[B, T, H, Dh]``."""
        h = self.attn_norm(x)
        q = self.q_proj(h) * jnp.asarray(self.config.head_dim ** -0.5, self.config.compute_dtype)
        return q, self.k_proj(h), self.v_proj(h)

    def finish(self, x: Array, q: Array, k: Array, v: Array, mask: Array) -> Array:
        """The block's output ``[B, T, D]`` from its input ``x``, its queries and the keys/values ``[B, S, H, Dh]``."""
        x = x + self.o_proj(_attend(q, k, v, mask))
        return x + self.mlp_out(nn.gelu(self.mlp_in(self.mlp_norm(x))))


class Transformer(nn.Module):
    """Decoder-only prefix-LM transformer with learned positions and a tied embedding.

    Attributes:
      config: the architecture.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        # std 1/sqrt(D): embeddings of norm ~1, and tied logits of order 1 at init.
        init = nn.initializers.normal(stddev=cfg.width ** -0.5)
        self.embedder = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=init, dtype=cfg.compute_dtype)
        self.pos_embedding = self.param("pos_embedding", init, (cfg.max_len, cfg.width), jnp.float32)
        self.blocks = [_Block(cfg) for _ in range(cfg.depth)]
        self.final_norm = nn.LayerNorm(dtype=cfg.compute_dtype)

    def embed(self, tokens: Array) -> Array:
        """Token embeddings without positions: ``[B, L]`` int -> ``[B, L, D]`` in the compute dtype."""
        return self.embedder(tokens)

    def _add_positions(self, x: Array, positions: Array) -> Array:
        pos = jnp.take(self.pos_embedding, positions, axis=0)
        return (x + pos).astype(self.config.compute_dtype)

    def _check_width(self, x: Array, what: str) -> None:
        if x.ndim != 3 or x.shape[-1] != self.config.width:
            raise ValueError(f"{what} must be [B, T, {self.config.width}] embeddings, got shape {x.shape}")

    def __call__(self, x: Array, attn_mask: Array, positions: Array | None = None) -> Array:
        """Full forward pass.

        Args:
          x: ``[B, T, D]`` embeddings (image tokens and embedded text, mixed
            by the caller), without positions.
          attn_mask: ``[B, T, T]`` bool, e.g. from :func:`make_attn_mask`.
          positions: ``[B, T]`` int positions; None: ``arange(T)`` for every row.

        Returns:
          Hidden states ``[B, T, D]`` after the final LayerNorm, float32.
        """
        cfg = self.config
        self._check_width(x, "x")
        b, t, _ = x.shape
        if attn_mask.shape != (b, t, t):
            raise ValueError(f"attn_mask must have shape {(b, t, t)}, got {attn_mask.shape}")
        if positions is None:
            if t > cfg.max_len:
                raise ValueError(f"sequence length {t} exceeds max_len {cfg.max_len}")
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if self.is_initializing():
            self.embedder(jnp.zeros((1, 1), jnp.int32))  # create the embedding, which __call__ does not use
        h = self._add_positions(x, positions)
        for block in self.blocks:
            q, k, v = block.qkv(h)
            h = block.finish(h, q, k, v, attn_mask)
        return at_least_f32(self.final_norm(h))

    def logits(self, hidden: Array) -> Array:
        """Next-token logits through the tied embedding: ``[B, T, D]`` -> ``[B, T, V]``, float32."""
        return at_least_f32(self.embedder.attend(hidden.astype(self.config.compute_dtype)))

    def prefill(self, x: Array, input_mask: Array, *, cache_len: int) -> tuple[Array, dict[str, Array]]:
        """Runs the prefix and returns the KV cache for :meth:`decode_step`.

        The prefix attends bidirectionally among its real tokens
        (``make_attn_mask(input_mask, zeros)``); slot ``i`` has position ``i``.

        Args:
          x: ``[B, P, D]`` prefix embeddings.
          input_mask: ``[B, P]`` bool, False on pads.
          cache_len: number of cache slots, ``P <= cache_len <= max_len``: the
            prefix plus every token to be fed by :meth:`decode_step`.

        Returns:
          ``(hidden, cache)``: hidden ``[B, P, D]`` float32, and the cache, a
          dict of ``"k"`` and ``"v"`` (``[depth, B, cache_len, H, Dh]``,
          compute dtype, the prefix in slots ``0 .. P-1``), ``"mask"``
          (``[B, cache_len]`` bool, True on filled real slots) and ``"pos"``
          (int32 scalar, the next position, ``P``).
        """
        cfg = self.config
        self._check_width(x, "x")
        b, p, _ = x.shape
        if not p <= cache_len <= cfg.max_len:
            raise ValueError(f"need prefix length {p} <= cache_len {cache_len} <= max_len {cfg.max_len}")
        input_mask = jnp.asarray(input_mask, bool)
        mask = make_attn_mask(input_mask, jnp.zeros((b, p), jnp.int32))
        h = self._add_positions(x, jnp.broadcast_to(jnp.arange(p), (b, p)))
        ks, vs = [], []
        for block in self.blocks:
            q, k, v = block.qkv(h)
            h = block.finish(h, q, k, v, mask)
            ks.append(k)
            vs.append(v)
        slots = ((0, 0), (0, 0), (0, cache_len - p), (0, 0), (0, 0))
        cache = {
            "k": jnp.pad(jnp.stack(ks), slots),
            "v": jnp.pad(jnp.stack(vs), slots),
            "mask": jnp.pad(input_mask, ((0, 0), (0, cache_len - p))),
            "pos": jnp.asarray(p, jnp.int32),
        }
        return at_least_f32(self.final_norm(h)), cache

    def decode_step(self, x: Array, cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        """One token through the model, attending to the cache and itself.

        .. note::
           The token's position is ``cache["pos"]`` and it is written to that
           slot; the caller must keep ``pos < cache_len`` (slot writes past
           the end are clamped by XLA, silently).

        Args:
          x: ``[B, 1, D]`` embedding of the token being fed.
          cache: from :meth:`prefill` or a previous :meth:`decode_step`.

        Returns:
          ``(hidden, cache)``: hidden ``[B, 1, D]`` float32, and the cache with
          this token's keys and values in slot ``pos`` and ``pos + 1``.
        """
        self._check_width(x, "x")
        b = x.shape[0]
        if x.shape[1] != 1:
            raise ValueError(f"decode_step takes one token, x of shape [B, 1, D]; got {x.shape}")
        pos = cache["pos"]
        slot_mask = lax.dynamic_update_slice(cache["mask"], jnp.ones((b, 1), bool), (0, pos))
        attn_mask = slot_mask[:, None, :]
        h = self._add_positions(x, jnp.broadcast_to(pos, (b, 1)))
        k_all, v_all = cache["k"], cache["v"]
        zero = jnp.zeros((), jnp.int32)
        for i, block in enumerate(self.blocks):
            q, k, v = block.qkv(h)
            start = (jnp.asarray(i, jnp.int32), zero, pos, zero, zero)
            k_all = lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
            v_all = lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
            h = block.finish(h, q, k_all[i], v_all[i], attn_mask)
        new_cache = {"k": k_all, "v": v_all, "mask": slot_mask, "pos": pos + 1}
        return at_least_f32(self.final_norm(h)), new_cache


def _check_decode_length(model: Transformer, prefix: Array, max_new_tokens: int) -> int:
    """The prefix length ``P``, after checking that ``[prefix; bos; answer]`` fits in ``max_len``."""
    if prefix.ndim != 3:
        raise ValueError(f"prefix must be [B, P, D] embeddings, got shape {prefix.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    p, max_len = prefix.shape[1], model.config.max_len
    if p + 1 + max_new_tokens > max_len:
        raise ValueError(
            f"prefix length {p} + bos + max_new_tokens {max_new_tokens} = {p + 1 + max_new_tokens} "
            f"exceeds the model's max_len {max_len}"
        )
    return p


def _next_token(logits: Array, done: Array, *, eos_id: int, pad_id: int) -> tuple[Array, Array]:
    """Greedy choice from ``[B, V]`` logits; ``pad_id`` for rows already done. Returns (token [B], done [B])."""
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    token = jnp.where(done, jnp.int32(pad_id), token)
    return token, done | (token == eos_id)


def greedy_decode(
    model: Transformer,
    params,
    prefix: Array,
    prefix_mask: Array,
    *,
    max_new_tokens: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> Array:
    """KV-cached greedy decoding after a prefix.

    Prefills the prefix, feeds ``bos_id`` at position ``P`` and then each
    generated token, taking the argmax of the logits every step. A row's
    ``eos_id`` is kept and every token after it is ``pad_id``; the loop stops
    once every row has emitted ``eos_id``. Jit-able with ``max_new_tokens``
    (and the ids) static, e.g. ``jax.jit(functools.partial(greedy_decode,
    model, max_new_tokens=32, bos_id=1, eos_id=2, pad_id=0))``.

    Args:
      model: the :class:`Transformer`.
      params: its variables, as returned by ``model.init``.
      prefix: ``[B, P, D]`` prefix embeddings (image tokens, instruction).
      prefix_mask: ``[B, P]`` bool, False on pads.
      max_new_tokens: number of tokens to generate.
      bos_id: token fed after the prefix.
      eos_id: token that ends a row's answer.
      pad_id: token written after a row's ``eos_id``.

    Returns:
      ``[B, max_new_tokens]`` int32, the generated tokens (``bos_id`` not included).

    Raises:
      ValueError: if ``P + 1 + max_new_tokens > max_len`` (the training
        sequence ``[prefix; bos; answer]`` would not fit).
    """
    p = _check_decode_length(model, prefix, max_new_tokens)
    b = prefix.shape[0]
    # Slots: the prefix, bos and the first max_new_tokens - 1 generated tokens
    # (the last one is never fed back).
    _, cache = model.apply(params, prefix, prefix_mask, cache_len=p + max_new_tokens, method=Transformer.prefill)

    def step(token, cache):
        x = model.apply(params, token[:, None], method=Transformer.embed)
        hidden, cache = model.apply(params, x, cache, method=Transformer.decode_step)
        return model.apply(params, hidden, method=Transformer.logits)[:, 0], cache

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, token, done, out = carry
        logits, cache = step(token, cache)
        token, done = _next_token(logits, done, eos_id=eos_id, pad_id=pad_id)
        return i + 1, cache, token, done, out.at[:, i].set(token)

    init = (
        jnp.zeros((), jnp.int32),
        cache,
        jnp.full((b,), bos_id, jnp.int32),
        jnp.zeros((b,), bool),
        jnp.full((b, max_new_tokens), pad_id, jnp.int32),
    )
    return lax.while_loop(cond, body, init)[-1]


def greedy_decode_uncached(
    model: Transformer,
    params,
    prefix: Array,
    prefix_mask: Array,
    *,
    max_new_tokens: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> Array:
    """Reference for :func:`greedy_decode`: the full sequence recomputed at every step.

    Step ``i`` runs :meth:`Transformer.__call__` on ``[prefix; bos; g_0 ..
    g_{i-1}; filler]`` (length ``P + max_new_tokens``, positions
    ``arange``, ``mask_ar`` 0 on the prefix and 1 from ``bos`` on) and takes
    the argmax of the logits at position ``P + i``. The not yet generated
    filler slots come later in the causal part, so they do not affect it.
    Same arguments, result and errors as :func:`greedy_decode`.
    """
    p = _check_decode_length(model, prefix, max_new_tokens)
    b = prefix.shape[0]
    input_mask = jnp.concatenate([jnp.asarray(prefix_mask, bool), jnp.ones((b, max_new_tokens), bool)], axis=1)
    mask_ar = jnp.concatenate([jnp.zeros((b, p), jnp.int32), jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    attn_mask = make_attn_mask(input_mask, mask_ar)

    def body(i, carry):
        fed, done, out = carry  # fed: [B, max_new_tokens], bos then the tokens generated so far
        x = jnp.concatenate([prefix, model.apply(params, fed, method=Transformer.embed).astype(prefix.dtype)], axis=1)
        hidden = model.apply(params, x, attn_mask)
        h_i = lax.dynamic_slice_in_dim(hidden, p + i, 1, axis=1)
        logits = model.apply(params, h_i, method=Transformer.logits)[:, 0]
        token, done = _next_token(logits, done, eos_id=eos_id, pad_id=pad_id)
        # The last step's token is never fed; min() keeps its write in range.
        fed = lax.dynamic_update_slice(fed, token[:, None], (0, jnp.minimum(i + 1, max_new_tokens - 1)))
        return fed, done, out.at[:, i].set(token)

    fed = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(bos_id)
    init = (fed, jnp.zeros((b,), bool), jnp.full((b, max_new_tokens), pad_id, jnp.int32))
    return lax.fori_loop(0, max_new_tokens, body, init)[-1]
