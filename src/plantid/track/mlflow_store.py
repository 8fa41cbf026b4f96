"""Which MLflow store and run track a run folder, and mirroring its result files there.

Every run also logs to MLflow (besides metrics.csv and TensorBoard): its parameters and
per-epoch metrics while training (plantid.track.mlflow_logger), then its config, summary,
evaluations and report as artifacts (`log_run_files`, after train, evaluate and report). The
run folder's `mlflow.json` records the store URI and run id, so later commands find the run.

The store, measured with mlflow-skinny 3.17 on the 2-core machine: MLflow 3's file store (a
`file:` URI, the classic `mlruns/` folder of YAML files) refuses to open unless
MLFLOW_ALLOW_FILE_STORE=true ("maintenance mode, migrate to a database backend"), so the default
is SQLite, still a local file and no server: `sqlite:///<parent of the run folder>/mlruns/mlflow.db`
with artifacts in `mlruns/artifacts/`. Creating a new database runs MLflow's schema migrations
once (6-9 s there, so it happens before the training clock starts); afterwards a run's logging
costs milliseconds an epoch. SQLite comes through SQLAlchemy and Alembic (optuna's dependencies
too). `$MLFLOW_TRACKING_URI` and `track.tracking_uri` choose another store (a server, a
shared database); a `sqlite:` store keeps its artifacts in `artifacts/` beside the database file.

Tracking is never a reason for a run to fail: a missing package, an unwritable folder, a bad URI
or a store error becomes one warning line, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plantid.config import TrackConfig
from plantid.errors import first_line
from plantid.fileio import write_json_atomic
from plantid.runfolder import MLFLOW_DIR, RunFolder

log = logging.getLogger("plantid")

SQLITE_PREFIX = "sqlite:///"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class TrackedRun:
    """An MLflow run that tracks a run folder, as recorded in the folder's mlflow.json."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_dir: str  # the run folder's absolute path when the MLflow run was made for it
    resumed: bool = False  # True when a resumed training continues this MLflow run

    def record(self) -> dict[str, str]:
        """What mlflow.json holds (all but `resumed`, which is about this process only)."""
        data = asdict(self)
        data.pop("resumed")
        return data


def warn_tracking(what: str, err: BaseException) -> None:
    """The one warning line for any MLflow failure: what was not logged, why, and what still holds."""
    log.warning("MLflow tracking: %s failed (%s: %s); the run goes on, metrics.csv and tb/ hold its metrics "
                "(turn tracking off with track.mlflow=false)", what, type(err).__name__, first_line(err)[:300])


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's own log lines off while plantid calls it: its store errors come with a full
    traceback (a full disk printed 30 lines), and `warn_tracking`'s one line already reports them."""
    import mlflow  # noqa: F401 - importing it sets its loggers' levels, so it comes first

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_tracking_uri(run_dir: Path) -> str:
    """The SQLite store in mlruns/ beside the run folder: sqlite:////abs/parent/mlruns/mlflow.db."""
    return SQLITE_PREFIX + (Path(run_dir).resolve().parent / MLFLOW_DIR / DB_FILE).as_posix()


def tracking_uri(track: TrackConfig, run_dir: Path) -> str:
    """The store a run logs to: track.tracking_uri, else $MLFLOW_TRACKING_URI, else the default beside the run."""
    return track.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)


def users_tracking_uri(run_dir: Path) -> str:
    """The store a command after training logs a run's files to: $MLFLOW_TRACKING_URI, else the
    default beside the run folder; never one named by a file inside the run folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: `artifacts/` beside a SQLite file; the store's
    own choice otherwise (MLflow's default for SQLite is ./mlruns in the current folder)."""
    db = sqlite_file(uri)
    return (db.resolve().parent / ARTIFACTS_DIR).as_uri() if db is not None else None


def read_tracked_run(run_dir: Path) -> TrackedRun | None:
    """The MLflow run recorded in a run folder's mlflow.json, or None (none recorded, or unreadable)."""
    path = RunFolder(run_dir).mlflow
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrackedRun(**{k: str(data[k]) for k in ("tracking_uri", "experiment_id", "run_id", "run_dir")})
    except (OSError, ValueError, KeyError, TypeError) as err:
        warn_tracking(f"reading {path}", err)
        return None


def _client(uri: str) -> Any:
    """An MlflowClient on `uri`, creating a SQLite file's folder first (call it inside `quiet_mlflow`)."""
    db = sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema migrations of a new database
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():
        # SQLAlchemy's note on a loader strategy MLflow's store uses, once per process: not ours to act on
        warnings.filterwarnings("ignore", message=".*noload.*")
        return MlflowClient(tracking_uri=uri)


