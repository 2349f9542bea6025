"""The VLM's tokenizer (jaxmed.tasks.vlm.tokenizer), trained on reports and instructions of 32 chest phantoms.

Known answers: a round trip gives the lowercased text back exactly; a number
is its digits; padding and masks are written out by hand. The phantoms are
those of tests/test_vlm_instructions.py (same config and key: one
compilation per process).
"""

import jax
import numpy as np
import pytest

from jaxmed.data.phantoms import ChestPhantomConfig, chest_truth, make_dataset
from jaxmed.tasks.vlm.instructions import FAMILY_KIND, generate_instructions
from jaxmed.tasks.vlm.reports import write_chest_report
from jaxmed.tasks.vlm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

CHEST = ChestPhantomConfig(shape=(128, 128), finding_probability=0.8)
NUM_CHEST = 32


def _texts(instructions):
    out = []
    for ins in instructions:
        out.append(ins.prompt)
        if isinstance(ins.answer, float):
            out += [f"{ins.answer:.0f} mm", f"{ins.answer:.2f}"]
        elif ins.answer is not None:
            out.append(str(ins.answer))
    return out


@pytest.fixture(scope="module")
def truths():
    d = make_dataset(jax.random.key(14), NUM_CHEST, kind="chest", config=CHEST, chunk_size=NUM_CHEST)
    return [chest_truth({k: v[i] for k, v in d.items()}) for i in range(NUM_CHEST)]


@pytest.fixture(scope="module")
def corpus(truths):
    reports = [write_chest_report(t, np.random.default_rng(i)) for i, t in enumerate(truths)]
    instructions = [ins for i, r in enumerate(reports) for ins in generate_instructions(r, np.random.default_rng(i))]
    return reports + _texts(instructions)


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(corpus, vocab_size=512)


def test_round_trip_is_exact_on_held_out_reports_and_every_instruction(tok, truths, corpus):
    held_out = [write_chest_report(t, np.random.default_rng(1000 + i)) for i, t in enumerate(truths)]
    assert not set(held_out) & set(corpus)
    held_out_instructions = [ins for i, r in enumerate(held_out)
                             for ins in generate_instructions(r, np.random.default_rng(1000 + i))]  # fmt: skip
    for text in held_out + corpus + _texts(held_out_instructions):
        ids = tok.encode(text)
        assert tok.unk_id not in ids, text
        assert tok.decode(ids) == text.lower() == tok.normalize(text), text
    # Spacing survives byte for byte: double spaces, tabs, newlines, leading and trailing blanks.
    for text in ("  Two  spaces\tand a tab.\nA new line ", "\n", " ", ""):
        assert tok.decode(tok.encode(text)) == text.lower()


