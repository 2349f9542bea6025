"""Instructions from report text (jaxmed.tasks.vlm.instructions), their curriculum and free-text queries.

The agreement test reads each instruction's answer against the truth record
and the sample's masks, computed here (areas, centroid columns, the 0.5
cardiothoracic-ratio rule, the report's whole-mm rounding), not by the module.
The data sets are those of tests/test_vlm_reports.py (same configs and keys:
one compilation per process).
"""

import jax
import numpy as np
import pytest

from jaxmed.data.phantoms import FINDING_TYPES, ChestPhantomConfig, ExamConfig, chest_truth, make_dataset
from jaxmed.tasks.vlm import (
    FAMILY_STAGE,
    STAGES,
    FindingRef,
    Instruction,
    Query,
    StructureRef,
    curriculum_schedule,
    findings_f1,
    generate_instructions,
    order_by_stage,
    parse_user_instruction,
    prostate_record,
    resolve_landmark,
    resolve_mask,
    write_chest_report,
    write_prostate_report,
)

CHEST = ChestPhantomConfig(shape=(128, 128), finding_probability=0.8)
NUM_CHEST = 32
CHEST_NAMES = {"right lung": "right_lung", "left lung": "left_lung", "heart": "heart"}


def _split(d, n):
    return [{k: v[i] for k, v in d.items()} for i in range(n)]


@pytest.fixture(scope="module")
def chest():
    d = make_dataset(jax.random.key(14), NUM_CHEST, kind="chest", config=CHEST, chunk_size=NUM_CHEST)
    samples = _split(d, NUM_CHEST)
    return [(s, chest_truth(s)) for s in samples]


@pytest.fixture(scope="module")
def prostate():
    samples = _split(make_dataset(jax.random.key(3), 4, kind="mri_exam", config=ExamConfig(site="D"), chunk_size=4), 4)
    return [(s, prostate_record(s)) for s in samples]


def _truth_findings(truth, ref):
    return [f for f in truth["findings"]
            if f["type"] == ref.type and ref.side in (None, f["lung"]) and ref.zone in (None, f["zone"])]  # fmt: skip


def _check_chest(ins: Instruction, sample, truth):
    regions = truth["regions"]
    col = {name: regions[name]["centroid_px"][1] for name in regions}
    if ins.family == "segment":
        mask = resolve_mask(ins.subject, sample, truth)
        np.testing.assert_array_equal(mask, sample[ins.subject.name])
        assert mask.any()
    elif ins.family == "landmark":
        rows, cols = np.nonzero(sample[ins.subject.name])
        np.testing.assert_allclose(resolve_landmark(ins.subject, truth), (rows.mean(), cols.mean()), atol=0.01)
    elif ins.family == "relation":
        assert ins.answer in ins.choices
        lungs = ("right_lung", "left_lung")
        expected = {
            "larger": max(lungs, key=lambda n: regions[n]["area_mm2"]),
            # The patient's left is the image's right: the larger column.
            "left_of": next(n for n in lungs if col[n] > col["heart"]),
            "right_of": next(n for n in lungs if col[n] < col["heart"]),
            "between": sorted(col, key=col.get)[1],
        }[ins.relation]
        assert ins.answer == expected, ins
    elif ins.family == "presence":
        if ins.subject.type == "cardiomegaly":
            assert ins.answer == ("yes" if truth["measurements"]["cardiothoracic_ratio"] > 0.5 else "no")
        else:
            assert ins.answer == ("yes" if _truth_findings(truth, ins.subject) else "no"), ins
    elif ins.family == "finding_choice":
        (f,) = _truth_findings(truth, ins.subject)
        assert ins.answer == f["lung" if ins.relation == "side" else "zone"] and ins.answer in ins.choices
    elif ins.family == "find":
        found = _truth_findings(truth, ins.subject)
        expected = np.any(sample["finding_masks"][[f["mask_index"] for f in found]], axis=0)
        assert found and expected.any()
        np.testing.assert_array_equal(resolve_mask(ins.subject, sample, truth), expected)
    elif ins.family == "finding_landmark":
        (f,) = _truth_findings(truth, ins.subject)
        assert resolve_landmark(ins.subject, truth) == tuple(f["centre_px"])
    elif ins.family == "size":
        (f,) = _truth_findings(truth, ins.subject)
        assert ins.answer == int(ins.answer) and abs(ins.answer - f["size_mm"]) <= 0.5 + 1e-9 and ins.unit == "mm"
    elif ins.family == "ratio":
        assert abs(ins.answer - truth["measurements"]["cardiothoracic_ratio"]) <= 0.005 + 1e-9
    elif ins.family == "report":
        assert findings_f1(ins.answer, truth)["f1"] == 1.0
    else:
        raise AssertionError(f"unchecked family {ins.family}")


