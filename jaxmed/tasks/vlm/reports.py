"""Radiology-style reports written from a phantom's truth record, and read back.

Two domains: PA chest radiographs (`jaxmed.data.phantoms.chest_truth`) and
prostate mpMRI exams (`prostate_record`). A writer draws its sentence
templates, synonyms and sentence order from a ``numpy.random.Generator``, so
one record has many reports and one ``(record, seed)`` pair has one. The
parsers read back exactly what the writers state; they are what report F1
(`findings_f1`) uses, the idea of RadGraph F1 without a learned parser.

.. note::
   **What a report states.** Sizes are whole millimetres,
   ``floor(size_mm + 0.5)`` (half up; at least 1 mm), written either as
   ``"12 mm"`` or as ``"1.2 cm"`` (the same number). Sides are the patient's.
   A chest finding's size is the record's ``size_mm`` (an effusion's is its
   meniscus height); the heart is enlarged when the cardiothoracic ratio is
   above 0.5 (the PA-film rule), and a report may state the ratio to two
   decimals. A prostate lesion's size is its largest diameter, twice its
   largest semi-axis; its side is that of its centre against the prostate's
   centre (LPS: +x is the patient's left); its grade is the 1-5 grade group.
   Each finding is one sentence, and negatives (``"No pleural effusion."``)
   name every finding type that is absent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxmed.data.phantoms import FINDING_TYPES, exam_truth

__all__ = [
    "CARDIOMEGALY_RATIO",
    "PROSTATE_ZONES",
    "ChestReading",
    "Finding",
    "Lesion",
    "chest_findings",
    "findings_f1",
    "parse_chest_report",
    "parse_findings",
    "parse_lesions",
    "prostate_lesions",
    "prostate_record",
    "report_size_mm",
    "write_chest_report",
    "write_prostate_report",
]

CARDIOMEGALY_RATIO = 0.5
"""A cardiothoracic ratio above this is cardiomegaly (PA film)."""
PROSTATE_ZONES: tuple[str, ...] = ("peripheral_zone", "transition_zone")
"""Zones a prostate lesion lies in, as `jaxmed.data.phantoms.exam_truth` names them."""


class Finding(NamedTuple):
    """A chest finding as a report states it: `FINDING_TYPES`, `LUNGS`, `ZONES`, size in whole mm."""

    type: str
    lung: str
    zone: str
    size_mm: int


class Lesion(NamedTuple):
    """A prostate lesion as a report states it: `PROSTATE_ZONES`, ``"right"``/``"left"``, grade 1-5, whole mm."""

    zone: str
    side: str
    grade: int
    size_mm: int


class ChestReading(NamedTuple):
    """What `parse_chest_report` reads: findings in report order, absent types, heart, stated ratio or None."""

    findings: tuple[Finding, ...]
    absent: frozenset[str]
    heart_enlarged: bool | None
    cardiothoracic_ratio: float | None


def report_size_mm(size_mm: float) -> int:
    """A size as reports state it: whole mm, rounded half up, at least 1."""
    return max(1, int(math.floor(float(size_mm) + 0.5)))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _size_text(rng: np.random.Generator, size_mm: int) -> str:
    # Centimetres with one decimal hold the same whole-mm number.
    return f"{size_mm / 10:.1f} cm" if rng.random() < 0.3 else f"{size_mm} mm"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


# --------------------------------------------------------------------------- chest

# Each type's words (the parser's keys are the first word of each: see _TYPE_PATTERNS).
_TYPE_WORDS = {
    "nodule": ("nodule", "pulmonary nodule", "nodular opacity", "well-defined nodule"),
    "mass": ("mass", "pulmonary mass", "mass lesion", "lobulated mass"),
    "consolidation": ("consolidation", "airspace consolidation", "patchy consolidation", "airspace opacity"),
    "effusion": ("pleural effusion", "effusion"),
}
_TYPE_PATTERNS = {
    "nodule": r"\bnodul",
    "mass": r"\bmass\b",
    "consolidation": r"consolidation|airspace opacity",
    "effusion": r"effusion",
}
_ZONE_WORDS = {"upper": ("upper",), "middle": ("middle", "mid"), "lower": ("lower",)}
_ZONE_PATTERN = r"\b(upper|middle|mid|lower)\b"
_SIDE_PATTERN = r"\b(right|left)\b"
_SIZE_PATTERN = r"(\d+(?:\.\d)?)\s*(mm|cm)\b"
_NEGATION = r"^(no|there is no|there are no|without)\b"

_FOCAL = (  # {what} {lung} {zone} {size}
    "there is a {size} {what} in the {lung} {zone} zone.",
    "a {what} measuring {size} is seen in the {zone} zone of the {lung} lung.",
    "{lung} {zone} zone {what}, {size}.",
    "in the {lung} {zone} zone there is a {what} of {size}.",
    "a {size} {what} projects over the {lung} {zone} zone.",
)
_PATCHY = (
    "there is {what} in the {lung} {zone} zone, about {size} across.",
    "{what} is present in the {zone} zone of the {lung} lung, measuring approximately {size}.",
    "{lung} {zone} zone {what} spanning {size}.",
)
_EFFUSION = (
    "{grade} {lung} {what} with a meniscus {size} above the costophrenic angle.",
    "there is a {grade} {lung} {what}, meniscus height {size}.",
    "{lung} {what} blunting the costophrenic angle, {size} in height.",
)
_CLEAR = ("the lungs are clear.", "both lungs are clear.", "clear lungs.", "the lung fields are clear.")
_OTHERWISE = ("the lungs are otherwise clear.", "the remaining lung fields are clear.")
_HEART_NORMAL = ("the heart size is normal", "normal heart size", "the cardiac silhouette is not enlarged",
                 "the cardiomediastinal silhouette is within normal limits")  # fmt: skip
_HEART_ENLARGED = ("the heart is enlarged", "cardiomegaly", "the cardiac silhouette is enlarged")
_RATIO = (" (cardiothoracic ratio {r:.2f})", ", with a cardiothoracic ratio of {r:.2f}",
          ", cardiothoracic ratio {r:.2f}")  # fmt: skip
_NEGATIVES = {
    ("nodule", "mass"): ("no pulmonary nodule or mass.", "no nodule or mass is seen."),
    ("nodule",): ("no pulmonary nodule.", "no nodule is seen."),
    ("mass",): ("no mass.", "no mass lesion is seen."),
    ("consolidation",): ("no focal consolidation.", "no airspace consolidation."),
    ("effusion",): ("no pleural effusion.", "no pleural effusion; the costophrenic angles are sharp."),
}
_EXTRAS = ("no pneumothorax.", "the visualised bones are unremarkable.", "the trachea is central.",
           "the mediastinum is not widened.")  # fmt: skip


def chest_findings(record: Mapping) -> list[Finding]:
    """The findings of a chest truth record as a report states them (record order, sizes to whole mm)."""
    return [Finding(f["type"], f["lung"], f["zone"], report_size_mm(f["size_mm"])) for f in record["findings"]]


def _chest_finding_sentence(rng: np.random.Generator, f: Finding) -> str:
    words = {"what": _pick(rng, _TYPE_WORDS[f.type]), "lung": f.lung, "size": _size_text(rng, f.size_mm)}
    if f.type == "effusion":
        words["grade"] = "small" if f.size_mm < 25 else "moderate" if f.size_mm < 45 else "large"
        return _sentence(_pick(rng, _EFFUSION).format(**words))
    words["zone"] = _pick(rng, _ZONE_WORDS[f.zone])
    return _sentence(_pick(rng, _PATCHY if f.type == "consolidation" else _FOCAL).format(**words))


def _chest_negatives(rng: np.random.Generator, present: set[str]) -> list[str]:
    absent = [t for t in FINDING_TYPES if t not in present]
    groups = []
    if "nodule" in absent and "mass" in absent and rng.random() < 0.6:
        groups.append(("nodule", "mass"))
        absent = [t for t in absent if t not in ("nodule", "mass")]
    groups += [(t,) for t in absent]
    return [_sentence(_pick(rng, _NEGATIVES[g])) for g in groups]


def write_chest_report(record: Mapping, rng: np.random.Generator) -> str:
    """A radiology-style report of a chest phantom.

    Args:
        record: a truth record of `jaxmed.data.phantoms.chest_truth`.
        rng: the source of every phrasing choice (templates, synonyms,
            order, mm or cm).

    Returns:
        The findings section as one paragraph: the lungs, each finding (type,
        patient's side, zone, size), negatives for each absent type, the
        heart (and sometimes its cardiothoracic ratio), sometimes extras.
    """
    findings = chest_findings(record)
    ratio = float(record["measurements"]["cardiothoracic_ratio"])
    heart = _pick(rng, _HEART_ENLARGED if ratio > CARDIOMEGALY_RATIO else _HEART_NORMAL)
    if rng.random() < 0.5:
        heart += _pick(rng, _RATIO).format(r=ratio)
    order = rng.permutation(len(findings))
    lungs = [_chest_finding_sentence(rng, findings[i]) for i in order]
    if not findings:
        lungs.append(_sentence(_pick(rng, _CLEAR)))
    elif rng.random() < 0.5:
        lungs.append(_sentence(_pick(rng, _OTHERWISE)))
    negatives = _chest_negatives(rng, {f.type for f in findings})
    negatives = [negatives[i] for i in rng.permutation(len(negatives))]
    extras = [_sentence(e) for e in _EXTRAS if rng.random() < 0.3]
    heart_first = rng.random() < 0.3
    parts = ([_sentence(heart) + "."] if heart_first else []) + lungs + negatives
    parts += ([] if heart_first else [_sentence(heart) + "."]) + extras
    prefix = _pick(rng, ("", "Findings: ", "PA chest radiograph. "))
    return prefix + " ".join(p for p in parts if p)


def _sentences(text: str) -> list[str]:
    # A sentence ends at "." followed by space or the end; "1.2 cm" and "0.47" stay whole.
    sentences = (re.sub(r"^findings:\s*", "", s.strip().lower()) for s in re.split(r"\.(?:\s+|$)", text))
    return [s for s in sentences if s]


def _types_in(sentence: str) -> list[str]:
    return [t for t, pattern in _TYPE_PATTERNS.items() if re.search(pattern, sentence)]


def _size_in(sentence: str) -> int | None:
    m = re.search(_SIZE_PATTERN, sentence)
    if m is None:
        return None
    value = float(m.group(1)) * (10.0 if m.group(2) == "cm" else 1.0)
    return int(round(value))


def _chest_finding(sentence: str) -> Finding | None:
    types, sides, size = _types_in(sentence), re.findall(_SIDE_PATTERN, sentence), _size_in(sentence)
    if len(types) != 1 or len(set(sides)) != 1 or size is None:
        return None
    zones = [{"mid": "middle"}.get(z, z) for z in re.findall(_ZONE_PATTERN, sentence)]
    zone = "lower" if types[0] == "effusion" else zones[0] if len(set(zones)) == 1 else None
    return None if zone is None else Finding(types[0], sides[0], zone, size)


def parse_chest_report(text: str) -> ChestReading:
    """Reads a chest report back: each finding sentence, the negatives, the heart.

    A finding sentence names one type, one side, a size (mm or cm) and a
    zone (an effusion's is ``"lower"``); a sentence that begins with a
    negation declares every type it names absent. Sentences that are
    neither (the lungs, extras) are skipped.

    Args:
        text: a report such as `write_chest_report` writes.

    Returns:
        A `ChestReading`.
    """
    findings, absent, enlarged, ratio = [], set(), None, None
    for s in _sentences(text):
        if re.search(_NEGATION, s) and "cardiomegaly" not in s:
            absent.update(_types_in(s))
            continue
        if re.search(r"heart|cardiac|cardiomegaly|cardiomediastinal", s):
            normal = re.search(r"no cardiomegaly|not enlarged|normal", s)
            enlarged = not normal and bool(re.search(r"enlarged|cardiomegaly", s))
            m = re.search(r"cardiothoracic ratio (?:of |is )?(\d\.\d+)", s)
            ratio = float(m.group(1)) if m else ratio
            continue
        finding = _chest_finding(s)
        if finding is not None:
            findings.append(finding)
    return ChestReading(tuple(findings), frozenset(absent - {f.type for f in findings}), enlarged, ratio)


def parse_findings(report_text: str) -> list[Finding]:
    """The findings a chest report states, in report order: ``[(type, lung, zone, size_mm), ...]``."""
    return list(parse_chest_report(report_text).findings)


def findings_f1(predicted_text: str, truth_record: Mapping, *, size_tolerance_mm: float | None = None) -> dict:
    """Precision, recall and F1 of the findings parsed from a report against a chest truth record.

    Findings match one to one on (type, lung, zone), and also on size within
    ``size_tolerance_mm`` of the stated (rounded) truth size when that is
    given; among candidates the closest in size matches first. A normal
    report of a normal record scores 1 (nothing to find, nothing claimed).

    Args:
        predicted_text: a generated report.
        truth_record: a record of `jaxmed.data.phantoms.chest_truth`.
        size_tolerance_mm: None: sizes are not compared.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}`` (floats in
        ``[0, 1]`` and counts).
    """
    predicted = parse_findings(predicted_text)
    remaining = chest_findings(truth_record)
    tp = 0
    for p in predicted:
        candidates = [t for t in remaining if t[:3] == p[:3]]
        if size_tolerance_mm is not None:
            candidates = [t for t in candidates if abs(t.size_mm - p.size_mm) <= size_tolerance_mm]
        if candidates:
            remaining.remove(min(candidates, key=lambda t: abs(t.size_mm - p.size_mm)))
            tp += 1
    fp, fn = len(predicted) - tp, len(remaining)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


# --------------------------------------------------------------------------- prostate

_ZONE_NAMES = {"peripheral_zone": ("peripheral zone", "PZ"), "transition_zone": ("transition zone", "TZ")}
_LESION_WORDS = ("lesion", "focal lesion", "focus", "suspicious focus")
_LESION = (  # {side} {zone} {size} {what} {grade}
    "there is a {size} {what} in the {side} {zone}, grade group {grade}.",
    "a {side} {zone} {what} measuring {size} (ISUP grade group {grade}).",
    "{side} {zone}: {size} {what}, grade group {grade}.",
    "in the {zone} on the {side} there is a {what} of {size}, grade group {grade}.",
)
_PROSTATE_INTRO = ("Multiparametric MRI of the prostate.", "mpMRI prostate (T2, DWI, ADC).", "")
_PROSTATE_ANATOMY = ("The zonal anatomy is preserved.", "The peripheral and transition zones are well delineated.", "")
_PROSTATE_NONE = ("no focal lesion is seen.", "no suspicious focal lesion.", "there is no focal lesion in either zone.")
_PROSTATE_NONE_IN = ("no lesion in the {zone}.", "no focal lesion is seen in the {zone}.")


def prostate_record(exam: Mapping[str, np.ndarray], site=None) -> dict:
    """`jaxmed.data.phantoms.exam_truth` of one exam, plus ``"organ_centre_mm"`` (LPS, for the sides)."""
    record = exam_truth(exam, site)
    record["organ_centre_mm"] = [round(float(v), 3) for v in np.asarray(exam["organ_centre_mm"])]
    return record


def prostate_lesions(record: Mapping) -> list[Lesion]:
    """The lesions of a `prostate_record` as a report states them (record order)."""
    centre_x = float(record["organ_centre_mm"][0])
    return [
        Lesion(r["zone"], "left" if r["centre_mm"][0] > centre_x else "right", int(r["grade"]),
               report_size_mm(2.0 * max(r["semi_axes_mm"])))
        for r in record["lesions"]
    ]  # fmt: skip


def write_prostate_report(record: Mapping, rng: np.random.Generator) -> str:
    """A radiology-style mpMRI report of a prostate exam.

    Args:
        record: from `prostate_record`.
        rng: the source of every phrasing choice.

    Returns:
        One paragraph: each lesion (side, zone, largest diameter, grade
        group) and a negative for each zone without a lesion.
    """
    lesions = prostate_lesions(record)
    parts = [_pick(rng, _PROSTATE_INTRO), _pick(rng, _PROSTATE_ANATOMY)]
    for i in rng.permutation(len(lesions)):
        lesion = lesions[i]
        words = {"side": lesion.side, "zone": _pick(rng, _ZONE_NAMES[lesion.zone]), "grade": lesion.grade,
                 "size": _size_text(rng, lesion.size_mm), "what": _pick(rng, _LESION_WORDS)}  # fmt: skip
        parts.append(_sentence(_pick(rng, _LESION).format(**words)))
    zones = {lesion.zone for lesion in lesions}
    if not zones:
        parts.append(_sentence(_pick(rng, _PROSTATE_NONE)))
    for zone in PROSTATE_ZONES:
        if zones and zone not in zones:
            parts.append(_sentence(_pick(rng, _PROSTATE_NONE_IN).format(zone=_pick(rng, _ZONE_NAMES[zone]))))
    return " ".join(p for p in parts if p)


def _prostate_zone(sentence: str) -> str | None:
    found = [z for z, (name, short) in _ZONE_NAMES.items()
             if name in sentence or re.search(rf"\b{short.lower()}\b", sentence)]  # fmt: skip
    return found[0] if len(found) == 1 else None


def parse_lesions(report_text: str) -> list[Lesion]:
    """The lesions a prostate report states, in report order: ``[(zone, side, grade, size_mm), ...]``.

    A lesion sentence names one zone, one side, a size and ``grade group
    N``; negations and other sentences are skipped.
    """
    lesions = []
    for s in _sentences(report_text):
        if re.search(_NEGATION, s):
            continue
        zone, sides, size = _prostate_zone(s), re.findall(_SIDE_PATTERN, s), _size_in(s)
        grade = re.search(r"grade group (\d)", s)
        if zone and len(set(sides)) == 1 and size is not None and grade:
            lesions.append(Lesion(zone, sides[0], int(grade.group(1)), size))
    return lesions

