"""`plantid predict`: expand the inputs, predict, print or write the results.

Inputs are files, folders (searched recursively for image extensions, hidden files and folders
skipped) and glob patterns (`*`, `?`, `[...]`, `**`), each expanded in sorted order; the same
photo named twice is predicted once. A file given by name is always tried, whatever its
extension, so a mislabelled file gets a reason instead of silence.

Output formats:

* table: file, the answer (the species; "unsure: A or B" below the run's answer level; "unknown
  (closest: X)" for a photo unlike every known species), the top probability, and the top-k species
  with probabilities (rich table); with trust files a column gives the OOD score.
* csv: long format, one row per file and rank: ``file,label,probability,rank,unknown,ood_score,answer``
  (rank 1 = most likely), so top-k rows per file; easy to filter (rank == 1) or pivot. ``unknown``
  is true/false and ``ood_score`` the score (higher = less like the training photos); both are
  empty for a run without trust files. ``answer`` is species, unsure or unknown
  (plantid.infer.answers).
* json: a list of ``{"file": ..., "unknown": ..., "ood_score": ..., "answer": {"kind", "species",
  "text"}, "predictions": [{"label": ..., "probability": ...}, ...]}`` (unknown and ood_score null
  without trust files).

Probabilities are calibrated (softmax of logits / the run's temperature) when the run has trust
files; a run without them predicts as before, with a one-line note on stderr.

With ``--group folder`` (the photos in one folder are one plant) or ``--group groups.csv`` (columns
``group,file``, files relative to the CSV), each group gets one answer combined from its photos
(plantid.infer.group: the mean of the calibrated log-probabilities; unknown when the mean OOD
score is above the threshold). The table and CSV then have one entry per group (CSV columns
``group,photos,label,probability,rank,unknown,ood_score``), the JSON one object per group with
its files and each photo's own answer.

Unreadable files are reported on stderr, one line each (``skipped PATH: reason``), and left
out of the output. Exit code: 0 when at least one photo was predicted, 1 when none could be.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from plantid.data.images import is_hidden, is_image_name
from plantid.errors import PlantidError
from plantid.fileio import write_text_atomic
from plantid.infer.answers import Answer, answer_for, short_label
from plantid.infer.backend_choice import BACKENDS, BackendChoice, choose_backend
from plantid.infer.group import GroupPrediction, combine
from plantid.infer.predictor import Predictor
from plantid.infer.view_names import parse_tta
from plantid.outputs import head, refuse_foreign_file, refuse_onto_inputs, spreadsheet_safe

OUTPUT_FORMATS = ("table", "csv", "json")
CSV_HEADER = ["file", "label", "probability", "rank", "unknown", "ood_score", "answer"]
GROUP_CSV_HEADER = ["group", "photos", "label", "probability", "rank", "unknown", "ood_score"]
GROUP_BY_FOLDER = "folder"
GLOB_CHARS = set("*?[")


def _folder_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, skipping hidden files and hidden sub-folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(Path(d)))
        for name in filenames:
            path = Path(dirpath) / name
            if is_image_name(path) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: str(p))


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files, folders (recursive) and globs -> photo paths, sorted within each input, deduplicated.

    An input that matches nothing is a usage error (PlantidError): a typo should not silently
    predict fewer photos than asked for.
    """
    if not paths:
        raise PlantidError("no photos given: pass image files, folders or globs (e.g. `plantid predict RUN leaf.jpg`)")
    result: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        if not raw.strip():  # Path("") is the current folder: an empty argument must not predict all of it
            raise PlantidError("an empty path was given (an unset shell variable?); pass image files, folders or globs")
        path = Path(raw).expanduser()
        if path.is_dir():
            matches = _folder_images(path)
            if not matches:
                raise PlantidError(f"{raw}: folder holds no photos ({', '.join(sorted({'.jpg', '.png', '.webp'}))} ...)")
        elif path.exists():
            matches = [path]
        elif GLOB_CHARS & set(raw):
            matches = []
            for hit in sorted(glob.glob(os.path.expanduser(raw), recursive=True)):
                hit_path = Path(hit)
                if hit_path.is_dir():
                    matches.extend(_folder_images(hit_path))
                elif hit_path.is_file() and not is_hidden(hit_path):
                    matches.append(hit_path)
            if not matches:
                raise PlantidError(f"{raw}: no file matches this pattern")
        else:
            raise PlantidError(f"{raw}: no such file or folder")
        for match in matches:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                result.append(match)
    return result


