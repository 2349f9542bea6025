"""Detection metrics against the PI-CAI reference scorers, and by hand.

The oracles are ``picai_eval`` 1.4.13 (evaluation) and
``report_guided_annotation`` 0.3.4 (lesion-candidate extraction), both test
extras. They label with a 3x3x3 structure, so 2D maps go to them as one-slice
volumes (the same 8-connectivity).
"""

import contextlib
import functools
import io

import jax
import numpy as np
import pytest

# Both print a citation banner on import.
with contextlib.redirect_stdout(io.StringIO()):
    import picai_eval
    import report_guided_annotation
    from picai_eval.eval import evaluate_case as picai_evaluate_case

from jaxmed.metrics import (
    CaseEvaluation,
    bootstrap_detection,
    detection_metrics,
    evaluate_case,
    evaluate_detections,
    extract_lesion_candidates,
)

TOL = dict(rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# Seeded random cases
# --------------------------------------------------------------------------


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)


def _prob_map(rng, shape, *, num_bumps=None):
    """Gaussian bumps of mixed widths, a few one-voxel spikes, speckle; sometimes plateaus or rounding (ties)."""
    grid = _grid(shape)
    num_bumps = rng.integers(0, 5) if num_bumps is None else num_bumps
    centres = rng.uniform(0, shape, size=(num_bumps, len(shape))).astype(np.float32)
    prob = np.zeros(shape, np.float32)
    for c in centres:
        width = rng.uniform(0.7, 3.5)
        prob += rng.uniform(0.05, 1.0) * np.exp(-np.sum((grid - c) ** 2, axis=-1) / (2 * width**2))
    prob += rng.uniform(0, 0.03, shape).astype(np.float32)
    spikes = rng.integers(0, prob.size, size=rng.integers(0, 4))
    prob.ravel()[spikes] = rng.uniform(0.3, 1.0, spikes.size)
    if rng.uniform() < 0.25:
        prob = np.minimum(prob, np.float32(rng.uniform(0.3, 0.8)))
    if rng.uniform() < 0.25:
        prob = np.round(prob, 2)
    return np.clip(prob, 0, 1).astype(np.float32), centres


def _label(rng, shape, centres, *, num_lesions):
    """Ellipsoids: some near the map's bumps (hits), some elsewhere (misses)."""
    grid = _grid(shape)
    label = np.zeros(shape, np.uint8)
    for k in range(num_lesions):
        near = k < len(centres) and rng.uniform() < 0.8
        c = centres[k] + rng.normal(0, 1.0, len(shape)) if near else rng.uniform(0, shape)
        radii = rng.uniform(1.0, 4.0, len(shape))
        label[np.sum(((grid - c) / radii) ** 2, axis=-1) <= 1] = 1
    return label


def _cases(seed, shape, num_cases):
    rng = np.random.default_rng(seed)
    maps, labels = [], []
    for i in range(num_cases):
        prob, centres = _prob_map(rng, shape)
        # Every third case has no lesion; the others one to three.
        num_lesions = 0 if i % 3 == 0 else rng.integers(1, 4)
        maps.append(prob)
        labels.append(_label(rng, shape, centres, num_lesions=num_lesions))
    return maps, labels


def _as_3d(x):
    return x[None] if x.ndim == 2 else x


def _rga(prob, **kwargs):
    return report_guided_annotation.extract_lesion_candidates(_as_3d(prob), **kwargs)


# --------------------------------------------------------------------------
# Lesion-candidate extraction vs report_guided_annotation
# --------------------------------------------------------------------------


def _assert_same_candidates(ours, theirs, *, threshold):
    det, confidences, index = theirs
    det, index = det.reshape(ours.detection_map.shape), index.reshape(ours.labels.shape)
    np.testing.assert_array_equal(ours.detection_map, det)
    # Version 1 of the dynamic extraction may list a phantom candidate of
    # confidence 0 (after all blobs were too small) and add its index everywhere.
    phantom = [i for i, c in confidences if c == 0]
    if phantom:
        index = index - phantom[0]
    real = [(i, c) for i, c in confidences if c != 0]
    np.testing.assert_allclose(ours.confidences, [c for _, c in real], rtol=0, atol=0)
    if threshold == "dynamic":
        np.testing.assert_array_equal(ours.labels, index)
    else:
        # The static extraction keeps the labels of the surviving blobs; ours are 1..k in the same order.
        relabel = np.zeros(index.max() + 1, int)
        relabel[[i for i, _ in real]] = np.arange(1, len(real) + 1)
        np.testing.assert_array_equal(ours.labels, relabel[index])


