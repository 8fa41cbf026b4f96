"""`plantid trust`, `plantid evaluate --ood` and `plantid predict` on a tiny run, through the real CLI app."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import invoke, one_line_error


@pytest.fixture
def noise_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "not-plants" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"noise{i}.png")
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(folder.parent / "white.png")
    (folder / "broken.jpg").write_bytes(b"no image")
    return folder.parent


def test_trust_refits_with_a_new_keep(trust_run_copy: Path) -> None:
    result = invoke("trust", str(trust_run_copy), "--keep", "0.8", "--detector", "mahalanobis")
    assert result.returncode == 0, result.stdout
    meta = json.loads((trust_run_copy / "trust.json").read_text())
    assert meta["keep"] == 0.8 and meta["detector"] == "mahalanobis"
    assert meta["measured"]["val_kept"] >= 0.8
    assert 0.0 <= meta["measured"]["val_ece_crossfit"] <= 1.0  # each val photo scaled by a T fitted without it
    assert "trust fitted" in result.stdout and "cross-fitted" in result.stdout


def test_trust_with_the_stage_detector_names_the_stage_it_reads(trust_run_copy: Path) -> None:
    result = invoke("trust", str(trust_run_copy), "--detector", "mahalanobis+knn+stage")
    assert result.returncode == 0, result.stdout
    meta = json.loads((trust_run_copy / "trust.json").read_text())
    assert meta["settings"]["taps"] == ["features.8"] and meta["settings"]["split"] == 256  # simple_cnn's hidden layer
    assert "last stage features.8" in result.stdout


def test_trust_rejects_a_bad_setting(trust_run_copy: Path) -> None:
    before = (trust_run_copy / "trust.json").read_bytes()
    line = one_line_error(invoke("trust", trust_run_copy, "--keep", "1.5"))
    assert line == "error: bad value for --keep: Input should be less than 1 (got 1.5)"
    assert (trust_run_copy / "trust.json").read_bytes() == before  # refused before fitting anything


def test_evaluate_ood_writes_auroc_rejection_and_calibration(trust_run_copy: Path, noise_folder: Path) -> None:
    result = invoke("evaluate", str(trust_run_copy), "--ood", str(noise_folder))
    assert result.returncode == 0, result.stdout
    data = json.loads((trust_run_copy / "eval.json").read_text())
    trust = data["trust"]
    assert trust["ood"][0]["n_images"] == 7 and trust["ood"][0]["skipped"] == 1
    assert trust["ood"][0]["rejected"] == 1.0 and trust["ood"][0]["auroc"] == 1.0
    assert 0.0 <= trust["calibration"]["ece_after"] <= 1.0
    assert sum(b["count"] for b in trust["calibration"]["bins_before"]) == data["n_images"]
    assert (trust_run_copy / "reliability.png").is_file() and (trust_run_copy / "ood_scores.png").is_file()
    report = invoke("report", str(trust_run_copy))
    assert report.returncode == 0, report.stdout
    html = (trust_run_copy / "report.html").read_text()
    assert 'id="trust"' in html and "answered unknown" in html and "Reliability diagram" in html
    assert trust["calibration"]["val_ece_crossfit"] == json.loads((trust_run_copy / "trust.json").read_text())[
        "measured"]["val_ece_crossfit"]
    assert "fitted without it" in html
    mean, low, high = trust["calibration"]["ece_if_calibrated"]  # the ECE sampling noise alone would give
    assert 0.0 <= low <= mean <= high < 1.0
    assert "perfectly calibrated model" in html and "perfectly calibrated model" in result.stdout
    assert "last stage" in html  # the default score also reads the backbone's last stage


def test_predict_csv_has_unknown_and_score(trust_run: Path, noise_folder: Path) -> None:
    own = sorted((trust_run.parent / "photos" / "c").glob("*.jpg"))[0]
    result = invoke("predict", str(trust_run), str(noise_folder / "white.png"), str(own), "--format", "csv", "--top-k", "1")
    assert result.returncode == 0, result.stdout
    rows = {Path(r["file"]).name: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert rows["white.png"]["unknown"] == "true" and rows[own.name]["unknown"] == "false"
    assert float(rows["white.png"]["ood_score"]) > float(rows[own.name]["ood_score"])
    assert rows[own.name]["label"] == "c"
