"""The chest task's segments (jaxmed.tasks.chest.segments): every constraint of the method, checked on random phantoms.

Constraints (shared/seeds/003, claims 1, 4-10) checked with numpy on the
windows the code returns, against the phantoms' true masks: resolution
reduced by at most 20%; each lung in at least two segments whose union
covers it; overlapping segments; no segment holding pixels of both lungs
(none visible after blanking, and the raw window within a small tolerance);
pixels outside a segment's region replaced by the fill value (compared with
a numpy blanking using scipy's dilation); every finding whole in at least
one drawn training segment; segment targets equal to numpy counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxmed.data.phantoms import ChestPhantomConfig, make_dataset
from jaxmed.tasks.chest import (
    SegmentConfig,
    extract_segments,
    region_labels,
    segment_layout,
    segment_targets,
    training_windows,
)

GRID = 256  # 1.56 mm pixels: a window of 85 pixels is 133 mm, as 340 pixels at 1024 (the default)
SCALED = SegmentConfig(segment_size=68, scale=0.8, margin=2, jitter=8)
EXACT = SegmentConfig(segment_size=85, scale=1.0, margin=2, jitter=8)
N = 12
TOLERANCE = 0.01  # largest share of a lung window the other lung may take


@pytest.fixture(scope="module")
def phantoms():
    config = ChestPhantomConfig(shape=(GRID, GRID), finding_probability=1.0, max_findings=3)
    return make_dataset(jax.random.key(3), N, kind="chest", config=config, chunk_size=N)


@pytest.fixture(scope="module")
def labels(phantoms):
    """The phantoms' label maps, ``[N, H, W]`` (one compiled call, shared by the tests)."""
    labels = jax.jit(jax.vmap(region_labels))(phantoms["right_lung"], phantoms["left_lung"], phantoms["heart"])
    return np.asarray(labels)


# Jitted once per module: eager calls compile every primitive separately (seconds on CPU).
_exact_windows = jax.jit(lambda key, lab, m, v, lung: training_windows(key, lab, m, v, lung, EXACT))
_scaled_windows = jax.jit(jax.vmap(lambda key, lab, m, v, lung: training_windows(key, lab, m, v, lung, SCALED)))


@pytest.fixture(scope="module")
def scaled_training_layouts(phantoms, labels):
    """Training windows (SCALED) of every phantom, drawn with ``split(key(4), N)``."""
    keys = jax.random.split(jax.random.key(4), N)
    return jax.device_get(_scaled_windows(keys, labels, phantoms["finding_masks"], phantoms["finding_valid"],
                                          phantoms["finding_lung"]))


@pytest.fixture(scope="module")
def layouts(phantoms, labels):
    out = {}
    for name, config in (("scaled", SCALED), ("exact", EXACT)):
        layout = jax.jit(jax.vmap(lambda lab, c=config: segment_layout(lab, c)))(labels)
        segments = jax.jit(jax.vmap(lambda x, lab, lay, c=config: extract_segments(x, lab, lay, c)))(
            phantoms["image"], labels, layout)
        out[name] = jax.device_get((layout, segments))
    return labels, out


def _rect(shape, corner, win):
    mask = np.zeros(shape, bool)
    mask[corner[0]:corner[0] + win, corner[1]:corner[1] + win] = True
    return mask


def test_resolution_reduced_by_at_most_20_percent(layouts):
    _, out = layouts
    assert SCALED.segment_size / SCALED.window >= 0.8 and SCALED.window == 85
    assert out["scaled"][1].shape == (N, SCALED.num_segments, 68, 68, 1)
    assert out["exact"][1].shape == (N, EXACT.num_segments, 85, 85, 1)
    with pytest.raises(ValueError, match="at most 20%"):
        SegmentConfig(segment_size=64, scale=0.75)


