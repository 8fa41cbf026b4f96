"""What the benchmark scripts share: commands run with a log, statistics over result cells, and
results written whole."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"

# The photo files the plain scripts read from a class folder (plantid itself decides from headers).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def plantid_cmd(*args: str) -> list[str]:
    """The `plantid` command line, as this interpreter's environment runs it."""
    return [sys.executable, "-m", "plantid.cli", *args]


def run_logged(cmd: list[str], log: Path, cwd: Path | None = REPO) -> float:
    """Run `cmd` with its output appended to `log` (library warnings off); its wall seconds. Exits
    with the log's last lines when it fails, so a long benchmark stops at the first broken cell."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        started = time.perf_counter()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}).returncode
        seconds = time.perf_counter() - started
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {code}); last lines of {log}:\n{tail}")
    return seconds


def git_commit(*paths: str) -> str | None:
    """The last commit (of `paths`, or HEAD), so each cell says which code produced it."""
    proc = subprocess.run(["git", "log", "-1", "--format=%h", "--", *paths], capture_output=True, text=True, cwd=REPO)
    return proc.stdout.strip() or None


def summarize(cells: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Per (data set, method): the seeds, and mean / sample std / min / max of each of `keys`.
    Cells marked `superseded` (a rule corrected since, said in docs/decisions.md) are left out."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        if not cell.get("superseded"):
            groups.setdefault((cell["dataset"], cell["method"]), []).append(cell)
    rows = []
    for (dataset, method), group in sorted(groups.items()):
        row: dict = {"dataset": dataset, "method": method, "seeds": sorted(c["seed"] for c in group)}
        for key in keys:
            values = [c[key] for c in group if c.get(key) is not None]
            if values:
                row[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values)}
        rows.append(row)
    return rows


def write_json(data: dict, path: Path | None, echo: bool = False) -> None:
    """Write `data` as JSON to `path` through a temporary file, so a result is never half written;
    with `echo`, print it too."""
    text = json.dumps(data, indent=2)
    if echo:
        print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)


def save_results(results: dict, path: Path, keys: tuple[str, ...]) -> None:
    """Write a benchmark's results (``{"cells": [...]}``) with their summary over `keys`, whole."""
    results["summary"] = summarize(results["cells"], keys)
    write_json(results, path)


def load_results(path: Path) -> dict:
    """The results JSON so far ({"cells": [...]}), or an empty one."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"cells": []}


def markdown_table(columns: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table: the first `left` columns aligned left, the others (numbers) right."""
    rule = "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|"
    return "\n".join(["| " + " | ".join(columns) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)])


def run_benchmark(args: argparse.Namespace, keys: tuple[str, ...], make_cell, table) -> None:
    """For each seed and data set of `args` without a cell in `args.out` yet (superseded cells do not
    count; none with --table), `make_cell(dataset, seed)`, each cell written with the command line as
    soon as it is done so an interrupted run goes on; then print `table(cells)` of the current cells."""
    for seed in [] if args.table else args.seeds:
        for name in args.datasets:
            if any((c["dataset"], c["seed"]) == (name, seed) and not c.get("superseded")
                   for c in load_results(args.out)["cells"]):
                continue
            print(f"run {name} seed {seed} ...", flush=True)
            cell = make_cell(name, seed)
            results = load_results(args.out)
            results["cells"].append(cell)
            results["command"] = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
            save_results(results, args.out, keys)
    print(table([c for c in load_results(args.out)["cells"] if not c.get("superseded")]))


def cell_parser(doc: str | None, *, work: Path, out: Path, datasets: list[str] | None,
                arm: str) -> argparse.ArgumentParser:
    """The command line of a benchmark made of cells (data set x seed x method): which sets and seeds,
    where the run folders and the results go, an arm of overrides beside the defaults, --table."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=datasets, help="folder names under --root (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=DATASETS, help="folder of data sets (default ../shared/datasets)")
    ap.add_argument("--work", type=Path, default=work, help="run folders")
    ap.add_argument("--out", type=Path, default=out, help="the results JSON (cells already there are skipped)")
    ap.add_argument("--variant", help=f"name an arm: its cells are {arm}+VARIANT, trained with the --set overrides")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="plantid overrides (key=value)")
    ap.add_argument("--table", action="store_true", help="only print the table of the results so far")
    return ap
