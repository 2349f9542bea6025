"""The vision-language model's pieces (jaxmed.tasks.vlm.data / model / train), checked by hand.

Patch order against explicit loops, token rows against the tokenizer's ids
written out, the loss against a numpy cross-entropy / Dice / squared error
of the heads' outputs, and the step plan's counts and stage order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from jaxmed.tasks.vlm import Instruction, StructureRef, FindingRef, task_config, train_tokenizer
from jaxmed.tasks.vlm.data import DENSE_MAPS, HEADS, answer_text, dense_targets, encode_answer, encode_prompt, gather_batch, head_of
from jaxmed.tasks.vlm.model import VisionLanguageModel, VLMConfig, patchify
from jaxmed.tasks.vlm.train import dense_loss, init_params, make_vlm_loss, soft_dice_loss, step_plan, task_data


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["segment the heart.", "which lung is larger? choose from: right lung, left lung.", "yes", "no",
              "42 mm", "0.46", "the lungs are clear."] * 4
    return train_tokenizer(corpus, vocab_size=256)


def test_patchify_matches_loops():
    x = np.arange(2 * 8 * 12 * 1, dtype=np.float32).reshape(2, 8, 12, 1)
    out = np.asarray(patchify(jnp.asarray(x), 4))
    assert out.shape == (2, 6, 4, 4, 1)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                np.testing.assert_array_equal(out[b, i * 3 + j], x[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4])


def test_answer_text_and_heads():
    seg = Instruction(family="segment", prompt="Segment the heart.", target_kind="mask", subject=StructureRef("heart"))
    rel = Instruction(family="relation", prompt="?", target_kind="choice", answer="right_lung",
                      choices=("right_lung", "left_lung"))
    size = Instruction(family="size", prompt="?", target_kind="number", subject=FindingRef("nodule", "left"),
                       answer=12.0, unit="mm")
    ratio = Instruction(family="ratio", prompt="?", target_kind="number", answer=0.456)
    loc = Instruction(family="landmark", prompt="?", target_kind="landmark", subject=StructureRef("heart"))
    assert [answer_text(i) for i in (seg, rel, size, ratio, loc)] == ["<seg>", "right lung", "12 mm", "0.46", "<loc>"]
    assert [head_of(i) for i in (seg, rel, size, loc)] == [HEADS["mask"], HEADS["text"], HEADS["text"],
                                                           HEADS["landmark"]]


def test_token_rows_by_hand(tokenizer):
    ids, mask = encode_prompt(tokenizer, "segment", "Segment the heart.", 16)
    words = tokenizer.encode("Segment the heart.")
    expected = [tokenizer.task_id("segment"), *words] + [tokenizer.pad_id] * (15 - len(words))
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(mask, np.arange(16) < len(words) + 1)
    a_in, a_out, a_mask = encode_answer(tokenizer, "<seg>", 5)
    np.testing.assert_array_equal(a_in, [1, tokenizer.seg_id, 0, 0, 0])
    np.testing.assert_array_equal(a_out, [tokenizer.seg_id, 2, 0, 0, 0])
    np.testing.assert_array_equal(a_mask, [True, True, False, False, False])
    yes = tokenizer.encode("yes")
    a_in, a_out, _ = encode_answer(tokenizer, "yes", 4)
    assert list(a_in[: len(yes) + 1]) == [1, *yes] and list(a_out[: len(yes) + 1]) == [*yes, 2]
    with pytest.raises(ValueError, match="at most 3"):
        encode_prompt(tokenizer, "segment", "Segment the heart.", 3)
    with pytest.raises(ValueError, match="does not fit"):
        encode_answer(tokenizer, "the lungs are clear.", 3)


def test_soft_dice_by_hand():
    logits = jnp.asarray([[0.0, 2.0], [-1.0, 3.0]])
    target = jnp.asarray([[0.0, 1.0], [1.0, 1.0]])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    expected = 1 - (2 * (p * np.asarray(target)).sum() + 1) / (p.sum() + 3 + 1)
    np.testing.assert_allclose(float(jax.jit(soft_dice_loss)(logits, target)), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def small():
    task = task_config("quick", num_train=4, num_val=2, width=32, depth=1, num_heads=2)
    data, tok = task_data(task)
    return task, data, tok


def test_loss_against_numpy(small):
    task, data, tok = small
    from jaxmed.tasks.vlm.train import model_config

    config = model_config(task, tok.vocab_size)
    module = VisionLanguageModel(config)
    params = init_params(task, config, module)
    heads = data.short["head"]
    rows = np.concatenate([np.nonzero(heads == h)[0][:2] for h in (0, 1, 2)])
    batch = gather_batch(data, "short", rows)
    loss, metrics = jax.jit(make_vlm_loss(module, mask_weight=0.7, landmark_weight=3.0))(params, batch, None)
    out = jax.jit(lambda p, b: module.apply(p, b["images"], b["prompt"], b["prompt_mask"], b["answer_in"],
                                            b["answer_mask"], b["query_index"], method=VisionLanguageModel.heads))(
        params, batch)
    logp = log_softmax(np.asarray(out["text"], np.float64), axis=-1)
    nll = -np.take_along_axis(logp, batch["answer_out"][..., None], -1)[..., 0]
    text = (nll * batch["answer_mask"]).sum() / batch["answer_mask"].sum()
    m = np.asarray(out["mask"], np.float64)
    p = 1 / (1 + np.exp(-m))
    t = batch["mask"]
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    bce = (np.maximum(m, 0) - m * t + np.log1p(np.exp(-np.abs(m)))).mean((1, 2))
    is_mask = batch["head"] == 1
    mask = (dice + bce)[is_mask].mean()
    is_loc = batch["head"] == 2
    loc = ((np.asarray(out["landmark"]) - batch["landmark"]) ** 2).sum(-1)[is_loc].mean()
    np.testing.assert_allclose(float(metrics["text"]), text, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mask"]), mask, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["landmark"]), loc, rtol=1e-5)
    np.testing.assert_allclose(float(loss), text + 0.7 * mask + 3.0 * loc, rtol=1e-5)
    # Mask targets are the structures' masks; landmarks their centroids in image extents.
    i = int(data.short["image"][rows[2]])
    ins = data.instructions[int(data.short["index"][rows[2]])][1]
    np.testing.assert_array_equal(batch["mask"][2], data.samples[i][ins.subject.name])
    j = int(data.short["image"][rows[4]])
    ins = data.instructions[int(data.short["index"][rows[4]])][1]
    if ins.family == "landmark":
        r, c = np.nonzero(data.samples[j][ins.subject.name])
        np.testing.assert_allclose(batch["landmark"][4], (np.array([r.mean(), c.mean()]) + 0.5) / task.image_size,
                                   atol=1e-3)


def test_dense_targets_by_loops():
    size, cells = 8, 2
    sample = {"image": np.zeros((size, size, 1), np.float32), "heart": np.zeros((size, size), bool),
              "left_lung": np.zeros((size, size), bool), "right_lung": np.zeros((size, size), bool),
              "finding_masks": np.zeros((3, size, size), bool), "finding_type": np.array([1, 1, 0]),
              "finding_valid": np.array([True, True, False])}
    sample["right_lung"][:4, :4] = True         # the whole top-left cell
    sample["heart"][4:6, 4:] = True              # half of the bottom-right cell
    sample["finding_masks"][0, 0, 0] = True      # mass (type 1): one pixel of the top-left cell
    sample["finding_masks"][1, 0, 4:8] = True    # mass: a row of four in the top-right cell
    sample["finding_masks"][2] = True            # invalid slot: counted nowhere
    out = dense_targets([sample], cells)
    assert out.shape == (1, 2, 2, len(DENSE_MAPS)) and DENSE_MAPS[:3] == ("right_lung", "left_lung", "heart")
    expected = np.zeros((2, 2, len(DENSE_MAPS)))
    expected[0, 0, 0] = 1.0
    expected[1, 1, 2] = 0.5
    mass = 3 + 1
    assert DENSE_MAPS[mass] == "mass"
    expected[0, 0, mass], expected[0, 1, mass] = 1 / 16, 4 / 16
    np.testing.assert_allclose(out[0], expected)
    with pytest.raises(ValueError, match="multiple"):
        dense_targets([sample], 3)


def _numpy_dense_loss(logits, target):
    """Per map: mean BCE over all cells of the batch + 1 - soft Dice over the batch; summed over maps (float64)."""
    logits, target = np.asarray(logits, np.float64), np.asarray(target, np.float64)
    p = 1 / (1 + np.exp(-logits))
    total = 0.0
    for k in range(logits.shape[-1]):
        t, q = target[..., k], p[..., k]
        bce = np.mean(-(t * np.log(q) + (1 - t) * np.log(1 - q)))
        total += bce + 1 - (2 * (q * t).sum() + 1) / (q.sum() + t.sum() + 1)
    return total


def test_dense_loss_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 4, 2))
    target = rng.uniform(size=(3, 4, 4, 2)) * (rng.uniform(size=(3, 4, 4, 2)) > 0.7)
    got = jax.jit(dense_loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(float(got), _numpy_dense_loss(logits, target), rtol=1e-5)


def test_dense_head_in_the_loss():
    task = task_config("quick", num_train=2, num_val=2, width=32, depth=1, num_heads=2, dense_weight=0.5)
    data, tok = task_data(task)
    from jaxmed.tasks.vlm.train import model_config

    config = model_config(task, tok.vocab_size)
    assert config.dense_classes == len(DENSE_MAPS)
    cells = config.grid * config.mask_subcells
    assert data.dense.shape == (2, cells, cells, len(DENSE_MAPS))
    module = VisionLanguageModel(config)
    params = init_params(task, config, module)
    batch = gather_batch(data, "short", np.arange(4))
    np.testing.assert_array_equal(batch["dense"], data.dense[data.short["image"][:4]])
    loss, metrics = jax.jit(make_vlm_loss(module, mask_weight=1.0, landmark_weight=1.0, dense_weight=0.5))(
        params, batch, None)
    np.testing.assert_allclose(float(loss), float(metrics["text"] + metrics["mask"] + metrics["landmark"]
                                                  + 0.5 * metrics["dense"]), rtol=1e-5)
    out = module.apply(params, batch["images"], batch["prompt"], batch["prompt_mask"], batch["answer_in"],
                       batch["answer_mask"], batch["query_index"], method=VisionLanguageModel.heads)
    np.testing.assert_allclose(float(metrics["dense"]), _numpy_dense_loss(out["dense"], batch["dense"]), rtol=1e-5)


def test_step_plan_counts_and_order(small):
    task, data, _ = small
    stage_order = {s: k for k, s in enumerate(("anatomy", "relations", "findings", "quantities", "report"))}
    counts = {}
    for schedule in ("curriculum", "shuffled"):
        t = task_config("quick", num_train=4, schedule=schedule, epochs=2.0, report_epochs=3.0)
        plan = step_plan(data, t, np.random.default_rng(0))
        sizes = {"short": t.batch_size, "report": t.report_batch_size}
        assert all(len(rows) == sizes[table] for _, table, rows in plan)
        counts[schedule] = {table: sum(1 for _, tb, _ in plan if tb == table) for table in sizes}
        stages = [stage for stage, _, _ in plan]
        if schedule == "curriculum":
            keys = [stage_order[s] for s in stages]
            assert keys == sorted(keys) and stages[0] == "anatomy" and stages[-1] == "report"
        else:
            assert set(stages) == {"all"}
    n_short, n_report = len(data.short["index"]), len(data.report["index"])
    # Shuffled: epochs x rows / batch; the curriculum adds its replayed rows on top.
    assert counts["shuffled"]["short"] == round(2.0 * n_short / 16)
    assert counts["shuffled"]["report"] == round(3.0 * n_report / 4)
    assert counts["curriculum"]["short"] >= counts["shuffled"]["short"]


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VLMConfig(vocab_size=10, image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="encoder"):
        VLMConfig(vocab_size=10, encoder="resnet")
    with pytest.raises(ValueError, match="not patch_size 16"):
        VLMConfig(vocab_size=10, encoder="conv", stem_channels=(16, 32, 64))
    with pytest.raises(ValueError, match="dense_weight"):
        task_config("quick", dense_weight=-1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        task_config("huge")