def test_each_lung_in_at_least_two_overlapping_segments_that_cover_it(layouts):
    labels, out = layouts
    layout, _ = out["scaled"]
    win = SCALED.window
    for i in range(N):
        for kind, lung in ((0, 1), (1, 2)):
            rows = np.flatnonzero((layout.kinds[i] == kind) & layout.valid[i])
            assert len(rows) >= 2
            covered = np.zeros(labels[i].shape, bool)
            for k in rows:
                covered |= _rect(labels[i].shape, layout.corners[i, k], win)
            assert np.all(covered[labels[i] == lung]), f"phantom {i}: lung {lung} not covered"
            # Consecutive windows of a lung overlap (claim 5).
            for a, b in zip(rows[:-1], rows[1:]):
                overlap = _rect(labels[i].shape, layout.corners[i, a], win) & _rect(labels[i].shape,
                                                                                     layout.corners[i, b], win)
                assert overlap.sum() > 0


def test_no_segment_holds_both_lungs(layouts):
    """No extracted segment shows pixels of two lungs; a lung window takes at most 1% of the other lung."""
    labels, out = layouts
    layout, segments = out["exact"]
    win = EXACT.window
    own_lung = {0: 1, 1: 2}
    for i in range(N):
        for k in range(EXACT.num_segments):
            kind = int(layout.kinds[i, k])
            r, c = layout.corners[i, k]
            window = labels[i, r:r + win, c:c + win]
            # Lung pixels are never black in a phantom, so a pixel differing from the fill value is shown.
            shown = segments[i, k, ..., 0] != EXACT.fill_value
            visible_lungs = {v for v in (1, 2) if np.any(shown & (window == v))}
            assert len(visible_lungs) <= 1, (i, k, visible_lungs)
            if kind in own_lung:
                assert visible_lungs == {own_lung[kind]}
                assert np.mean(window == 3 - own_lung[kind]) <= TOLERANCE, (i, k)


def test_pixels_outside_the_region_are_replaced(layouts, phantoms):
    labels, out = layouts
    layout, segments = out["exact"]
    win, fill = EXACT.window, EXACT.fill_value
    square = np.ones((2 * EXACT.margin + 1,) * 2, bool)
    shows = {0: (1,), 1: (2,), 2: (3,), 3: (1, 3), 4: (2, 3)}
    for i in range(N):
        image = phantoms["image"][i]
        dilated = {v: ndimage.binary_dilation(labels[i] == v, structure=square) for v in (1, 2, 3)}
        for k in range(EXACT.num_segments):
            r, c = layout.corners[i, k]
            region = np.zeros(labels[i].shape, bool)
            for v in shows[int(layout.kinds[i, k])]:
                region |= dilated[v]
            for lung in (1, 2):  # never into a lung the segment does not show
                if lung not in shows[int(layout.kinds[i, k])]:
                    region &= labels[i] != lung
            expected = np.where(region[r:r + win, c:c + win, None], image[r:r + win, c:c + win], fill)
            np.testing.assert_array_equal(segments[i, k], expected)
            # And no pixel of the other lung is visible in a lung segment.
            if layout.kinds[i, k] in (0, 1):
                other = 2 if layout.kinds[i, k] == 0 else 1
                assert not np.any(region[r:r + win, c:c + win] & (labels[i, r:r + win, c:c + win] == other))


def test_scaled_segments_blank_far_from_the_region(layouts):
    """At scale 0.8 the window is resampled: pixels a few window pixels outside the region stay the fill value."""
    labels, out = layouts
    layout, segments = out["scaled"]
    win, size = SCALED.window, SCALED.segment_size
    for i in range(N):
        for k in np.flatnonzero(layout.kinds[i] == 0):
            r, c = layout.corners[i, k]
            far = ~ndimage.binary_dilation(labels[i] == 1, iterations=SCALED.margin + 4)[r:r + win, c:c + win]
            # Segment pixel (a, b) reads window pixels around ((a + 0.5) * win / size - 0.5, ...): sample at centres.
            centres = ((np.arange(size) + 0.5) * win / size).astype(int)
            sampled = far[np.ix_(centres, centres)]
            assert np.all(segments[i, k, ..., 0][sampled] == SCALED.fill_value)


