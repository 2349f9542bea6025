"""Reports from phantom truth records (jaxmed.tasks.vlm.reports): written, parsed back, scored.

Expected values are written by hand or computed here from the truth record
(floor(size + 0.5) mm, the 0.5 cardiothoracic-ratio rule, the side of a
lesion's centre against the prostate's), never by the module under test.
"""

import math

import jax
import numpy as np
import pytest

from jaxmed.data.phantoms import FINDING_TYPES, ChestPhantomConfig, ExamConfig, chest_truth, make_dataset
from jaxmed.tasks.vlm.reports import (
    Finding,
    Lesion,
    findings_f1,
    parse_chest_report,
    parse_findings,
    parse_lesions,
    prostate_record,
    report_size_mm,
    write_chest_report,
    write_prostate_report,
)

CHEST = ChestPhantomConfig(shape=(128, 128), finding_probability=0.8)
NUM_CHEST = 32


@pytest.fixture(scope="module")
def chest_records():
    d = make_dataset(jax.random.key(14), NUM_CHEST, kind="chest", config=CHEST, chunk_size=NUM_CHEST)
    return [chest_truth({k: v[i] for k, v in d.items()}) for i in range(NUM_CHEST)]


@pytest.fixture(scope="module")
def prostate_records():
    d = make_dataset(jax.random.key(3), 4, kind="mri_exam", config=ExamConfig(site="D"), chunk_size=4)
    return [prostate_record({k: v[i] for k, v in d.items()}) for i in range(4)]


def _stated(size_mm):
    return int(math.floor(size_mm + 0.5))


def test_sizes_round_half_up_to_whole_mm():
    assert [report_size_mm(s) for s in (12.49, 12.5, 13.5, 0.3, 2.5, 30.0)] == [12, 13, 14, 1, 3, 30]


def test_parse_chest_report_by_hand():
    text = ("Findings: There is a 12 mm nodule in the right upper zone. A mass measuring 4.5 cm is seen in the "
            "mid zone of the left lung. Small left pleural effusion with a meniscus 18 mm above the costophrenic "
            "angle. No focal consolidation. The lungs are otherwise clear. The heart is enlarged, with a "
            "cardiothoracic ratio of 0.56. No pneumothorax.")  # fmt: skip
    r = parse_chest_report(text)
    assert list(r.findings) == [
        ("nodule", "right", "upper", 12), ("mass", "left", "middle", 45), ("effusion", "left", "lower", 18)]
    assert r.absent == {"consolidation"}
    assert r.heart_enlarged is True and r.cardiothoracic_ratio == 0.56
    normal = parse_chest_report("Clear lungs. No pulmonary nodule or mass. No pleural effusion. Normal heart size.")
    assert normal.findings == () and normal.absent == {"nodule", "mass", "effusion"}
    assert normal.heart_enlarged is False and normal.cardiothoracic_ratio is None
    assert parse_chest_report("The cardiac silhouette is not enlarged.").heart_enlarged is False
    consolidation = [Finding("consolidation", "right", "lower", 62)]
    assert parse_findings("Right lower zone airspace opacity spanning 6.2 cm.") == consolidation


def test_findings_f1_by_hand():
    truth = {"findings": [{"type": "nodule", "lung": "right", "zone": "upper", "size_mm": 11.6},
                          {"type": "effusion", "lung": "left", "zone": "lower", "size_mm": 30.2}]}  # fmt: skip
    right = "There is a 12 mm nodule in the right upper zone."
    wrong_side = "There is a 12 mm nodule in the left upper zone."
    # One of one claims right, one of two found: P = 1, R = 1/2, F1 = 2/3.
    expected = {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "tp": 1, "fp": 0, "fn": 1}
    assert findings_f1(right, truth) == pytest.approx(expected)
    both = right + " Left pleural effusion blunting the costophrenic angle, 25 mm in height."
    assert findings_f1(both, truth)["f1"] == 1.0
    # The effusion's size is 25 mm against a stated 30: wrong at a 2 mm tolerance, right at 5.
    assert findings_f1(both, truth, size_tolerance_mm=2.0)["tp"] == 1
    assert findings_f1(both, truth, size_tolerance_mm=5.0)["tp"] == 2
    scores = findings_f1(wrong_side + " " + right, truth)  # P = 1/2, R = 1/2
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    assert findings_f1("The lungs are clear.", {"findings": []})["f1"] == 1.0
    assert findings_f1(right, {"findings": []})["precision"] == 0.0


def test_chest_reports_state_exactly_the_truth(chest_records):
    texts = set()
    seen = 0
    for i, record in enumerate(chest_records):
        truth = sorted((f["type"], f["lung"], f["zone"], _stated(f["size_mm"])) for f in record["findings"])
        present = {f["type"] for f in record["findings"]}
        ratio = record["measurements"]["cardiothoracic_ratio"]
        seen += len(truth)
        for seed in range(3):
            text = write_chest_report(record, np.random.default_rng([i, seed]))
            assert text == write_chest_report(record, np.random.default_rng([i, seed]))
            texts.add(text)
            r = parse_chest_report(text)
            assert sorted(r.findings) == truth, text
            assert r.absent == set(FINDING_TYPES) - present, text  # a negative for every absent type
            assert r.heart_enlarged == (ratio > 0.5), text
            if r.cardiothoracic_ratio is not None:
                assert abs(r.cardiothoracic_ratio - ratio) <= 0.005 + 1e-9
            assert findings_f1(text, record)["f1"] == 1.0
            if not present:
                assert "no pleural effusion" in text.lower()
    assert seen >= 20  # the phantoms hold findings to read back
    assert len(texts) == 3 * len(chest_records)  # prose varies with the seed


def test_parse_lesions_by_hand():
    text = ("Multiparametric MRI of the prostate. A left PZ focus measuring 1.4 cm (ISUP grade group 3). "
            "Right transition zone: 6 mm lesion, grade group 1. "
            "No lesion in the peripheral zone on the right.")  # fmt: skip
    assert parse_lesions(text) == [Lesion("peripheral_zone", "left", 3, 14), Lesion("transition_zone", "right", 1, 6)]


def test_prostate_reports_state_exactly_the_truth(prostate_records):
    lesions = 0
    for i, record in enumerate(prostate_records):
        x0 = record["organ_centre_mm"][0]
        truth = sorted(
            (x["zone"], "left" if x["centre_mm"][0] > x0 else "right", x["grade"], _stated(2 * max(x["semi_axes_mm"])))
            for x in record["lesions"]
        )
        lesions += len(truth)
        for seed in range(3):
            text = write_prostate_report(record, np.random.default_rng([i, seed]))
            assert sorted(parse_lesions(text)) == truth, text
            if not truth:
                assert "no " in text.lower()
    assert lesions >= 2
