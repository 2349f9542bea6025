"""The tokenizer of the vision-language model: byte-level BPE trained on reports and instructions.

A thin wrapper over HuggingFace ``tokenizers`` (`Tokenizer`), trained in
memory by `train_tokenizer` and saved as that library's one JSON file.

Design:

* **Lowercase normaliser.** Reports are case-insensitive: the writers
  capitalise only sentence starts, the parsers read lowercased text, and
  ``"Nodule"`` and ``"nodule"`` mean the same. Folding case keeps one token per
  word instead of two and spends the merges on words.
* **Pre-tokeniser: words, single digits, single punctuation marks.** The text
  is split by the regex ``" ?\\p{L}+| ?\\p{N}| ?[^\\s\\p{L}\\p{N}]|\\s+(?!\\S)|\\s+"``
  (GPT-2's, with digits and punctuation one character each), so BPE never
  merges across a word, a digit or a mark. Every number is its digits:
  ``" 12 mm"`` is ``["Ġ1", "2", "Ġmm"]`` and ``" 1.2 cm"`` is
  ``["Ġ1", ".", "2", "Ġcm"]`` (at 512 ids; a space is ``"Ġ"``); sizes
  tokenise compositionally and the model meets the same ten digit tokens
  (with and without a leading space) for every size and ratio, never an
  unseen number.
* **Byte-level symbols and decoder.** Each pre-token's bytes are mapped to
  GPT-2's printable byte symbols, and the byte-level decoder joins the
  pieces back byte for byte: the round trip
  ``decode(encode(t)) == normalize(t)`` is exact, runs of spaces, tabs,
  newlines and leading blanks included. A whitespace pre-tokeniser loses
  the spaces (``"nodule , 12 mm ."``); Metaspace drops a leading space.
* **A printable-ASCII alphabet.** The vocabulary always holds the 71
  symbols of lowercased printable ASCII (digits, letters, punctuation,
  space, tab, newline), whatever the corpus, so every ASCII text, and every
  number, encodes with no ``<unk>``. Other bytes (``"é"``) are in it only
  when the corpus has them, else they are ``<unk>``, which `decode` skips.
  Not all 256 bytes: they would take 185 ids from the merges, and at the
  presets' 320-512 ids the merges are what keeps a report short. On the
  reports and instructions of 32 chest phantoms, 512 ids is saturated (502
  used, every word whole, 56 tokens a report on average, 91 at most); 320
  ids leave longer words in pieces (85 on average, 156 at most).
* **Deterministic.** The same corpus gives the same vocabulary and merges:
  the tests train twice and compare the files, and two processes with
  different hash seeds wrote byte-identical ones.

.. note::
   **Special tokens.** `SPECIAL_TOKENS` take the first ids: ``<pad>`` 0,
   ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then ``<seg>`` and ``<loc>`` (the
   answers a mask or a landmark head reads), then one task token per
   instruction family (``"<task:segment>"``, the keys of
   `jaxmed.tasks.vlm.instructions.FAMILY_KIND`). `encode` adds none of them
   but does read one written literally in the text (``"<seg>"`` is
   `Tokenizer.seg_id`); `decode` skips them all, so a text holding one does
   not round-trip.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from jaxmed.tasks.vlm.instructions import FAMILY_KIND

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "train_tokenizer"]

_TASK_TOKENS = tuple(f"<task:{family}>" for family in FAMILY_KIND)
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<seg>", "<loc>", *_TASK_TOKENS)
"""Special tokens in id order: pad 0, bos 1, eos 2, unk 3, seg 4, loc 5, then one task token per family."""

# GPT-2's split with digits and punctuation marks one character each (module docstring).
_SPLIT = r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]|\s+(?!\S)|\s+"
_ASCII = "0123456789abcdefghijklmnopqrstuvwxyz" + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + " \t\n"


def _blank() -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    """Text to token ids and back (module docstring); build with `train_tokenizer` or `Tokenizer.load`.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose first ids are `SPECIAL_TOKENS`.

    Raises:
        ValueError: the special tokens are missing or at other ids.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        wrong = [t for i, t in enumerate(SPECIAL_TOKENS) if tokenizer.token_to_id(t) != i]
        if wrong:
            raise ValueError(f"special tokens not at their ids {SPECIAL_TOKENS.index(wrong[0])}...: {wrong}")
        self._tok = tokenizer

    pad_id = property(lambda self: 0, doc="Id of ``<pad>``.")
    bos_id = property(lambda self: 1, doc="Id of ``<bos>``.")
    eos_id = property(lambda self: 2, doc="Id of ``<eos>``.")
    unk_id = property(lambda self: 3, doc="Id of ``<unk>``: a byte neither ASCII nor in the corpus.")
    seg_id = property(lambda self: 4, doc="Id of ``<seg>``, the answer a mask head reads.")
    loc_id = property(lambda self: 5, doc="Id of ``<loc>``, the answer a landmark head reads.")

    @property
    def vocab_size(self) -> int:
        """The number of ids, special tokens included (ids are ``0 .. vocab_size - 1``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def task_id(self, family: str) -> int:
        """The id of the task token of an instruction family (a key of `FAMILY_KIND`)."""
        if family not in FAMILY_KIND:
            raise KeyError(f"no task token for family {family!r}; families: {', '.join(FAMILY_KIND)}")
        return SPECIAL_TOKENS.index(f"<task:{family}>")

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (lowercased): what `decode` gives back."""
        return self._tok.normalizer.normalize_str(text)

    def encode(self, text: str) -> list[int]:
        """The ids of a text, with no ``<bos>``/``<eos>`` added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def tokens(self, text: str) -> list[str]:
        """The token strings of a text (byte-level symbols: ``"Ġ"`` is a space)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ids, skipping every special token (padding included)."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    def encode_batch(self, texts: Sequence[str], *, length: int, add_eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Texts as a padded table of ids.

        Args:
            texts: N texts.
            length: the table's width in tokens.
            add_eos: end each row with ``<eos>`` (counted in ``length``).

        Returns:
            ``(ids, mask)``: ``ids`` int32 ``[N, length]``, padded on the
            right with `pad_id`; ``mask`` bool ``[N, length]``, True on real
            tokens (``<eos>`` included).

        Raises:
            ValueError: a text does not fit; nothing is truncated.
        """
        rows = [e.ids + [self.eos_id] * add_eos for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        ids = np.full((len(rows), length), self.pad_id, np.int32)
        mask = np.zeros((len(rows), length), bool)
        if rows:
            longest = max(range(len(rows)), key=lambda i: len(rows[i]))
            if len(rows[longest]) > length:
                raise ValueError(
                    f"text {longest} is {len(rows[longest])} tokens{' with <eos>' * add_eos}, more than "
                    f"length={length} (texts are never truncated): {texts[longest][:60]!r}")
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        return ids, mask

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer as one JSON file (``tokenizers``' own format)."""
        self._tok.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Reads a tokenizer `save` wrote.

        Raises:
            FileNotFoundError: there is no file at ``path``.
            ValueError: the file is not a tokenizer of this module (corrupt,
                or other special tokens); the message names the file.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            return cls(tokenizers.Tokenizer.from_file(path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a jaxmed tokenizer file: {error}") from error


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer trained on texts (module docstring).

    Args:
        texts: the corpus (reports, prompts, answers).
        vocab_size: the most ids, special tokens and the 71 ASCII symbols
            included; fewer when the corpus runs out of pairs seen
            ``min_frequency`` times.
        min_frequency: the fewest occurrences of a pair to merge it.

    Returns:
        A `Tokenizer`; the same texts give the same one.
    """
    tok = _blank()
    # The ASCII characters as byte-level symbols (" " is "Ġ"), the alphabet the trainer starts from.
    ((alphabet, _),) = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(_ASCII)
    floor = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is below the {floor} special tokens and ASCII symbols")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list(alphabet))  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return Tokenizer(tok)
