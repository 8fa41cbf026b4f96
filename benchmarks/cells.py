"""What the benchmark scripts share: statistics over result cells, and results written whole."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

# The photo files the plain scripts read from a class folder (plantid itself decides from headers).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


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
