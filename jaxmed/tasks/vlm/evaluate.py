"""Answering instructions with a trained model and scoring the answers on held-out phantoms.

:func:`predict_rows` answers rows of an :class:`~jaxmed.tasks.vlm.data.InstructionSet`:
greedy decoding with the KV cache (:func:`jaxmed.models.transformer.greedy_decode`)
for the text, and one teacher-forced pass with ``[<bos>, <seg>]`` /
``[<bos>, <loc>]`` for the mask and landmark heads. :func:`evaluate` scores
them against the truth records:

* Dice per structure (``segment``) and per finding type (``find``), at the
  input resolution, threshold 0.5;
* landmark error in mm (structure centroids, finding centres);
* closed questions (``presence``, ``relation``, ``finding_choice``): exact
  accuracy, all and on the *visible* ones: every closed question except a
  "yes" about a nodule under ``visible_nodule_mm`` (default 10 mm, about 3
  pixels at 128 px; every other finding type is at least 15 mm);
* sizes: absolute error in mm of the stated number against the truth
  record's size (not the report's rounding), for nodules >= 10 mm and all;
* the cardiothoracic ratio's absolute error;
* reports: findings precision, recall and F1 (micro, summed over reports)
  of the findings parsed back from the generated text
  (:func:`~jaxmed.tasks.vlm.reports.findings_f1`);
* each per curriculum stage (the mean of its families' primary scores).

A row whose decoded answer is not ``<seg>``/``<loc>`` where a mask or
landmark is asked still gets the head's output scored (the head is queried
with the teacher-forced token), and the share of such rows is reported
(``head_token_rate``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import partial

import jax
import numpy as np

from jaxmed.metrics import dice
from jaxmed.models.transformer import Transformer, greedy_decode
from jaxmed.tasks.vlm.curriculum import FAMILY_STAGE, STAGES
from jaxmed.tasks.vlm.data import HEADS, InstructionSet, answer_text
from jaxmed.tasks.vlm.instructions import FindingRef, matching_findings
from jaxmed.tasks.vlm.model import VisionLanguageModel
from jaxmed.tasks.vlm.reports import findings_f1
from jaxmed.tasks.vlm.train import VLMModel

__all__ = ["answer_batch", "evaluate", "normalise_answer", "per_stage", "predict_rows", "visible"]

CLOSED = ("presence", "relation", "finding_choice")


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no trailing full stop (how closed answers are compared)."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".")


@partial(jax.jit, static_argnames=("module", "max_new_tokens", "bos_id", "eos_id", "pad_id"))
def _decode(params, images, prompt, prompt_mask, *, module, max_new_tokens, bos_id, eos_id, pad_id):
    prefix, valid = module.apply(params, images, prompt, prompt_mask, method=VisionLanguageModel.prefix)
    lm = Transformer(module.config.transformer_config())
    return greedy_decode(lm, {"params": params["params"]["lm"]}, prefix, valid, max_new_tokens=max_new_tokens,
                         bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


@partial(jax.jit, static_argnames=("module",))
def _heads(params, batch, *, module):
    out = module.apply(params, batch["images"], batch["prompt"], batch["prompt_mask"], batch["answer_in"],
                       batch["answer_mask"], batch["query_index"], method=VisionLanguageModel.heads)
    return jax.nn.sigmoid(out["mask"]), out["landmark"]


def answer_batch(model: VLMModel, images: np.ndarray, prompt: np.ndarray, prompt_mask: np.ndarray,
                 head: np.ndarray, *, max_new_tokens: int) -> dict[str, list]:
    """Answers a batch of encoded instructions.

    Args:
      images: ``[B, S, S, 1]``; prompt, prompt_mask: ``[B, prompt_len]``
        (:func:`~jaxmed.tasks.vlm.data.encode_prompt`); head: ``[B]`` the
        head each row asks for (`HEADS`).
      max_new_tokens: tokens to generate.

    Returns:
      ``{"text": [str], "tokens": [list[int]] (up to <eos>), "mask": [bool [S, S] or None],
      "probability": [float [S, S] or None], "landmark": [(row, column) px or None]}``.
    """
    tok, cfg = model.tokenizer, model.config
    tokens = np.asarray(_decode(model.params, images, prompt, prompt_mask, module=model.module,
                                max_new_tokens=max_new_tokens, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                pad_id=tok.pad_id))
    b = len(images)
    probs = points = None
    if np.any(head != HEADS["text"]):
        length = cfg.answer_len
        answer_in = np.full((b, length), tok.pad_id, np.int32)
        answer_in[:, 0] = tok.bos_id
        answer_in[:, 1] = np.where(head == HEADS["mask"], tok.seg_id, tok.loc_id)
        forced = {"images": images, "prompt": prompt, "prompt_mask": prompt_mask, "answer_in": answer_in,
                  "answer_mask": np.broadcast_to(np.arange(length) < 2, (b, length)).copy(),
                  "query_index": np.ones(b, np.int32)}
        probs, points = (np.asarray(a) for a in _heads(model.params, forced, module=model.module))
    out = {"text": [], "tokens": [], "mask": [], "probability": [], "landmark": []}
    for j, row in enumerate(tokens):
        ids = [int(i) for i in row]
        ids = ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids
        out["tokens"].append(ids)
        out["text"].append(tok.decode(ids))
        is_mask, is_loc = head[j] == HEADS["mask"], head[j] == HEADS["landmark"]
        out["probability"].append(probs[j] if is_mask else None)
        out["mask"].append(probs[j] > 0.5 if is_mask else None)
        out["landmark"].append(tuple(float(v) for v in points[j] * cfg.image_size - 0.5) if is_loc else None)
    return out


def predict_rows(model: VLMModel, data: InstructionSet, table: str, rows: np.ndarray, *, batch_size: int = 32,
                 progress: bool = False) -> dict[str, list]:
    """Answers rows of ``data.<table>`` (:func:`answer_batch`), in batches of one compiled shape."""
    from tqdm.auto import tqdm

    max_new = (model.config.report_len if table == "report" else model.config.answer_len) - 1
    t = getattr(data, table)
    out = {"text": [], "tokens": [], "mask": [], "probability": [], "landmark": []}
    for start in tqdm(range(0, len(rows), batch_size), disable=not progress, desc=f"answering ({table})"):
        chunk = rows[start:start + batch_size]
        padded = np.resize(chunk, batch_size)  # one compiled shape; the repeated rows are cut below
        answers = answer_batch(model, data.images[t["image"][padded]], t["prompt"][padded],
                               t["prompt_mask"][padded], t["head"][padded], max_new_tokens=max_new)
        for k in out:
            out[k] += answers[k][: len(chunk)]
    return out


def visible(ins, truth, *, visible_nodule_mm: float = 10.0) -> bool:
    """Whether a closed question asks about something visible (module docstring)."""
    if ins.family != "presence" or normalise_answer(str(ins.answer)) != "yes":
        return True
    if not isinstance(ins.subject, FindingRef) or ins.subject.type != "nodule":
        return True
    found = matching_findings(ins.subject, truth)
    sizes = [f["size_mm"] for f in truth["findings"] if f["mask_index"] in found]
    return bool(sizes) and max(sizes) >= visible_nodule_mm


# The foreground Dice of jaxmed.metrics (1 when both masks are empty), compiled once per mask shape.
_dice = jax.jit(lambda pred, target: dice(pred, target, num_classes=2)[1])


def _first_number(text: str) -> float | None:
    m = re.search(r"\d+(?:\.\d+)?", text)
    return None if m is None else float(m.group())


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate(model: VLMModel, data: InstructionSet, *, batch_size: int = 32, progress: bool = False,
             visible_nodule_mm: float = 10.0, keep_arrays: bool = False) -> dict:
    """Scores the model on every instruction of ``data`` (module docstring).

    Returns:
      ``{"metrics": {...}, "per_stage": {stage: score}, "rows": [per-instruction records]}``, and with
      ``keep_arrays`` ``"arrays"``: per instruction ``{"mask", "true_mask", "landmark", "true_landmark"}``
      (the mask and landmark rows' arrays, pixels).
    """
    tok = model.tokenizer
    answers = {}
    for table in ("short", "report"):
        t = getattr(data, table)
        rows = np.arange(len(t["index"]))
        pred = predict_rows(model, data, table, rows, batch_size=batch_size if table == "short" else 8,
                            progress=progress)
        for r in rows:
            answers[int(t["index"][r])] = (table, {k: v[r] for k, v in pred.items()}, int(t["mask_row"][r]))
    records = []
    by = defaultdict(list)
    f1_counts = {"tp": 0, "fp": 0, "fn": 0}
    head_token_ok, arrays = [], []
    short_row = {int(index): row for row, index in enumerate(data.short["index"])}
    for index, (i, ins) in enumerate(data.instructions):
        table, pred, mask_row = answers[index]
        truth, spacing = data.truths[i], float(data.truths[i]["pixel_spacing_mm"])
        extra = {}
        rec = {"image": i, "family": ins.family, "stage": ins.stage, "prompt": ins.prompt,
               "expected": answer_text(ins), "answer": pred["text"]}
        if ins.target_kind == "mask":
            rec["dice"] = float(_dice(pred["mask"], data.masks[mask_row]))
            extra = {"mask": pred["mask"], "true_mask": data.masks[mask_row]}
            what = ins.subject.name if ins.family == "segment" else ins.subject.type
            by[f"dice/{what}"].append(rec["dice"])
            head_token_ok.append(pred["tokens"][:1] == [tok.seg_id])
        elif ins.target_kind == "landmark":
            expected = np.asarray(data.short["landmark"][short_row[index]]) * model.config.image_size - 0.5
            rec["landmark_error_mm"] = float(np.linalg.norm(np.asarray(pred["landmark"]) - expected) * spacing)
            extra = {"landmark": pred["landmark"], "true_landmark": tuple(expected)}
            by[f"landmark_mm/{ins.family}"].append(rec["landmark_error_mm"])
            head_token_ok.append(pred["tokens"][:1] == [tok.loc_id])
        elif ins.family in CLOSED:
            rec["correct"] = normalise_answer(pred["text"]) == normalise_answer(answer_text(ins))
            rec["visible"] = visible(ins, truth, visible_nodule_mm=visible_nodule_mm)
            by[f"accuracy/{ins.family}"].append(rec["correct"])
            by["accuracy/closed"].append(rec["correct"])
            if rec["visible"]:
                by["accuracy/closed_visible"].append(rec["correct"])
        elif ins.family == "size":
            found = matching_findings(ins.subject, truth)
            sizes = [f["size_mm"] for f in truth["findings"] if f["mask_index"] in found]
            stated = _first_number(pred["text"])
            if stated is not None and pred["text"].strip().endswith("cm"):
                stated *= 10.0
            rec["size_error_mm"] = None if stated is None or len(sizes) != 1 else abs(stated - sizes[0])
            rec["true_size_mm"] = sizes[0] if len(sizes) == 1 else None
            by["size_parsed"].append(stated is not None)
            if rec["size_error_mm"] is not None:
                by[f"size_error_mm/{ins.subject.type}"].append(rec["size_error_mm"])
                if ins.subject.type == "nodule" and rec["true_size_mm"] >= 10.0:
                    by["size_error_mm/nodule_ge_10mm"].append(rec["size_error_mm"])
        elif ins.family == "ratio":
            stated = _first_number(pred["text"])
            rec["ratio_error"] = None if stated is None else abs(stated - truth["measurements"]["cardiothoracic_ratio"])
            by["ratio_error"].append(rec["ratio_error"])
        elif ins.family == "report":
            score = findings_f1(pred["text"], truth)
            rec.update({k: score[k] for k in ("precision", "recall", "f1")})
            for k in f1_counts:
                f1_counts[k] += score[k]
        records.append(rec)
        if keep_arrays:
            arrays.append(extra)
    metrics = {k: _mean([float(v) if v is not None else None for v in vals]) for k, vals in sorted(by.items())}
    metrics["count"] = {k: len(v) for k, v in sorted(by.items())}
    tp, fp, fn = f1_counts["tp"], f1_counts["fp"], f1_counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    metrics["report/precision"], metrics["report/recall"] = precision, recall
    metrics["report/f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metrics["report/counts"] = f1_counts
    metrics["head_token_rate"] = _mean([float(x) for x in head_token_ok])
    result = {"metrics": metrics, "per_stage": per_stage(records), "rows": records}
    if keep_arrays:
        result["arrays"] = arrays
    return result


def _primary(rec: dict) -> float | None:
    """A row's score in [0, 1], higher better: Dice, accuracy, F1, or 1 - error / scale for errors."""
    if "dice" in rec:
        return rec["dice"]
    if "correct" in rec:
        return float(rec["correct"])
    if "f1" in rec:
        return rec["f1"]
    if rec.get("landmark_error_mm") is not None:
        return float(rec["landmark_error_mm"] <= 10.0)
    if "size_error_mm" in rec:
        return None if rec["size_error_mm"] is None else float(rec["size_error_mm"] <= 5.0)
    if "ratio_error" in rec:
        return None if rec["ratio_error"] is None else float(rec["ratio_error"] <= 0.05)
    return None


def per_stage(records: list[dict]) -> dict[str, float | None]:
    """The mean primary score of each curriculum stage (`_primary`: Dice, accuracy, F1; landmarks within
    10 mm, sizes within 5 mm, the ratio within 0.05 count as right)."""
    scores = {stage: [] for stage in STAGES}
    for rec in records:
        scores[FAMILY_STAGE[rec["family"]]].append(_primary(rec))
    return {stage: _mean(v) for stage, v in scores.items()}
