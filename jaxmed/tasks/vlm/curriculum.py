"""The curriculum of instruction families: anatomy -> relations -> findings -> quantities -> report.

Each family of `jaxmed.tasks.vlm.instructions` belongs to one stage
(`FAMILY_STAGE`). Training goes stage by stage, each stage replaying a share
of the earlier ones, or, for comparison, on one fully shuffled set
(`curriculum_schedule`). Pure and seeded: the order is a function of the
instructions and the ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jaxmed.tasks.vlm.instructions import Instruction

__all__ = ["FAMILY_STAGE", "STAGES", "curriculum_schedule", "group_by_stage", "order_by_stage"]

STAGES: tuple[str, ...] = ("anatomy", "relations", "findings", "quantities", "report")
"""The curriculum stages, in training order."""
FAMILY_STAGE: dict[str, str] = {
    "segment": "anatomy", "landmark": "anatomy", "relation": "relations", "presence": "findings",
    "finding_choice": "findings", "find": "findings", "finding_landmark": "findings", "size": "quantities",
    "ratio": "quantities", "grade": "quantities", "report": "report",
}  # fmt: skip
"""The curriculum stage of each instruction family."""


def group_by_stage(instructions: Sequence[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions by curriculum stage, every stage of `STAGES` a key (in order), each list in input order."""
    groups = {stage: [] for stage in STAGES}
    for ins in instructions:
        groups[ins.stage].append(ins)
    return groups


def order_by_stage(instructions: Sequence[Instruction]) -> list[Instruction]:
    """The instructions ordered anatomy -> relations -> findings -> quantities -> report (stable)."""
    return [ins for group in group_by_stage(instructions).values() for ins in group]


def curriculum_schedule(
    instructions: Sequence[Instruction], rng: np.random.Generator, *, mode: str = "curriculum", replay: float = 0.25
) -> list[tuple[str, list[Instruction]]]:
    """The training phases: stage by stage with replay, or one fully shuffled phase.

    Args:
        instructions: the training instructions.
        rng: draws the replayed instructions and each phase's order.
        mode: ``"curriculum"``: one phase per non-empty stage, in `STAGES`
            order, holding that stage's instructions and ``round(replay *
            n_stage)`` instructions of earlier stages (without replacement,
            at most all of them); ``"shuffled"``: one phase ``"all"``.
        replay: the replayed fraction, >= 0.

    Returns:
        ``[(stage, instructions in training order), ...]``.
    """
    if mode not in ("curriculum", "shuffled") or replay < 0:
        raise ValueError(f"mode must be 'curriculum' or 'shuffled' and replay >= 0, got {mode!r}, {replay}")
    if mode == "shuffled":
        return [("all", [instructions[i] for i in rng.permutation(len(instructions))])]
    phases, seen = [], []
    for stage, current in group_by_stage(instructions).items():
        if not current:
            continue
        k = min(len(seen), int(round(replay * len(current))))
        phase = current + [seen[i] for i in rng.choice(len(seen), size=k, replace=False)]
        phases.append((stage, [phase[i] for i in rng.permutation(len(phase))]))
        seen += current
    return phases
