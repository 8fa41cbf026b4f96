"""The tune folder (`plantid tune --out OUT`): the one place that names its files.

    OUT/
      study.db            the Optuna study (SQLite): every trial, its params, per-epoch val accuracy
      study.lock          held while a `plantid tune` works here (one search per folder at a time)
      split.csv, scan.json  the fixed split of the data, made once (plantid.train.run.prepare_manifest)
      split_trials.csv    the same rows less the test photos: what every trial trains and selects on
      trials/NNN/         one run folder per trial (a re-queued trial continues its own folder)
      best.yaml           the best trial as a recipe: `plantid train --recipe OUT/best.yaml`
      history.png, importances.png   the optimisation history and parameter importances
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STUDY_NAME = "plantid"


@dataclass(frozen=True)
class TuneFolder:
    """Paths of one tune folder's files (building one reads or creates nothing)."""

    root: Path

    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def storage_url(self) -> str:
        """SQLAlchemy URL of the study database (absolute, so the working directory never matters)."""
        return f"sqlite:///{self.study_db.resolve()}"

    @property
    def lock(self) -> Path:
        return self.root / "study.lock"

    @property
    def trials_manifest(self) -> Path:
        return self.root / "split_trials.csv"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:03d}"

    @property
    def best_recipe(self) -> Path:
        return self.root / "best.yaml"

    @property
    def history_png(self) -> Path:
        return self.root / "history.png"

    @property
    def importances_png(self) -> Path:
        return self.root / "importances.png"