def test_chest_instructions_agree_with_the_truth(chest):
    families = set()
    for i, (sample, truth) in enumerate(chest):
        report = write_chest_report(truth, np.random.default_rng(i))
        instructions = generate_instructions(report, np.random.default_rng(i))
        for ins in instructions:
            assert ins.target_kind in ("mask", "landmark", "text", "choice", "yes_no", "number")
            _check_chest(ins, sample, truth)
            families.add(ins.family)
        # Negatives: every type the phantom lacks is asked of both lungs, answered "no".
        for t in set(FINDING_TYPES) - {f["type"] for f in truth["findings"]}:
            asked = {ins.subject.side for ins in instructions if ins.family == "presence" and ins.subject.type == t}
            assert asked == {"right", "left"}
    expected = {"segment", "landmark", "relation", "presence", "finding_choice", "find", "finding_landmark", "size",
                "ratio", "report"}  # fmt: skip
    assert families == expected


def test_prostate_instructions_agree_with_the_truth(prostate):
    families = set()
    for i, (exam, truth) in enumerate(prostate):
        report = write_prostate_report(truth, np.random.default_rng(i))
        x0 = truth["organ_centre_mm"][0]
        for ins in generate_instructions(report, np.random.default_rng(i), domain="prostate"):
            families.add(ins.family)
            ref = ins.subject
            lesions = [] if not isinstance(ref, FindingRef) else [
                x for x in truth["lesions"] if ref.zone in (None, x["zone"])
                and ref.side in (None, "left" if x["centre_mm"][0] > x0 else "right")]  # fmt: skip
            if ins.family == "segment":
                label = {"prostate": None, "peripheral_zone": 2, "transition_zone": 3}[ref.name]
                expected = exam["organ_mask"] if label is None else exam["tissue"] == label
                np.testing.assert_array_equal(resolve_mask(ref, exam, truth), expected)
            elif ins.family == "relation":  # T2 rows run anterior to posterior: anterior is the smaller mean row
                zones = (("peripheral_zone", 2), ("transition_zone", 3))
                rows = {z: np.nonzero(exam["tissue"] == label)[1].mean() for z, label in zones}
                assert ins.answer == min(rows, key=rows.get)
            elif ins.family == "presence":
                assert ins.answer == ("yes" if lesions else "no")
            elif ins.family == "find":
                expected = np.isin(exam["lesion_labels"], [x["label"] for x in lesions])
                assert expected.any()
                np.testing.assert_array_equal(resolve_mask(ref, exam, truth), expected)
            elif ins.family in ("size", "grade", "finding_landmark", "finding_choice"):
                (x,) = lesions if ins.family != "finding_choice" else truth["lesions"]
                got = {"size": ins.answer, "grade": ins.answer, "finding_landmark": resolve_landmark(ref, truth),
                       "finding_choice": ins.answer}[ins.family]  # fmt: skip
                side = "left" if x["centre_mm"][0] > x0 else "right"
                want = {"size": np.floor(2 * max(x["semi_axes_mm"]) + 0.5), "grade": x["grade"],
                        "finding_landmark": tuple(x["centre_mm"]),
                        "finding_choice": side if ins.relation == "side" else x["zone"]}[ins.family]  # fmt: skip
                assert got == want, ins
            else:
                assert ins.family == "report"
    assert {"segment", "relation", "presence", "find", "size", "grade", "report"} <= families


def test_generated_prompts_read_back_as_their_family_and_subject(chest, prostate):
    reports = [("chest", write_chest_report(truth, np.random.default_rng(i))) for i, (_, truth) in enumerate(chest[:8])]
    reports += [("prostate", write_prostate_report(t, np.random.default_rng(i))) for i, (_, t) in enumerate(prostate)]
    for i, (domain, report) in enumerate(reports):
        for ins in generate_instructions(report, np.random.default_rng(i), domain=domain):
            q = parse_user_instruction(ins.prompt, domain=domain)
            assert (q.family, q.target_kind, q.subject) == (ins.family, ins.target_kind, ins.subject), ins.prompt
            assert q.relation == ins.relation or ins.family not in ("relation", "finding_choice")


