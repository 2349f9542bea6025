"""Instructions generated from a report's text through templates, with targets resolvable against a sample.

`generate_instructions` asks a language model (any callable ``prompt ->
text``) for the report's facts in a fixed, line-based form
(`EXTRACTION_PROMPT`, read by `parse_facts`), then fills the templates of
`TEMPLATES` with them. The default model, `rule_based_language_model`, answers
by parsing the report (`jaxmed.tasks.vlm.reports`); a real LLM replaces
exactly that step. Only the report's text is read, never the truth record;
masks and landmarks are named by reference (`StructureRef`, `FindingRef`)
and resolved against a sample (`resolve_mask`, `resolve_landmark`).

.. note::
   **Closed world.** A report states every finding (each in one sentence),
   so "is there a nodule in the left lung" is "no" when no stated nodule is
   in the left lung. Relations are anatomy the template library knows
   (`RELATIONS`; the right lung is the larger, the transition zone lies
   anterior to the peripheral zone), asked of the structures a report of the
   domain names; the tests check them against every phantom's masks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxmed.data.phantoms import EXAM_TISSUES, FINDING_TYPES, ZONES
from jaxmed.tasks.vlm.curriculum import FAMILY_STAGE
from jaxmed.tasks.vlm.reports import PROSTATE_ZONES, parse_chest_report, parse_lesions

__all__ = [
    "DOMAINS", "EXTRACTION_PROMPT", "FAMILY_KIND", "RELATIONS", "TEMPLATES",
    "FactFinding", "FindingRef", "Instruction", "ReportFacts", "StructureRef",
    "generate_instructions", "matching_findings",
    "parse_facts", "read_report", "resolve_landmark", "resolve_mask",
    "rule_based_language_model",
]  # fmt: skip

FAMILY_KIND: dict[str, str] = {
    "segment": "mask", "landmark": "landmark", "relation": "choice", "presence": "yes_no",
    "finding_choice": "choice", "find": "mask", "finding_landmark": "landmark", "size": "number",
    "ratio": "number", "grade": "number", "report": "text",
}  # fmt: skip


class _Domain(NamedTuple):
    structures: dict[str, str]  # name -> words
    types: dict[str, str]  # finding type -> words
    zones: tuple[str, ...]


DOMAINS: dict[str, _Domain] = {
    "chest": _Domain({"right_lung": "right lung", "left_lung": "left lung", "heart": "heart"},
                     {t: ("pleural effusion" if t == "effusion" else t) for t in FINDING_TYPES}, ZONES),
    "prostate": _Domain({"prostate": "prostate", "peripheral_zone": "peripheral zone",
                         "transition_zone": "transition zone"}, {"lesion": "lesion"}, PROSTATE_ZONES),
}  # fmt: skip
_SIDES = ("right", "left")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "segment": ("Segment the {structure}.", "Outline the {structure}.", "Draw a mask of the {structure}."),
    "landmark": ("Where is the centre of the {structure}?", "Point to the centre of the {structure}."),
    "relation": ("{question} Choose from: {choices}.", "{question} Options: {choices}."),
    "presence": ("Is there a {finding} in the {place}?", "Does the {place} contain a {finding}?"),
    "heart": ("Is the heart enlarged?", "Is there cardiomegaly?"),
    "finding_choice": ("In which {what} is the {finding}? Choose from: {choices}.",
                       "In which {what} is the {finding}? Options: {choices}."),
    "find": ("Segment the {finding} in the {place}.", "Find the {finding} in the {place}.",
             "Outline the {finding} in the {place}."),
    "finding_landmark": ("Where is the centre of the {finding} in the {place}?",
                         "Point to the {finding} in the {place}."),
    "size": ("What is the size of the {finding} in the {place}, in mm?",
             "How large is the {finding} in the {place}, in mm?", "Measure the {finding} in the {place}, in mm."),
    "ratio": ("What is the cardiothoracic ratio?", "State the cardiothoracic ratio."),
    "grade": ("What is the grade group of the {finding} in the {place}?",),
    "report": ("Write the findings.", "Write the findings section of the report.", "Describe the findings."),
}  # fmt: skip
"""Prompt templates by family (``"heart"``: the presence question about cardiomegaly)."""

# (relation, subject structure or None, question, choices as structure names, answer)
RELATIONS: dict[str, tuple[tuple[str, str | None, str, tuple[str, ...], str], ...]] = {
    "chest": (
        ("larger", None, "Which lung is larger?", ("right_lung", "left_lung"), "right_lung"),
        ("left_of", "heart", "Which lung lies to the patient's left of the heart?", ("right_lung", "left_lung"),
         "left_lung"),
        ("right_of", "heart", "Which lung lies to the patient's right of the heart?", ("right_lung", "left_lung"),
         "right_lung"),
        ("between", None, "Which structure lies between the two lungs?", ("heart", "right_lung", "left_lung"), "heart"),
    ),
    "prostate": (
        ("anterior", None, "Which zone of the prostate lies more anteriorly?", ("peripheral_zone", "transition_zone"),
         "transition_zone"),
    ),
}  # fmt: skip

EXTRACTION_PROMPT = (
    "You read {domain} radiology reports. List every finding the report states, one line each:\n"
    "finding | <type> | <side> | <zone> | <size in mm> | <grade, or ->\n"
    "then 'absent | <type>' for each type it says is absent, 'heart | enlarged' or 'heart | normal' if it "
    "describes the heart, 'ratio | <value>' if it states the cardiothoracic ratio.\n"
    "Types: {types}. Sides (the patient's): right, left. Zones: {zones}.\n<report>\n{report}\n</report>\n"
)
"""The prompt the language model answers in the fixed form `parse_facts` reads."""


@dataclass(frozen=True)
class StructureRef:
    """An anatomical structure by name (a key of ``DOMAINS[domain].structures``)."""

    name: str


@dataclass(frozen=True)
class FindingRef:
    """The findings of a type, optionally on one side (the patient's) and in one zone (None: anywhere)."""

    type: str
    side: str | None = None
    zone: str | None = None


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction and its target.

    Attributes:
        family: a key of `FAMILY_STAGE`.
        prompt: the instruction text.
        target_kind: ``"mask"``, ``"landmark"``, ``"text"``, ``"choice"``,
            ``"yes_no"`` or ``"number"`` (`FAMILY_KIND`).
        subject: what it is about; for masks and landmarks the target,
            resolved against a sample by `resolve_mask` / `resolve_landmark`.
        answer: ``"yes"``/``"no"``, a choice, a number (``unit``) or the
            report text; None for masks and landmarks.
        choices: the offered choices (structure names or sides/zones).
        relation: for relations and finding choices, which one (`RELATIONS`;
            ``"side"``, ``"zone"``).
        unit: ``"mm"``, ``"grade group"`` or ``""`` for numbers.
    """

    family: str
    prompt: str
    target_kind: str
    subject: StructureRef | FindingRef | None = None
    answer: str | float | None = None
    choices: tuple[str, ...] = ()
    relation: str | None = None
    unit: str = ""

    @property
    def stage(self) -> str:
        return FAMILY_STAGE[self.family]

    @property
    def target(self):
        """The subject for masks and landmarks, else the answer."""
        return self.subject if self.target_kind in ("mask", "landmark") else self.answer


class FactFinding(NamedTuple):
    """One finding of a report's facts: type, side, zone, size in mm, grade (None: not graded)."""

    type: str
    side: str
    zone: str
    size_mm: float
    grade: int | None


class ReportFacts(NamedTuple):
    """A report's facts: findings, absent types, heart (None: not described), stated ratio or None."""

    findings: tuple[FactFinding, ...]
    absent: frozenset[str]
    heart_enlarged: bool | None
    ratio: float | None


# --------------------------------------------------------------------------- the language model step

def rule_based_language_model(prompt: str) -> str:
    """The default language model: answers an `EXTRACTION_PROMPT` by parsing the report in it."""
    domain = re.search(r"You read (\w+) radiology", prompt).group(1)
    report = re.search(r"<report>\n(.*)\n</report>", prompt, re.S).group(1)
    if domain == "prostate":
        lesions = parse_lesions(report)
        lines = [f"finding | lesion | {x.side} | {x.zone} | {x.size_mm} | {x.grade}" for x in lesions]
        return "\n".join(lines + ([] if lesions else ["absent | lesion"]))
    r = parse_chest_report(report)
    lines = [f"finding | {f.type} | {f.lung} | {f.zone} | {f.size_mm} | -" for f in r.findings]
    lines += [f"absent | {t}" for t in sorted(r.absent)]
    lines += [] if r.heart_enlarged is None else [f"heart | {'enlarged' if r.heart_enlarged else 'normal'}"]
    lines += [] if r.cardiothoracic_ratio is None else [f"ratio | {r.cardiothoracic_ratio}"]
    return "\n".join(lines)


def parse_facts(reply: str, *, domain: str = "chest") -> ReportFacts:
    """Reads the fixed form of `EXTRACTION_PROMPT`; lines that do not fit it are skipped (a model may chatter)."""
    d, findings, absent, heart, ratio = DOMAINS[domain], [], set(), None, None
    for line in reply.splitlines():
        cells = [c.strip().lower() for c in line.split("|")]
        try:
            known = len(cells) == 6 and cells[1] in d.types and cells[2] in _SIDES and cells[3] in d.zones
            if cells[0] == "finding" and known:
                grade = None if cells[5] == "-" else int(cells[5])
                findings.append(FactFinding(cells[1], cells[2], cells[3], float(cells[4]), grade))
            elif cells[0] == "absent" and len(cells) == 2 and cells[1] in d.types:
                absent.add(cells[1])
            elif cells[0] == "heart" and len(cells) == 2 and cells[1] in ("enlarged", "normal"):
                heart = cells[1] == "enlarged"
            elif cells[0] == "ratio" and len(cells) == 2:
                ratio = float(cells[1])
        except ValueError:
            continue
    return ReportFacts(tuple(findings), frozenset(absent), heart, ratio)


def read_report(
    report: str, *, domain: str = "chest", language_model: Callable[[str], str] = rule_based_language_model
) -> ReportFacts:
    """Asks ``language_model`` for a report's facts and reads its answer."""
    d = DOMAINS[domain]
    prompt = EXTRACTION_PROMPT.format(domain=domain, types=", ".join(d.types), zones=", ".join(d.zones), report=report)
    return parse_facts(language_model(prompt), domain=domain)


# --------------------------------------------------------------------------- generation

def _place(domain: str, side: str | None, zone: str | None) -> str:
    if domain == "prostate":
        return " ".join(w for w in (side, DOMAINS[domain].structures[zone]) if w)
    return f"{side} {zone} zone" if zone else f"{side} lung"


def _ref(f: FactFinding) -> FindingRef:
    # An effusion's zone is always the base: it is named by its lung alone.
    return FindingRef(f.type, f.side, None if f.type == "effusion" else f.zone)


def _matches(ref: FindingRef, type_: str, side: str, zone: str) -> bool:
    return type_ == ref.type and ref.side in (None, side) and ref.zone in (None, zone)


def generate_instructions(
    report: str,
    rng: np.random.Generator,
    *,
    domain: str = "chest",
    language_model: Callable[[str], str] = rule_based_language_model,
    templates: Mapping[str, Sequence[str]] = TEMPLATES,
) -> list[Instruction]:
    """Every instruction the templates make of one report, in family order (`jaxmed.tasks.vlm.curriculum` stages them).

    Args:
        report: the report's text.
        rng: draws each prompt's template and the order of choices.
        domain: ``"chest"`` or ``"prostate"`` (`DOMAINS`).
        language_model: ``prompt -> text``, answering `EXTRACTION_PROMPT`.
        templates: prompts by family, as `TEMPLATES`.

    Returns:
        Instructions of every family of `FAMILY_STAGE` that the report
        supports; sizes, grades and finding landmarks only for findings its
        description names uniquely.
    """
    d, facts = DOMAINS[domain], read_report(report, domain=domain, language_model=language_model)
    out = []

    def add(family, subject=None, key=None, **fields):
        words = {"question": fields.pop("question", ""), "what": fields.pop("what", "")}
        if isinstance(subject, StructureRef):
            words["structure"] = d.structures[subject.name]
        elif isinstance(subject, FindingRef) and subject.type in d.types:
            words["finding"] = d.types[subject.type]
            words["place"] = _place(domain, subject.side, subject.zone) if subject.side else ""
        words["choices"] = ", ".join(d.structures.get(c, c) for c in fields.get("choices", ()))
        options = templates[key or family]
        prompt = options[int(rng.integers(len(options)))].format(**words)
        kind = FAMILY_KIND[family]
        out.append(Instruction(family=family, prompt=prompt, target_kind=kind, subject=subject, **fields))

    def shuffled(choices):
        return tuple(choices[i] for i in rng.permutation(len(choices)))

    def stated(ref):
        return [f for f in facts.findings if _matches(ref, *f[:3])]

    for name in d.structures:
        add("segment", StructureRef(name))
        if domain == "chest":  # prostate records hold no structure centroids
            add("landmark", StructureRef(name))
    for relation, subject, question, choices, answer in RELATIONS[domain]:
        subject = None if subject is None else StructureRef(subject)
        add("relation", subject, question=question, choices=shuffled(choices), answer=answer, relation=relation)
    for type_ in d.types:
        # Closed world: asked where the report speaks of the type (stated, or stated absent).
        if type_ in facts.absent or any(f.type == type_ for f in facts.findings):
            for side in _SIDES:
                for zone in [None] if domain == "chest" else d.zones:
                    ref = FindingRef(type_, side, zone)
                    add("presence", ref, answer="yes" if stated(ref) else "no")
    if domain == "chest" and facts.heart_enlarged is not None:
        add("presence", FindingRef("cardiomegaly"), "heart", answer="yes" if facts.heart_enlarged else "no")
    for ref in dict.fromkeys(_ref(f) for f in facts.findings):
        if domain == "chest" and ref.zone is not None:  # this zone ("yes") and one without the type ("no")
            add("presence", ref, answer="yes")
            empty = [z for z in ZONES if not stated(FindingRef(ref.type, ref.side, z))]
            if empty:
                add("presence", FindingRef(ref.type, ref.side, empty[int(rng.integers(len(empty)))]), answer="no")
        add("find", ref)
        same = stated(ref)
        if len(same) == 1:
            add("finding_landmark", ref)
            add("size", ref, answer=same[0].size_mm, unit="mm")
            if same[0].grade is not None:
                add("grade", ref, answer=float(same[0].grade), unit="grade group")
    for type_ in d.types:
        of_type = stated(FindingRef(type_))
        if len(of_type) == 1:
            side_word = "lung" if domain == "chest" else "side"
            add("finding_choice", FindingRef(type_), what=side_word, choices=shuffled(_SIDES), answer=of_type[0].side,
                relation="side")
            if type_ != "effusion":
                add("finding_choice", FindingRef(type_), what="zone", choices=shuffled(d.zones), answer=of_type[0].zone,
                    relation="zone")
    if facts.ratio is not None:
        add("ratio", StructureRef("heart"), answer=facts.ratio)
    add("report", answer=report)
    return out


# --------------------------------------------------------------------------- resolving targets against a sample

def matching_findings(ref: FindingRef, truth: Mapping) -> list[int]:
    """Indices of the findings ``ref`` names: ``mask_index`` (chest) or lesion ``label`` (a `prostate_record`)."""
    if "lesions" in truth:
        centre_x = float(truth["organ_centre_mm"][0])
        sides = ["left" if x["centre_mm"][0] > centre_x else "right" for x in truth["lesions"]]
        pairs = zip(truth["lesions"], sides, strict=True)
        return [x["label"] for x, side in pairs if _matches(ref, "lesion", side, x["zone"])]
    return [f["mask_index"] for f in truth["findings"] if _matches(ref, f["type"], f["lung"], f["zone"])]


_ZONE_LABELS = {zone: EXAM_TISSUES[zone].label for zone in PROSTATE_ZONES}


def resolve_mask(ref: StructureRef | FindingRef, sample: Mapping[str, np.ndarray], truth: Mapping) -> np.ndarray:
    """The boolean mask a mask instruction asks for (chest ``[H, W]``, prostate T2 grid ``[Z, Y, X]``).

    A finding reference gives the union of the findings it names; a prostate
    zone is its tissue label (lesion voxels are labelled lesion).
    """
    if isinstance(ref, StructureRef):
        if ref.name in _ZONE_LABELS:
            return np.asarray(sample["tissue"]) == _ZONE_LABELS[ref.name]
        return np.asarray(sample["organ_mask" if ref.name == "prostate" else ref.name], bool)
    found = matching_findings(ref, truth)
    if "lesions" in truth:
        return np.isin(np.asarray(sample["lesion_labels"]), found)
    return np.any(np.asarray(sample["finding_masks"])[found], axis=0)


def resolve_landmark(ref: StructureRef | FindingRef, truth: Mapping) -> tuple[float, ...]:
    """The point a landmark instruction asks for: chest ``(row, column)`` pixels, prostate ``(x, y, z)`` LPS mm.

    A structure's is its region centroid, a finding's its centre (chest
    ``centre_px``, prostate ``centre_mm``). Raises ValueError unless ``ref``
    names exactly one finding.
    """
    if isinstance(ref, StructureRef):
        return tuple(truth["regions"][ref.name]["centroid_px"])
    found = matching_findings(ref, truth)
    if len(found) != 1:
        raise ValueError(f"{ref} names {len(found)} findings, not one: no single landmark")
    if "lesions" in truth:
        return tuple(next(x["centre_mm"] for x in truth["lesions"] if x["label"] == found[0]))
    return tuple(next(f["centre_px"] for f in truth["findings"] if f["mask_index"] == found[0]))
