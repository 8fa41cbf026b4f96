"""`plantid evaluate`: score a trained run on its test/val split or on a folder of labelled photos.

Photos go through the one preprocessing (`build_cache`, i.e. `load_image` at the run's image
size) and the run's Predictor in batches, once without TTA and, when asked, once more with the
TTA views, so both sets of numbers sit side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantid.data.cache import build_cache, resolve_cache_dir
from plantid.data.scan import scan_folder
from plantid.data.split import read_manifest
from plantid.errors import PlantidError
from plantid.evaluate.plots import (
    confusion_figure,
    error_grid_figure,
    ood_scores_figure,
    reliability_figure,
)
from plantid.figures import save_png
from plantid.infer.predictor import Predictor, TorchBackend
from plantid.infer.view_names import parse_tta
from plantid.records import Evaluation, describe_detector
from plantid.fileio import all_or_none, write_json_atomic
from plantid.runfolder import MANIFEST_SPLITS, RunFolder, evaluation_files

log = logging.getLogger("plantid")

WORST_LIMIT = 24


@dataclass
class EvalSet:
    """The photos of one evaluation: paths, label indices into the run's classes, and pixels."""

    name: str  # 'test', 'val', 'train' or the folder's name
    folder: bool  # True for a folder of class subfolders, False for a split of the run's split.csv
    paths: list[str]
    labels: np.ndarray  # int64, N
    images: np.ndarray  # uint8 pixel cache, M x S x S x 3 (memory-mapped)
    rows: np.ndarray  # int64, N: the rows of `images` holding the photos, in `paths` order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unusable photos


def _manifest_set(run_dir: Path, split: str, classes: list[str], image_size: int, cache_dir: Path) -> EvalSet:
    manifest = read_manifest(RunFolder(run_dir).manifest)
    unknown = sorted(set(manifest.classes) - set(classes))
    if unknown:
        raise PlantidError(
            f"{RunFolder(run_dir).manifest}: labels {unknown} are not classes of the model ({classes}); "
            "the split does not belong to this checkpoint"
        )
    rows = [(i, r) for i, r in enumerate(manifest.rows) if r.split == split]
    if not rows:
        others = [s for s, n in manifest.split_sizes().items() if n and s != split]
        hint = f"--split {others[-1]}" if others else "--split FOLDER"
        raise PlantidError(
            f"{run_dir}: the {split} split of split.csv is empty; evaluate another split ({hint}) "
            "or a folder of class subfolders"
        )
    # The same path list (every manifest row, in order) as training, so the training cache is reused.
    pixels = build_cache([r.path for r in manifest.rows], image_size, cache_dir)
    index = {c: i for i, c in enumerate(classes)}
    rows_idx = np.array([i for i, _ in rows], dtype=np.int64)
    return EvalSet(
        name=split,
        folder=False,
        paths=[r.path for _, r in rows],
        labels=np.array([index[r.label] for _, r in rows], dtype=np.int64),
        images=pixels,
        rows=rows_idx,
    )


def _folder_set(folder: Path, classes: list[str], image_size: int, cache_dir: Path) -> EvalSet:
    report = scan_folder(folder)
    extra = [c for c in report.classes if c not in classes]
    if extra:
        raise PlantidError(
            f"{folder}: class folder(s) {', '.join(repr(c) for c in extra)} are not classes of this model "
            f"({', '.join(classes)}); remove or rename them to evaluate this folder"
        )
    entries = report.entries
    if not entries:
        raise PlantidError(f"{folder}: no usable photos to evaluate; run `plantid scan {folder}` to see why")
    index = {c: i for i, c in enumerate(classes)}
    paths = [e.path for e in entries]
    return EvalSet(
        name=report.root.name or "folder",
        folder=True,
        paths=paths,
        labels=np.array([index[e.label] for e in entries], dtype=np.int64),
        images=build_cache(paths, image_size, cache_dir),
        rows=np.arange(len(paths), dtype=np.int64),
        skipped=[(b.path, b.reason) for b in report.bad],
    )


