"""The HTML report at phone width (390 px) in headless Chromium: no sideways page scroll, class
names whole, plots at a readable size; screenshots go to test-artifacts/report/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plantid.evaluate.evaluation import evaluate_run
from plantid.evaluate.report import render_report
from tests.support.browser import NEEDS_CHROMIUM

pytestmark = [pytest.mark.browser, NEEDS_CHROMIUM]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"
LONG_NAMES = ["Fritillaria_imperialis_crown_imperial", "Leucanthemum vulgare (oxeye daisy)", "Species3"]
PHONE = 390


@pytest.fixture(scope="module")
def phone_report(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the session's tiny run, its classes renamed to long real-world species names."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("phone") / "run", symlinks=True))
    evaluate_run(run, "test")
    result = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    rename = dict(zip(result["classes"], LONG_NAMES))
    result["classes"] = [rename[c] for c in result["classes"]]
    for row in result["per_class"]:
        row["class"] = rename[row["class"]]
    page = run / "report.html"
    page.write_text(render_report(run, result, None), encoding="utf-8")
    return page


def test_report_at_phone_width(browser, phone_report: Path, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": PHONE, "height": 844}, device_scale_factor=1)
    try:
        page = context.new_page()
        page.goto(phone_report.as_uri())
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE, "the page scrolls sideways"
        # each class name in the per-class table stays on one line (no break inside a word)
        lines = page.evaluate("""() => [...document.querySelectorAll('#classes td.name')].map(td => {
            const range = document.createRange(); range.selectNodeContents(td.firstChild);
            const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            return [td.firstChild.textContent, tops.size]; })""")
        assert sorted(name for name, _ in lines) == sorted(LONG_NAMES)
        assert all(count == 1 for _, count in lines), lines
        # a wide table scrolls inside its own box, never past the screen
        boxes = page.evaluate("""() => [...document.querySelectorAll('div.scroll')].map(
            d => d.getBoundingClientRect().right)""")
        assert boxes and max(boxes) <= PHONE
        # plots are drawn at least 560 px wide (inside a sideways-scrolling figure), not shrunk to the screen
        widths = page.evaluate("() => [...document.querySelectorAll('figure img')].map(i => i.getBoundingClientRect().width)")
        assert len(widths) >= 4 and min(widths) >= 560, widths
        shot = tmp_path / "report-phone.png"
        page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / shot.name)
    finally:
        context.close()
