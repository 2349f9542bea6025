"""Threshold calibration and decisions, checked by hand."""

import numpy as np
import pytest

from jaxmed.tasks.scan_quality import Calibration, calibrate, classify


def test_calibrate_threshold_by_hand():
    scores = np.array([-5.0, -1.0, -3.0, -2.0, -4.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    # Sorted: -5 -4 -3 -2 -1 0 1 2 3 4. fpr .2 -> k = 2 -> threshold -3:
    # exactly two normals (-5, -4) fall below it.
    cal = calibrate(scores, fpr=0.2)
    assert cal.threshold == -3.0
    assert np.mean(scores < cal.threshold) <= 0.2
    assert calibrate(scores, fpr=0.0).threshold == -5.0


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.33])
def test_empirical_fpr_never_exceeds_target(fpr, rng):
    scores = rng.normal(size=137)
    cal = calibrate(scores, fpr=fpr)
    assert np.mean(~classify(scores, cal).normal) <= fpr


def test_p_values_by_hand():
    cal = Calibration(threshold=0.0, reference_scores=np.array([3.0, 1.0, 2.0, 4.0]))
    d = classify(np.array([0.5, 1.0, 2.5, 10.0, np.nan]), cal)
    # (1 + #{ref <= s}) / (n + 1) with n = 4.
    np.testing.assert_allclose(d.p_value, [1 / 5, 2 / 5, 3 / 5, 5 / 5, np.nan])
    np.testing.assert_array_equal(d.normal, [True, True, True, True, False])
    assert d.num_reference == 4


def test_roundtrip_and_validation():
    cal = calibrate([1.0, 2.0, 3.0], fpr=0.1)
    again = Calibration.from_dict(cal.to_dict())
    assert again.threshold == cal.threshold and again.target_fpr == 0.1
    np.testing.assert_array_equal(again.reference_scores, cal.reference_scores)
    with pytest.raises(ValueError, match="fpr"):
        calibrate([1.0], fpr=1.0)
    with pytest.raises(ValueError, match="NaN"):
        Calibration(threshold=0.0, reference_scores=np.array([1.0, np.nan]))


def test_calibration_shift_by_hand():
    from jaxmed.tasks.scan_quality import calibration_shift

    calibration = calibrate(np.arange(10.0), fpr=0.2)  # reference 0..9, threshold 2
    check = calibration_shift(np.array([-5.0, -1.0, 1.0, 3.0, 8.0, np.nan]), calibration,
                              groups={"a.nii": np.array([-5.0, -1.0, 1.0]), "b.nii": np.array([3.0, 8.0])})
    # Below 0: -5, -1 and the NaN; below the threshold 2: those and 1.
    assert check["below_calibration_min"] == pytest.approx(3 / 6) and check["flagged"] == pytest.approx(4 / 6)
    assert check["median_quantile"] == pytest.approx(0.2)  # median of the finite scores is 1: 0 and 1 of 0..9
    assert check["outside_groups"] == ["a.nii"] and check["outside"] and check["target_fpr"] == 0.2
    ok = calibration_shift(np.array([1.0, 5.0, 7.0]), calibration)
    assert not ok["outside"] and ok["below_calibration_min"] == 0.0 and ok["outside_groups"] == []
