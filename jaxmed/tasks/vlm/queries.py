"""Free-text instructions ("segment the left lung") read as a family and its subject, for ``jaxmed vlm ask``.

The reader knows the phrasings of `jaxmed.tasks.vlm.instructions.TEMPLATES`
(every generated prompt reads back as its family and subject) and a few
more; a structure or finding it does not know is an error that lists the
known ones, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxmed.tasks.vlm.instructions import DOMAINS, FAMILY_KIND, RELATIONS, FindingRef, StructureRef

__all__ = ["Query", "parse_user_instruction"]


@dataclass(frozen=True)
class Query:
    """A user's instruction as `parse_user_instruction` reads it (the answer is the model's)."""

    family: str
    target_kind: str
    subject: StructureRef | FindingRef | None
    relation: str | None = None


_VERBS = (  # (pattern, family for a structure, family for a finding)
    (r"^(?:what is the size of|how large is|measure)\s+(.+?)(?:,? in (?:mm|millimetres))?$", None, "size"),
    (r"^what is the grade group of\s+(.+)$", None, "grade"),
    (r"^(?:where is the centre of|where is|point to the centre of|point to|locate)\s+(.+)$", "landmark",
     "finding_landmark"),
    (r"^(?:segment|outline|draw a mask of|delineate|find|show)\s+(.+)$", "segment", "find"),
    (r"^(?:is there|are there|any)\s+(.+)$", None, "presence"),
)  # fmt: skip
_PLACES = {
    "chest": (r"^(?P<side>right|left) (?P<zone>upper|middle|mid|lower) zone$",
              r"^(?P<zone>upper|middle|mid|lower) zone of the (?P<side>right|left) lung$",
              r"^(?P<side>right|left) lung$"),
    "prostate": (r"^(?:(?P<side>right|left) )?(?P<zone>peripheral zone|transition zone|pz|tz)$",),
}  # fmt: skip


def _known(domain: str) -> str:
    d = DOMAINS[domain]
    where = "a lung or a lung zone (e.g. 'right upper zone')" if domain == "chest" else "a zone (e.g. 'left PZ')"
    return f"known structures: {', '.join(d.structures.values())}; findings: {', '.join(d.types.values())}, in {where}"


def _subject(phrase: str, domain: str) -> StructureRef | FindingRef:
    d = DOMAINS[domain]
    phrase = re.sub(r"^(?:the|a|an)\s+", "", phrase.strip())
    names = {words: name for name, words in d.structures.items()}
    if phrase in names:
        return StructureRef(names[phrase])
    what, _, place = phrase.partition(" in the ")
    types = {words: t for t, words in d.types.items()} | {t: t for t in d.types}
    what = what.strip()
    what = next((w for w in (what, what[:-1], what[:-2]) if w in types), what)  # "nodules", "masses": plurals
    if what not in types:
        raise ValueError(f"unknown structure or finding {what!r}; {_known(domain)}")
    if not place:
        return FindingRef(types[what])
    for pattern in _PLACES[domain]:
        m = re.match(pattern, place.strip())
        if m:
            zone = m.groupdict().get("zone")
            zone = {"mid": "middle", "pz": "peripheral_zone", "tz": "transition_zone"}.get(zone, zone)
            zone = zone.replace(" ", "_") if zone else zone
            return FindingRef(types[what], m.group("side"), zone)
    raise ValueError(f"unknown structure {place.strip()!r}; {_known(domain)}")


def parse_user_instruction(text: str, *, domain: str = "chest") -> Query:
    """Reads a free-text instruction ("segment the left lung") as a family and its subject.

    Raises:
        ValueError: an unknown structure or finding (the message lists the
            known ones), or a sentence no family reads.
    """
    t = re.sub(r"\s+", " ", text.strip().lower().removeprefix("please ")).rstrip("?.! ")
    t = re.sub(r"\s*(?:choose from|options):.*$", "", t).rstrip("?.! ")
    if re.match(r"^(?:write|describe|generate)\b.*\b(?:findings|report)$", t):
        return Query("report", "text", None)
    if domain == "chest" and ("cardiothoracic ratio" in t):
        return Query("ratio", "number", StructureRef("heart"))
    if domain == "chest" and t in ("is the heart enlarged", "is there cardiomegaly"):
        return Query("presence", "yes_no", FindingRef("cardiomegaly"))
    for relation, subject, question, _, _ in RELATIONS[domain]:
        if t == question.lower().rstrip("?"):
            return Query("relation", "choice", None if subject is None else StructureRef(subject), relation)
    m = re.match(r"^in which (side|lung|zone) is (.+)$", t)
    if m:
        relation = "zone" if m.group(1) == "zone" else "side"
        return Query("finding_choice", "choice", _subject(m.group(2), domain), relation)
    m = re.match(r"^does the (.+?) contain (.+)$", t)
    if m:
        t = f"is there {m.group(2)} in the {m.group(1)}"
    for pattern, structure_family, finding_family in _VERBS:
        m = re.match(pattern, t)
        if m:
            subject = _subject(m.group(1), domain)
            family = structure_family if isinstance(subject, StructureRef) else finding_family
            if family is None:
                raise ValueError(f"{text!r} asks a finding's question of the structure {subject.name!r}; "
                                 f"{_known(domain)}")
            return Query(family, FAMILY_KIND[family], subject)
    raise ValueError(f"cannot read the instruction {text!r}; try e.g. 'segment the left lung'; {_known(domain)}")
