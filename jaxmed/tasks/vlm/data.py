"""Instruction data sets of chest phantoms: reports, instructions, token rows and their targets.

A data set (:class:`InstructionSet`) holds the radiographs, their truth
records and reports, every generated instruction, and two token tables of
fixed shapes (one compiled train step each): ``short`` rows (every family but
the report: answers of at most ``answer_len`` tokens) and ``report`` rows
(``report_len``). Each row is::

    prompt      [prompt_len]  <task:family> + the instruction's tokens, padded
    answer_in   [A]           <bos> + answer tokens, padded
    answer_out  [A]           answer tokens + <eos>, padded (the text targets)
    answer_mask [A]           True on real answer tokens
    head        ()            0 text, 1 mask (answer "<seg>"), 2 landmark (answer "<loc>")
    image       ()            the row's radiograph
    mask_row    ()            the row's target mask in ``masks`` (-1: none)
    landmark    [2]           (row, column) / image size, the landmark target

A set built with ``dense_cells`` also holds, per radiograph, the share of each
cell of a ``dense_cells``-a-side grid covered by each map of `DENSE_MAPS`
(the lungs, the heart and each finding type): the targets of the model's
dense auxiliary head.

Answers as text (:func:`answer_text`): yes/no and choices as words
(``right_lung`` -> ``right lung``), sizes ``"42 mm"``, the ratio ``"0.46"``.
The report's instructions come from its text (never the truth record), so
the targets are what the report says (sizes to its whole-mm rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from jaxmed.data.phantoms import FINDING_TYPES, ChestPhantomConfig, chest_truth, make_dataset
from jaxmed.io.radiograph import normalise_radiograph
from jaxmed.tasks.vlm.instructions import Instruction, generate_instructions, resolve_landmark, resolve_mask
from jaxmed.tasks.vlm.reports import write_chest_report
from jaxmed.tasks.vlm.tokenizer import Tokenizer

__all__ = ["DENSE_MAPS", "HEADS", "InstructionSet", "answer_text", "build_instruction_set", "chest_samples",
           "dense_targets", "encode_answer", "encode_prompt", "head_of"]

HEADS = {"text": 0, "mask": 1, "landmark": 2}
DENSE_MAPS = ("right_lung", "left_lung", "heart", *FINDING_TYPES)
"""The maps of the dense auxiliary head, in channel order: the structures, then each finding type (all its findings)."""
_CHUNK = 8


def chest_samples(key: jax.Array, n: int, *, image_size: int, finding_probability: float = 0.8
                  ) -> tuple[np.ndarray, list[dict], list[dict]]:
    """``n`` chest phantoms at ``image_size``: images ``[n, S, S, 1]`` (normalised), per-sample arrays, truths."""
    config = ChestPhantomConfig(shape=(image_size, image_size), finding_probability=finding_probability)
    # Chunks of 8, at least one whole (a set of n is a prefix of one of n + m): one compiled sampler per size.
    d = make_dataset(key, max(n, _CHUNK), kind="chest", config=config, chunk_size=_CHUNK)
    d = {k: v[:n] for k, v in d.items()}
    samples = [{k: v[i] for k, v in d.items()} for i in range(n)]
    # As every radiograph the model reads (jaxmed.io.radiograph): percentiles to [0, 1].
    images = np.asarray(jax.jit(jax.vmap(normalise_radiograph))(d["image"]), np.float32)
    return images, samples, [chest_truth(s) for s in samples]


def dense_targets(samples: Sequence[Mapping[str, np.ndarray]], cells: int) -> np.ndarray:
    """Per radiograph, the covered share of each of ``cells``\\ :sup:`2` cells by each map of `DENSE_MAPS`.

    Returns:
      ``[M, cells, cells, len(DENSE_MAPS)]`` float32 in [0, 1] (the image side
      must be a multiple of ``cells``).
    """
    size = samples[0]["image"].shape[0]
    if size % cells:
        raise ValueError(f"the image side {size} is not a multiple of {cells} cells")
    stacked = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in
               (*DENSE_MAPS[:3], "finding_masks", "finding_type", "finding_valid")}
    # [M, slots, types]: which slots hold a finding of each type; their masks' union per type.
    of_type = stacked["finding_valid"][..., None] & (stacked["finding_type"][..., None] == np.arange(len(FINDING_TYPES)))
    findings = np.einsum("mfhw,mft->mhwt", stacked["finding_masks"].astype(np.float32), of_type.astype(np.float32)) > 0
    maps = np.concatenate([np.stack([stacked[k] for k in DENSE_MAPS[:3]], -1), findings], -1).astype(np.float32)
    f = size // cells
    return maps.reshape(len(samples), cells, f, cells, f, len(DENSE_MAPS)).mean(axis=(2, 4)).astype(np.float32)


def head_of(ins: Instruction) -> int:
    """The head an instruction's answer goes through (`HEADS`)."""
    return HEADS.get(ins.target_kind, HEADS["text"])