def start_run(track: TrackConfig, run_dir: Path, *, resume: bool, tags: dict[str, str] | None = None) -> TrackedRun | None:
    """Open the store and the MLflow run for a training run, record it in mlflow.json, and return it.

    A resumed training continues the MLflow run its folder records (when that run is still in
    the same store); anything else starts a new MLflow run named after the run folder. Returns
    None, after one warning, when MLflow cannot be used.
    """
    run_dir = Path(run_dir)
    # a resumed run's settings come from its config.yaml, a file inside the run folder: it does not
    # choose the store either
    uri = users_tracking_uri(run_dir) if resume else tracking_uri(track, run_dir)
    try:
        with quiet_mlflow():
            return _start_run(uri, track, run_dir, resume, tags)
    except Exception as err:  # noqa: BLE001 - tracking never fails a run
        warn_tracking(f"opening the store {uri}", err)
        return None


def _start_run(uri: str, track: TrackConfig, run_dir: Path, resume: bool, tags: dict[str, str] | None) -> TrackedRun:
    """start_run's work, raising on any MLflow failure."""
    client = _client(uri)
    previous = read_tracked_run(run_dir) if resume else None
    if previous is not None and previous.tracking_uri == uri:
        try:
            run = client.get_run(previous.run_id)
        except Exception:  # noqa: BLE001 - deleted or from another store: start a new one below
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(previous.run_id, status="RUNNING")
            return TrackedRun(uri, run.info.experiment_id, previous.run_id, previous.run_dir, resumed=True)
    experiment = client.get_experiment_by_name(track.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(track.experiment, artifact_location=artifact_location(uri))
    elif experiment.lifecycle_stage != "active":
        raise RuntimeError(f"experiment '{track.experiment}' is deleted; restore it or set track.experiment")
    else:
        experiment_id = experiment.experiment_id
    from mlflow.tracking.context.registry import resolve_tags

    all_tags = {"plantid.run_dir": str(run_dir.resolve()), **(tags or {})}
    run = client.create_run(experiment_id, tags=resolve_tags(all_tags), run_name=run_dir.resolve().name)
    tracked = TrackedRun(uri, experiment_id, run.info.run_id, str(run_dir.resolve()))
    write_json_atomic(RunFolder(run_dir).mlflow, tracked.record())
    return tracked


def _evaluation_metrics(path: Path) -> dict[str, float]:
    """Headline numbers of an eval*.json, named after the file (whose name runfolder keeps to
    MLflow's characters): eval/accuracy, eval/tta_accuracy, eval_val/macro_f1 ..."""
    result = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for prefix, metrics in (("", result.get("metrics") or {}), ("tta_", (result.get("tta") or {}).get("metrics") or {})):
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            if isinstance(metrics.get(key), (int, float)):
                out[f"{path.stem}/{prefix}{key}"] = float(metrics[key])
    return out


def log_run_files(run_dir: str | Path, store: str | None = None) -> int:
    """Mirror a run folder's result files (RunFolder.tracked_files) to its MLflow run as artifacts,
    and the headline numbers of its evaluations as metrics; return how many files were logged.

    `store`: the tracking URI this command was given (a fresh training's track.tracking_uri);
    otherwise `users_tracking_uri`. mlflow.json is followed only when it names that same store.

    Called after train, evaluate and report. Does nothing for a run without mlflow.json (tracking
    was off) and, with a warning, for a folder copied or moved from where its MLflow run was made
    (its files would land in the original's run). Failures are one warning, never an error.
    """
    run_dir = Path(run_dir)
    tracked = read_tracked_run(run_dir)
    if tracked is None:
        return 0
    if Path(tracked.run_dir) != run_dir.resolve():
        log.warning("MLflow tracking: %s was copied or moved from %s; its files are not logged to that "
                    "run's MLflow run", run_dir, tracked.run_dir)
        return 0
    # A run folder never chooses where its files are sent: mlflow.json (like everything in a run
    # folder from elsewhere) could name any server or path. Only this user's store is used.
    own_store = store or users_tracking_uri(run_dir)
    if tracked.tracking_uri != own_store:
        log.warning("MLflow tracking: %s names the store %s, not this user's (%s: $MLFLOW_TRACKING_URI, or the "
                    "one beside the run folder); its files are not logged there", RunFolder(run_dir).mlflow,
                    tracked.tracking_uri[:200], own_store)
        return 0
    files = RunFolder(run_dir).tracked_files()
    try:
        with quiet_mlflow():
            _log_files(tracked, files)
    except Exception as err:  # noqa: BLE001 - tracking never fails a command
        warn_tracking(f"logging {run_dir}'s files to MLflow run {tracked.run_id}", err)
        return 0
    return len(files)


def _log_files(tracked: TrackedRun, files: list[Path]) -> None:
    """log_run_files' work, raising on any MLflow failure."""
    client = _client(tracked.tracking_uri)
    from mlflow.entities import Metric

    metrics = {}
    for path in files:
        if path.suffix == ".json" and path.name.startswith("eval"):
            metrics.update(_evaluation_metrics(path))
        client.log_artifact(tracked.run_id, str(path))
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(tracked.run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())])
