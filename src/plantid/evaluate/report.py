"""`plantid report`: one self-contained HTML page that tells the story of a run.

The page has no external references at all: plots are inlined as base64 PNG data URIs, the CSS
is inline and there is no JavaScript, so it can be mailed, archived or opened offline. Every
string that comes from the run (class names, paths, config values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
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
from plantid.infer.answers import meanings
from plantid.records import Evaluation, TrainSummary, describe_detector, read_evaluation, read_or_warn, read_summary
from plantid.runfolder import BEST_CHECKPOINT, RunFolder, evaluation_files
from plantid.trust.selective import promise_note

log = logging.getLogger("plantid")

WEAK_F1 = 0.5  # a class is "weak" below this F1 ...
WEAK_GAP = 0.10  # ... or this far below the macro-F1

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --soft:#f5f7fa; --accent:#2f7d4f; --accent-soft:#e3f4ea;
        --warn:#b42318; --warn-soft:#fdecea; }
* { box-sizing: border-box; }
body { margin:0; background:#eef1f4; color:var(--ink);
       font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 28px auto; background:#fff; padding: 36px 44px 28px;
       border-radius: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.08), 0 8px 24px rgba(0,0,0,.05); }
header h1 { margin: 0 0 4px; font-size: 28px; letter-spacing: -.01em; }
header .sub { color: var(--muted); margin: 0; }
header .sub b { color: var(--ink); font-weight: 600; }
nav { margin: 18px 0 6px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
nav a:hover { text-decoration: underline; }
h2 { font-size: 20px; margin: 38px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.note { color: var(--muted); font-size: 13.5px; margin: 6px 0 12px; }
.cards { display:grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin-top: 22px; }
@media (max-width: 760px) { .cards { grid-template-columns: repeat(2, 1fr); } main { padding: 20px; } }
.card { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.card .detail { color: var(--muted); font-size: 12.5px; }
.card.main { background: var(--accent-soft); border-color: #b8e0c6; }
.card.main .value { color: var(--accent); }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: middle; }
th { background: var(--soft); font-weight: 600; color: #3e4c59; border-bottom: 2px solid var(--line); }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
tr.total td { font-weight: 650; border-top: 2px solid var(--line); background: var(--soft); }
tr.weak td { background: var(--warn-soft) !important; }
tr.weak td:first-child { color: var(--warn); font-weight: 600; }
tr.absent td { color: #9aa5b1; }
td.name { white-space: nowrap; }  /* a class name never breaks mid-word; a wide table scrolls instead */
.scroll { overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }
.tag { display:inline-block; font-size: 11px; font-weight: 600; padding: 1px 6px; border-radius: 9px;
       background: var(--warn); color: #fff; margin-left: 6px; vertical-align: 1px; }
.bar { display:inline-block; height: 8px; border-radius: 4px; background: #8fcfa6; vertical-align: middle; margin-right: 8px; }
tr.weak .bar { background: #f19a91; }
.narrow { max-width: 640px; }
figure { margin: 10px 0 18px; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
pre { background: #1f2933; color: #e4e7eb; padding: 14px 16px; border-radius: 8px; overflow-x: auto;
      font: 12.5px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.cfg-grid { display:grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 10px 22px; }
.cfg h3 { margin: 10px 0 2px; font-size: 14px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.cfg table { font-size: 13px; margin: 0; }
.cfg td { padding: 3px 8px; }
.cfg td:last-child { text-align: left; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px;
                     overflow-wrap: anywhere; }
.cfg td:first-child { color: #3e4c59; width: 42%; }
details { margin-top: 12px; } summary { cursor: pointer; color: var(--accent); font-size: 14px; }
.empty { color: var(--muted); font-style: italic; }
.advice { border-left: 3px solid var(--warn); padding: 2px 0 2px 14px; margin: 12px 0; }
.advice h3 { margin: 4px 0; } .advice ul { margin: 4px 0; padding-left: 20px; }
footer { margin-top: 36px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted); font-size: 12.5px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft); padding: 1px 4px; border-radius: 4px; }
/* Phones: the page never scrolls sideways; a wide table or plot scrolls inside its own box, and
   plots keep a readable size (at least 560 px wide) instead of shrinking to the screen. */
@media (max-width: 600px) {
  body { font-size: 14px; }
  main { margin: 0; padding: 14px 12px 20px; border-radius: 0; box-shadow: none; }
  header h1 { font-size: 22px; }
  nav a { display: inline-block; margin: 0 12px 6px 0; }
  table { font-size: 13px; }
  th, td { padding: 4px 6px; }
  .bar { display: none; }
  figure { overflow-x: auto; -webkit-overflow-scrolling: touch; }
  figure img { min-width: 560px; }
  .cfg-grid { grid-template-columns: 1fr; }
}
@media print { body { background: #fff; } main { box-shadow: none; margin: 0; } }
"""