# file, top-k, unknown, OOD score, answer (plantid.infer.answers)
Row = tuple[str, list[tuple[str, float]], "bool | None", "float | None", "Answer | None"]


def _csv_flag(value: bool | None) -> str:
    return "" if value is None else str(bool(value)).lower()


def format_csv(rows: list[Row]) -> str:
    """`plantid predict --format csv`: one line per photo and rank, with the unknown flag and score."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for file, top, unknown, score, answer in rows:
        for rank, (label, prob) in enumerate(top, start=1):
            writer.writerow([spreadsheet_safe(file), spreadsheet_safe(label), f"{prob:.6f}", rank, _csv_flag(unknown),
                             "" if score is None else f"{score:.6g}", "" if answer is None else answer.kind])
    return buf.getvalue()


def format_json(rows: list[Row]) -> str:
    """`plantid predict --format json`: one object per photo, the shape the JSON API answers with."""
    data = [{"file": file, "unknown": unknown, "ood_score": None if score is None else float(f"{score:.6g}"),
             "answer": None if answer is None else answer.as_json(),
             "predictions": [{"label": label, "probability": round(prob, 6)} for label, prob in top]}
            for file, top, unknown, score, answer in rows]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def build_table(rows: list[Row], top_k: int, title: str | None = None) -> Table:
    """`plantid predict`'s terminal table: top answer, its probability, the runners-up, and unknowns."""
    table = Table(title=title, show_lines=False)
    scored = any(row[3] is not None for row in rows)
    table.add_column("file", overflow="fold")
    table.add_column("answer", style="bold green")
    table.add_column("prob", justify="right")
    if scored:
        table.add_column("OOD score", justify="right")
    if top_k > 1:
        table.add_column(f"top-{top_k}", overflow="fold")
    for file, top, unknown, score, answer in rows:
        label, prob = top[0]
        style = "dim" if unknown else None
        shown = short_label(answer) if answer is not None else label
        first = Text(shown, style="bold yellow") if answer is not None and answer.kind != "species" else shown
        cells = [file, first, f"{prob:.3f}"]
        if scored:
            cells.append("" if score is None else f"{score:.4g}")
        if top_k > 1:
            cells.append(", ".join(f"{lab} {p:.3f}" for lab, p in top))
        table.add_row(*cells, style=style)
    return table


def is_predictions_file(path: Path) -> bool:
    """True for a file `plantid predict --out` wrote: a csv with its header, a json list of its
    objects, or its plain-text table; anything else at --out is the user's and is not replaced."""
    start = head(path)
    if path.stat().st_size == 0:
        return True  # an empty file holds nothing to lose (e.g. made by mktemp for the output)
    text = start.decode("utf-8", errors="replace")
    if text.startswith((",".join(CSV_HEADER) + "\n", ",".join(GROUP_CSV_HEADER) + "\n")):
        return True
    if text.lstrip().startswith("[") and (text.strip() == "[]" or text.lstrip()[1:].lstrip().startswith(
            ('{\n    "file"', '{\n    "group"'))):
        return True
    # the table's header row (rich's heavy bars); "top-1" in tables written before the answer column
    return "\u2503 file" in text and ("\u2503 answer" in text or "\u2503 top-1" in text)


def _render_table_text(table: Table) -> str:
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False, no_color=True).print(table)
    return buf.getvalue()


def read_group_csv(csv_path: Path) -> list[tuple[str, list[Path]]]:
    """Groups from a CSV with columns group,file (files relative to the CSV's folder), in file order.

    A missing column, an empty cell or a file that does not exist is a PlantidError naming the line.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlantidError(f"{csv_path}: cannot read the group CSV ({exc}); give a UTF-8 file with columns group,file") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"group", "file"} <= {name.strip() for name in reader.fieldnames}:
        raise PlantidError(f"{csv_path}: needs a header with the columns group,file (one photo per line)")
    groups: dict[str, list[Path]] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row["group"] or not row["file"]:
            raise PlantidError(f"{csv_path}:{line}: empty group or file; every line names a group and a photo")
        path = Path(row["file"]).expanduser()
        path = path if path.is_absolute() else csv_path.parent / path
        if not path.is_file():
            raise PlantidError(f"{csv_path}:{line}: {path}: no such file; paths are relative to the CSV's folder")
        groups.setdefault(row["group"], []).append(path)
    if not groups:
        raise PlantidError(f"{csv_path}: no photos listed; add lines of group,file")
    return list(groups.items())


def group_by_folder(sources: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Photos grouped by the folder they are in (one folder = one plant), in order of appearance."""
    groups: dict[str, list[Path]] = {}
    for path in sources:
        groups.setdefault(str(Path(path).parent), []).append(Path(path))
    return list(groups.items())


