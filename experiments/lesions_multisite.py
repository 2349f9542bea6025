"""The multi-site mpMRI lesion study: training orders, deployment by uncertainty, fusions, synthesis map.

Command (the figures below and in benchmarks/RESULTS.md, "Lesions: multi-site study")::

    python experiments/lesions_multisite.py --out runs/lesions-multisite --data-cache runs/lesions-data.npz

runs :func:`jaxmed.tasks.lesions.run_study` with the full settings
(``StudyConfig()``: 2D exams on a 48x48 grid at 1.25 mm; 240 exams of
sites A and B, a pool of 96 of C, 200 test exams of D, 64 validation exams of
A; three seeds; localiser 300 steps on A, 150 continued, 60 per deployment
run; deployment schedule k = 0, 8, 24; the full method deploys k = 24 by
BALD and trains the classifier 100 + 60 steps), then checks the site-D
scores of the full method against picai_eval (with report_guided_annotation's
dynamic extraction) when they are installed (the test extras). It writes
summary.json, results.md and the PNGs into --out.

Results (filled in from results.md of the run; load average and runtime at
the end):

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxmed.tasks.lesions import (
    StudyConfig,
    detection_summary,
    load_study_data,
    predict_lesions,
    run_study,
)
from jaxmed.train import Checkpointer


def _picai_check(out_dir: Path, data, config: StudyConfig) -> dict:
    """The full method's site-D scores by picai_eval itself (first seed), beside ours."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import picai_eval
            import report_guided_annotation
    except ImportError:
        return {"checked": False, "why": "picai_eval / report_guided_annotation not installed (pip install -e '.[test]')"}
    seed = config.seeds[0]
    run = out_dir / "runs" / f"seed{seed}" / "full"
    with Checkpointer(run / "phase2_joint", create=False) as c:
        params = c.restore_params()
    t = dataclasses.replace(config.train, seed=seed)
    test = data["test"]
    probs = predict_lesions(params, t.localiser, t.classifier, test["image"])["prob"]
    ours = detection_summary(probs, test["lesion_mask"])
    theirs = picai_eval.evaluate(
        [p[None] for p in probs], [(y > 0.5)[None].astype(np.uint8) for y in test["lesion_mask"]],
        y_det_postprocess_func=lambda p: report_guided_annotation.extract_lesion_candidates(p, threshold="dynamic")[0],
        num_parallel_calls=1)
    return {"checked": True, "ours": {k: ours[k] for k in ("score", "auroc", "ap")},
            "picai_eval": {"score": theirs.score, "auroc": theirs.auroc, "ap": theirs.AP},
            "max_abs_difference": max(abs(ours["score"] - theirs.score), abs(ours["auroc"] - theirs.auroc),
                                      abs(ours["ap"] - theirs.AP))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/lesions-multisite", help="output folder")
    p.add_argument("--data-cache", help="an .npz of the preprocessed exams (written if missing)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (finished runs are reused)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    config = StudyConfig()
    if args.seeds:
        config = dataclasses.replace(config, seeds=tuple(args.seeds))
    start = time.perf_counter()

    def log(line):
        print(f"[{time.perf_counter() - start:7.0f} s] {line}", file=sys.stderr, flush=True)

    data = load_study_data(config, progress=not args.no_progress, cache=args.data_cache, log=log)
    summary = run_study(config, args.out, force=args.force, progress=not args.no_progress, data=data, log=log)
    check = _picai_check(Path(args.out), data, config)
    summary["picai_eval_check"] = check
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    for title, table in summary["tables"].items():
        print(f"\n{title}:\n{table}")
    print(f"\npicai_eval check: {json.dumps(check)}")
    print(f"\n{time.perf_counter() - start:.0f} s in all; timings {summary['timings_s']}; load average "
          f"{summary['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