def answer_text(ins: Instruction) -> str:
    """The answer as the model writes it (module docstring); ``"<seg>"`` / ``"<loc>"`` for masks and landmarks."""
    kind = ins.target_kind
    if kind == "mask":
        return "<seg>"
    if kind == "landmark":
        return "<loc>"
    if kind == "choice":
        return str(ins.answer).replace("_", " ")
    if kind == "number":
        if ins.unit == "mm":
            return f"{float(ins.answer):.0f} mm"
        if ins.family == "ratio":
            return f"{float(ins.answer):.2f}"
        return f"{float(ins.answer):g}"
    return str(ins.answer)


def encode_prompt(tokenizer: Tokenizer, family: str, prompt: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``<task:family>`` + the prompt's tokens, padded to ``length``: ``(ids [L], mask [L])``.

    Raises:
      ValueError: the prompt is longer than ``length`` tokens (it is never cut).
    """
    ids = [tokenizer.task_id(family), *tokenizer.encode(prompt)]
    if len(ids) > length:
        raise ValueError(f"the instruction {prompt!r} is {len(ids)} tokens with its task token; the model's "
                         f"context takes at most {length}")
    out = np.full(length, tokenizer.pad_id, np.int32)
    out[: len(ids)] = ids
    return out, np.arange(length) < len(ids)


def encode_answer(tokenizer: Tokenizer, text: str, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(answer_in, answer_out, answer_mask)``, each ``[length]`` (module docstring).

    Raises:
      ValueError: the answer with ``<bos>``/``<eos>`` is longer than ``length``.
    """
    specials = {"<seg>": tokenizer.seg_id, "<loc>": tokenizer.loc_id}
    ids = [specials[text]] if text in specials else tokenizer.encode(text)
    if len(ids) + 1 > length:
        raise ValueError(f"an answer of {len(ids)} tokens does not fit the model's {length - 1}: {text[:60]!r}...")
    a_in = np.full(length, tokenizer.pad_id, np.int32)
    a_out = np.full(length, tokenizer.pad_id, np.int32)
    a_in[: len(ids) + 1] = [tokenizer.bos_id, *ids]
    a_out[: len(ids) + 1] = [*ids, tokenizer.eos_id]
    return a_in, a_out, np.arange(length) < len(ids) + 1


@dataclass
class InstructionSet:
    """Radiographs, their truth, reports and instructions, and the token rows (module docstring).

    Attributes:
      images: ``[M, S, S, 1]`` float32.
      samples, truths, reports: per radiograph.
      instructions: every instruction, ``(image index, Instruction)``.
      short, report: the token tables, dicts of arrays with a leading row
        axis, plus ``"index"``: the row's position in ``instructions``.
      masks: ``[Q, S, S]`` bool, the mask targets.
      dense: ``[M, C, C, len(DENSE_MAPS)]`` the dense head's targets (`dense_targets`), or None.
    """

    images: np.ndarray
    samples: list[dict]
    truths: list[dict]
    reports: list[str]
    instructions: list[tuple[int, Instruction]]
    short: dict[str, np.ndarray]
    report: dict[str, np.ndarray]
    masks: np.ndarray
    dense: np.ndarray | None = None


def instructions_for(reports: Sequence[str], seed: int) -> list[tuple[int, Instruction]]:
    """Every instruction of every report (seeded phrasings): ``[(image index, Instruction), ...]``."""
    out = []
    for i, report in enumerate(reports):
        rng = np.random.default_rng([seed, i, 1])
        out += [(i, ins) for ins in generate_instructions(report, rng, domain="chest")]
    return out


def write_reports(truths: Sequence[Mapping], seed: int) -> list[str]:
    """One report per truth record (seeded phrasings)."""
    return [write_chest_report(t, np.random.default_rng([seed, i, 0])) for i, t in enumerate(truths)]


def _table(rows: list[dict], length_key: int) -> dict[str, np.ndarray]:
    keys = ("prompt", "prompt_mask", "answer_in", "answer_out", "answer_mask", "head", "image", "mask_row",
            "landmark", "index")
    if not rows:
        raise ValueError("no instructions of this kind")
    return {k: np.stack([r[k] for r in rows]) for k in keys}


def build_instruction_set(images: np.ndarray, samples: list[dict], truths: list[dict], reports: list[str],
                          instructions: list[tuple[int, Instruction]], tokenizer: Tokenizer, *, prompt_len: int,
                          answer_len: int, report_len: int, dense_cells: int | None = None) -> InstructionSet:
    """Encodes every instruction into the token tables and resolves its mask/landmark target.

    ``dense_cells``: also the dense head's targets on that grid (`dense_targets`).
    """
    size = images.shape[1]
    short, report, masks = [], [], []
    for index, (i, ins) in enumerate(instructions):
        head = head_of(ins)
        length = report_len if ins.family == "report" else answer_len
        prompt, prompt_mask = encode_prompt(tokenizer, ins.family, ins.prompt, prompt_len)
        a_in, a_out, a_mask = encode_answer(tokenizer, answer_text(ins), length)
        mask_row, landmark = -1, np.zeros(2, np.float32)
        if head == HEADS["mask"]:
            mask_row = len(masks)
            masks.append(resolve_mask(ins.subject, samples[i], truths[i]))
        elif head == HEADS["landmark"]:
            landmark = (np.asarray(resolve_landmark(ins.subject, truths[i]), np.float32) + 0.5) / size
        row = {"prompt": prompt, "prompt_mask": prompt_mask, "answer_in": a_in, "answer_out": a_out,
               "answer_mask": a_mask, "head": np.int32(head), "image": np.int32(i), "mask_row": np.int32(mask_row),
               "landmark": landmark, "index": np.int32(index)}
        (report if ins.family == "report" else short).append(row)
    mask_array = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    return InstructionSet(images=images, samples=samples, truths=truths, reports=list(reports),
                          instructions=list(instructions), short=_table(short, answer_len),
                          report=_table(report, report_len), masks=mask_array,
                          dense=None if dense_cells is None else dense_targets(samples, dense_cells))


def gather_batch(data: InstructionSet, table: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch of ``rows`` of ``data.<table>``: the token rows with their image, mask and landmark targets."""
    t = getattr(data, table)
    batch = {k: t[k][rows] for k in ("prompt", "prompt_mask", "answer_in", "answer_out", "answer_mask", "head",
                                     "landmark")}
    batch["images"] = data.images[t["image"][rows]]
    if data.dense is not None:
        batch["dense"] = data.dense[t["image"][rows]]
    mask_row = t["mask_row"][rows]
    size = data.images.shape[1]
    target = np.zeros((len(rows), size, size), np.float32)
    has = mask_row >= 0
    if has.any():
        target[has] = data.masks[mask_row[has]]
    batch["mask"] = target
    # The answer position of <seg>/<loc>: answer_in = [<bos>, <seg>, ...].
    batch["query_index"] = np.ones(len(rows), np.int32)
    return batch