def e(value: Any) -> str:
    """HTML-escape anything (quotes included)."""
    return html.escape(str(value), quote=True)


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


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">{cap}</figure>'


# ---- evaluation data ---------------------------------------------------------------------------------


def _is_stale(eval_path: Path, run_dir: Path, result: dict) -> bool:
    ckpt = run_dir / str(result.get("checkpoint") or BEST_CHECKPOINT)
    try:
        return ckpt.stat().st_mtime > eval_path.stat().st_mtime
    except OSError:
        return False


def load_or_run_evaluation(run_dir: Path, console=None) -> tuple[dict | None, str | None]:
    """eval.json of the run (running `evaluate_run(run_dir, 'test')` when it is missing or older than
    the checkpoint, keeping its TTA views); falls back to the val split when there is no test split.
    Returns (evaluation or None, a note for the reader or None)."""
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
    views = ",".join(result["tta"]["views"]) if result is not None and result["tta"] else None
    log.info("evaluating the %s split of %s for the report", split, run_dir)
    return evaluate_run(run_dir, split, tta=views, console=console or Console(quiet=True)), note


# ---- sections -------------------------------------------------------------------------------------


def _range(bounds: list[float] | None) -> str:
    """'; 95% interval 78.1-93.5%' after a card's detail, or nothing (older eval.json)."""
    return f"; 95% interval {100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%" if bounds else ""


def _card(label: str, value: str, detail: str = "", main: bool = False) -> str:
    cls = "card main" if main else "card"
    det = f'<div class="detail">{e(detail)}</div>' if detail else ""
    return f'<div class="{cls}"><div class="label">{e(label)}</div><div class="value">{e(value)}</div>{det}</div>'


def _key_numbers(summary: TrainSummary | None, result: dict | None, split_label: str,
                 planned_epochs: int | None = None) -> str:
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
    return f'<div class="cards">{"".join(cards)}</div>'


def _training_speed(summary: TrainSummary | None) -> str:
    """'on 2 devices, 412 photos/s': where the run trained and how fast its training steps went."""
    parts = []
    if summary and summary.world_size:
        parts.append(f"on {summary.world_size} device{'s' if summary.world_size != 1 else ''}")
    if summary and summary.train_images_per_s:
        parts.append(f"{summary.train_images_per_s:,.0f} photos/s")
    return ", ".join(parts)


def _answers_table(result: dict, trust: dict) -> str:
    """The three answers on the evaluated photos: what each means, and how often each was given."""
    answers = trust.get("answers")
    if not answers or not answers.get("photos"):
        return ""
    classes = len(result.get("per_class") or [])
    words = meanings(classes, trust.get("answered_accuracy"))
    level = trust.get("answer_level")
    species = (f"{_pct(answers['coverage'])} ({answers['answered']:,} of {answers['photos']:,}), "
               f"{_pct(answers['answered_accuracy'])} of them right" if answers["answered"] else "none")
    rows = [
        ("a species", words["species"] + (f" (level {_pct(level, 0)})" if level is not None else ""), species),
        ("unsure between two", words["unsure"], _pct(answers["unsure"])),
        (f"not one of the {classes} species", words["unknown"] + f" (score above {trust['threshold']:.4g})",
         _pct(answers["unknown"])),
    ]
    body = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{c}</td></tr>" for a, b, c in rows)
    promise = ""
    if trust.get("keep_promised") is False:
        promise = f'<p class="note">Warning: {e(promise_note(int(trust["val_photos"]), trust["keep"], trust["keep_confidence"]))}.</p>'
    return (f'<table class="narrow"><thead><tr><th>answer</th><th>what it means</th><th>{e(result["split"])} photos'
            f'</th></tr></thead><tbody>{body}</tbody></table>{promise}')


