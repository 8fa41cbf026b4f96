"""MLflow tracking of real tiny trainings: what MLflow holds equals the run folder, the default
store lies beside the runs, and a store that cannot be written never fails a run."""

from __future__ import annotations

import csv
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from plantid.config import load_config
from plantid.runfolder import RunFolder
from plantid.track.mlflow_logger import SafeMLFlowLogger, mlflow_logger
from plantid.track.mlflow_store import log_run_files, read_tracked_run
from plantid.train.run import train_run


def _tiny(photos: Path, cache: Path, *extra: str):
    return load_config("simple-cnn", [
        f"data.root={photos}", "data.image_size=32", "data.val=0.25", "data.test=0.25", f"data.cache_dir={cache}",
        "train.epochs=1", "train.progress=false", "data.batch_size=8", *extra,
    ])


def _csv_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as metric -> [(step, value)] over the rows that hold a value."""
    series: dict[str, list[tuple[int, float]]] = {}
    with RunFolder(run).metrics.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value:
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_mlflow_holds_every_metric_of_metrics_csv_and_the_run_files(trained_run: Path, mlflow_store: str):
    tracked = read_tracked_run(trained_run)
    assert tracked is not None and tracked.tracking_uri == mlflow_store  # $MLFLOW_TRACKING_URI chose the store
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == trained_run.name
    assert run.data.tags["plantid.run_dir"] == str(trained_run.resolve())

    series = _csv_series(trained_run)
    assert {"val_acc", "train_loss_epoch", "test_acc", "lr-Adam"} <= set(series)
    for key, rows in series.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(tracked.run_id, key))
        assert [s for s, _ in logged] == sorted(s for s, _ in rows), key
        assert [v for _, v in logged] == pytest.approx([v for _, v in sorted(rows)], rel=1e-6), key
    assert set(run.data.metrics) == set(series)  # nothing MLflow-only, nothing missing

    saved = load_config("simple-cnn")  # the parameters are the run's own config, flattened
    params = run.data.params
    assert params["config/train/epochs"] == "2" and params["config/model/name"] == saved.model.name
    assert params["config/data/image_size"] == "32"
    assert {"config.yaml", "train_summary.json", "labels.json", "metrics.csv"} <= _artifacts(client, tracked.run_id)


def test_default_store_is_mlruns_beside_the_run_and_evaluations_follow(tmp_path: Path, tiny_photos: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    train_run(_tiny(tiny_photos, tmp_path / "cache"), runs / "first")
    db = runs / "mlruns" / "mlflow.db"
    assert db.is_file()
    tracked = read_tracked_run(runs / "first")
    assert tracked is not None and tracked.tracking_uri == f"sqlite:///{db.resolve().as_posix()}"
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    experiment = client.get_experiment(tracked.experiment_id)
    assert experiment.name == "plantid"
    assert experiment.artifact_location == (runs / "mlruns" / "artifacts").resolve().as_uri()
    assert (runs / "mlruns" / "artifacts").is_dir()  # artifacts beside the database, not ./mlruns

    from plantid.evaluate.evaluation import evaluate_run

    result = evaluate_run(runs / "first", split="val", tta="default")
    assert log_run_files(runs / "first") >= 6  # config, summary, labels, metrics, eval_val.json + its figures
    names = _artifacts(client, tracked.run_id)
    assert {"eval_val.json", "confusion_matrix_val.png", "errors_val.png"} <= names
    metrics = client.get_run(tracked.run_id).data.metrics
    assert metrics["eval_val/accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert metrics["eval_val/tta_accuracy"] == pytest.approx(result["tta"]["metrics"]["accuracy"])


def test_a_store_that_cannot_be_written_is_one_warning_and_the_run_finishes(
        tmp_path: Path, tiny_photos: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    cfg = _tiny(tiny_photos, tmp_path / "cache", f"track.tracking_uri=sqlite:///{blocker.as_posix()}/mlruns/mlflow.db")
    with caplog.at_level(logging.WARNING, logger="plantid"):
        result = train_run(cfg, tmp_path / "run")
    assert result.best_val_acc is not None and RunFolder(tmp_path / "run").summary.is_file()
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and str(blocker) in warnings[0] and "track.mlflow=false" in warnings[0]
    assert "\n" not in warnings[0]
    assert not RunFolder(tmp_path / "run").mlflow.exists()


def test_tracking_off_writes_no_store_and_no_record(tmp_path: Path, tiny_photos: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_run(_tiny(tiny_photos, tmp_path / "cache", "track.mlflow=false"), tmp_path / "runs" / "quiet")
    assert not (tmp_path / "runs" / "mlruns").exists()
    assert not RunFolder(tmp_path / "runs" / "quiet").mlflow.exists()
    assert log_run_files(tmp_path / "runs" / "quiet") == 0


def test_a_copied_run_folder_does_not_log_into_the_original_mlflow_run(
        trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    copy = Path(shutil.copytree(trained_run, tmp_path / "copy"))
    tracked = read_tracked_run(copy)
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    before = _artifacts(client, tracked.run_id)
    (copy / "eval.json").write_text(json.dumps({"split": "test", "metrics": {"accuracy": 0.5}}))
    with caplog.at_level(logging.WARNING, logger="plantid"):
        assert log_run_files(copy) == 0
    assert "copied or moved" in caplog.text
    assert _artifacts(client, tracked.run_id) == before


def test_the_logger_survives_the_pickling_of_ddp_spawn(tmp_path: Path, tiny_photos: Path):
    cfg = _tiny(tiny_photos, tmp_path / "cache")
    (tmp_path / "run").mkdir()
    logger = mlflow_logger(cfg, tmp_path / "run")
    assert isinstance(logger, SafeMLFlowLogger)
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"val_acc": 0.25}, step=3)
    client = MlflowClient(tracking_uri=logger.tracked.tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(logger.tracked.run_id, "val_acc")] == [(3, 0.25)]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, tiny_photos: Path):
    run = tmp_path / "run"
    train_run(_tiny(tiny_photos, tmp_path / "cache"), run)
    first = read_tracked_run(run)
    config = RunFolder(run).config
    config.write_text(config.read_text().replace("epochs: 1\n", "epochs: 2\n"))  # one more epoch to resume into
    train_run(None, run, resume=True)

    tracked = read_tracked_run(run)
    assert tracked == first
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    assert client.get_run(tracked.run_id).info.status == "FINISHED"
    epochs = sorted(m.value for m in client.get_metric_history(tracked.run_id, "epoch"))
    val = client.get_metric_history(tracked.run_id, "val_acc")
    assert len(val) == 2 and 1.0 in epochs  # the second epoch was logged into the same MLflow run
    assert client.get_run(tracked.run_id).data.params["config/train/epochs"] == "1"  # logged once, at the start