def default_split(run_dir: Path) -> str:
    """The split `plantid evaluate` scores when none is named: 'test' when the run's split.csv has test
    photos, else 'val' (a run trained with `data.test=0` has none)."""
    manifest = RunFolder(run_dir).manifest
    if not manifest.is_file():
        return "test"  # the missing split.csv gets its own clear error where it is read
    return "test" if read_manifest(manifest).split_sizes().get("test") else "val"


def resolve_eval_set(run_dir: Path, split: str, classes: list[str], image_size: int, cache_dir: Path) -> EvalSet:
    """'test' / 'val' / 'train' are rows of the run's split.csv; anything else must be a folder."""
    if split in MANIFEST_SPLITS:
        return _manifest_set(run_dir, split, classes, image_size, cache_dir)
    folder = Path(split).expanduser()
    if folder.is_dir():
        return _folder_set(folder, classes, image_size, cache_dir)
    raise PlantidError(
        f"--split {split!r}: use test, val, train, or an existing folder with one subfolder per class"
    )


def _predict_all(predictor, images: np.ndarray, rows: np.ndarray, batch_size: int, progress=None, task=None) -> np.ndarray:
    out = []
    for start in range(0, len(rows), batch_size):
        batch = np.ascontiguousarray(images[rows[start : start + batch_size]])
        out.append(np.asarray(predictor.predict_arrays(batch), dtype=np.float64))
        if progress is not None:
            progress.advance(task, len(batch))
    return np.concatenate(out, axis=0)