def test_special_tokens_take_the_first_ids_and_decode_skips_them(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.seg_id, tok.loc_id) == (0, 1, 2, 3, 4, 5)
    assert SPECIAL_TOKENS[:6] == ("<pad>", "<bos>", "<eos>", "<unk>", "<seg>", "<loc>")
    assert [tok.task_id(f) for f in FAMILY_KIND] == list(range(6, 6 + len(FAMILY_KIND)))
    assert SPECIAL_TOKENS[tok.task_id("segment")] == "<task:segment>" and len(SPECIAL_TOKENS) == 6 + len(FAMILY_KIND)
    text = "No pleural effusion."
    ids = tok.encode(text)
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    wrapped = [tok.bos_id, tok.task_id("report"), *ids, tok.seg_id, tok.loc_id, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(wrapped) == tok.decode(np.asarray(wrapped, np.int32)) == text.lower()
    assert tok.encode("<seg>") == [tok.seg_id]  # a special token written in the text is read as one
    with pytest.raises(KeyError, match="segment, landmark"):
        tok.task_id("classify")


def test_numbers_are_their_digits_and_sizes_round_trip(tok):
    for n in range(100):
        assert tok.tokens(str(n)) == list(str(n))
        for text in (str(n), f"{n} mm", f"a {n} mm nodule", f"{n / 10:.1f} cm", f"ratio 0.{n:02d}"):
            ids = tok.encode(text)
            assert tok.unk_id not in ids and tok.decode(ids) == text, text
    # "12 mm" and "1.2 cm" share their digit tokens: " 1" then "2".
    assert tok.tokens("a 12 mm")[1:3] == tok.tokens("a 1.2 cm")[1:4:2] == ["Ġ1", "2"]


def test_unknown_bytes_are_unk_but_ascii_never_is(corpus):
    tok = train_tokenizer(corpus + ["~|^"], vocab_size=512)
    assert tok.encode("é") == [tok.unk_id, tok.unk_id]  # two UTF-8 bytes the corpus lacks
    ascii_text = "".join(chr(c) for c in range(32, 127)) + "\t\n"
    assert tok.unk_id not in tok.encode(ascii_text) and tok.decode(tok.encode(ascii_text)) == ascii_text.lower()


def test_encode_batch_pads_and_masks_by_hand(tok):
    texts = ["No mass.", "", "The heart"]
    a, c = tok.encode(texts[0]), tok.encode(texts[2])
    length = max(len(a), len(c)) + 2
    ids, mask = tok.encode_batch(texts, length=length)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (3, length)
    expected = np.zeros((3, length), np.int32)  # pad_id is 0
    expected[0, : len(a)], expected[2, : len(c)] = a, c
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(mask, [[i < len(a) for i in range(length)], [False] * length,
                                         [i < len(c) for i in range(length)]])  # fmt: skip
    ids, mask = tok.encode_batch(texts, length=length, add_eos=True)
    assert ids[0, len(a)] == ids[1, 0] == ids[2, len(c)] == tok.eos_id
    np.testing.assert_array_equal(mask.sum(1), [len(a) + 1, 1, len(c) + 1])
    assert tok.encode_batch([], length=4)[0].shape == (0, 4)


def test_encode_batch_refuses_a_text_too_long(tok):
    texts = ["No mass.", "There is a 12 mm nodule in the left upper zone.", "Clear lungs."]
    n = len(tok.encode(texts[1]))
    assert tok.encode_batch(texts, length=n)[1].sum(1).max() == n
    with pytest.raises(ValueError, match=f"text 1 is {n} tokens, more than length={n - 1}"):
        tok.encode_batch(texts, length=n - 1)
    with pytest.raises(ValueError, match=f"text 1 is {n + 1} tokens with <eos>, more than length={n}"):
        tok.encode_batch(texts, length=n, add_eos=True)


def test_save_and_load_give_identical_ids(tok, corpus, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    assert [loaded.encode(t) for t in corpus] == [tok.encode(t) for t in corpus]
    np.testing.assert_array_equal(loaded.encode_batch(corpus[:4], length=200)[0], tok.encode_batch(corpus[:4],
                                                                                                    length=200)[0])


def test_training_is_deterministic_and_respects_the_vocab_size(tok, corpus, tmp_path):
    tok.save(tmp_path / "a.json")
    train_tokenizer(corpus, vocab_size=512).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert tok.vocab_size <= 512
    small = train_tokenizer(corpus, vocab_size=320)
    assert small.vocab_size == 320
    assert all(small.decode(small.encode(t)) == t.lower() for t in corpus)
    with pytest.raises(ValueError, match="below the 88 special tokens and ASCII symbols"):
        train_tokenizer(corpus, vocab_size=80)


def test_load_names_a_missing_or_corrupt_file(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        Tokenizer.load(tmp_path / "nowhere.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="corrupt.json is not a jaxmed tokenizer file"):
        Tokenizer.load(corrupt)
    tok.save(tmp_path / "good.json")
    text = (tmp_path / "good.json").read_text()
    (tmp_path / "renamed.json").write_text(text.replace('"<seg>"', '"<mask>"'))
    with pytest.raises(ValueError, match="renamed.json"):
        Tokenizer.load(tmp_path / "renamed.json")