@pytest.mark.parametrize("threshold", ["dynamic", "dynamic-fast", 0.25])
@pytest.mark.parametrize("shape", [(40, 40), (10, 24, 24)])
def test_extraction_matches_report_guided_annotation(threshold, shape):
    rng = np.random.default_rng({"dynamic": 0, "dynamic-fast": 1, 0.25: 2}[threshold] + 10 * len(shape))
    num_candidates = 0
    for _ in range(12):
        prob, _ = _prob_map(rng, shape, num_bumps=rng.integers(0, 7))
        ours = extract_lesion_candidates(prob, threshold=threshold)
        _assert_same_candidates(ours, _rga(prob, threshold=threshold), threshold=threshold)
        num_candidates += ours.confidences.size
    assert num_candidates > 12  # the maps do make candidates


@pytest.mark.parametrize(
    "options",
    [
        dict(num_lesions_to_retain=2),
        dict(min_voxels=2, dynamic_threshold_factor=1.5),
        dict(remove_adjacent=False, num_lesions_to_retain=8),
        dict(min_voxels=30),
    ],
)
def test_extraction_options_match_report_guided_annotation(options):
    rga_names = dict(num_lesions_to_retain="num_lesions_to_extract", min_voxels="min_voxels_detection")
    rga_options = {rga_names.get(k, k): v for k, v in options.items()}
    if "remove_adjacent" in rga_options:
        rga_options["remove_adjacent_lesion_candidates"] = rga_options.pop("remove_adjacent")
    rng = np.random.default_rng(5)
    for shape in [(36, 36), (8, 20, 20)]:
        for _ in range(6):
            prob, _ = _prob_map(rng, shape, num_bumps=rng.integers(1, 7))
            ours = extract_lesion_candidates(prob, **options)
            theirs = _rga(prob, threshold="dynamic", **rga_options)
            _assert_same_candidates(ours, theirs, threshold="dynamic")


def test_extraction_by_hand():
    prob = np.zeros((5, 12, 12), np.float32)
    prob[1:4, 1:4, 1:4] = 0.5  # 27 voxels, a candidate of 0.5
    prob[2, 2, 2] = 0.9
    prob[1:4, 8:11, 8:11] = 0.3  # 27 voxels, a candidate of 0.3
    prob[0, 0, 11] = 1.0  # one voxel: dropped (<= 10 voxels)
    prob[4, 11, 0] = 0.005  # below the 0.01 stop
    got = extract_lesion_candidates(prob)
    # Round 1: p = 1.0 (the spike); at 0.4 the only blobs are the spike
    # (dropped) and the first cube (its max 0.9) -> candidate 0.9.
    # Round 2: p = 1.0 again; at 0.4 only the spike -> every blob dropped, stop.
    np.testing.assert_allclose(got.confidences, [0.9])
    got = extract_lesion_candidates(np.where(prob == 1.0, 0, prob))
    # Without the spike: 0.9 (cube 1, at 0.36), then 0.3 (cube 2, at 0.12); then p = 0.005 < 0.01.
    np.testing.assert_allclose(got.confidences, [0.9, 0.3])
    assert (got.detection_map[1:4, 1:4, 1:4] == np.float32(0.9)).all()
    assert (got.labels[1:4, 8:11, 8:11] == 2).all()
    assert got.detection_map.sum() == pytest.approx(27 * 0.9 + 27 * 0.3, rel=1e-6)
    # 2D: the same rules with 8-connectivity; a diagonal line of 12 voxels is one blob.
    plane = np.zeros((12, 12), np.float32)
    plane[np.arange(12), np.arange(12)] = 0.6
    got = extract_lesion_candidates(plane)
    np.testing.assert_allclose(got.confidences, [0.6])
    assert (got.labels == 1).sum() == 12


# --------------------------------------------------------------------------
# picai_eval's own crafted cases (tests/test-maps, recreated from overview.md
# and tests/test_case_evaluation.py, same IoUs and confidences)
# --------------------------------------------------------------------------