def _pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_run(run_dir: Path, split: str = "test", tta: str | None = None, console=None,
                 ood: list[Path] | None = None) -> dict:
    """Evaluate a run's checkpoint (best.ckpt, else last.ckpt) and write the results into the run folder.

    ``split`` is 'test', 'val' or 'train' (rows of the run's split.csv) or a folder with one
    subfolder per class (scanned; its classes must be among the run's classes, which stay the
    label space). ``tta`` is None (no TTA), 'default' or a comma list of views (see
    `plantid.infer.view_names.parse_tta`); with TTA the photos are scored both without and with it.

    Files written (atomically) into ``run_dir``:

    * the 'test' split -> ``eval.json``, ``confusion_matrix.png``, ``errors.png`` (so eval.json
      always holds the latest evaluation of the test split, the one `plantid report` shows);
    * any other split or folder -> ``eval_<name>.json``, ``confusion_matrix_<name>.png``,
      ``errors_<name>.png`` with <name> the split ('val', 'train') or the folder's name (characters
      other than letters, digits, '.', '_' and '-' become '_'; a folder named test, val or train
      gets '_folder' appended so it never overwrites a split's results).

    A folder whose path is exactly 'test', 'val' or 'train' must be written as './test' etc.

    The JSON is {"split", "n_images", "classes", "checkpoint", "metrics", "per_class",
    "confusion", "tta", "worst", "trust"}; "tta" is null or {"views", "metrics", "per_class", "confusion"}.
    "trust" is null for a run without trust files, else calibration before/after the temperature and,
    for each `ood` folder (photos of none of the run's species), the share rejected and the AUROC
    (plantid.evaluate.trust_eval); it adds reliability*.png and, with `ood`, ood_scores*.png.
    "worst" (and errors.png) lists the most confident mistakes of the predictions without TTA.
    Returns that dict. Prints a summary and a per-class table to `console` (a rich Console;
    a default one when None).
    """
    from rich.console import Console

    # lazy: these load torch, which `plantid report` and `plantid ablate` do not need to read eval.json
    from plantid.evaluate.metrics import classification_metrics, worst_errors
    from plantid.evaluate.trust_eval import evaluate_trust
    from plantid.infer.checkpoint import load_trained
    from plantid.trust.store import load_trust

    console = console or Console()
    run_dir = Path(run_dir)
    parse_tta(tta)  # validate before the (slow) model and data loading
    trained = load_trained(run_dir)
    trust = load_trust(trained.checkpoint.parent, trained.checkpoint, list(trained.classes))
    if ood and trust is None:
        raise PlantidError(f"{run_dir}: --ood needs the run's trust files (the unknown-photo score); "
                           f"fit them with `plantid trust {run_dir}`")
    views = parse_tta(tta, default=trained.config.eval.tta)
    classes = list(trained.classes)
    image_size = trained.image_size
    data = resolve_eval_set(run_dir, split, classes, image_size, resolve_cache_dir(trained.config.data.cache_dir))
    for path, reason in data.skipped:
        log.warning("skipping %s: %s", path, reason)

    device = _pick_device()
    plain = Predictor(classes, image_size, TorchBackend(trained, (), device), trained.model_id, "torch", trained)
    batch_size = trained.config.data.eval_batch_size
    passes = [("without TTA", plain)]
    if views:
        passes.append(("with TTA", Predictor(classes, image_size, TorchBackend(trained, views, device),
                                             trained.model_id, "torch", trained)))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    probabilities: list[np.ndarray] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        for label, predictor in passes:
            task = progress.add_task(f"Evaluating {data.name} ({label})", total=len(data.paths))
            probabilities.append(_predict_all(predictor, data.images, data.rows, batch_size, progress, task))

    base = classification_metrics(probabilities[0], data.labels, classes)
    result: dict[str, Any] = {
        "split": data.name,
        "n_images": len(data.paths),
        "classes": classes,
        "checkpoint": trained.checkpoint.name,
        "metrics": base["metrics"],
        "per_class": base["per_class"],
        "confusion": base["confusion"],
        "intervals": base["intervals"],  # 95%: accuracy and per-class recall Wilson, balanced accuracy standard error
        "tta": None,
        "worst": worst_errors(probabilities[0], data.labels, data.paths, classes, limit=WORST_LIMIT),
    }
    if views:
        with_tta = classification_metrics(probabilities[1], data.labels, classes)
        result["tta"] = {"views": list(views), **with_tta}
    result["trust"] = None
    raw_scores = None
    if trust is not None:
        result["trust"], raw_scores = evaluate_trust(trained, trust, data.images, data.rows, data.labels,
                                                     list(ood or []), device, batch_size)

    names = evaluation_files(data.name, folder=data.folder)
    n_errors = int(len(data.labels) - np.trace(np.asarray(base["confusion"])))
    where = f"folder {data.name}" if data.folder else f"{data.name} split"
    written_paths = [run_dir / names[k] for k in ("json", "confusion", "errors")]
    with all_or_none() as stage:  # a full disk half-way leaves no figure without its JSON
        save_png(confusion_figure(base["confusion"], classes,
                                  title=f"Confusion matrix: {where} ({len(data.paths)} images)"),
                 stage(run_dir / names["confusion"]))
        shown = len(result["worst"])
        save_png(error_grid_figure(result["worst"], title=f"Most confident mistakes: {where} "
                                   f"({shown} of {n_errors} shown)" if n_errors else f"Mistakes: {where}"),
                 stage(run_dir / names["errors"]))
        if result["trust"] is not None:
            save_png(reliability_figure(result["trust"], title=f"Reliability: {where}"),
                     stage(run_dir / names["reliability"]))
            written_paths.append(run_dir / names["reliability"])
            if ood:
                save_png(ood_scores_figure(raw_scores, trust.threshold, data.name), stage(run_dir / names["ood"]))
                written_paths.append(run_dir / names["ood"])
        write_json_atomic(stage(run_dir / names["json"]), Evaluation.model_validate(result).model_dump(by_alias=True))

    print_evaluation(result, console)
    written = ", ".join(str(p) for p in written_paths)
    console.print(f"wrote {written}", highlight=False, markup=False)
    return result


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _interval(bounds: list[float] | None) -> str:
    """' (78.1-93.5%)': a 95% interval after its value, or nothing for an older eval.json."""
    return "" if not bounds else f" ({100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%)"


