"""Anatomically aware vision-language model (issue 14): reports, instructions, curriculum.

* ``reports``: radiology-style reports from a phantom's truth record
  (chest radiographs, prostate mpMRI), parsed back; findings F1;
* ``instructions``: instructions from a report's text through templates and
  a language model (``prompt -> text``), their targets;
* ``queries``: free-text instructions read as a family and a subject;
* ``curriculum``: the stage of each family and the training schedule;
* ``tokenizer``: a BPE tokenizer trained on the reports and instructions;
* ``data``: instruction data sets of phantoms as token rows with targets;
* ``model``: the prefix-LM over image patch tokens with text, mask and landmark heads;
* ``train``, ``evaluate``, ``ask``, ``demo``: training through the engine,
  scoring on held-out phantoms, one instruction about a radiograph, the study.
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
from jaxmed.tasks.vlm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer
from jaxmed.tasks.vlm.config import VLM_PRESETS, VLMTaskConfig, task_config
from jaxmed.tasks.vlm.data import InstructionSet, answer_text, build_instruction_set, chest_samples
from jaxmed.tasks.vlm.model import VisionLanguageModel, VLMConfig
from jaxmed.tasks.vlm.train import (
    VLMModel,
    load_vlm,
    make_vlm_loss,
    step_plan,
    stored_task_config,
    task_data,
    train_vlm,
)
from jaxmed.tasks.vlm.evaluate import answer_batch, evaluate
from jaxmed.tasks.vlm.ask import Answer, ask, load_radiograph, write_answer
from jaxmed.tasks.vlm.demo import run_demo
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
    "Answer",
    "InstructionSet",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "VLMConfig",
    "VLMModel",
    "VLMTaskConfig",
    "VLM_PRESETS",
    "VisionLanguageModel",
    "answer_batch",
    "answer_text",
    "ask",
    "build_instruction_set",
    "chest_samples",
    "evaluate",
    "load_radiograph",
    "load_vlm",
    "make_vlm_loss",
    "run_demo",
    "step_plan",
    "stored_task_config",
    "task_config",
    "task_data",
    "train_tokenizer",
    "train_vlm",
    "write_answer",
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