def _picai_crafted_cases():
    """The ten crafted cases of picai_eval's test suite, in (4, 3, 32) volumes along x."""
    shape = (4, 3, 32)

    def volume(*pieces):
        v = np.zeros(shape, np.float32)
        for value, z, x0, x1 in pieces:
            v[z, 1, x0:x1] = value
        return v

    cases = [
        (volume(), volume()),  # 0: nothing
        (volume(), volume((1, 0, 0, 6))),  # 1: a lesion, no candidate
        (volume((1.0, 0, 2, 8)), volume()),  # 2: a candidate, no lesion
        (volume((1.0, 0, 10, 14)), volume((1, 0, 0, 6))),  # 3: IoU 0
        (volume((1.0, 0, 2, 6)), volume((1, 0, 0, 4))),  # 4: IoU 2/6
        (  # 5: IoU 9/41 (confidence 1) and 3/47 (confidence 2)
            volume((1.0, 0, 0, 9), (1.0, 1, 0, 7), (1.0, 2, 0, 7), (1.0, 3, 0, 7),
                   (2.0, 0, 15, 18), (2.0, 1, 14, 23), (2.0, 2, 14, 23), (2.0, 3, 14, 23)),
            volume((1, 0, 0, 20)),
        ),
        (  # 6: IoU 8/24 (confidence 1) and 6/21 (confidence 2): one lesion, one hit
            volume((1.0, 0, 0, 8), (1.0, 1, 0, 4), (2.0, 0, 10, 16), (2.0, 1, 10, 11)),
            volume((1, 0, 0, 20)),
        ),
        (  # 7: one candidate, IoU 3/9 with either of two lesions
            volume((1.0, 0, 1, 8), (1.0, 1, 4, 5)),
            volume((1, 0, 0, 4), (1, 0, 5, 9)),
        ),
        (  # 8: one candidate, IoU 5/11 with one lesion and 1/11 with the other
            volume((1.0, 0, 4, 11)),
            volume((1, 0, 0, 9), (1, 0, 10, 15)),
        ),
        (volume((1.0, 0, 4, 25)), volume((1, 0, 0, 5))),  # 9: IoU 1/25 < 0.1
    ]
    expected = [
        [],
        [(1, 0.0, 0.0)],
        [(0, 1.0, 0.0)],
        [(1, 0.0, 0.0), (0, 1.0, 0.0)],
        [(1, 1.0, 1 / 3)],
        [(1, 1.0, 9 / 41), (0, 2.0, 0.0)],
        [(1, 1.0, 1 / 3)],
        [(1, 1.0, 1 / 3), (1, 0.0, 0.0)],
        [(1, 1.0, 5 / 11), (1, 0.0, 0.0)],
        [(1, 0.0, 0.0), (0, 1.0, 0.0)],
    ]
    return cases, expected


def _sorted(records):
    return sorted(records)


def test_picai_crafted_cases_records():
    cases, expected = _picai_crafted_cases()
    for (det, label), want in zip(cases, expected):
        ours = evaluate_case(det, label).records()
        theirs, _, _, _ = picai_evaluate_case(det, label)
        # Their expected lists (to IoU epsilon) and their scorer, entry for entry.
        np.testing.assert_allclose(np.reshape(ours, (-1, 3)), np.reshape(want, (-1, 3)), atol=1e-7)
        np.testing.assert_allclose(np.reshape(ours, (-1, 3)), np.reshape(theirs, (-1, 3)), **TOL)