def test_parse_user_instruction_by_hand():
    assert parse_user_instruction("segment the left lung") == Query("segment", "mask", StructureRef("left_lung"))
    assert parse_user_instruction("Where is the heart?") == Query("landmark", "landmark", StructureRef("heart"))
    assert parse_user_instruction("Is there a pleural effusion in the right lung?") == Query(
        "presence", "yes_no", FindingRef("effusion", "right", None))
    assert parse_user_instruction("find the masses in the lower zone of the left lung") == Query(
        "find", "mask", FindingRef("mass", "left", "lower"))
    assert parse_user_instruction("How large is the nodule in the right mid zone?") == Query(
        "size", "number", FindingRef("nodule", "right", "middle"))
    assert parse_user_instruction("Write the findings.").family == "report"
    assert parse_user_instruction("What is the grade group of the lesion in the left PZ?", domain="prostate") == Query(
        "grade", "number", FindingRef("lesion", "left", "peripheral_zone"))
    assert parse_user_instruction("segment the transition zone", domain="prostate") == Query(
        "segment", "mask", StructureRef("transition_zone"))
    for text, named in (("segment the liver", "'liver'"), ("is there a tumour in the right lung", "'tumour'"),
                        ("find the nodule in the left apex", "'left apex'")):  # fmt: skip
        with pytest.raises(ValueError, match=named) as error:
            parse_user_instruction(text)
        assert "right lung, left lung, heart" in str(error.value)
    with pytest.raises(ValueError, match="known structures: prostate, peripheral zone, transition zone"):
        parse_user_instruction("segment the bladder", domain="prostate")
    with pytest.raises(ValueError, match="cannot read"):
        parse_user_instruction("tell me a story")


def test_a_plugged_in_language_model_replaces_the_parsing():
    prompts = []

    def model(prompt):  # an LLM's reply, chatter included, in the fixed form
        prompts.append(prompt)
        return "Sure, here they are:\nfinding | mass | left | lower | 41 | -\nabsent | effusion\nheart | normal\n"

    out = generate_instructions("REPORT TEXT", np.random.default_rng(0), language_model=model)
    assert len(prompts) == 1 and "<report>\nREPORT TEXT\n</report>" in prompts[0]
    answers = {(ins.family, ins.subject): ins.answer for ins in out}
    assert answers[("size", FindingRef("mass", "left", "lower"))] == 41.0
    assert answers[("presence", FindingRef("cardiomegaly"))] == "no"
    assert answers[("presence", FindingRef("effusion", "right", None))] == "no"
    assert answers[("presence", FindingRef("mass", "right", None))] == "no"  # closed world: the one mass is left
    assert ("presence", FindingRef("nodule", "left", None)) not in answers  # nodules never mentioned: not asked


def _dummy(family, k):
    return Instruction(family=family, prompt=f"{family} {k}", target_kind="text", answer=str(k))


def test_curriculum_stages_and_replay_by_hand():
    instructions = [_dummy("size", k) for k in range(3)] + [_dummy("segment", k) for k in range(4)]
    instructions += [_dummy("relation", k) for k in range(2)] + [_dummy("presence", k) for k in range(10)]
    ordered = order_by_stage(instructions)
    ranks = [STAGES.index(FAMILY_STAGE[i.family]) for i in ordered]
    assert ranks == sorted(ranks)
    assert ordered[:4] == instructions[3:7]  # stable within a stage
    phases = curriculum_schedule(instructions, np.random.default_rng(0), replay=0.5)
    assert [stage for stage, _ in phases] == ["anatomy", "relations", "findings", "quantities"]
    # Replay round(0.5 n) of the earlier stages, at most all of them: 0, 1, 5, 2.
    assert [len(p) for _, p in phases] == [4, 3, 15, 5]
    earlier = set()
    for stage, phase in phases:
        assert len(set(phase)) == len(phase)
        assert all(FAMILY_STAGE[i.family] == stage or i in earlier for i in phase)
        earlier |= {i for i in phase if FAMILY_STAGE[i.family] == stage}
    assert phases == curriculum_schedule(instructions, np.random.default_rng(0), replay=0.5)
    assert [len(p) for _, p in curriculum_schedule(instructions, np.random.default_rng(1), replay=0.0)] == [4, 2, 10, 3]
    ((name, shuffled),) = curriculum_schedule(instructions, np.random.default_rng(0), mode="shuffled")
    assert name == "all" and sorted(shuffled, key=instructions.index) == instructions and shuffled != instructions
    with pytest.raises(ValueError):
        curriculum_schedule(instructions, np.random.default_rng(0), mode="random")
