"""Scan-quality anomaly detection on real brain MRI, step by step, with a severity sweep.

The study of ``jaxmed demo`` written out as its steps (each a public function
of :mod:`jaxmed.tasks.scan_quality`), so that any step can be swapped: train a VAE on axial
slices of the MNI152 template, corrupt held-out slices with simulated k-space
artefacts, score them by log p(x) (importance sampling) and report AUROC per
artefact beside a PCA reconstruction-error baseline. Then, with the same
trained model, the AUROCs at several artefact severities.

Command::

    python experiments/brain_mri_anomaly.py [OUT_DIR]     # default brain-mri-anomaly/

Runtime: about 2 minutes on 2 idle CPU cores (95 s of it training). Expected
(seed 0, the config below, measured 2026-11-23; AUROC of 18 normal vs 18
corrupted test slices per artefact; the test sets are drawn with other keys
than the demo's, so severity 0.5 differs a little from its table)::

    severity      0.25             0.5              0.75
                  PCA    VAE IS    PCA    VAE IS    PCA    VAE IS
    noise         0.599  1.000     0.793  1.000     0.997  1.000
    ghosting      0.429  1.000     0.540  1.000     0.750  1.000
    motion        0.383  1.000     0.469  1.000     0.552  1.000
    blur          0.401  0.367     0.262  0.429     0.191  0.642
    bias_field    0.590  0.636     0.738  0.864     0.858  0.864
    spike         0.571  1.000     0.756  1.000     0.985  1.000

The VAE's score is perfect on noise, ghosting, motion and spike at every
severity and beats PCA on bias field at every severity. Blur is below chance
at 0.25 and 0.5 (a slightly smoothed slice is at least as likely as a normal
one; the two-sided score reaches 0.54 / 0.44) and only 0.64 at 0.75, while
the PCA baseline's blur AUROC FALLS with severity (a blurred slice lies
closer to the principal subspace). At severity 0.25 the VAE is below PCA on
blur (0.367 vs 0.401).
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np

from jaxmed.tasks.scan_quality import (
    anomaly_scores,
    auroc_table,
    calibrate_on_validation,
    demo_config,
    format_auroc_table,
    load_demo_data,
    make_test_set,
    pca_scores,
    score_specs,
    score_test_set,
    train_vae,
    two_sided_anomaly_scores,
)

# ---------------------------------------------------------------------------
# Configuration: the demo's defaults; change any field of jaxmed.tasks.scan_quality.DemoConfig.
CONFIG = demo_config()
SEVERITIES = (0.25, 0.5, 0.75)
OUT_DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "brain-mri-anomaly")
# ---------------------------------------------------------------------------


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=False)
    root = jax.random.key(CONFIG.seed)
    data = load_demo_data(CONFIG)
    trained = train_vae(CONFIG, OUT_DIR / "checkpoint")
    spec = score_specs(CONFIG)["importance"]
    # Validation keys offset from the test slices' (as in run_demo).
    val_scores = score_test_set(trained, data.val, specs={"importance": spec},
                                indices=10**6 + np.arange(len(data.val)))["importance"]
    calibration = calibrate_on_validation(trained, {"log_px": val_scores}, spec=spec, fpr=CONFIG.fpr)["log_px"]
    pca_label = f"PCA({CONFIG.pca_components})"

    results = {}
    for i, severity in enumerate(SEVERITIES):
        test = make_test_set(jax.random.fold_in(root, 1000 + i), data.test, artefacts=CONFIG.artefacts,
                             severity=severity, copies=CONFIG.copies)
        log_px = score_test_set(trained, test.images, specs={"importance": spec})["importance"]
        anomaly = {
            pca_label: pca_scores(data.train, test.images, num_components=CONFIG.pca_components),
            "VAE IS": anomaly_scores(log_px),
            "VAE IS two-sided": two_sided_anomaly_scores(log_px, val_scores),
        }
        table = auroc_table(jax.random.fold_in(root, 2000 + i), anomaly, test, num_resamples=CONFIG.num_bootstrap)
        flagged = {g: float(np.mean(log_px[test.groups == g] < calibration.threshold))
                   for g in dict.fromkeys(test.groups)}
        results[str(severity)] = {"auroc": table, "flagged_fraction": flagged}
        print(f"\nseverity {severity}\n{format_auroc_table(table)}")

    summary = {"config": CONFIG.to_dict(), "threshold": calibration.threshold, "results": results}
    (OUT_DIR / "severity_sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {OUT_DIR / 'severity_sweep.json'}")


if __name__ == "__main__":
    main()
