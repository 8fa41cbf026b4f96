"""Typed records of a run folder's files: train_summary.json, eval*.json, trust.json,
export/preprocessing.json and metrics.csv.

Each JSON file is written and read through one pydantic model here, so a field renamed on one
side fails loudly on the other (an unknown key is refused, a missing one too) instead of reading
as "n/a". A record that cannot be read is one line naming the file and what to do
(`PlantidError`). To check more (finite numbers, ranges), add validators to the models: every
reader goes through them. Torch-free: the report, the runs table and serve's model card read run
folders without loading a model. `RunFolder` (plantid.runfolder) names the files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plantid.errors import PlantidError
from plantid.fileio import write_json_atomic
from plantid.runfolder import PREPROCESSING_FILE, TRUST_JSON, RunFolder, evaluation_files

log = logging.getLogger("plantid")


class RunRecord(BaseModel):
    """A JSON file of a run folder: `read` it (None when missing), `write` it atomically."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    remedy: ClassVar[str] = "write it again with the plantid command that made it"
    # a run folder may come from elsewhere: its files are read only up to a size no real one reaches
    max_bytes: ClassVar[int] = 64 * 1024 * 1024

    @classmethod
    def read(cls, path: str | os.PathLike) -> Any:
        """The record in `path`, or None when there is no such file; one line for a file that is
        too large (`max_bytes`), nested too deep, not valid JSON or not this record."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            if path.stat().st_size > cls.max_bytes:
                raise PlantidError(f"{path}: larger than {cls.max_bytes // 2**20} MB, so not one plantid wrote; "
                                   f"{cls.remedy}")
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = _first_problem(exc) if isinstance(exc, ValidationError) else "not readable JSON"
            raise PlantidError(f"{path}: {why}; {cls.remedy}") from None

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON (atomically: a crash never leaves half a file)."""
        return write_json_atomic(path, self.model_dump(by_alias=True))


def read_or_warn(read: Callable[..., Any], *args: Any) -> Any:
    """`read(*args)` (one of the readers here), or None with a warning line when the file is not a
    valid record: for pages and tables that are better drawn without one file than not at all."""
    try:
        return read(*args)
    except PlantidError as exc:
        log.warning("%s", exc)
        return None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    return f"{where}: {error['msg'].lower()} ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''})"


# ---- train_summary.json ------------------------------------------------------------------------


class TrainSummary(RunRecord):
    """What `plantid train` measured: best val accuracy, test accuracy, epochs, seconds, speed."""

    remedy: ClassVar[str] = "it is written when training ends (`plantid train --resume RUN` finishes a run)"

    recipe: str | None = None
    model: str | None = None
    members: int | None = None
    image_size: int | None = None
    train_image_sizes: list[int] | None = None  # the training size of each epoch (progressive resizing)
    classes: list[str] | None = None
    best_val_acc: float | None
    test_acc: float | None  # None when the run has no test split or `train.score_test` is false
    epochs_run: int
    train_seconds: float  # over every resume of the run
    train_images_per_s: float | None = None
    world_size: int | None = None
    best_checkpoint: str | None = None
    parameters: dict[str, int] | None = None  # {"trainable": n, "frozen": n, "total": n}
    peak_memory_mb: float | None = None  # the training process's peak resident memory


# ---- eval*.json ----------------------------------------------------------------------------------


