"""What to do next per weak class: evidence from the run's split, audit and scan, turned into advice."""

from __future__ import annotations

import json
from pathlib import Path

from plantid.data.split import read_manifest
from plantid.evaluate.next_steps import advise
from plantid.evaluate.report import load_or_run_evaluation, render_report
from plantid.trustfit.audit import AuditRow, audit_csv


def _evaluation(classes: list[str]) -> dict:
    """An evaluation where class 0 is weak (mostly taken for class 2), the others fine."""
    return {"classes": classes, "confusion": [[2, 1, 5], [0, 8, 0], [1, 0, 7]],
            "per_class": [{"class": classes[0], "f1": 0.36, "support": 8},
                          {"class": classes[1], "f1": 0.94, "support": 8},
                          {"class": classes[2], "f1": 0.70, "support": 8}],
            "metrics": {"macro_f1": 0.67}}


def test_advice_names_confusions_counts_audit_suspects_and_look_alikes(copy_run: Path, tiny_classes) -> None:
    weak, other = tiny_classes[0], tiny_classes[2]
    train = read_manifest(copy_run / "split.csv").rows_for("train")
    flagged = [r for r in train if r.label == weak][:2]
    rows = [AuditRow(r.path, "train", r.label, other, 0.1, 0.8, 0.1, True, 0) for r in flagged]
    (copy_run / "audit.csv").write_text(audit_csv(rows), encoding="utf-8")
    scan = json.loads((copy_run / "scan.json").read_text(encoding="utf-8"))
    scan["near_duplicate_groups"] = [[f"{weak}/x.jpg", f"{other}/y.jpg"], [f"{other}/p.jpg", f"{other}/q.jpg"]]
    (copy_run / "scan.json").write_text(json.dumps(scan), encoding="utf-8")

    result = _evaluation(tiny_classes)
    [advice] = advise(copy_run, result, {weak})
    assert advice.taken_for == [(other, 5), (tiny_classes[1], 1)] and advice.mistaken_for_it == [(other, 1)]
    assert advice.train_photos == 8 and advice.audit_given == 2
    assert advice.look_alikes == [[f"{weak}/x.jpg", f"{other}/y.jpg"]]
    assert advice.suggestions[0].startswith(f"Check the labels of the 2 photo(s) the audit flags in {weak}")
    assert "look alike across classes" in advice.suggestions[1]

    # the report built on the run's own evaluation, with these numbers: the advice is on the page
    page_result, _ = load_or_run_evaluation(copy_run)
    for row, weak_row in zip(page_result["per_class"], result["per_class"]):
        row.update(weak_row)
    page_result.update(confusion=result["confusion"], n_images=sum(map(sum, result["confusion"])))
    page_result["metrics"]["macro_f1"] = result["metrics"]["macro_f1"]
    html = render_report(copy_run, page_result, None)
    assert "What to do next" in html and "look alike across classes" in html
    assert "<b>x&y" not in html and "&lt;b&gt;x&amp;y" in html  # the HTML class name is escaped
    assert "2 of 2 audited photos flagged" in html


def test_a_class_with_few_photos_is_told_to_add_photos(copy_run: Path, tiny_classes) -> None:
    manifest = copy_run / "split.csv"
    weak = tiny_classes[1]
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, dropped = [lines[0]], 0
    for line in lines[1:]:
        if f",{weak},train," in line.replace('"', "") and dropped < 6:
            dropped += 1
            continue
        kept.append(line)
    manifest.write_text("".join(kept), encoding="utf-8")
    result = _evaluation(tiny_classes)
    result["per_class"][1]["f1"] = 0.3
    [advice] = advise(copy_run, result, {weak})
    assert advice.train_photos == 2
    assert any(s.startswith(f"Add photos of {weak}: it has 2 training photos") for s in advice.suggestions)
