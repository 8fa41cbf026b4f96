"""The Lightning logger that sends a training run's parameters and metrics to MLflow.

Lightning's own `MLFlowLogger` does the logging (the flattened run config as parameters, every
metric metrics.csv gets, at the same steps); this module opens the MLflow run first
(`mlflow_store.start_run`, outside the training clock) and makes the logger harmless: the first
MLflow error is one warning and the logger goes quiet, the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from plantid.config import RunConfig
from plantid.runfolder import RunFolder
from plantid.track.mlflow_store import (
    TrackedRun,
    quiet_mlflow,
    start_run,
    warn_tracking,
)


class SafeMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger on an MLflow run opened beforehand, which never stops a run."""

    def __init__(self, tracked: TrackedRun, experiment: str):
        super().__init__(experiment_name=experiment, tracking_uri=tracked.tracking_uri, run_id=tracked.run_id)
        self.tracked = tracked
        self._failed = False

    def _safely(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        if self._failed:
            return
        try:
            with quiet_mlflow():
                call(*args)
        except Exception as err:  # noqa: BLE001 - tracking never fails a run
            self._failed = True
            warn_tracking(f"logging {what} to MLflow run {self.tracked.run_id}", err)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The run's settings as MLflow parameters, once: a resumed run logged them when it started."""
        if not self.tracked.resumed:
            self._safely("parameters", super().log_hyperparams, params)

    @rank_zero_only
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        """The metrics Lightning hands every logger, at its step."""
        self._safely("metrics", super().log_metrics, metrics, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Mark the MLflow run finished (or failed)."""
        self._safely("the run's end", super().finalize, status)

    @property
    def name(self) -> str:
        """The experiment id, without asking the store."""
        return self.tracked.experiment_id

    @property
    def version(self) -> str:
        """The run id, without asking the store."""
        return self.tracked.run_id

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the trainer into each process: the client (a database engine) stays behind
        state = self.__dict__.copy()
        state["_mlflow_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        try:
            from mlflow.tracking import MlflowClient

            with quiet_mlflow():
                self._mlflow_client = MlflowClient(self._tracking_uri)
        except Exception as err:  # noqa: BLE001
            self._failed = True
            warn_tracking("reopening the store in a spawned process", err)


def _launching_rank_is_zero() -> bool:
    """True in the process that will be global rank 0 (or the only one): Lightning's rank from the
    environment (LOCAL_RANK, RANK, SLURM_PROCID) on the first node (NODE_RANK)."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") in ("", "0")


def mlflow_logger(cfg: RunConfig, run_dir: Path) -> SafeMLFlowLogger | None:
    """The MLflow logger for a run's Trainer, or None: tracking off (track.mlflow=false), a process
    other than rank zero, or a store that cannot be opened (warned).

    A folder that already holds last.ckpt is a resumed run and continues its MLflow run.
    """
    if not cfg.track.mlflow or not _launching_rank_is_zero():
        return None
    run_dir = Path(run_dir)
    tags = {"plantid.recipe": cfg.recipe, "plantid.model": cfg.model.label}
    tracked = start_run(cfg.track, run_dir, resume=RunFolder(run_dir).last_checkpoint.is_file(), tags=tags)
    if tracked is None:
        return None
    try:
        return SafeMLFlowLogger(tracked, cfg.track.experiment)
    except Exception as err:  # noqa: BLE001 - tracking never fails a run
        warn_tracking("creating Lightning's MLflow logger", err)
        return None
