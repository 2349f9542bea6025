"""The figure writers produce real PNG files of the expected pixel size."""

from matplotlib.image import imread

from jaxmed.plots import plot_image_grid, plot_roc_curves, plot_score_histograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_side=100):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert min(image.shape[:2]) >= min_side
    # Not a blank canvas: something was drawn.
    assert image[..., :3].std() > 0.01


def test_figures(tmp_path, rng):
    labels = rng.integers(0, 2, 50)
    scores = rng.normal(size=50) + labels
    _check_png(plot_roc_curves(tmp_path / "roc.png", {"a": (scores, labels), "b": (-scores, labels)}))
    _check_png(
        plot_score_histograms(
            tmp_path / "hist.png", {"normal": rng.normal(size=30), "noise": rng.normal(2, 1, 30)}, threshold=0.5
        )
    )
    images = [[rng.random((8, 8)), rng.random((8, 8, 1))], [rng.random((8, 8)), rng.random((8, 8))]]
    _check_png(plot_image_grid(tmp_path / "sub" / "grid.png", images, row_labels=["x", "y"], column_labels=["in", "out"]))
