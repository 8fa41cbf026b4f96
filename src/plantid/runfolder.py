"""The run folder: the one place that names its files and decides which checkpoint a run uses.

`plantid train --out RUN` fills a run folder; evaluate, report, predict, export and serve read it.
Every module asks this one for a path instead of spelling file names itself, so the layout can be
read (and changed) in one place. Torch-free, so commands can check a folder before heavy imports.

    RUN/
      config.yaml            the resolved settings (recipe + overrides + what was planned)
      split.csv              the manifest the run trained on (path,label,split,sha256)
      scan.json              the scan of data.root, when the run split a folder itself
      labels.json            class names in the model's output order
      best.ckpt / last.ckpt  best weights by val accuracy / everything needed to resume
      metrics.csv, tb/       per-epoch metrics (CSV and TensorBoard)
      train_summary.json     best val, test accuracy, epochs, seconds, speed
      eval.json, eval_val.json, confusion_matrix*.png, errors*.png   `plantid evaluate`
      report.html            `plantid report`
      export/model.onnx, export/model.int8.onnx, export/preprocessing.json   `plantid export`
      submission/            `plantid export --format submission`
      trust.json, trust.safetensors   fitted after training: temperature, unknown-photo detector
      audit.csv, audit.html  `plantid audit`: photos most likely mislabelled
      corrections.jsonl      `plantid review`: keep / relabel / exclude decisions, append-only, timestamped
      applied.json           `plantid apply`: the moves made in the photo folder, in order (its undo log)
      mlflow.json            which MLflow run tracks this one (store URI, experiment and run id)

    beside the run folders (not in them), unless track.tracking_uri or $MLFLOW_TRACKING_URI says
    otherwise: mlruns/mlflow.db and mlruns/artifacts/, the MLflow store every run logs to
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from plantid.errors import PlantidError

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "split.csv"
SCAN_FILE = "scan.json"
LABELS_FILE = "labels.json"
SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.csv"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"
EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PREPROCESSING_FILE = "preprocessing.json"
SUBMISSION_DIR = "submission"
TRUST_JSON = "trust.json"  # plantid.trust: temperature, OOD detector, threshold
TRUST_TENSORS = "trust.safetensors"  # the detector's fitted tensors (class means, training features)
AUDIT_CSV = "audit.csv"
AUDIT_HTML = "audit.html"
CORRECTIONS_FILE = "corrections.jsonl"  # plantid.curate: review decisions, one JSON object a line
APPLY_LOG = "applied.json"  # plantid.curate: what `plantid apply` did to the photo folder, to undo it
MLFLOW_FILE = "mlflow.json"  # plantid.track: the MLflow run this run folder logs to
MLFLOW_DIR = "mlruns"  # the default MLflow store, beside the run folders

MANIFEST_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder's files (nothing is read or created by building one)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def scan(self) -> Path:
        return self.root / SCAN_FILE

    @property
    def labels(self) -> Path:
        return self.root / LABELS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def best_checkpoint(self) -> Path:
        return self.root / BEST_CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def eval(self) -> Path:
        return self.root / EVAL_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def export_dir(self) -> Path:
        return self.root / EXPORT_DIR

    @property
    def submission_dir(self) -> Path:
        return self.root / SUBMISSION_DIR

    @property
    def corrections(self) -> Path:
        return self.root / CORRECTIONS_FILE

    @property
    def apply_log(self) -> Path:
        return self.root / APPLY_LOG

    @property
    def audit_csv(self) -> Path:
        return self.root / AUDIT_CSV

    @property
    def mlflow(self) -> Path:
        return self.root / MLFLOW_FILE

    def tracked_files(self) -> list[Path]:
        """The small result files mirrored to the run's MLflow run as artifacts: settings, summary,
        labels, trust, metrics.csv, every evaluation's JSON and figures (the run's top-level PNGs)
        and the report. Not checkpoints, exports or the manifest, which would copy megabytes."""
        fixed = [self.config, self.summary, self.labels, self.metrics, self.root / TRUST_JSON, self.report]
        evals = sorted(self.root.glob(f"{Path(EVAL_FILE).stem}*.json")) + sorted(self.root.glob("*.png"))
        return [p for p in fixed + evals if p.is_file()]

    def has_checkpoint(self) -> bool:
        """True when training has written at least one checkpoint here."""
        return self.best_checkpoint.is_file() or self.last_checkpoint.is_file()

    def checkpoint(self) -> Path | None:
        """The checkpoint inference uses: best.ckpt (best val accuracy), else last.ckpt, else None."""
        for path in (self.best_checkpoint, self.last_checkpoint):
            if path.is_file():
                return path
        return None


def find_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to use for a run folder (or a .ckpt path given directly), or a one-line error
    that says how to get one: a missing folder, a folder that is not a run, an unfinished run."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".ckpt":
        return run_dir
    check_run_folder(run_dir)
    checkpoint = RunFolder(run_dir).checkpoint()
    assert checkpoint is not None  # check_run_folder refused a folder without one
    return checkpoint


def check_run_folder(run_dir: str | Path) -> None:
    """Fail fast, before any heavy import, on a path that is not a trained run folder."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".ckpt":
        return
    if not run_dir.is_dir():
        raise PlantidError(f"{run_dir}: no such run folder; train one with `plantid train --data DATA --out {run_dir}`")
    run = RunFolder(run_dir)
    if run.has_checkpoint():
        return
    if not run.config.is_file():
        raise PlantidError(f"{run_dir}: not a plantid run folder (no config.yaml, no checkpoint); "
                           "pass the --out folder of `plantid train`")
    raise PlantidError(f"{run_dir}: no best.ckpt or last.ckpt; training has not finished an epoch yet "
                       f"(continue it with `plantid train --resume {run_dir}`)")


def evaluation_files(split_name: str, folder: bool = False) -> dict[str, str]:
    """File names written for an evaluation: plain for the test split, suffixed otherwise.

    'test' -> eval.json, confusion_matrix.png, errors.png, reliability.png, ood_scores.png; 'val' ->
    eval_val.json, confusion_matrix_val.png, errors_val.png, ...; a folder 'new photos' ->
    eval_new_photos.json ... (a folder named like a split, e.g. 'test', gets '_folder' appended:
    eval_test_folder.json). The last two figures exist for runs with trust files.
    """
    if split_name == "test" and not folder:
        tag = ""
    else:
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", split_name).strip("._-") or "folder"
        tag = "_" + tag + ("_folder" if folder and tag in MANIFEST_SPLITS else "")
    return {"json": f"eval{tag}.json", "confusion": f"confusion_matrix{tag}.png", "errors": f"errors{tag}.png",
            "reliability": f"reliability{tag}.png", "ood": f"ood_scores{tag}.png"}