def print_evaluation(result: dict, console) -> None:
    """The summary table (metric, without TTA, with TTA) and the per-class table."""
    from rich.table import Table
    from rich.text import Text

    tta = result.get("tta")
    summary = Table(title=Text(f"{result['split']}: {result['n_images']} images, checkpoint {result['checkpoint']}"
                               + ("; 95% intervals in brackets" if result.get("intervals") else "")),
                    title_justify="left")
    summary.add_column("metric")
    summary.add_column("without TTA", justify="right")
    if tta:
        summary.add_column(Text(f"with TTA ({len(tta['views'])} views)"), justify="right")
    rows = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1")]
    intervals = result.get("intervals") or {}
    tta_intervals = (tta or {}).get("intervals") or {}
    for label, key in rows:
        summary.add_row(label, _pct(result["metrics"][key]) + _interval(intervals.get(key)),
                        *([_pct(tta["metrics"][key]) + _interval(tta_intervals.get(key))] if tta else []))
    for k, v in result["metrics"]["top_k"].items():
        summary.add_row(f"top-{k} accuracy", _pct(v), *([_pct(tta["metrics"]["top_k"].get(k))] if tta else []))
    console.print(summary)

    table = Table(title="per class (without TTA)" + (", F1 with TTA alongside" if tta else ""), title_justify="left")
    recall_intervals = intervals.get("recall") or {}
    for name in ("class", "precision", "recall", "recall 95%", "F1"):
        table.add_column(name, justify="left" if name == "class" else "right")
    if tta:
        table.add_column("F1 (TTA)", justify="right")
    table.add_column("support", justify="right")
    tta_rows = tta["per_class"] if tta else [None] * len(result["per_class"])
    for row, trow in zip(result["per_class"], tta_rows):
        weak = row["support"] > 0 and row["f1"] < 0.5
        bounds = recall_intervals.get(row["class"])
        cells = [Text(row["class"], style="bold red" if weak else ""), f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                 f"{bounds[0]:.2f}-{bounds[1]:.2f}" if bounds else "", f"{row['f1']:.3f}"]
        if trow is not None:
            cells.append(f"{trow['f1']:.3f}")
        cells.append(str(row["support"]))
        table.add_row(*cells)
    console.print(table)
    _print_trust(result.get("trust"), result["split"], console)


def _print_trust(section: dict | None, split: str, console) -> None:
    """Calibration before/after the temperature and, per foreign folder, the unknown-photo check."""
    from rich.table import Table

    if not section:
        return
    cal = section["calibration"]
    table = Table(title=f"trust: {describe_detector(section)} score, unknown above {section['threshold']:.4g}; "
                        f"temperature {section['temperature']:.3f}", title_justify="left")
    for name in ("", "value"):
        table.add_column(name, justify="left" if not name else "right")
    table.add_row(f"{split} photos kept as known", _pct(section["kept"]))
    answers = section.get("answers")
    if answers and answers.get("photos"):
        level = section.get("answer_level")
        table.add_row(f"{split} photos named a species (coverage; unsure below "
                      f"{'no level' if level is None else _pct(level)}, unknown above the threshold)",
                      f"{_pct(answers['coverage'])} ({answers['answered']} of {answers['photos']})")
        table.add_row("accuracy of the photos named (selective accuracy)", _pct(answers["answered_accuracy"]))
        table.add_row(f"{split} photos answered unsure between two / not one of the species",
                      f"{_pct(answers['unsure'])} / {_pct(answers['unknown'])}")
    table.add_row("calibration error (ECE), softmax -> with temperature",
                  f"{_pct(cal['ece_before'])} -> {_pct(cal['ece_after'])}")
    if cal.get("ece_if_calibrated"):
        mean, low, high = cal["ece_if_calibrated"]
        table.add_row(f"ECE a perfectly calibrated model would show on these {split} photos",
                      f"{_pct(mean)} ({_pct(low)}-{_pct(high)})")
    if cal.get("val_ece_crossfit") is not None:
        table.add_row("val ECE, each photo's temperature fitted without it", _pct(cal["val_ece_crossfit"]))
    for entry in section["ood"]:
        auroc = "n/a" if entry["auroc"] is None else f"{entry['auroc']:.4f}"
        table.add_row(f"{entry['folder']}: {entry['n_images']} photos answered unknown", _pct(entry["rejected"]))
        table.add_row(f"{entry['folder']}: AUROC against the {split} photos", auroc)
    console.print(table)
