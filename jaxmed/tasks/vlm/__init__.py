"""Anatomically aware vision-language model (issue 14): reports, instructions, curriculum.

* ``reports``: radiology-style reports from a phantom's truth record
  (chest radiographs, prostate mpMRI), parsed back; findings F1;
* ``instructions``: instructions from a report's text through templates and
  a language model (``prompt -> text``), their targets;
* ``queries``: free-text instructions read as a family and a subject;
* ``curriculum``: the stage of each family and the training schedule.
"""

from jaxmed.tasks.vlm.curriculum import FAMILY_STAGE, STAGES, curriculum_schedule, group_by_stage, order_by_stage
from jaxmed.tasks.vlm.instructions import (
    FAMILY_KIND,
    TEMPLATES,
    FindingRef,
    Instruction,
    StructureRef,
    generate_instructions,
    read_report,
    resolve_landmark,
    resolve_mask,
    rule_based_language_model,
)
from jaxmed.tasks.vlm.queries import Query, parse_user_instruction
from jaxmed.tasks.vlm.reports import (
    Finding,
    Lesion,
    findings_f1,
    parse_chest_report,
    parse_findings,
    parse_lesions,
    prostate_record,
    write_chest_report,
    write_prostate_report,
)

__all__ = [
    "FAMILY_KIND",
    "FAMILY_STAGE",
    "Finding",
    "FindingRef",
    "Instruction",
    "Lesion",
    "Query",
    "STAGES",
    "StructureRef",
    "TEMPLATES",
    "curriculum_schedule",
    "findings_f1",
    "generate_instructions",
    "group_by_stage",
    "order_by_stage",
    "parse_chest_report",
    "parse_findings",
    "parse_lesions",
    "parse_user_instruction",
    "prostate_record",
    "read_report",
    "resolve_landmark",
    "resolve_mask",
    "rule_based_language_model",
    "write_chest_report",
    "write_prostate_report",
]
