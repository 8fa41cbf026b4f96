"""The whole loop after the first model, as a user runs it, with the review page driven by Chromium.

Train a tiny run on a generated folder in which four photos of class "a" sit in class "b", audit
it, open `plantid review` in headless Chromium, relabel two of the planted photos (one by key, one
by the menu), exclude a third, take a decision back, `plantid apply`, add new photos, retrain from
the first run (`--from`, which grows its split) and check that the report shows the change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plantid.data.split import read_manifest
from tests.support.browser import NEEDS_CHROMIUM
from tests.support.cli import PLANTID
from tests.support.images import write_class_image
from tests.support.launch import running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser, NEEDS_CHROMIUM]

CLASSES = ("a", "b", '<b>x&y "q"')
PLANTED = tuple(f"planted_{i}.jpg" for i in range(4))  # photos of class a (colour 0) filed under b
TINY = ["--recipe", "simple-cnn", "data.image_size=32", "data.val=0.25", "data.test=0.25", "data.batch_size=8",
        "train.epochs=2", "train.progress=false"]


def _plantid(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PLANTID, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _photos(root: Path, per_class: int, seed: int, prefix: str = "") -> None:
    for k, name in enumerate(CLASSES):
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            write_class_image(root / name / f"{prefix}{name[:1]}_{i:03d}.jpg", k, 32, rng)


def _wait_status(card, text: str) -> None:
    """Wait until the card's decision line reads `text` (each decision is a request to the server)."""
    card.locator(".status", has_text=text).wait_for()
    assert card.locator(".status").inner_text() == text


def test_label_review_apply_grow_and_warm_start(browser, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, per_class=16, seed=0)
    rng = np.random.default_rng(99)
    for name in PLANTED:
        write_class_image(photos / "b" / name, 0, 32, rng)
    cache = f"data.cache_dir={tmp_path / 'cache'}"

    _plantid("train", "--data", str(photos), "--out", "run1", *TINY, cache, cwd=tmp_path)
    run1 = tmp_path / "run1"
    _plantid("audit", str(run1), "--splits", "train,val,test", cwd=tmp_path)  # the whole folder's labels
    _plantid("evaluate", str(run1), "--split", "val", cwd=tmp_path)
    first_split = {r.sha256: r.split for r in read_manifest(run1 / "split.csv").rows}

    with running_server(run1, timeout=90, command=("review",)) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(base + "/")
        page.wait_for_selector("body[data-state='ready']")
        cards = page.locator("article.card")
        names = [cards.nth(i).locator(".name").inner_text() for i in range(cards.count())]
        flagged = [i for i, n in enumerate(names) if n.endswith(tuple(f"/b/{p}" for p in PLANTED))]
        assert len(flagged) >= 3, names  # the audit flags the photos of class a filed under b
        planted, other = flagged[:2], flagged[2]  # two to relabel, one to exclude
        assert page.locator("article.card b").count() == 0  # the class name with HTML stays text
        assert CLASSES[2] in page.locator("select").first.inner_text()

        cards.nth(planted[0]).click()
        page.keyboard.press("2")  # class 2 of the run is "a" ('<b>x&y "q"' sorts first)
        _wait_status(cards.nth(planted[0]), "relabel → a")
        cards.nth(planted[1]).locator("select").select_option("a")  # by the menu
        _wait_status(cards.nth(planted[1]), "relabel → a")
        cards.nth(other).click()
        page.keyboard.press("k")
        _wait_status(cards.nth(other), "keep")
        cards.nth(other).click()
        page.keyboard.press("u")
        _wait_status(cards.nth(other), "undecided")
        page.keyboard.press("x")
        _wait_status(cards.nth(other), "exclude")
        assert page.locator("#summary").inner_text().endswith("3 decided")
        context.close()
    excluded = Path(names[other])

    dry = _plantid("apply", str(run1), "--to", str(photos), "--dry-run", cwd=tmp_path)
    relabelled = [Path(names[i]).name for i in planted]
    assert dry.stdout.count("would move") == 3 and (photos / "b" / relabelled[0]).is_file()
    _plantid("apply", str(run1), "--to", str(photos), cwd=tmp_path)
    for name in relabelled:
        assert (photos / "a" / name).is_file() and not (photos / "b" / name).exists()
    excluded_to = photos / "_excluded" / excluded.parent.name / excluded.name
    assert excluded_to.is_file() and not excluded.exists()
    assert "nothing to do" in _plantid("apply", str(run1), "--to", str(photos), cwd=tmp_path).stdout

    _photos(photos, per_class=4, seed=1, prefix="new_")
    trained = _plantid("train", "--data", str(photos), "--from", "run1", "--out", "run2", *TINY[2:], cache, cwd=tmp_path)
    assert "starting from the weights of" in trained.stderr
    run2 = tmp_path / "run2"
    rows = read_manifest(run2 / "split.csv").rows
    grown = {r.sha256: r for r in rows}
    assert all(grown[sha].split == side for sha, side in first_split.items() if sha in grown)  # nothing moved
    assert sum(1 for sha in first_split if sha not in grown) == 1  # the excluded photo dropped out
    assert {grown[r.sha256].label for r in rows if Path(r.path).name in relabelled} == {"a"}
    assert sum(1 for r in rows if Path(r.path).name.startswith("new_")) == 12
    assert f"init_from: {run1.resolve()}" in (run2 / "config.yaml").read_text(encoding="utf-8")

    _plantid("report", str(run2), cwd=tmp_path)
    report = (run2 / "report.html").read_text(encoding="utf-8")
    assert "Since the earlier run" in report and "3 photo(s) moved" in report
    a_row = report.split('<td class="name">a</td>')[-1].split("</tr>")[0]
    assert "<td>+6</td>" in a_row  # class a: 2 relabelled in, 4 new
    assert "What to do next" in report and "<b>x&y" not in report
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