def test_every_finding_lies_whole_in_a_drawn_training_segment(phantoms, labels, scaled_training_layouts):
    layout = scaled_training_layouts
    win = SCALED.window
    square = np.ones((2 * SCALED.margin + 1,) * 2, bool)
    findings = whole = fits = 0
    for i in range(N):
        lungs = {0: ndimage.binary_dilation(labels[i] == 1, structure=square) & (labels[i] != 2),
                 1: ndimage.binary_dilation(labels[i] == 2, structure=square) & (labels[i] != 1)}
        for f in np.flatnonzero(phantoms["finding_valid"][i]):
            mask = phantoms["finding_masks"][i, f]
            rows, cols = np.nonzero(mask)
            findings += 1
            fits += int(np.ptp(rows) < win and np.ptp(cols) < win)
            for k in range(len(layout.kinds[i])):
                kind = int(layout.kinds[i, k])
                if kind not in lungs:
                    continue
                inside = _rect(mask.shape, layout.corners[i, k], win) & lungs[kind]
                if np.all(inside[mask]):
                    whole += 1
                    break
    assert findings >= N  # one to three per phantom
    assert whole == fits == findings  # at 133 mm windows every phantom finding here fits, and is whole in one


def test_segment_targets_match_numpy_counts(phantoms, labels, scaled_training_layouts):
    labels = labels[0]
    masks, valid = phantoms["finding_masks"][0], phantoms["finding_valid"][0]
    layout = jax.tree.map(lambda a: a[0], scaled_training_layouts)  # phantom 0's training windows
    targets = jax.device_get(jax.jit(lambda lab, m, v, t, lay: segment_targets(lab, m, v, t, lay, SCALED))(
        labels, masks, valid, phantoms["finding_type"][0], layout))
    square = np.ones((2 * SCALED.margin + 1,) * 2, bool)
    shows = {0: (1,), 1: (2,), 2: (3,), 3: (1, 3), 4: (2, 3)}
    for k in range(len(layout.kinds)):
        region = np.zeros(labels.shape, bool)
        for v in shows[int(layout.kinds[k])]:
            region |= ndimage.binary_dilation(labels == v, structure=square)
        for lung in (1, 2):
            if lung not in shows[int(layout.kinds[k])]:
                region &= labels != lung
        seen = region & _rect(labels.shape, layout.corners[k], SCALED.window)
        for f in range(masks.shape[0]):
            expected = (masks[f] & seen).sum() / masks[f].sum() if valid[f] else 0.0
            assert targets["fraction"][k, f] == pytest.approx(expected, abs=1e-6)
        best = max((targets["fraction"][k, f] for f in range(masks.shape[0])), default=0.0)
        assert targets["label"][k] == float(best >= SCALED.label_fraction)


def test_extraction_has_no_python_loop_over_windows(phantoms, labels):
    """The traced program is the same size for 9 windows and for 30: the windows are a vmapped axis."""
    image, labels = jnp.asarray(phantoms["image"][0]), jnp.asarray(labels[0])

    def size(k):
        from jaxmed.tasks.chest import Layout

        layout = Layout(jnp.zeros((k, 2), jnp.int32), jnp.zeros((k,), jnp.int32), jnp.ones((k,), bool))
        jaxpr = jax.make_jaxpr(lambda x, lab, lay: extract_segments(x, lab, lay, SCALED))(image, labels, layout)
        return len(jaxpr.jaxpr.eqns)

    assert size(9) == size(30)


def test_layout_refuses_windows_larger_than_the_radiograph():
    with pytest.raises(ValueError, match="do not fit"):
        segment_layout(jnp.zeros((64, 64), jnp.uint8), SCALED)
    with pytest.raises(ValueError, match="at least two segments"):
        SegmentConfig(rows_per_lung=1, cols_per_lung=1)