def resolve_groups(group: str, paths: Sequence[str]) -> list[tuple[str, list[Path]]]:
    """`--group folder` (over the expanded inputs) or `--group FILE.csv` (the photos come from the CSV)."""
    if group.strip().lower() == GROUP_BY_FOLDER:
        return group_by_folder(expand_inputs(paths))
    if paths:
        raise PlantidError(f"--group {group}: the CSV lists the photos; drop the photo arguments or use --group folder")
    if not Path(group).is_file():
        raise PlantidError(f"--group {group}: neither 'folder' nor a CSV file with columns group,file")
    return read_group_csv(Path(group))


def format_group_csv(groups: list[GroupPrediction]) -> str:
    """`plantid predict --group ... --format csv`: one line per group and rank."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(GROUP_CSV_HEADER)
    for group in groups:
        for rank, (label, prob) in enumerate(group.top, start=1):
            writer.writerow([spreadsheet_safe(group.name), len(group.used), spreadsheet_safe(label), f"{prob:.6f}", rank,
                             _csv_flag(group.unknown),
                             "" if group.ood_score is None else f"{group.ood_score:.6g}"])
    return buf.getvalue()


def format_group_json(groups: list[GroupPrediction]) -> str:
    """`plantid predict --group ... --format json`: one object per group, with each photo's own answer."""
    def rounded(score: float | None) -> float | None:
        return None if score is None else float(f"{score:.6g}")

    data = [{"group": group.name, "files": [p.source for p in group.used], "unknown": group.unknown,
             "ood_score": rounded(group.ood_score),
             "predictions": [{"label": label, "probability": round(prob, 6)} for label, prob in group.top],
             "photos": [{"file": p.source, "unknown": p.unknown, "ood_score": rounded(p.ood_score),
                         "predictions": [{"label": label, "probability": round(prob, 6)} for label, prob in p.top]}
                        for p in group.used]}
            for group in groups]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def group_rows(groups: list[GroupPrediction], level: float | None = None, n_classes: int = 0) -> list[Row]:
    """Table rows for groups: the group's name and photo count in the first column, and the group's
    answer at the run's answer `level` (plantid.infer.answers)."""
    return [(f"{g.name} ({len(g.used)} photo{'s' if len(g.used) != 1 else ''})", g.top, g.unknown, g.ood_score,
             answer_for(g.top, g.unknown, level, n_classes) if g.top else None)
            for g in groups]


