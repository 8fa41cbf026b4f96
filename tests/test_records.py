"""The typed run records (train_summary.json, eval.json, trust.json) and the one metrics.csv reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plantid.errors import PlantidError
from plantid.records import (
    TRUST_FORMAT,
    Evaluation,
    TrainSummary,
    TrustRecord,
    metrics_by_epoch,
    read_evaluation,
    read_summary,
    read_trust,
)

SPARSE_CSV = """epoch,lr-AdamW,step,train_loss_step,train_loss_epoch,train_acc,val_loss,val_acc,test_acc
,0.001,0,,,,,,
0,,9,2.1,,,,,
0,,9,,,,1.5,0.4,
0,,9,,1.9,0.3,,,
,0.0005,10,,,,,,
1,,19,1.2,,,,,
1,,19,,,,1.1,0.6,
1,,19,,1.0,0.55,,,
2,,20,,,,,,0.58
"""


def test_metrics_by_epoch_handles_sparse_rows_and_step_only_lr(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    path.write_text(SPARSE_CSV, encoding="utf-8")
    s = metrics_by_epoch(path)
    assert s["lr-AdamW"] == {0: 0.001, 1: 0.0005}
    assert s["val_acc"] == {0: 0.4, 1: 0.6}
    assert s["train_loss_epoch"] == {0: 1.9, 1: 1.0}
    assert metrics_by_epoch(tmp_path / "missing.csv") == {}


def test_step_only_rows_join_the_epoch_whose_steps_reach_theirs(tmp_path: Path):
    """The one rule for rows with a step and no epoch: before any epoch row -> epoch 0, between ->
    the first epoch whose logged steps reach the row's, after the last epoch -> the next one."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,lr-SGD,val_acc\n,0,0.1,\n0,4,,0.5\n,5,0.2,\n1,9,,0.6\n,12,0.3,\n,x,0.9,\n",
                    encoding="utf-8")
    assert metrics_by_epoch(path) == {"lr-SGD": {0: 0.1, 1: 0.2, 2: 0.3}, "val_acc": {0: 0.5, 1: 0.6}}


def test_a_trained_runs_records_read_back_typed(trained_run: Path):
    summary = read_summary(trained_run)
    assert isinstance(summary, TrainSummary) and summary.epochs_run == 2 and summary.classes
    assert 0.0 <= summary.best_val_acc <= 1.0 and summary.train_seconds > 0
    assert read_trust(trained_run) is None  # trained without the trust step (`plantid train` adds it)
    assert read_evaluation(trained_run, "a split never evaluated") is None


def test_trust_json_keeps_the_detector_settings_and_refuses_another_format(tmp_path: Path):
    fields = dict(detector="knn", k=50, temperature=1.5, threshold=2.0, keep=0.95, settings={"k": 50},
                  classes=["a", "b"], tensors_file="trust.safetensors", tensors_sha256="0" * 64,
                  checkpoint="best.ckpt", checkpoint_size=1, checkpoint_sha256="1" * 64)
    TrustRecord(format=TRUST_FORMAT, **fields).write(tmp_path / "trust.json")
    record = read_trust(tmp_path)
    assert record.threshold == 2.0 and record.model_dump()["k"] == 50  # the detector's own settings stay
    TrustRecord(format="plantid-trust/0", **fields).write(tmp_path / "trust.json")
    with pytest.raises(PlantidError, match=r"trust\.json: not a plantid-trust/1 file; refit it with `plantid trust RUN`"):
        read_trust(tmp_path)


def test_a_renamed_field_fails_loudly_in_one_line(copy_run: Path):
    """A writer that renames a field (or a reader that expects the old name) is caught when the file
    is read, with the file and the fix in one line, not read as "n/a"."""
    data = json.loads((copy_run / "train_summary.json").read_text(encoding="utf-8"))
    data["best_val_accuracy"] = data.pop("best_val_acc")
    (copy_run / "train_summary.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PlantidError) as refused:
        read_summary(copy_run)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{copy_run / 'train_summary.json'}: ")
    assert "best_val_acc" in message and "plantid train --resume" in message


def test_an_evaluation_round_trips_with_its_class_column(tmp_path: Path):
    record = Evaluation.model_validate({
        "split": "test", "metrics": {"accuracy": 0.5},
        "per_class": [{"class": "a", "precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2}],
    })
    record.write(tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert saved["per_class"][0]["class"] == "a" and read_evaluation(tmp_path).per_class[0].name == "a"
    (tmp_path / "eval.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlantidError, match=r"eval\.json: not readable JSON; evaluate the run again"):
        read_evaluation(tmp_path)


def test_a_run_file_too_large_or_nested_too_deep_is_one_line(tmp_path: Path):
    """A run folder from elsewhere: a JSON file no plantid wrote is refused before it is parsed
    (size) or when the parser gives up (depth), naming the file, never a traceback."""
    huge = tmp_path / "trust.json"
    with huge.open("wb") as fh:
        fh.truncate(TrustRecord.max_bytes + 1)  # sparse: costs no disk
    with pytest.raises(PlantidError, match=r"trust\.json: larger than 16 MB"):
        read_trust(tmp_path)
    deep = tmp_path / "train_summary.json"
    deep.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(PlantidError, match=r"train_summary\.json: not readable JSON"):
        read_summary(tmp_path)


@pytest.mark.parametrize("key, value", [("temperature", 0.0), ("threshold", float("inf")), ("answer_level", 1.5)])
def test_an_evaluations_trust_numbers_are_checked_like_trust_json(tmp_path: Path, key: str, value: float):
    """eval.json's trust summary goes through the same checks as trust.json: the report never
    draws an answer table from a temperature of 0 or a level above 1."""
    calibration = {"ece_before": 0.1, "ece_after": 0.05, "nll_before": 1.0, "nll_after": 0.9,
                   "bins_before": [], "bins_after": []}
    trust = {"detector": "knn", "temperature": 1.5, "threshold": 0.7, "keep": 0.95, "answer_level": 0.6,
             "kept": 0.9, "calibration": calibration}
    evaluation = {"split": "test", "metrics": {"accuracy": 0.5}, "trust": trust}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    assert read_evaluation(tmp_path).trust.temperature == 1.5
    (tmp_path / "eval.json").write_text(json.dumps({**evaluation, "trust": {**trust, key: value}}), encoding="utf-8")
    with pytest.raises(PlantidError, match=rf"eval\.json: trust\.{key}"):
        read_evaluation(tmp_path)