class Metrics(BaseModel):
    """Accuracy and its companions over one set of predictions (plantid.evaluate.metrics)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    top_k: dict[str, float] = Field(default_factory=dict)  # {"3": top-3 accuracy, ...}


class ClassRow(BaseModel):
    """One class's line of the per-class table."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class Mistake(BaseModel):
    """One of the most confident mistakes (the error grid)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    true: str
    pred: str
    confidence: float


class ViewsResult(BaseModel):
    """The same evaluation with test-time views (`--tta`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    views: list[str]
    metrics: Metrics
    per_class: list[ClassRow] = Field(default_factory=list)
    confusion: list[list[int]] = Field(default_factory=list)
    intervals: dict[str, Any] | None = None  # 95% intervals, as in Evaluation


class AnswersResult(BaseModel):
    """The three answers (plantid.infer.answers) on the evaluated photos of known species."""

    model_config = ConfigDict(extra="forbid")
    photos: int
    answered: int  # named a species
    coverage: float | None
    answered_accuracy: float | None  # selective accuracy: the share of named photos named right
    answered_right: int | None = None
    unsure: float | None
    unknown: float | None


class CalibrationBin(BaseModel):
    """One confidence bin of a reliability diagram."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


class CalibrationResult(BaseModel):
    """Calibration of the evaluated photos before and after the run's temperature."""

    model_config = ConfigDict(extra="forbid")
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins_before: list[CalibrationBin]
    bins_after: list[CalibrationBin]
    val_ece_crossfit: float | None = None  # val photos scaled by a temperature fitted without them
    ece_if_calibrated: list[float] | None = None  # what a calibrated model would show: mean, 5th, 95th percentile


class ForeignFolderResult(BaseModel):
    """The unknown-photo check on one folder of photos of none of the species (`evaluate --ood`)."""

    model_config = ConfigDict(extra="forbid")
    folder: str
    n_images: int
    skipped: int
    rejected: float | None  # the share answered unknown
    auroc: float | None


class TrustNumbers(BaseModel):
    """The numbers in trust.json every prediction uses, checked before use: a run folder from
    elsewhere (or a diverged fit) with temperature 0 or NaN made every probability NaN, -1 inverted
    the ranking, and an infinite threshold turned the unknown answer off."""

    model_config = ConfigDict(extra="ignore")

    temperature: float = Field(gt=0, le=1000, allow_inf_nan=False)
    threshold: float = Field(allow_inf_nan=False)  # OOD score above it -> unknown
    keep: float = Field(gt=0, le=1, allow_inf_nan=False)  # the share of val photos the threshold keeps
    # the calibrated top probability below which a photo is answered "unsure" (plantid.infer.answers);
    # None in trust files fitted before it existed
    answer_level: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class EvaluationTrust(TrustNumbers):
    """eval.json's "trust": the run's trust summary (its checked numbers; the detector and its
    settings at the top level, as in trust.json) and what it did on the evaluated photos
    (plantid.evaluate.trust_eval)."""

    model_config = ConfigDict(extra="allow")
    detector: str
    answered_accuracy: float | None = None  # the target the answer level was chosen for
    kept: float | None  # the share of evaluated photos answered known
    answers: AnswersResult | None = None
    keep_promised: bool | None = None
    val_photos: int | None = None
    keep_confidence: float | None = None
    calibration: CalibrationResult
    ood: list[ForeignFolderResult] = Field(default_factory=list)


class Evaluation(RunRecord):
    """`plantid evaluate`'s result for one split or folder (eval.json, eval_val.json, ...)."""

    remedy: ClassVar[str] = "evaluate the run again (`plantid evaluate RUN`)"

    split: str
    n_images: int | None = None
    classes: list[str] | None = None
    checkpoint: str | None = None
    metrics: Metrics
    per_class: list[ClassRow] = Field(default_factory=list)
    confusion: list[list[int]] = Field(default_factory=list)
    # 95%: accuracy and per-class recall (Wilson), balanced accuracy (standard error)
    intervals: dict[str, Any] | None = None
    tta: ViewsResult | None = None
    worst: list[Mistake] = Field(default_factory=list)
    # calibration and unknown-photo results (plantid.evaluate.trust_eval); None without trust files
    trust: EvaluationTrust | None = None


def read_evaluation(run_dir: str | os.PathLike, split: str = "test") -> Evaluation | None:
    """The run's evaluation of a split (eval.json for test, eval_<split>.json otherwise), or None."""
    return Evaluation.read(Path(run_dir) / evaluation_files(split)["json"])


def read_summary(run_dir: str | os.PathLike) -> TrainSummary | None:
    """The run's train_summary.json, or None before training has ended."""
    return TrainSummary.read(RunFolder(run_dir).summary)


# ---- trust.json ----------------------------------------------------------------------------------

TRUST_FORMAT = "plantid-trust/1"


class TrustRecord(RunRecord, TrustNumbers):
    """trust.json: the fitted unknown-photo detector and temperature (checked numbers, validated
    first), and what they were fitted for.

    The detector's settings also stand at the top level (k, taps, combine, ...: what the detector
    was built with), which is why this record, unlike the others, keeps keys it does not name.
    """

    model_config = ConfigDict(extra="allow")
    remedy: ClassVar[str] = "refit it with `plantid trust RUN`"
    max_bytes: ClassVar[int] = 16 * 1024 * 1024  # a fitted trust.json is a few KB

    format: str
    detector: str
    settings: dict[str, Any] = Field(default_factory=dict)
    classes: list[str]
    measured: dict[str, Any] = Field(default_factory=dict)  # val numbers at fitting time
    tensors_file: str
    tensors_sha256: str
    checkpoint: str
    checkpoint_size: int
    checkpoint_sha256: str
    score: str = "higher = less like the training photos; unknown when score > threshold"
    answered_accuracy: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


def read_trust(run_dir: str | os.PathLike) -> TrustRecord | None:
    """RUN/trust.json, or None for a run without trust files; one line for another format."""
    record = TrustRecord.read(Path(run_dir) / TRUST_JSON)
    if record is not None and record.format != TRUST_FORMAT:
        raise PlantidError(f"{Path(run_dir) / TRUST_JSON}: not a {TRUST_FORMAT} file; {TrustRecord.remedy}")
    return record


TRUST_IDENTITY = ("detector", "threshold", "temperature", "answer_level")


def same_trust(current: TrustRecord | None, exported: dict[str, Any] | None) -> bool:
    """Whether an export's trust summary (preprocessing.json's "trust") is the run's current trust.json:
    same detector, threshold, temperature and answer level, or neither has any. An export that
    differs answers otherwise than the run and is made again."""
    if not current or not exported:
        return not current and not exported
    return all(getattr(current, key) == exported.get(key) for key in TRUST_IDENTITY)


def finite(value: Any) -> float | None:
    """The value as a float, or None when it is missing or not finite (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def describe_detector(summary: dict[str, Any]) -> str:
    """The unknown-photo score in words, from a trust summary (trust.json, eval.json's "trust"),
    e.g. "mahalanobis+knn+stage (k = 50; mean of its parts; last stage blocks.6)": the CLI, the
    evaluate table and the report name it the same way."""
    details = [f"k = {summary['k']}"] if "k" in summary else []
    if str(summary["detector"]).startswith("mahalanobis+knn"):  # the detectors made of parts
        details.append("mean of its parts" if summary.get("combine") == "mean" else "largest of its parts")
    if summary.get("taps"):
        details.append(f"last stage {', '.join(summary['taps'])}")
    return str(summary["detector"]) + (f" ({'; '.join(details)})" if details else "")


# ---- export/preprocessing.json ------------------------------------------------------------------

EXPORT_FORMAT_PREFIX = "plantid-onnx"


class ExportRecord(RunRecord):
    """preprocessing.json beside an ONNX export: what a consumer feeds the model, the model's
    checksum, and the checkpoint and trust files it was exported from.

    Only the fields plantid reads back are named (and checked); the descriptive ones (input,
    output, normalization, ...) and the additions of a web or submission export are kept as they are.
    """

    model_config = ConfigDict(extra="allow")
    remedy: ClassVar[str] = "export the run again (`plantid export RUN --format onnx`)"
    max_bytes: ClassVar[int] = 16 * 1024 * 1024  # a written one is a few KB

    format: str = Field(pattern=f"^{EXPORT_FORMAT_PREFIX}/")
    labels: list[str] = Field(min_length=1)
    image_size: int = Field(gt=0)
    model_id: str | None = None
    sha256: str | None = None
    size_bytes: int | None = Field(None, ge=0)
    int8: dict[str, Any] | None = None
    trust: dict[str, Any] | None = None
    source_checkpoint: str | None = None
    source_checkpoint_sha256: str | None = None
    source_checkpoint_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every key of the file, named or kept, as plain JSON values (for writing it again)."""
        return self.model_dump(mode="json", exclude_unset=True)


def read_export(folder: str | os.PathLike) -> ExportRecord | None:
    """FOLDER/preprocessing.json (an export or submission folder), or None when there is none."""
    return ExportRecord.read(Path(folder) / PREPROCESSING_FILE)


# ---- metrics.csv ---------------------------------------------------------------------------------


def read_metrics_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows) of a metrics.csv as Lightning's CSV logger wrote it; ([], []) when it is
    missing or unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error):
        return [], []


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def metrics_by_epoch(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """Per-epoch series of a metrics.csv: {column: {epoch (0-based): value}}; {} without a file.

    Rows are sparse (each logs only some columns); for each column the last finite value of an
    epoch wins. A row with a step but no epoch (the learning-rate monitor's) belongs to the first
    epoch whose logged steps reach its step (after the last epoch: the next one), so the learning
    rate is drawn beside the losses of the epoch it was used in. The report's curves and compare's
    read metrics.csv through here.
    """
    _, rows = read_metrics_rows(path)
    last_step: dict[int, float] = {}  # epoch -> largest step logged with it
    for row in rows:
        epoch, step = _number(row.get("epoch")), _number(row.get("step"))
        if epoch is not None and step is not None:
            last_step[int(epoch)] = max(step, last_step.get(int(epoch), step))
    ordered = sorted(last_step.items())

    def epoch_of(row: dict[str, Any]) -> int | None:
        epoch = _number(row.get("epoch"))
        if epoch is not None:
            return int(epoch)
        step = _number(row.get("step"))
        if step is None:
            return None
        for e, s in ordered:
            if s >= step:
                return e
        return ordered[-1][0] + 1 if ordered else 0

    series: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch = epoch_of(row)
        if epoch is None:
            continue
        for key, raw in row.items():
            if key in (None, "epoch", "step"):
                continue
            v = _number(raw)
            if v is not None:
                series.setdefault(key, {})[epoch] = v
    return series
