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


def _file(name: str) -> property:
    """A read-only attribute: the path of the file `name` in the folder."""
    return property(lambda folder: folder.root / name, doc=f"OUT/{name}")


@dataclass(frozen=True)
class TuneFolder:
    """Paths of one tune folder's files (building one reads or creates nothing)."""

    root: Path

    study_db = _file("study.db")
    lock = _file("study.lock")
    trials_manifest = _file("split_trials.csv")
    best_recipe = _file("best.yaml")
    history_png = _file("history.png")
    importances_png = _file("importances.png")

    @property
    def storage_url(self) -> str:
        """SQLAlchemy URL of the study database (absolute, so the working directory never matters)."""
        return f"sqlite:///{self.study_db.resolve()}"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:03d}"