def _data_section(run_dir: Path) -> str:
    try:
        manifest = read_manifest(RunFolder(run_dir).manifest)
    except PlantidError as exc:
        return f'<p class="empty">No data summary: {e(exc)}</p>'
    counts = {s: manifest.class_counts(s) for s in SPLITS}
    sizes = manifest.split_sizes()
    chart = class_distribution_figure(counts, "Photos per class and split", manifest.classes)
    parts = [_img(png_bytes(chart), "Photos per class and split")]
    head = "".join(f"<th>{e(s)}</th>" for s in SPLITS)
    rows = []
    for c in manifest.classes:
        cells = "".join(f"<td>{counts[s][c]:,}</td>" for s in SPLITS)
        rows.append(f'<tr><td class="name">{e(c)}</td>{cells}<td>{sum(counts[s][c] for s in SPLITS):,}</td></tr>')
    total = "".join(f"<td>{sizes[s]:,}</td>" for s in SPLITS)
    rows.append(f'<tr class="total"><td>total ({len(manifest.classes)} classes)</td>{total}<td>{sum(sizes.values()):,}</td></tr>')
    parts.append(f'<table class="narrow"><thead><tr><th>class</th>{head}<th>total</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    scan = _read_json(RunFolder(run_dir).scan)
    if isinstance(scan, dict):
        bad = scan.get("num_bad", 0) or 0
        dups = len(scan.get("duplicate_groups") or [])
        near = len(scan.get("near_duplicate_groups") or [])
        parts.append(f'<p class="note">Scanned {e(scan.get("root", "the data folder"))}: {int(bad):,} unusable file(s) '
                     f'skipped; {dups:,} group(s) of byte-identical photos and {near:,} group(s) of near-duplicate '
                     f'photos, each group kept in one split.</p>')
    return "".join(parts)


def _metrics_table(result: dict) -> str:
    tta = result.get("tta")
    m = result["metrics"]
    head = "<th>metric</th><th>without TTA</th>" + (f"<th>with TTA ({len(tta['views'])} views)</th>" if tta else "")
    rows = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1")]
    body = []
    for label, key in rows:
        extra = f"<td>{_pct(tta['metrics'][key])}</td>" if tta else ""
        body.append(f"<tr><td>{e(label)}</td><td>{_pct(m[key])}</td>{extra}</tr>")
    for k, v in (m.get("top_k") or {}).items():
        extra = f"<td>{_pct(tta['metrics']['top_k'].get(k))}</td>" if tta else ""
        body.append(f"<tr><td>top-{e(k)} accuracy</td><td>{_pct(v)}</td>{extra}</tr>")
    table = f'<table class="narrow"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    if tta:
        table += f'<p class="note">TTA views: {e(", ".join(tta["views"]))} (softmax probabilities averaged).</p>'
    return table


def _trust_section(run_dir: Path, result: dict) -> str:
    """Calibration and the "not one of my species" check (eval.json's "trust"), or how to get them."""
    trust = result.get("trust")
    if not trust:
        return ('<p class="empty">This run has no trust files: photos of other things are not flagged as unknown '
                f'and probabilities are not calibrated. Fit them with <code>plantid trust {e(run_dir)}</code>, then '
                'evaluate again.</p>')
    cal = trust["calibration"]
    rows = [
        ("unknown-photo score", describe_detector(trust)),
        ("threshold (above: unknown)", f"{trust['threshold']:.4g}, chosen on the val photos to keep {_pct(trust['keep'], 0)} "
                                       "of new photos of the known species"
                                       + (f" with {_pct(trust['keep_confidence'], 0)} confidence"
                                          if trust.get("keep_confidence") else "")),
        (f"{result['split']} photos kept as known", _pct(trust["kept"])),
        ("temperature", f"{trust['temperature']:.3f}"),
        ("calibration error (ECE)", f"{_pct(cal['ece_before'])} softmax &rarr; {_pct(cal['ece_after'])} with temperature"),
        *([("ECE a perfectly calibrated model would show on these photos (5-95%)",
            f"{_pct(cal['ece_if_calibrated'][0])} ({_pct(cal['ece_if_calibrated'][1])}-{_pct(cal['ece_if_calibrated'][2])})")]
          if cal.get("ece_if_calibrated") else []),
        *([("val ECE, each photo's temperature fitted without it", _pct(cal["val_ece_crossfit"]))]
          if cal.get("val_ece_crossfit") is not None else []),  # older eval.json files lack these
        ("negative log-likelihood", f"{cal['nll_before']:.4f} &rarr; {cal['nll_after']:.4f}"),
    ]
    body = "".join(f"<tr><td>{e(a)}</td><td>{b}</td></tr>" for a, b in rows)
    out = [_answers_table(result, trust), f'<table class="narrow"><tbody>{body}</tbody></table>']
    if trust["ood"]:
        ood_rows = "".join(
            f"<tr><td><code>{e(x['folder'])}</code></td><td>{x['n_images']:,}</td><td>{_pct(x['rejected'])}</td>"
            f"<td>{'n/a' if x['auroc'] is None else format(x['auroc'], '.4f')}</td></tr>" for x in trust["ood"])
        out.append('<table class="narrow"><thead><tr><th>photos of none of the species</th><th>photos</th>'
                   f'<th>answered unknown</th><th>AUROC</th></tr></thead><tbody>{ood_rows}</tbody></table>')
    else:
        out.append('<p class="note">Add <code>--ood FOLDER</code> to <code>plantid evaluate</code> to measure how many '
                   'photos of other things are answered unknown.</p>')
    out.append(_img(png_bytes(reliability_figure(trust, title=f"Reliability: {result['split']}"), max_width=1000),
                    "Reliability diagram", "Accuracy against confidence in 15 bins: on the diagonal, a photo given "
                    "80% is right 80% of the time."))
    scores_png = run_dir / evaluation_files(result["split"])["ood"]
    if trust["ood"] and scores_png.is_file():
        out.append(_img(scores_png.read_bytes(), "OOD score histograms",
                        "The score of the evaluated photos and of each foreign folder; above the line: unknown."))
    return "".join(out)


def weak_classes(result: dict) -> set[str]:
    """Classes (with support) whose F1 is below 0.5 or more than 10 points below the macro-F1."""
    macro = float(result["metrics"]["macro_f1"])
    return {r["class"] for r in result["per_class"]
            if r["support"] > 0 and (r["f1"] < WEAK_F1 or r["f1"] < macro - WEAK_GAP)}


def _per_class_table(result: dict) -> str:
    weak = weak_classes(result)
    tta = result.get("tta")
    tta_f1 = {r["class"]: r["f1"] for r in tta["per_class"]} if tta else {}
    recall_bounds = (result.get("intervals") or {}).get("recall") or {}
    head = ("<th>class</th><th>precision</th><th>recall</th><th>recall, 95% interval</th><th>F1</th>"
            + ("<th>F1 with TTA</th>" if tta else "") + "<th>support</th>")
    body = []
    for r in result["per_class"]:
        bounds = recall_bounds.get(r["class"])
        shown = f"{bounds[0]:.2f}-{bounds[1]:.2f}" if bounds else ""
        cls = "weak" if r["class"] in weak else "absent" if r["support"] == 0 else ""
        tag = '<span class="tag">weak</span>' if r["class"] in weak else ""
        bar = f'<span class="bar" style="width:{max(2, round(60 * r["f1"]))}px"></span>'
        extra = f"<td>{r_f:.3f}</td>" if tta and (r_f := tta_f1.get(r["class"])) is not None else ("<td></td>" if tta else "")
        body.append(
            f'<tr class="{cls}"><td class="name">{e(r["class"])}{tag}</td><td>{r["precision"]:.3f}</td>'
            f'<td>{r["recall"]:.3f}</td><td>{shown}</td><td>{bar}{r["f1"]:.3f}</td>{extra}<td>{int(r["support"]):,}</td></tr>'
        )
    note = (f'<p class="note">Highlighted: F1 below {WEAK_F1:.2f} or more than {100 * WEAK_GAP:.0f} points below the '
            f'macro-F1 ({_pct(result["metrics"]["macro_f1"], 1)}). ' +
            (f"{len(weak)} weak class(es)." if weak else "No weak class.") + "</p>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{note}'


def _next_steps_section(run_dir: Path, result: dict) -> str:
    """Per weak class: its confusions, photo counts, audit suspects and what to do about it."""
    advice = advise(run_dir, result, weak_classes(result))
    if not advice:
        return '<p class="note">No weak class: nothing stands out to fix.</p>'
    blocks = []
    for a in advice:
        pairs = lambda items: ", ".join(f"{e(c)} ({n})" for c, n in items) or "none"  # noqa: E731
        photos = (f"{a.train_photos:,} training photos (median class {a.median_train_photos:g})"
                  if a.train_photos is not None and a.median_train_photos is not None else "photo count unknown")
        facts = (f"<li>taken for: {pairs(a.taken_for)}; taken for it: {pairs(a.mistaken_for_it)}</li>"
                 f"<li>{e(photos)}</li>"
                 f"<li>audit: {a.audit_given} flagged photo(s) labelled {e(a.name)}, {a.audit_suggested} "
                 f"suggested to be {e(a.name)}</li>")
        todo = "".join(f"<li><b>{e(s)}</b></li>" for s in a.suggestions)
        blocks.append(f'<div class="advice"><h3>{e(a.name)} <span class="tag">F1 {a.f1:.2f}</span></h3>'
                      f"<ul>{facts}</ul><ul>{todo}</ul></div>")
    return "".join(blocks)


def _audit_section(run_dir: Path, limit: int = 10) -> str:
    """The label audit's result (audit.csv), when `plantid audit` has run."""
    path = RunFolder(run_dir).audit_csv
    if not path.is_file():
        return (f'<p class="empty">No label audit yet: <code>plantid audit {e(run_dir)}</code> lists the photos most '
                "likely mislabelled.</p>")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    flagged = [r for r in rows if r.get("flagged") == "1"]
    body = "".join(f'<tr><td class="name">{e(Path(r["path"]).name)}</td><td>{e(r["split"])}</td><td>{e(r["given"])}</td>'
                   f'<td>{e(r["suggested"])}</td><td>{_pct(r["suggested_prob"], 0)}</td></tr>' for r in flagged[:limit])
    table = ('<table class="narrow"><thead><tr><th>photo</th><th>split</th><th>given</th><th>suggested</th>'
             f"<th>probability</th></tr></thead><tbody>{body}</tbody></table>") if flagged else ""
    return (f'<p class="note">{len(flagged):,} of {len(rows):,} audited photos flagged as likely mislabelled '
            f"(all in <code>{e(path.name)}</code>; review them with <code>plantid review {e(run_dir)}</code>).</p>{table}")


def _other_evaluations_section(run_dir: Path, shown: dict | None) -> str:
    """Every evaluation of the run besides the one the report is built on: val, train, folders."""
    rows = []
    for path in sorted(run_dir.glob("eval*.json")):
        main = shown is not None and path.name == evaluation_files(shown["split"])["json"]
        data = None if main else read_or_warn(Evaluation.read, path)
        if data is None:
            continue
        rows.append(f'<tr><td class="name">{e(data.split)}</td><td>{data.n_images or 0:,}</td>'
                    f'<td>{_pct(data.metrics.accuracy)}</td><td>{_pct(data.metrics.macro_f1)}</td>'
                    f'<td>{_pct(data.tta.metrics.accuracy) if data.tta else "not run"}</td>'
                    f"<td><code>{e(path.name)}</code></td></tr>")
    if not rows:
        return ('<p class="empty">No other evaluation: <code>plantid evaluate RUN --split val</code> or '
                "<code>--split FOLDER</code> adds one.</p>")
    return ('<table><thead><tr><th>split or folder</th><th>photos</th><th>accuracy</th><th>macro-F1</th>'
            f'<th>accuracy with TTA</th><th>file</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _since_section(run_dir: Path, config) -> str:
    """For a run started from another (train.init_from): photos per class and accuracy, before and now."""
    parent = Path(config.train.init_from)
    before, now = RunFolder(parent), RunFolder(run_dir)
    try:
        old_counts, new_counts = read_manifest(before.manifest).class_counts(), read_manifest(now.manifest).class_counts()
    except PlantidError as exc:
        return f'<p class="empty">Cannot compare with {e(parent)}: {e(exc)}</p>'
    old_summary, new_summary = read_or_warn(read_summary, parent), read_or_warn(read_summary, run_dir)
    names = sorted(set(old_counts) | set(new_counts))
    body = "".join(f'<tr><td class="name">{e(c)}</td><td>{old_counts.get(c, 0):,}</td><td>{new_counts.get(c, 0):,}</td>'
                   f"<td>{new_counts.get(c, 0) - old_counts.get(c, 0):+,}</td></tr>" for c in names)
    applied = _read_json(before.apply_log) or {}
    kinds = Counter(op.get("kind") for op in applied.get("operations", []) if isinstance(op, dict))
    moves = (f"{kinds.get('move', 0)} photo(s) moved (relabelled or excluded) and {kinds.get('copy', 0)} added by "
             f"<code>plantid apply</code> from its review" if kinds else "no review applied from it")
    return (f'<p class="note">Started from the weights of <code>{e(parent)}</code> ({moves}). Best val accuracy '
            f'{_pct(old_summary and old_summary.best_val_acc)} then, {_pct(new_summary and new_summary.best_val_acc)} '
            f'now; test {_pct(old_summary and old_summary.test_acc)} then, {_pct(new_summary and new_summary.test_acc)} '
            'now.</p>'
            '<table class="narrow"><thead><tr><th>class</th><th>photos then</th><th>photos now</th><th>change</th>'
            f"</tr></thead><tbody>{body}</tbody></table>")


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


def _config_section(run_dir: Path) -> str:
    """The run's config.yaml as one small table per section (the raw YAML below, collapsed)."""
    import yaml

    try:
        text = RunFolder(run_dir).config.read_text(encoding="utf-8")
    except OSError:
        return '<p class="empty">No config.yaml in the run folder.</p>'
    try:
        data = load_yaml(text)
    except yaml.YAMLError:
        data = None
    raw = f"<details><summary>config.yaml</summary><pre>{e(text.rstrip())}</pre></details>"
    if not isinstance(data, dict):
        return f"<pre>{e(text.rstrip())}</pre>"
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    boxes = []
    if top:
        sections = {"run": top, **sections}
    for name, values in sections.items():
        rows = "".join(f'<tr><td>{e(k)}</td><td>{e(_config_value(v))}</td></tr>' for k, v in values.items())
        boxes.append(f'<div class="cfg"><h3>{e(name)}</h3><table><tbody>{rows}</tbody></table></div>')
    return f'<div class="cfg-grid">{"".join(boxes)}</div>{raw}'


# ---- page -------------------------------------------------------------------------------------------


def render_report(run_dir: Path, result: dict | None, note: str | None) -> str:
    """The report's HTML text for a run folder and its evaluation (pure: reads files, writes none)."""
    run_dir = Path(run_dir)
    summary = read_or_warn(read_summary, run_dir)
    try:
        config = load_run_config(RunFolder(run_dir).config)
    except PlantidError:
        config = None
    config_model = (summary.model if summary else None) or (config.model.name if config else "unknown model")
    planned_epochs = config.train.epochs if config else None
    name = run_dir.resolve().name
    trained_at = _when(RunFolder(run_dir).summary) or _when(RunFolder(run_dir).best_checkpoint) or "unknown date"
    split_label = "Validation" if result is not None and result.get("split") == "val" else "Test"

    nav = [("summary", "Summary"), ("data", "Data"), ("training", "Training"), ("evaluation", "Evaluation"),
           ("confusion", "Confusion matrix"), ("classes", "Per class"), ("next", "Next steps"), ("errors", "Errors"), ("trust", "Trust"),
           ("audit", "Audit"), ("evaluations", "Other evaluations"), ("config", "Config")]
    sub_bits = [f"model <b>{e(config_model)}</b>"]
    if summary and summary.recipe:
        sub_bits.append(f"recipe <b>{e(summary.recipe)}</b>")
    if summary and summary.image_size:
        sub_bits.append(f"{e(summary.image_size)} px input")
    sub_bits.append(f"trained {e(trained_at)}")

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>plantid report: {e(name)}</title><style>{CSS}</style></head><body><main>",
        f"<header><h1>Plant classifier: {e(name)}</h1><p class=\"sub\">{' &middot; '.join(sub_bits)}</p></header>",
        "<nav>" + "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in nav) + "</nav>",
        f'<section id="summary">{_key_numbers(summary, result, split_label, planned_epochs)}',
    ]
    if note:
        out.append(f'<p class="note">{e(note)}</p>')
    out.append("</section>")

    out.append(f'<section id="data"><h2>Data</h2>{_data_section(run_dir)}</section>')

    phases = [(p.epochs, p.image_size) for p in config.train.resize_phases] if config else []
    curves = training_curves_figure(RunFolder(run_dir).metrics, size_phases=phases,
                                    final_size=config.data.image_size if config else None)
    out.append('<section id="training"><h2>Training</h2>')
    if curves is not None:
        out.append(_img(png_bytes(curves, max_width=1600), "Training curves",
                        "Per-epoch loss, accuracy and learning rate (from metrics.csv)."
                        + (" Shaded: epochs trained at a smaller image size (validation always "
                           "runs at the final size)." if phases else "")))
    else:
        out.append('<p class="empty">No metrics.csv with per-epoch values in the run folder.</p>')
    out.append("</section>")

    out.append('<section id="evaluation"><h2>Evaluation</h2>')
    if result is None:
        out.append('<p class="empty">Not evaluated.</p></section>')
    else:
        where = f"{result['split']} split" if result["split"] in ("test", "val", "train") else f"folder {result['split']}"
        out.append(f'<p class="note">{result["n_images"]:,} images of the {e(where)}, checkpoint '
                   f'<code>{e(result["checkpoint"])}</code>.</p>{_metrics_table(result)}</section>')
        classes = result["classes"]
        out.append('<section id="confusion"><h2>Confusion matrix</h2>')
        out.append(_img(png_bytes(confusion_figure(result["confusion"], classes,
                                                   title=f"Confusion matrix: {where} ({result['n_images']} images)"),
                                  max_width=2400),
                        "Confusion matrix", "Rows: true class; columns: predicted class (without TTA)."))
        out.append("</section>")
        out.append(f'<section id="classes"><h2>Per class</h2>{_per_class_table(result)}</section>')
        out.append(f'<section id="next"><h2>What to do next</h2>{_next_steps_section(run_dir, result)}</section>')
        worst = result.get("worst") or []
        n_errors = result["n_images"] - sum(result["confusion"][i][i] for i in range(len(classes)))
        out.append('<section id="errors"><h2>Errors</h2>')
        title = f"Most confident mistakes ({len(worst)} of {n_errors} shown)" if n_errors else "Mistakes"
        grid = png_bytes(error_grid_figure(worst, title=title), max_width=1200, palette=bool(worst))
        out.append(_img(grid, "Misclassified photos",
                        "Each photo: true class, predicted class and the model's confidence in it (without TTA)."))
        out.append("</section>")
        out.append('<section id="trust"><h2>Trust: unknown photos and calibration</h2>'
                   f"{_trust_section(run_dir, result)}</section>")

    out.append(f'<section id="audit"><h2>Label audit</h2>{_audit_section(run_dir)}</section>')
    out.append('<section id="evaluations"><h2>Other evaluations</h2>'
               f"{_other_evaluations_section(run_dir, result)}</section>")
    if config is not None and config.train.init_from is not None:
        out.append(f'<section id="since"><h2>Since the earlier run</h2>{_since_section(run_dir, config)}</section>')
    out.append(f'<section id="config"><h2>Configuration</h2>{_config_section(run_dir)}</section>')
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out.append(f"<footer>Generated by plantid on {e(generated)} from <code>{e(run_dir.resolve())}</code>. "
               "Self-contained: no external resources.</footer>")
    out.append("</main></body></html>")
    return scrollable_tables("\n".join(out) + "\n")


def scrollable_tables(page: str) -> str:
    """Every table in its own sideways-scrolling box, so a wide one never widens the page on a phone."""
    return page.replace("<table", '<div class="scroll"><table').replace("</table>", "</table></div>")


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