def test_training_segments_and_their_labels_agree_with_numpy(phantoms, labels):
    """The train step's segments, labels and finding maps, radiograph by radiograph, against numpy crops.

    Segment ``b * K + k`` of the flattened batch must be window ``k`` of
    radiograph ``b``, and its label 1 exactly when at least
    ``label_fraction`` of some finding lies inside that window and its
    (dilated) region.
    """
    from jaxmed.tasks.chest import pack_findings
    from jaxmed.tasks.chest.classifier import draw_training_segments

    rows = [0, 1]
    masks = np.asarray(phantoms["finding_masks"])
    batch = {"image": np.asarray(phantoms["image"])[rows], "labels": labels[rows],
             "finding_bits": pack_findings(masks[rows]),
             **{k: np.asarray(phantoms[k])[rows] for k in ("finding_valid", "finding_lung", "finding_type")}}
    key = jax.random.key(6)
    drawn = jax.device_get(jax.jit(lambda k, b: draw_training_segments(k, b, EXACT))(key, batch))
    keys = jax.random.split(key, len(rows))
    win = EXACT.window
    square = np.ones((2 * EXACT.margin + 1,) * 2, bool)
    shows = {0: (1,), 1: (2,), 2: (3,), 3: (1, 3), 4: (2, 3)}
    num_k = EXACT.num_segments + masks.shape[1]
    positives = 0
    for b, i in enumerate(rows):
        layout = jax.device_get(_exact_windows(keys[b], labels[i], masks[i], phantoms["finding_valid"][i],
                                               phantoms["finding_lung"][i]))
        image = np.asarray(phantoms["image"][i], np.float32)[..., 0]
        for k in range(num_k):
            r, c = layout.corners[k]
            region = np.zeros(labels[i].shape, bool)
            for v in shows[int(layout.kinds[k])]:
                region |= ndimage.binary_dilation(labels[i] == v, structure=square)
            for lung in (1, 2):
                if lung not in shows[int(layout.kinds[k])]:
                    region &= labels[i] != lung
            crop = region[r:r + win, c:c + win]
            segment = drawn["segments"][b * num_k + k, ..., 0]
            np.testing.assert_allclose(segment, np.where(crop, image[r:r + win, c:c + win], EXACT.fill_value),
                                       atol=1e-6)
            union = np.zeros(labels[i].shape, bool)
            best = 0.0
            for f in np.flatnonzero(phantoms["finding_valid"][i]):
                union |= masks[i, f]
                best = max(best, (masks[i, f][r:r + win, c:c + win] & crop).sum() / masks[i, f].sum())
            np.testing.assert_array_equal(drawn["finding_map"][b * num_k + k], (union[r:r + win, c:c + win] & crop))
            assert drawn["label"][b * num_k + k] == float(best >= EXACT.label_fraction)
            positives += int(best >= EXACT.label_fraction)
    assert positives >= len(rows)  # every phantom here has a finding, and its own window shows it


def test_spare_training_windows_sit_anywhere_in_their_lung(phantoms, labels):
    """An unused finding slot's window is placed around a random lung pixel, not copied from the layout."""
    labels = labels[0]
    none = np.zeros_like(phantoms["finding_valid"][0])
    layout = jax.device_get(jax.jit(lambda lab: segment_layout(lab, EXACT))(labels))
    win, spare_corners = EXACT.window, []
    for s in range(20):
        drawn = jax.device_get(_exact_windows(jax.random.key(s), labels, phantoms["finding_masks"][0], none,
                                              phantoms["finding_lung"][0]))
        for k in range(EXACT.num_segments, len(drawn.kinds)):
            kind = int(drawn.kinds[k])
            assert kind in (0, 1)
            r, c = drawn.corners[k]
            assert np.any(labels[r:r + win, c:c + win] == kind + 1)  # the window holds some of its lung
            spare_corners.append((kind, r, c))
    # Farther from every layout window of the same lung than the training jitter allows, at least sometimes.
    far = [min(max(abs(r - lr), abs(c - lc)) for lr, lc, lk in zip(*layout.corners.T, layout.kinds) if lk == kind)
           > EXACT.jitter for kind, r, c in spare_corners]
    assert any(far) and {k for k, _, _ in spare_corners} == {0, 1}