def predict_command(run: Path, paths: list[str], top_k: int = 3, tta: str | None = None, output_format: str = "table",
                    out: Path | None = None, backend: str = "auto", console: Console | None = None,
                    err_console: Console | None = None, group: str | None = None) -> int:
    """Predict photos with a run; print (or write to `out`) the results; return the exit code.

    With `out` and the table format, the file gets a plain-text table (or csv/json when its
    name ends in .csv/.json). With `group` ('folder' or a CSV of group,file) each group of
    photos of one plant gets one combined answer (plantid.infer.group).
    """
    console = console or Console()
    err_console = err_console or Console(stderr=True)
    fmt = (output_format or "").strip().lower()
    if fmt not in OUTPUT_FORMATS:
        raise PlantidError(f"unknown --format '{output_format}': use table, csv or json")
    if top_k < 1:
        raise PlantidError(f"--top-k must be at least 1, got {top_k}")
    if out is not None and Path(out).is_dir():
        raise PlantidError(f"--out {out}: is a folder; give a file name such as predictions.{'csv' if fmt == 'table' else fmt}")
    wants_views = bool(parse_tta(tta))  # a bad view name fails before the inputs are listed
    groups = resolve_groups(group, paths) if group is not None else None
    sources = [p for _, members in groups for p in members] if groups is not None else expand_inputs(paths)
    if out is not None:
        refuse_onto_inputs(out, sources)
        refuse_foreign_file(out, is_predictions_file, "predictions file")
    if backend == "auto":
        choice = choose_backend(run, wants_views)
    elif backend in BACKENDS:
        choice = BackendChoice(backend, "--backend")
    else:
        raise PlantidError(f"unknown backend '{backend}': use {', '.join(BACKENDS)}")
    predictor = Predictor.from_run(run, backend=choice.backend, tta=tta)
    err_console.print(f"backend: {choice.backend} ({choice.reason})", markup=False, highlight=False, soft_wrap=True)
    k = min(top_k, len(predictor.classes))

    if predictor.note:
        err_console.print(f"note: {predictor.note}", markup=False, highlight=False, soft_wrap=True)
    predictions = predictor.predict([str(p) for p in sources], top_k=k)
    rows: list[Row] = []
    for pred in predictions:
        if pred.ok:
            rows.append((pred.source, pred.top, pred.unknown, pred.ood_score, pred.answer))
        else:
            err_console.print(f"skipped {pred.source}: {pred.error}", markup=False, highlight=False, soft_wrap=True)

    if groups is not None:
        return _write_groups(predictor, groups, predictions, k, fmt, out, console, err_console)

    file_fmt = fmt
    if out is not None and fmt == "table":
        suffix = Path(out).suffix.lower()
        file_fmt = {".csv": "csv", ".json": "json"}.get(suffix, "table")
    views = predictor.views
    title = f"{predictor.model_id} ({predictor.backend}{', TTA ' + str(len(views)) + ' views' if views else ''})"
    if predictor.threshold is not None:
        kinds = [row[4].kind for row in rows if row[4] is not None]
        level = predictor.answer_level
        title += (f"\n{kinds.count('species')} named, {kinds.count('unsure')} unsure between two species"
                  + (f" (top probability below {100 * level:.0f}%)" if level is not None else "")
                  + f", {kinds.count('unknown')} not one of the {len(predictor.classes)} species "
                  f"(OOD score above {predictor.threshold:.4g})")
    text = {"csv": format_csv, "json": format_json}.get(file_fmt, lambda r: None)(rows)
    if out is not None:
        if text is None:
            text = _render_table_text(build_table(rows, k, title))
        write_text_atomic(out, text)
        err_console.print(f"wrote {len(rows)} predictions to {out}", markup=False, highlight=False, soft_wrap=True)
    elif fmt == "table":
        if rows:
            console.print(build_table(rows, k, title))
    else:
        console.out(text, end="", highlight=False)
    skipped = len(predictions) - len(rows)
    if skipped and not rows:
        err_console.print(f"no photo could be read ({skipped} skipped)", markup=False, highlight=False)
    return 0 if rows else 1


def _write_groups(predictor, groups: list[tuple[str, list[Path]]], predictions: list, k: int, fmt: str,
                  out: Path | None, console: Console, err_console: Console) -> int:
    """Combine each group's predictions and print or write them; 0 when at least one group was answered."""
    answered: list[GroupPrediction] = []
    start = 0
    for name, members in groups:
        result = combine(name, predictions[start:start + len(members)], predictor.classes, predictor.threshold, k)
        start += len(members)
        if result.ok:
            answered.append(result)
        else:
            err_console.print(f"skipped group {name}: none of its {len(members)} photo(s) could be read",
                              markup=False, highlight=False, soft_wrap=True)
    file_fmt = fmt
    if out is not None and fmt == "table":
        file_fmt = {".csv": "csv", ".json": "json"}.get(Path(out).suffix.lower(), "table")
    title = f"{predictor.model_id} ({predictor.backend}), {len(answered)} group(s) of photos of one plant"
    if predictor.threshold is not None:
        n_unknown = sum(1 for g in answered if g.unknown)
        title += (f"\n{n_unknown} of {len(answered)} group(s) look like none of the {len(predictor.classes)} species "
                  f"this model knows (mean OOD score above {predictor.threshold:.4g})")
    text = {"csv": format_group_csv, "json": format_group_json}.get(file_fmt, lambda g: None)(answered)
    if out is not None:
        if text is None:
            text = _render_table_text(build_table(group_rows(answered, predictor.answer_level, len(predictor.classes)),
                                                     k, title))
        write_text_atomic(out, text)
        err_console.print(f"wrote {len(answered)} group predictions to {out}", markup=False, highlight=False,
                          soft_wrap=True)
    elif fmt == "table":
        if answered:
            console.print(build_table(group_rows(answered, predictor.answer_level, len(predictor.classes)), k,
                                      title))
    else:
        console.out(text, end="", highlight=False)
    return 0 if answered else 1
