"""The review page's API: the photos a run doubts, thumbnails, decisions appended to the corrections file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plantid.curate.corrections import read_decisions
from plantid.curate.sort import SortDecision, sorted_csv
from plantid.data.split import read_manifest
from plantid.serve.review import THUMB_PX, create_review_app
from plantid.trustfit.audit import AuditRow, audit_csv


@pytest.fixture
def doubted_run(copy_run: Path, tmp_path: Path, tiny_classes: list[str]) -> tuple[Path, Path, list[str]]:
    """The tiny run with an audit.csv (one flagged photo per class, one not flagged), a val error
    that repeats an audit suspect, and a sorted folder with one unsure and one sure photo."""
    rows = read_manifest(copy_run / "split.csv").rows_for("train")
    picked = [next(r for r in rows if r.label == c) for c in tiny_classes]
    audit = [AuditRow(r.path, "train", r.label, tiny_classes[(i + 1) % 3], 0.2, 0.7, 0.2, True, 0)
             for i, r in enumerate(picked)]
    quiet = next(r for r in rows if r.path not in {p.path for p in picked})
    audit.append(AuditRow(quiet.path, "train", quiet.label, quiet.label, 0.9, 0.9, 0.9, False, 0))
    (copy_run / "audit.csv").write_text(audit_csv(audit), encoding="utf-8")
    (copy_run / "eval_val.json").write_text(json.dumps({"split": "val", "metrics": {"accuracy": 0.5}, "worst": [
        {"path": picked[0].path, "true": picked[0].label, "pred": tiny_classes[2], "confidence": 0.6}]}))
    sorted_dir = tmp_path / "sorted"
    sorted_dir.mkdir()
    unsure = SortDecision(path=quiet.path, decision="unsure", placed="x", species=tiny_classes[2], probability=0.5)
    sure = SortDecision(path=picked[1].path, decision=tiny_classes[1], placed="y", species=tiny_classes[1],
                        probability=0.99)
    (sorted_dir / "sorted.csv").write_text(sorted_csv([unsure, sure]), encoding="utf-8")
    return copy_run, sorted_dir, [r.path for r in picked] + [quiet.path]


def test_review_lists_decides_and_undoes(doubted_run, tiny_classes: list[str]) -> None:
    run, sorted_dir, paths = doubted_run
    with TestClient(create_review_app(run, [sorted_dir])) as client:
        page = client.get("/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        data = client.get("/api/items").json()
        assert data["classes"] == tiny_classes
        items = data["items"]
        assert [i["path"] for i in items] == paths  # audit suspects, then the unsure photo; each once
        assert items[0]["sources"] == ["audit", "val error"] and items[3]["sources"] == ["unsure"]
        assert items[3]["given"] == "" and items[3]["suggested"] == tiny_classes[2]

        thumb = client.get(f"/api/photo/{items[0]['id']}")
        with Image.open(io.BytesIO(thumb.content)) as img:
            assert img.format == "JPEG" and max(img.size) <= THUMB_PX

        odd = tiny_classes[2]  # holds HTML and quotes: stored and answered as plain text
        answer = client.post("/api/decide", json={"id": items[0]["id"], "action": "relabel", "label": odd}).json()
        assert answer["decision"]["action"] == "relabel" and answer["decision"]["label"] == odd
        client.post("/api/decide", json={"id": items[1]["id"], "action": "exclude"})
        assert client.post("/api/undo", json={"id": items[1]["id"]}).json()["decision"] is None
        refused = client.post("/api/decide", json={"id": items[2]["id"], "action": "relabel", "label": "nope"})
        assert refused.status_code == 422 and "unknown class" in refused.json()["detail"]
        assert client.get("/api/photo/99").status_code == 404

    decisions = read_decisions(run)
    assert [(d.action, d.label, d.source) for d in decisions] == [
        ("relabel", odd, "audit"), ("exclude", "", "audit"), ("undo", "", "audit")]
    assert all(d.time.endswith("+00:00") for d in decisions) and decisions[0].sha256
