"""Figures of a study: the optimisation history and the parameter importances, as PNG files.

Drawn with Optuna's own matplotlib plots and written atomically. Importances need at least two
complete trials whose parameters differ; otherwise that figure is skipped with the reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import optuna

from plantid.fileio import write_bytes_atomic
from plantid.tune.folder import TuneFolder


def _save(ax, path: Path) -> Path:
    fig = ax.figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def save_study_plots(study: optuna.Study, folder: TuneFolder) -> tuple[list[Path], list[str]]:
    """Write history.png and importances.png into the tune folder.

    Returns (files written, reasons for figures not drawn).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: Optuna draws through pyplot
    from optuna.visualization import matplotlib as optuna_plots

    written: list[Path] = []
    skipped: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # PED-ANOVA's note that equal values make equal importances: the figure says so itself
        warnings.filterwarnings("ignore", message=".*Parameter importances will be equal.*")
        written.append(_save(optuna_plots.plot_optimization_history(study, target_name="val accuracy"),
                             folder.history_png))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        varied = len({tuple(sorted(t.params.items())) for t in complete}) >= 2
        if len(complete) < 2 or not varied:
            skipped.append(f"{folder.importances_png.name}: needs 2 complete trials with different parameters "
                           f"(the study has {len(complete)})")
        else:
            try:
                ax = optuna_plots.plot_param_importances(study, target_name="val accuracy")
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{folder.importances_png.name}: {str(exc).splitlines()[0]}")
            else:
                written.append(_save(ax, folder.importances_png))
    return written, skipped
