"""`plantid report`: one self-contained HTML page that tells the story of a run.

The page has no external references at all: plots are inlined as base64 PNG data URIs, the CSS
is inline and there is no JavaScript, so it can be mailed, archived or opened offline. This
module decides what the page shows (which numbers, which notes, when a section is empty) and
hands it as plain data to the templates plantid/templates/report*.html.j2, rendered through
plantid.html_pages, which escapes every value: a class name, path or config value from the run
is text, never markup.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from plantid.config import load_run_config, load_yaml
from plantid.data.explore import class_distribution_figure
from plantid.data.split import SPLITS, read_manifest
from plantid.errors import PlantidError, first_line
from plantid.evaluate.evaluation import evaluate_run
from plantid.evaluate.next_steps import advise
from plantid.evaluate.plots import confusion_figure, error_grid_figure, reliability_figure, training_curves_figure
from plantid.figures import png_bytes
from plantid.fileio import write_text_atomic
from plantid.html_pages import render_page
from plantid.infer.answers import meanings
from plantid.records import Evaluation, TrainSummary, describe_detector, read_evaluation, read_or_warn, read_summary
from plantid.runfolder import BEST_CHECKPOINT, RunFolder, evaluation_files
from plantid.trust.selective import promise_note

log = logging.getLogger("plantid")

WEAK_F1 = 0.5  # a class is "weak" below this F1 ...
WEAK_GAP = 0.10  # ... or this far below the macro-F1

PAGE = "report.html.j2"  # the page; its sections are the macros of report_sections.html.j2


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_evaluation(run_dir: Path, split: str) -> dict | None:
    record = read_or_warn(read_evaluation, run_dir, split)
    return record.model_dump(mode="json", by_alias=True) if record is not None else None


def _pct(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * float(x):.{digits}f}%"


def _thousands(n: int, signed: bool = False) -> str:
    return f"{n:+,}" if signed else f"{n:,}"


FILTERS = (("pct", _pct), ("thousands", _thousands))  # the templates' number formats


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _when(path: Path) -> str | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    except OSError:
        return None


def _figure(png: bytes, alt: str, caption: str | None = None) -> dict:
    """A plot for the page: its PNG inlined as a data URI (base64: nothing in it to escape)."""
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "alt": alt, "caption": caption}


# ---- evaluation data ---------------------------------------------------------------------------------


def _is_stale(eval_path: Path, run_dir: Path, result: dict) -> bool:
    ckpt = run_dir / str(result.get("checkpoint") or BEST_CHECKPOINT)
    try:
        return ckpt.stat().st_mtime > eval_path.stat().st_mtime
    except OSError:
        return False


def load_or_run_evaluation(run_dir: Path, console=None) -> tuple[dict | None, str | None]:
    """eval.json of the run (running `evaluate_run(run_dir, 'test')` when it is missing or older than
    the checkpoint, with the TTA views of the evaluation it replaces, else the run's default views,
    which the default recipe's numbers count on); falls back to the val split when there is no test
    split. Returns (evaluation or None, a note for the reader or None)."""
    from rich.console import Console

    run = RunFolder(run_dir)
    current = _read_evaluation(run_dir, "test")
    valid = current is not None
    if valid and not _is_stale(run.eval, run_dir, current):
        return current, None
    try:
        sizes = read_manifest(run.manifest).split_sizes()
    except PlantidError:
        if valid:
            return current, "eval.json is older than the checkpoint and split.csv is unreadable: re-evaluation skipped."
        raise PlantidError(f"{run_dir}: no eval.json and no readable split.csv; is this a plantid run folder?") from None
    split = "test" if sizes.get("test") else "val" if sizes.get("val") else None
    if split is None:
        return None, "The run has neither a test nor a validation split, so there is nothing to evaluate."
    note = None if split == "test" else "There is no test split: these numbers are on the validation split."
    path = run_dir / evaluation_files(split)["json"]
    result = current if split == "test" else _read_evaluation(run_dir, split)
    if result is not None and not _is_stale(path, run_dir, result):
        return result, note
    views = ",".join(result["tta"]["views"]) if result is not None and result["tta"] else "default"
    log.info("evaluating the %s split of %s for the report", split, run_dir)
    return evaluate_run(run_dir, split, tta=views, console=console or Console(quiet=True)), note


# ---- sections: what each shows, as plain data for report_sections.html.j2 ---------------------------


def _range(bounds: list[float] | None) -> str:
    """'; 95% interval 78.1-93.5%' after a card's detail, or nothing (older eval.json)."""
    return f"; 95% interval {100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else ""


def _card(label: str, value: str, detail: str = "", main: bool = False) -> dict:
    return {"label": label, "value": value, "detail": detail, "main": main}


def _key_numbers(summary: TrainSummary | None, result: dict | None, split_label: str,
                 planned_epochs: int | None = None) -> list[dict]:
    m = (result or {}).get("metrics") or {}
    tta = (result or {}).get("tta")
    params = (summary.parameters if summary else None) or {}
    intervals = (result or {}).get("intervals") or {}
    cards = [
        _card(f"{split_label} accuracy", _pct(m.get("accuracy", summary.test_acc if summary else None)),
              (f"{result['n_images']} images, no TTA" + _range(intervals.get("accuracy"))) if result else "from training",
              main=True),
        _card(f"{split_label} accuracy, TTA", _pct(tta["metrics"]["accuracy"]) if tta else "not run",
              f"{len(tta['views'])} views averaged" if tta else "plantid evaluate RUN --tta default", main=bool(tta)),
        _card("Balanced accuracy", _pct(m.get("balanced_accuracy")),
              "mean per-class recall" + _range(intervals.get("balanced_accuracy"))),
        _card("Macro-F1", _pct(m.get("macro_f1")), "mean per-class F1"),
        _card("Best val accuracy", _pct(summary.best_val_acc if summary else None), "checkpoint selection"),
        _card("Epochs", str(summary.epochs_run) if summary else "n/a", f"of {planned_epochs} planned" if planned_epochs else ""),
        _card("Training time", _duration(summary.train_seconds if summary else None), _training_speed(summary)),
        _card("Parameters", f"{params['trainable']:,}" if "trainable" in params else "n/a",
              f"trainable, {params.get('frozen', 0):,} frozen" if "trainable" in params else ""),
    ]
    # the headline already is the val accuracy of the chosen checkpoint when val was evaluated
    return [c for c in cards if not (split_label == "Validation" and c["label"] == "Best val accuracy")]


def _training_speed(summary: TrainSummary | None) -> str:
    """'on 2 devices, 412 photos/s': where the run trained and how fast its training steps went."""
    parts = []
    if summary and summary.world_size:
        parts.append(f"on {summary.world_size} device{'s' if summary.world_size != 1 else ''}")
    if summary and summary.train_images_per_s:
        parts.append(f"{summary.train_images_per_s:,.0f} photos/s")
    return ", ".join(parts)


def _answers(result: dict, trust: dict) -> dict | None:
    """The three answers on the evaluated photos: what each means, and how often each was given."""
    answers = trust.get("answers")
    if not answers or not answers.get("photos"):
        return None
    classes = len(result.get("per_class") or [])
    words = meanings(classes, trust.get("answered_accuracy"))
    level = trust.get("answer_level")
    rule = f", {trust['answer_level_rule']}" if trust.get("answer_level_rule") else ""
    species = (f"{_pct(answers['coverage'])} ({answers['answered']:,} of {answers['photos']:,}), "
               f"{_pct(answers['answered_accuracy'])} of them right" if answers["answered"] else "none")
    rows = [
        ("a species", words["species"] + (f" (level {_pct(level, 0)}{rule})" if level is not None else ""), species),
        ("unsure between two", words["unsure"], _pct(answers["unsure"])),
        (f"not one of the {classes} species", words["unknown"] + f" (score above {trust['threshold']:.4g})",
         _pct(answers["unknown"])),
    ]
    warning = (promise_note(int(trust["val_photos"]), trust["keep"], trust["keep_confidence"])
               if trust.get("keep_promised") is False else None)
    return {"split": result["split"], "rows": rows, "warning": warning}


def _data_summary(run_dir: Path) -> dict:
    """Photos per class and split (a chart and a table) and what the scan skipped or grouped."""
    try:
        manifest = read_manifest(RunFolder(run_dir).manifest)
    except PlantidError as exc:
        return {"error": str(exc)}
    sizes = manifest.split_sizes()
    splits = [s for s in SPLITS if sizes[s] or s in ("train", "val")]  # no empty test column (data.test=0)
    counts = {s: manifest.class_counts(s) for s in splits}
    chart = class_distribution_figure(counts, "Photos per class and split", manifest.classes)
    rows = [{"name": c, "counts": [counts[s][c] for s in splits], "total": sum(counts[s][c] for s in splits)}
            for c in manifest.classes]
    scan = _read_json(RunFolder(run_dir).scan)
    scanned = ({"root": scan.get("root", "the data folder"), "bad": int(scan.get("num_bad", 0) or 0),
                "duplicates": len(scan.get("duplicate_groups") or []),
                "near": len(scan.get("near_duplicate_groups") or [])} if isinstance(scan, dict) else None)
    return {"error": None, "chart": _figure(png_bytes(chart), "Photos per class and split"), "splits": splits,
            "rows": rows, "totals": [sizes[s] for s in splits], "total": sum(sizes.values()), "scan": scanned}


def _training_figure(run_dir: Path, config) -> dict | None:
    """The training curves from metrics.csv (phases at a smaller image size shaded), or None."""
    phases = [(p.epochs, p.image_size) for p in config.train.resize_phases] if config else []
    curves = training_curves_figure(RunFolder(run_dir).metrics, size_phases=phases,
                                    final_size=config.data.image_size if config else None)
    if curves is None:
        return None
    return _figure(png_bytes(curves, max_width=1600), "Training curves",
                   "Per-epoch loss, accuracy and learning rate (from metrics.csv)."
                   + (" Shaded: epochs trained at a smaller image size (validation always "
                      "runs at the final size)." if phases else ""))


def _metrics(result: dict) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and top-k, without and (when run) with TTA."""
    tta = result.get("tta")
    m = result["metrics"]
    rows = [(label, m[key], tta["metrics"][key] if tta else None)
            for label, key in [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                               ("macro-F1", "macro_f1")]]
    rows += [(f"top-{k} accuracy", v, tta["metrics"]["top_k"].get(k) if tta else None)
             for k, v in (m.get("top_k") or {}).items()]
    return {"rows": rows, "tta_views": list(tta["views"]) if tta else None}


def _trust(run_dir: Path, result: dict) -> dict:
    """Calibration and the "not one of my species" check (eval.json's "trust"), or how to get them."""
    trust = result.get("trust")
    if not trust:
        return {"fitted": False, "run_dir": str(run_dir)}
    cal = trust["calibration"]
    rows = [
        ("unknown-photo score", describe_detector(trust)),
        ("threshold (above: unknown)", f"{trust['threshold']:.4g}, chosen on the val photos to keep {_pct(trust['keep'], 0)} "
                                       "of new photos of the known species"
                                       + (f" with {_pct(trust['keep_confidence'], 0)} confidence"
                                          if trust.get("keep_confidence") else "")),
        (f"{result['split']} photos kept as known", _pct(trust["kept"])),
        ("temperature", f"{trust['temperature']:.3f}"),
        ("calibration error (ECE)", f"{_pct(cal['ece_before'])} softmax \u2192 {_pct(cal['ece_after'])} with temperature"),
        *([("ECE a perfectly calibrated model would show on these photos (5-95%)",
            f"{_pct(cal['ece_if_calibrated'][0])} ({_pct(cal['ece_if_calibrated'][1])}-{_pct(cal['ece_if_calibrated'][2])})")]
          if cal.get("ece_if_calibrated") else []),
        *([("val ECE, each photo's temperature fitted without it", _pct(cal["val_ece_crossfit"]))]
          if cal.get("val_ece_crossfit") is not None else []),  # older eval.json files lack these
        ("negative log-likelihood", f"{cal['nll_before']:.4f} \u2192 {cal['nll_after']:.4f}"),
    ]
    ood = [{"folder": x["folder"], "photos": x["n_images"], "rejected": x["rejected"],
            "auroc": "n/a" if x["auroc"] is None else format(x["auroc"], ".4f")} for x in trust["ood"]]
    reliability = _figure(png_bytes(reliability_figure(trust, title=f"Reliability: {result['split']}"), max_width=1000),
                          "Reliability diagram", "Accuracy against confidence in 15 bins: on the diagonal, a photo "
                          "given 80% is right 80% of the time.")
    scores_png = run_dir / evaluation_files(result["split"])["ood"]
    scores = (_figure(scores_png.read_bytes(), "OOD score histograms",
                      "The score of the evaluated photos and of each foreign folder; above the line: unknown.")
              if trust["ood"] and scores_png.is_file() else None)
    return {"fitted": True, "answers": _answers(result, trust), "rows": rows, "ood": ood,
            "reliability": reliability, "scores": scores}


def weak_classes(result: dict) -> set[str]:
    """Classes (with support) whose F1 is below 0.5 or more than 10 points below the macro-F1."""
    macro = float(result["metrics"]["macro_f1"])
    return {r["class"] for r in result["per_class"]
            if r["support"] > 0 and (r["f1"] < WEAK_F1 or r["f1"] < macro - WEAK_GAP)}


def _per_class(result: dict) -> dict:
    """Precision, recall (with its interval) and F1 per class; weak classes highlighted."""
    weak = weak_classes(result)
    tta = result.get("tta")
    tta_f1 = {r["class"]: r["f1"] for r in tta["per_class"]} if tta else {}
    recall_bounds = (result.get("intervals") or {}).get("recall") or {}
    rows = []
    for r in result["per_class"]:
        bounds = recall_bounds.get(r["class"])
        rows.append({
            "name": r["class"], "weak": r["class"] in weak,
            "kind": "weak" if r["class"] in weak else "absent" if r["support"] == 0 else "",
            "precision": r["precision"], "recall": r["recall"],
            "interval": f"{bounds[0]:.2f}-{bounds[1]:.2f}" if bounds else "",
            "bar": max(2, round(60 * r["f1"])), "f1": r["f1"], "tta_f1": tta_f1.get(r["class"]),
            "support": int(r["support"]),
        })
    return {"rows": rows, "tta": bool(tta), "weak_f1": WEAK_F1, "weak_gap": 100 * WEAK_GAP,
            "macro_f1": result["metrics"]["macro_f1"], "weak": len(weak)}


def _next_steps(run_dir: Path, result: dict) -> list[dict]:
    """Per weak class: its confusions, photo counts, audit suspects and what to do about it."""
    def pairs(items: list[tuple[str, int]]) -> str:
        return ", ".join(f"{c} ({n})" for c, n in items) or "none"

    return [{"name": a.name, "f1": a.f1, "taken_for": pairs(a.taken_for), "mistaken_for_it": pairs(a.mistaken_for_it),
             "photos": (f"{a.train_photos:,} training photos (median class {a.median_train_photos:g})"
                        if a.train_photos is not None and a.median_train_photos is not None else "photo count unknown"),
             "audit_given": a.audit_given, "audit_suggested": a.audit_suggested, "suggestions": a.suggestions}
            for a in advise(run_dir, result, weak_classes(result))]


def _audit(run_dir: Path, limit: int = 10) -> dict:
    """The label audit's result (audit.csv), when `plantid audit` has run."""
    path = RunFolder(run_dir).audit_csv
    if not path.is_file():
        return {"found": False, "run_dir": str(run_dir)}
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    flagged = [r for r in rows if r.get("flagged") == "1"]
    return {"found": True, "run_dir": str(run_dir), "file": path.name, "flagged": len(flagged), "audited": len(rows),
            "rows": [{"photo": Path(r["path"]).name, "split": r["split"], "given": r["given"],
                      "suggested": r["suggested"], "probability": r["suggested_prob"]} for r in flagged[:limit]]}


def _other_evaluations(run_dir: Path, shown: dict | None) -> list[dict]:
    """Every evaluation of the run besides the one the report is built on: val, train, folders."""
    rows = []
    for path in sorted(run_dir.glob("eval*.json")):
        main = shown is not None and path.name == evaluation_files(shown["split"])["json"]
        data = None if main else read_or_warn(Evaluation.read, path)
        if data is None:
            continue
        rows.append({"split": data.split, "photos": data.n_images or 0, "accuracy": data.metrics.accuracy,
                     "macro_f1": data.metrics.macro_f1,
                     "tta": _pct(data.tta.metrics.accuracy) if data.tta else "not run", "file": path.name})
    return rows


def _since(run_dir: Path, config) -> dict:
    """For a run started from another (train.init_from): photos per class and accuracy, before and now."""
    parent = Path(config.train.init_from)
    before, now = RunFolder(parent), RunFolder(run_dir)
    try:
        old_counts, new_counts = read_manifest(before.manifest).class_counts(), read_manifest(now.manifest).class_counts()
    except PlantidError as exc:
        return {"parent": str(parent), "error": str(exc)}
    old_summary, new_summary = read_or_warn(read_summary, parent), read_or_warn(read_summary, run_dir)
    applied = _read_json(before.apply_log) or {}
    kinds = Counter(op.get("kind") for op in applied.get("operations", []) if isinstance(op, dict))
    return {
        "parent": str(parent), "error": None, "applied": bool(kinds),
        "moved": kinds.get("move", 0), "added": kinds.get("copy", 0),
        "val_then": old_summary and old_summary.best_val_acc, "val_now": new_summary and new_summary.best_val_acc,
        "test_then": old_summary and old_summary.test_acc, "test_now": new_summary and new_summary.test_acc,
        "rows": [{"name": c, "then": old_counts.get(c, 0), "now": new_counts.get(c, 0),
                  "change": new_counts.get(c, 0) - old_counts.get(c, 0)}
                 for c in sorted(set(old_counts) | set(new_counts))],
    }


def _config_value(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "), default=str) if value else ("{}" if isinstance(value, dict) else "[]")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config(run_dir: Path) -> dict:
    """The run's config.yaml as one small table per section (the raw YAML below, collapsed)."""
    import yaml

    try:
        text = RunFolder(run_dir).config.read_text(encoding="utf-8")
    except OSError:
        return {"text": None}
    try:
        data = load_yaml(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        return {"text": text.rstrip(), "boxes": None}
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    if top:
        sections = {"run": top, **sections}
    boxes = [(name, [(k, _config_value(v)) for k, v in values.items()]) for name, values in sections.items()]
    return {"text": text.rstrip(), "boxes": boxes}


# ---- page -------------------------------------------------------------------------------------------


def _evaluation(run_dir: Path, result: dict) -> dict:
    """The sections that need an evaluation: its numbers, confusion matrix, classes, errors, trust."""
    where = f"{result['split']} split" if result["split"] in ("test", "val", "train") else f"folder {result['split']}"
    classes = result["classes"]
    confusion = _figure(png_bytes(confusion_figure(result["confusion"], classes,
                                                   title=f"Confusion matrix: {where} ({result['n_images']} images)"),
                                  max_width=2400),
                        "Confusion matrix", "Rows: true class; columns: predicted class (without TTA).")
    worst = result.get("worst") or []
    n_errors = result["n_images"] - sum(result["confusion"][i][i] for i in range(len(classes)))
    title = f"Most confident mistakes ({len(worst)} of {n_errors} shown)" if n_errors else "Mistakes"
    errors = _figure(png_bytes(error_grid_figure(worst, title=title), max_width=1200, palette=bool(worst)),
                     "Misclassified photos",
                     "Each photo: true class, predicted class and the model's confidence in it (without TTA).")
    return {"where": where, "n_images": result["n_images"], "checkpoint": result["checkpoint"],
            "metrics": _metrics(result), "confusion": confusion, "per_class": _per_class(result),
            "next_steps": _next_steps(run_dir, result), "errors": errors, "trust": _trust(run_dir, result)}


def render_report(run_dir: Path, result: dict | None, note: str | None) -> str:
    """The report's HTML text for a run folder and its evaluation (pure: reads files, writes none)."""
    run_dir = Path(run_dir)
    summary = read_or_warn(read_summary, run_dir)
    try:
        config = load_run_config(RunFolder(run_dir).config)
    except PlantidError:
        config = None
    split_label = "Validation" if result is not None and result.get("split") == "val" else "Test"
    return render_page(
        PAGE, filters=FILTERS,
        name=run_dir.resolve().name,
        model=(summary.model if summary else None) or (config.model.name if config else "unknown model"),
        recipe=summary.recipe if summary else None,
        image_size=summary.image_size if summary else None,
        trained_at=_when(RunFolder(run_dir).summary) or _when(RunFolder(run_dir).best_checkpoint) or "unknown date",
        cards=_key_numbers(summary, result, split_label, config.train.epochs if config else None),
        note=note,
        data=_data_summary(run_dir),
        training=_training_figure(run_dir, config),
        evaluation=_evaluation(run_dir, result) if result is not None else None,
        audit=_audit(run_dir),
        evaluations=_other_evaluations(run_dir, result),
        since=_since(run_dir, config) if config is not None and config.train.init_from is not None else None,
        config=_config(run_dir),
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        run_path=str(run_dir.resolve()),
    )


def build_report(run_dir: Path, console=None) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    Uses the run's eval.json, running ``evaluate_run(run_dir, 'test')`` first when it is missing
    or older than the checkpoint (a run without a test split is reported on its val split).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlantidError(f"{run_dir}: no such run folder; train one with `plantid train --data DATA --out {run_dir}`")
    try:
        result, note = load_or_run_evaluation(run_dir, console=console)
        page = render_report(run_dir, result, note)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        # eval.json, train_summary.json or trust.json edited, damaged or from an older plantid:
        # values of the wrong type or shape are one line, not a traceback
        raise PlantidError(f"{run_dir}: a result file holds values of the wrong type or shape "
                           f"({type(exc).__name__}: {first_line(exc)[:120]}); run `plantid evaluate {run_dir}` "
                           "again, then the report") from None
    return write_text_atomic(RunFolder(run_dir).report, page)
