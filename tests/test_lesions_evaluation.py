"""The lesions task's scoring against the field's references: picai_eval + report_guided_annotation, scikit-learn."""

import contextlib
import io

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

with contextlib.redirect_stdout(io.StringIO()):  # both print a banner on import
    import picai_eval
    import report_guided_annotation

from jaxmed.tasks.lesions.evaluation import (
    classification_metrics,
    detection_summary,
    median_class,
    evaluate_maps,
    pixel_auroc,
    quadratic_weighted_kappa,
)


def _maps(rng, n=10, shape=(32, 32)):
    """Lesion masks (discs) and probability maps with bumps near some lesions and elsewhere."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros(shape, np.float32)
        prob = rng.uniform(0, 0.02, shape).astype(np.float32)
        if i % 3:
            c = rng.uniform(8, 24, 2)
            mask[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= rng.uniform(9, 25)] = 1
            if rng.uniform() < 0.8:
                prob += rng.uniform(0.3, 0.95) * np.exp(-((yy - c[0] - 1) ** 2 + (xx - c[1]) ** 2) / 12.0)
        for _ in range(rng.integers(0, 3)):
            c = rng.uniform(4, 28, 2)
            prob += rng.uniform(0.1, 0.7) * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / 8.0)
        maps.append(np.clip(prob, 0, 1).astype(np.float32))
        masks.append(mask)
    return np.stack(maps), np.stack(masks)


def test_detection_scores_match_picai_eval(rng):
    maps, masks = _maps(rng)
    result, detections = evaluate_maps(maps, masks)
    theirs = picai_eval.evaluate(
        [m[None] for m in maps], [y[None].astype(np.uint8) for y in masks],
        y_det_postprocess_func=lambda p: report_guided_annotation.extract_lesion_candidates(p, threshold="dynamic")[0],
        num_parallel_calls=1)
    assert result.auroc == pytest.approx(theirs.auroc, abs=1e-6)
    assert result.ap == pytest.approx(theirs.AP, abs=1e-6)
    assert result.score == pytest.approx(theirs.score, abs=1e-6)
    summary = detection_summary(maps, masks)
    assert summary["score"] == pytest.approx(theirs.score, abs=1e-6)
    assert summary["sensitivity_at_1_fp"] == pytest.approx(theirs.lesion_TPR_at_FPR(1.0), abs=1e-6)
    # Dice of the candidates by hand, over the exams with a lesion.
    dices = [2 * np.sum((d > 0) & (y > 0)) / (np.sum(d > 0) + np.sum(y > 0)) for d, y in zip(detections, masks)
             if y.any()]
    assert summary["dice"] == pytest.approx(np.mean(dices), rel=1e-6)
    assert 0 < summary["num_positive"] < len(maps)


def test_pixel_auroc_is_sklearns(rng):
    scores, labels = rng.uniform(size=(3, 8, 8)), rng.uniform(size=(3, 8, 8)) < 0.2
    assert pixel_auroc(scores, labels) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-6)


def test_quadratic_weighted_kappa_is_sklearns(rng):
    truth, pred = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
    pred[:30] = truth[:30]
    expected = cohen_kappa_score(truth, pred, weights="quadratic", labels=np.arange(5))
    assert quadratic_weighted_kappa(truth, pred, 5) == pytest.approx(expected, abs=1e-12)


def test_classification_metrics(rng):
    grade = rng.integers(0, 5, 40)
    significant = grade >= 1
    probs = rng.dirichlet(np.ones(5), size=40)
    s = 1 - probs[:, 0] + 0.3 * significant
    out = classification_metrics(s, probs, significant, grade)
    assert out["significance_auroc"] == pytest.approx(roc_auc_score(significant, s), abs=1e-6)
    pred = np.array([next(k for k in range(5) if probs[i, : k + 1].sum() >= 0.5) for i in range(40)])  # median
    assert out["grade_accuracy"] == pytest.approx(np.mean(pred == grade))
    assert out["grade_mae"] == pytest.approx(np.mean(np.abs(pred - grade)))


def test_median_class_by_hand():
    probs = np.array([[0.6, 0.1, 0.1, 0.1, 0.1], [0.4, 0.15, 0.15, 0.15, 0.15], [0.1, 0.1, 0.1, 0.1, 0.6]])
    np.testing.assert_array_equal(median_class(probs), [0, 1, 4])  # argmax would say 0, 0, 4