def test_picai_crafted_cases_metrics():
    cases, _ = _picai_crafted_cases()
    ours = evaluate_detections([d for d, _ in cases], [y for _, y in cases])
    # picai_eval's tests/output-expected/metrics-full-expected.json (picai_eval 1.4).
    assert ours.ap == pytest.approx(5 / 9 * 1 / 2)
    assert ours.auroc == pytest.approx(0.75)
    assert ours.score == pytest.approx((0.75 + 5 / 18) / 2)
    assert ours.num_lesions == 10
    np.testing.assert_allclose(ours.froc.thresholds, [2.0, 1.0, 0.0])
    np.testing.assert_allclose(ours.froc.sensitivity, [0.0, 0.5, 0.5])
    np.testing.assert_allclose(ours.froc.fp_per_case, [0.1, 0.4, np.inf])
    np.testing.assert_allclose(ours.precision, [0.0, 5 / 9, 0.0, 1.0])
    np.testing.assert_allclose(ours.recall, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(ours.case_scores, [0, 0, 1, 1, 1, 2, 2, 1, 1, 1])
    theirs = picai_eval.evaluate([d for d, _ in cases], [y for _, y in cases], num_parallel_calls=1)
    _assert_same_metrics(ours, theirs)
    # DSC as the overlap (picai_eval's test_evaluation_DSC); in these volumes case 5's
    # second candidate now hits too (Dice 6/50), so it is no false positive.
    ours_dsc = evaluate_detections([d for d, _ in cases], [y for _, y in cases], overlap="dice")
    theirs_dsc = picai_eval.evaluate(
        [d for d, _ in cases], [y for _, y in cases], overlap_func="DSC", num_parallel_calls=1
    )
    _assert_same_metrics(ours_dsc, theirs_dsc)
    assert ours_dsc.ap == pytest.approx(5 / 8 * 1 / 2)


def _case_from_records(records):
    """A CaseEvaluation from a picai lesion_results list (case score: the largest confidence, as Metrics)."""
    a = np.reshape(np.asarray(records, np.float64), (-1, 3))
    return CaseEvaluation(a[:, 0] == 1, a[:, 1], a[:, 2], float(a[:, 1].max()) if a.size else 0.0, bool(a[:, 0].any()))


@pytest.mark.parametrize(
    "lesion_results",
    [
        # picai_eval's tests/test_calculate_counts.py and tests/test_lesion_tpr_at_fpr.py.
        {0: [(0, 0, 0.0)], 1: [(0, 0, 0.0)], 2: [(1, 1, 0.0)], 3: [(1, 0, 0.0), (1, 0, 0.0)], 4: [(0, 0, 0.0)],
         5: [(1, 0, 0.0), (1, 0, 0.0)]},
        {0: [(0, 0, 0.0)], 1: [(0, 0, 0.0)], 2: [(1, 0, 0.0)], 3: [(1, 0, 0.0), (1, 0, 0.0)], 4: [(0, 0, 0.0)],
         5: [(1, 0, 0.0), (1, 0, 0.0)]},
        {0: [(0, 1, 1.0)], 1: [(0, 2, 1.0)], 2: [(1, 3, 1.0)], 3: [(1, 1, 1.0), (1, 1, 1.0)], 4: [(0, 3, 1.0)],
         5: [(1, 2.5, 1.0), (1, 1.5, 1.0)]},
    ],
)
def test_metrics_from_picai_test_records(lesion_results):
    ours = detection_metrics([_case_from_records(r) for r in lesion_results.values()])
    theirs = picai_eval.Metrics(lesion_results=lesion_results)
    _assert_same_metrics(ours, theirs, auroc=False)
    for fp in [0.1, 0.3, 0.5, 10.0]:
        assert ours.froc.sensitivity_at(fp) == pytest.approx(theirs.lesion_TPR_at_FPR(fp), abs=1e-6)


# --------------------------------------------------------------------------
# Seeded random maps: the whole pipeline vs picai_eval.evaluate
# --------------------------------------------------------------------------


def _assert_same_metrics(ours, theirs, *, auroc=True):
    if auroc:
        np.testing.assert_allclose(ours.auroc, theirs.auroc, **TOL)
        np.testing.assert_allclose(ours.score, theirs.score, **TOL)
        np.testing.assert_allclose(ours.case_scores, [theirs.case_pred[k] for k in theirs.subject_list], **TOL)
        np.testing.assert_array_equal(ours.case_targets, [theirs.case_target[k] for k in theirs.subject_list])
    np.testing.assert_allclose(ours.ap, theirs.AP, **TOL)
    assert ours.num_lesions == theirs.num_lesions
    np.testing.assert_allclose(ours.precision, theirs.precision, **TOL)
    np.testing.assert_allclose(ours.recall, theirs.recall, **TOL)
    np.testing.assert_allclose(ours.froc.sensitivity, theirs.lesion_TPR, **TOL)
    np.testing.assert_allclose(ours.froc.fp_per_case, theirs.lesion_FPR, **TOL)
    np.testing.assert_allclose(ours.froc.thresholds, theirs.thresholds, **TOL)


@pytest.mark.parametrize("threshold", ["dynamic", "dynamic-fast"])
@pytest.mark.parametrize("shape", [(40, 40), (10, 24, 24)])
def test_pipeline_matches_picai_eval_on_random_maps(threshold, shape):
    maps, labels = _cases(len(shape) * 10 + len(threshold), shape, num_cases=12)
    ours = evaluate_detections(
        maps, labels, extract=functools.partial(extract_lesion_candidates, threshold=threshold)
    )
    theirs = picai_eval.evaluate(
        [_as_3d(m) for m in maps],
        [_as_3d(y) for y in labels],
        y_det_postprocess_func=lambda p: report_guided_annotation.extract_lesion_candidates(p, threshold=threshold)[0],
        num_parallel_calls=1,
    )
    for i, case in enumerate(ours.cases):
        np.testing.assert_allclose(
            np.reshape(_sorted(case.records()), (-1, 3)), np.reshape(_sorted(theirs.lesion_results[i]), (-1, 3)), **TOL
        )
    _assert_same_metrics(ours, theirs)
    # The data are not degenerate: hits, misses and false positives, positive and negative cases.
    is_lesion = np.concatenate([c.is_lesion for c in ours.cases])
    confidence = np.concatenate([c.confidence for c in ours.cases])
    assert (is_lesion & (confidence > 0)).any() and (is_lesion & (confidence == 0)).any() and (~is_lesion).any()
    assert 0 < ours.case_targets.sum() < len(maps)


def test_case_matching_matches_picai_eval_on_random_detection_maps():
    """Boxes of random confidences, some touching (one blob), against random lesions: hungarian pairing."""
    rng = np.random.default_rng(11)
    shape = (8, 20, 20)
    num_checked = 0
    for _ in range(25):
        det = np.zeros(shape, np.float32)
        for _ in range(rng.integers(0, 6)):
            lo = rng.integers(0, np.array(shape) - 2)
            hi = lo + rng.integers(1, 6, 3)
            det[tuple(slice(a, b) for a, b in zip(lo, hi))] = np.round(rng.uniform(0.05, 1.0), 1)
        label = np.zeros(shape, np.uint8)
        for _ in range(rng.integers(0, 4)):
            lo = rng.integers(0, np.array(shape) - 2)
            label[tuple(slice(a, a + d) for a, d in zip(lo, rng.integers(1, 6, 3)))] = 1
        try:
            theirs, score, _, _ = picai_evaluate_case(det, label)
        except ValueError:
            # Touching boxes of tied confidences can leave fewer blobs than values; both refuse.
            with pytest.raises(ValueError, match="probability map"):
                evaluate_case(det, label)
            continue
        ours = evaluate_case(det, label)
        np.testing.assert_allclose(
            np.reshape(_sorted(ours.records()), (-1, 3)), np.reshape(_sorted(theirs), (-1, 3)), **TOL
        )
        assert ours.case_score == pytest.approx(float(score))
        num_checked += 1
    assert num_checked >= 15


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # every case is positive
def test_froc_threshold_subsampling_matches_picai_eval():
    """Above 10,000 distinct confidences picai_eval keeps a subset of thresholds; so do we."""
    rng = np.random.default_rng(3)
    confidence = rng.permutation(np.linspace(0.01, 0.99, 12_000))
    is_lesion = rng.uniform(size=confidence.size) < 0.2
    is_lesion[:40] = True
    confidence[:20] = 0.0  # 20 missed lesions
    chunks = np.array_split(np.arange(confidence.size), 300)
    lesion_results = {i: [(int(is_lesion[j]), float(confidence[j]), 0.0) for j in c] for i, c in enumerate(chunks)}
    ours = detection_metrics([_case_from_records(r) for r in lesion_results.values()])
    theirs = picai_eval.Metrics(lesion_results=lesion_results)
    _assert_same_metrics(ours, theirs)
    assert ours.froc.thresholds.size < 11_000


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # one-class replicates
def test_bootstrap_matches_picai_eval_on_the_same_resamples():
    maps, labels = _cases(21, (10, 24, 24), num_cases=15)
    ours = evaluate_detections(maps, labels, extract=extract_lesion_candidates)
    theirs = picai_eval.evaluate(
        maps,
        labels,
        y_det_postprocess_func=lambda p: report_guided_annotation.extract_lesion_candidates(p, threshold="dynamic")[0],
        num_parallel_calls=1,
    )
    key, num_resamples = jax.random.key(4), 200
    intervals = bootstrap_detection(key, ours.cases, num_resamples=num_resamples, chunk_size=64)
    # picai_eval's bootstrap_score_ci loop, on the resamples the docstring names.
    draws = np.asarray(jax.random.randint(key, (num_resamples, len(maps)), 0, len(maps)))
    aurocs, aps = [], []
    for idx in draws:
        subjects = [theirs.subject_list[i] for i in idx]
        aurocs.append(theirs.calc_auroc(subject_list=subjects))
        aps.append(theirs.calc_AP(subject_list=subjects))
    aurocs, aps = np.array(aurocs), np.array(aps)
    # A few replicates draw no negative case: picai_eval's AUROC is NaN there (and so its
    # interval); ours leaves them out, as documented.
    assert 0 < np.isnan(aurocs).sum() < 10 and not np.isnan(aps).any()
    for got, values, estimate in [
        (intervals.auroc, aurocs, theirs.auroc),
        (intervals.ap, aps, theirs.AP),
        (intervals.score, (aurocs + aps) / 2, theirs.score),
    ]:
        values = values[~np.isnan(values)]
        np.testing.assert_allclose([got.low, got.high], np.percentile(values, [2.5, 97.5]), **TOL)
        np.testing.assert_allclose(got.estimate, estimate, **TOL)
    assert intervals.score.low < intervals.score.estimate < intervals.score.high


# --------------------------------------------------------------------------
# By hand
# --------------------------------------------------------------------------


def test_two_cases_by_hand():
    # Case A: lesion hit by a candidate of 0.8 (IoU 1), a false positive of 0.6.
    # Case B: no lesion, a false positive of 0.7.
    a_map = np.zeros((2, 20, 20), np.float32)
    a_map[:, 2:6, 2:6] = 0.8
    a_map[:, 12:16, 12:16] = 0.6
    a_label = np.zeros_like(a_map, np.uint8)
    a_label[:, 2:6, 2:6] = 1
    b_map = np.zeros_like(a_map)
    b_map[:, 8:12, 2:6] = 0.7
    got = evaluate_detections([a_map, b_map], [a_label, np.zeros_like(a_label)])
    assert got.cases[0].records() == [(1, pytest.approx(0.8), pytest.approx(1.0)), (0, pytest.approx(0.6), 0.0)]
    assert got.cases[1].records() == [(0, pytest.approx(0.7), 0.0)]
    # Ranked: 0.8 (TP), 0.7 (FP), 0.6 (FP); one lesion: AP = 1 * 1 (recall jumps at 0.8).
    assert got.ap == pytest.approx(1.0)
    # Case scores 0.8 (positive) > 0.7 (negative): AUROC 1.
    assert got.auroc == pytest.approx(1.0)
    assert got.score == pytest.approx(1.0)
    # FROC: 0.8 -> (0 FP, 1), 0.7 -> (0.5, 1), 0.6 -> last point: (inf, 1).
    np.testing.assert_allclose(got.froc.fp_per_case, [0.0, 0.5, np.inf])
    np.testing.assert_allclose(got.froc.sensitivity, [1.0, 1.0, 1.0])
    # Now the lesion is missed: the hit's confidence drops below both false positives.
    a_map[:, 2:6, 2:6] = 0.5
    got = evaluate_detections([a_map, b_map], [a_label, np.zeros_like(a_label)])
    # Ranked 0.7 (FP), 0.6 (FP), 0.5 (TP): AP = 1 * 1/3.
    assert got.ap == pytest.approx(1 / 3)
    assert got.auroc == pytest.approx(0.0)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_bad_input_raises_naming_the_problem():
    prob = np.full((4, 8, 8), 0.5, np.float32)
    label = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="NaN"):
        extract_lesion_candidates(np.where(prob > 0, np.nan, prob))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extract_lesion_candidates(prob * 3)
    with pytest.raises(ValueError, match="2D or 3D"):
        extract_lesion_candidates(prob[None])
    with pytest.raises(ValueError, match="threshold"):
        extract_lesion_candidates(prob, threshold="fast")
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(prob, label[:, :4])
    with pytest.raises(ValueError, match="binary"):
        evaluate_case(prob, label + 2)
    with pytest.raises(ValueError, match="non-negative"):
        evaluate_case(-prob, label)
    with pytest.raises(ValueError, match="probability map"):
        evaluate_case(np.linspace(0.1, 0.9, prob.size, dtype=np.float32).reshape(prob.shape), label)
    with pytest.raises(ValueError, match="case 1: probability map contains NaN"):
        evaluate_detections([prob, np.full_like(prob, np.nan)], [label, label], extract=extract_lesion_candidates)
    with pytest.raises(ValueError, match="case 0: label has shape"):
        evaluate_detections([prob], [label[0]], extract=extract_lesion_candidates)
    with pytest.raises(ValueError, match="2 maps but 1 labels"):
        evaluate_detections([prob, prob], [label])
