"""metrics.csv that keeps a resumed run's history, and is never left half rewritten.

Lightning's CSV logger deletes the metrics.csv it finds when it starts, so `plantid train --resume`
after a crash kept only the epochs trained after the resume, and the report's curves lost the
rest. It also rewrites the whole file in place whenever a new column appears (the test metrics at
the end of a run), so a kill at that moment left an empty or partial file.

`RunCSVLogger(run_dir, resume_step)` is that logger with both fixed: resuming from a checkpoint
taken at `resume_step`, it keeps the rows logged before that step (the ones the resumed run will
not log again: rows of the interrupted epoch are dropped, as it is trained again), and every
rewrite goes through a temporary file renamed into place. A fresh run (`resume_step=None`)
starts a new file, as before.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from plantid.fileio import atomic_path
from plantid.records import read_metrics_rows

__all__ = ["RunCSVLogger"]


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def _write_rows(path: str, header: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class _HistoryWriter(ExperimentWriter):
    """Lightning's metrics.csv writer that keeps the rows before `keep_before_step` and rewrites atomically."""

    def __init__(self, log_dir: str, keep_before_step: int | None):
        self._keep_before_step = keep_before_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by the base __init__ in place of deleting the previous file, when resuming."""
        if self._keep_before_step is None:
            super()._check_log_dir_exists()
            return
        header, rows = read_metrics_rows(self.metrics_file_path)
        kept = [row for row in rows if (step := _step(row)) is not None and step < self._keep_before_step]
        if header and kept:
            _write_rows(self.metrics_file_path, header, kept)
            self.metrics_keys = list(header)  # later rows are appended under the same columns
        elif os.path.exists(self.metrics_file_path):
            os.remove(self.metrics_file_path)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = read_metrics_rows(self.metrics_file_path)
        _write_rows(self.metrics_file_path, fieldnames, rows)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing `run_dir/metrics.csv`; on resume it keeps the rows before `resume_step`."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        super().__init__(save_dir=run_dir, name="", version="")
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use (as in CSVLogger), keeping history when resuming."""
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _HistoryWriter(self.log_dir, self._resume_step)
        return self._experiment
