"""docs/benchmarks.md's generated sections match the JSON files they come from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "render_docs.py"
_spec = importlib.util.spec_from_file_location("render_docs", SCRIPT)
render_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)


def test_the_benchmarks_page_is_current_with_its_json_files():
    assert render_docs.main(["--check"]) == 0, "run `python benchmarks/render_docs.py` after a benchmark"


def test_a_changed_result_changes_its_section_only():
    train = {"runs": [{"recipe": "cpu-default", "image_size": 192, "px": "128x6+192x3", "epochs": 9,
                       "train_seconds": 300.4, "val_acc": 0.9, "test_acc": 0.85, "test_acc_tta": None}]}
    page = ("prose 87%\n<!-- render_docs: training -->\nold table\n<!-- /render_docs -->\nmore prose\n")
    out = render_docs.render(page, lambda name: train if name == "train_cpu_default.json" else {"runs": []})
    assert out.startswith("prose 87%\n<!-- render_docs: training -->\n| recipe |") and out.endswith("more prose\n")
    assert "| `cpu-default` (lite0, ImageNet) | 128 x 6 + 192 x 3 | 300 | 90.00% | 85.00% |  | " in out
    assert "old table" not in out
