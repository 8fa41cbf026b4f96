"""Evaluation and reporting: metrics on a run's test/val split or a labelled folder, plots, and the HTML report.

* `plantid.evaluate.evaluation.evaluate_run` (``plantid evaluate``) writes eval.json and PNGs;
* `plantid.evaluate.report.build_report` (``plantid report``) writes one self-contained report.html;
* `plantid.evaluate.metrics` and `plantid.evaluate.plots` are the pure building blocks.
"""
