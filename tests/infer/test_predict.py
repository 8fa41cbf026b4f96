"""`plantid predict`: input expansion, bad files, output formats, both backends (real subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from plantid.errors import PlantidError
from plantid.infer.cli_predict import expand_inputs, predict_command
from plantid.infer.predictor import Predictor
from tests.support.cli import run_plantid



@pytest.fixture(scope="module")
def inputs(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A messy input tree: nested folder, hidden files, odd modes and sizes, a corrupt and a fake JPEG."""
    from plantid.data.split import read_manifest

    root = tmp_path_factory.mktemp("predict-inputs")
    photos = [Path(r.path) for r in read_manifest(run / "split.csv").rows]
    tree = root / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / ".hidden").mkdir()
    shutil.copy(photos[0], tree / "one.jpg")
    shutil.copy(photos[-1], tree / "sub" / "deeper" / "two.JPG")
    shutil.copy(photos[1], tree / ".hidden" / "ignored.jpg")
    shutil.copy(photos[2], tree / ".dotfile.jpg")
    (tree / "readme.txt").write_text("not a photo")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(tree / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), mode="RGBA").save(tree / "sub" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tree / "wide.jpg", quality=90)
    globbed = root / "globbed"
    globbed.mkdir()
    for p in photos[3:6]:
        shutil.copy(p, globbed / p.name)
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.jpg").write_bytes(photos[6].read_bytes()[:200])
    (bad / "text.jpg").write_text("hello, I am not a JPEG\n")
    return {"root": root, "tree": tree, "globbed": globbed, "single": photos[7], "corrupt": bad / "corrupt.jpg",
            "text": bad / "text.jpg"}


GOOD_IN_TREE = {"one.jpg", "gray.png", "wide.jpg", "two.JPG", "rgba.png"}


def test_expand_inputs_folders_globs_files(inputs: dict[str, Path]) -> None:
    tree = inputs["tree"]
    found = expand_inputs([str(tree), str(inputs["globbed"] / "*.jpg"), str(tree / "one.jpg"), str(inputs["text"])])
    names = [p.name for p in found]
    assert set(names[:5]) == GOOD_IN_TREE  # folder: recursive, image extensions only, hidden skipped
    assert found[:5] == sorted(found[:5], key=str)
    assert names[5:8] == sorted(p.name for p in inputs["globbed"].iterdir())
    assert names[8:] == ["text.jpg"]  # one.jpg again was deduplicated; a named file is always tried
    with pytest.raises(PlantidError, match="no such file"):
        expand_inputs([str(tree / "missing.jpg")])
    with pytest.raises(PlantidError, match="no file matches"):
        expand_inputs([str(tree / "*.webp")])
    empty = inputs["root"] / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(PlantidError, match="no photos"):
        expand_inputs([str(empty)])


def test_predict_cli_mixed_inputs_csv(run: Path, inputs: dict[str, Path]) -> None:
    proc = run_plantid("predict", str(run), str(inputs["tree"]), "globbed/*.jpg", str(inputs["single"]), str(inputs["corrupt"]),
                    str(inputs["text"]), "--top-k", "2", "--format", "csv", cwd=inputs["root"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "no trust files" in notes[0] and "plantid trust" in notes[0]  # a run without trust
    backend = [line for line in proc.stderr.splitlines() if line.startswith("backend: ")]
    assert len(backend) == 1 and backend[0].startswith("backend: onnx")  # the run's export matches its checkpoint
    assert len(skipped) == 2 and len(proc.stderr.strip().splitlines()) == 4
    assert any("corrupt.jpg" in s for s in skipped) and any("text.jpg" in s for s in skipped)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    files = sorted({r["file"] for r in rows})
    assert {Path(f).name for f in files} == GOOD_IN_TREE | {p.name for p in inputs["globbed"].iterdir()} | {
        inputs["single"].name}
    assert len(files) == 9 and len(rows) == 2 * 9
    for f in files:
        mine = [r for r in rows if r["file"] == f]
        assert [int(r["rank"]) for r in mine] == [1, 2]
        assert float(mine[0]["probability"]) >= float(mine[1]["probability"]) > 0
        assert mine[0]["label"] != mine[1]["label"]
    # same top-1 as the torch Predictor in this process
    pred = Predictor.from_run(run)
    ok = [p for p in pred.predict([str(inputs["root"] / f) if not Path(f).is_absolute() else f for f in files]) if p.ok]
    assert len(ok) == 9
    top1 = {r["file"]: r["label"] for r in rows if r["rank"] == "1"}
    assert [top1[f] for f in files] == [p.top[0][0] for p in ok]


def test_predict_cli_onnx_backend_json_out_matches_torch(run: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "preds" / "out.json"
    args = [str(run), str(inputs["tree"]), "--backend", "onnx", "--format", "json", "--out", str(out), "--top-k", "3"]
    refused = run_plantid("predict", *args, cwd=inputs["root"])  # --out into a missing folder: one line, before predicting
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"error: --out {out}: the folder {out.parent} does not exist; create it or choose another --out"]
    out.parent.mkdir()
    proc = run_plantid("predict", *args, cwd=inputs["root"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""  # results went to the file
    data = json.loads(out.read_text())
    assert {Path(d["file"]).name for d in data} == GOOD_IN_TREE
    torch_pred = Predictor.from_run(run)
    for entry in data:
        assert len(entry["predictions"]) == 3
        probs = [p["probability"] for p in entry["predictions"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3
        (expected,) = torch_pred.predict([entry["file"]], top_k=3)
        assert expected.probabilities is not None
        assert abs(expected.top[0][1] - probs[0]) < 1e-4
        margin = expected.top[0][1] - expected.top[1][1]
        if margin > 1e-4:
            assert entry["predictions"][0]["label"] == expected.top[0][0]


def test_predict_cli_only_bad_files_exit_1(run: Path, inputs: dict[str, Path]) -> None:
    proc = run_plantid("predict", str(run), str(inputs["corrupt"]), str(inputs["text"]), "--format", "json", cwd=inputs["root"])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert sum(line.startswith("skipped ") for line in proc.stderr.splitlines()) == 2
    assert json.loads(proc.stdout) == []


def test_predict_command_table_out_and_usage_errors(run: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    out_buf, err_buf = io.StringIO(), io.StringIO()
    console, err = Console(file=out_buf, width=200), Console(file=err_buf, width=200)
    code = predict_command(run, [str(inputs["tree"])], top_k=2, tta="hflip", output_format="table", out=None,
                           backend="torch", console=console, err_console=err)
    assert code == 0
    text = out_buf.getvalue()
    assert "answer" in text and "TTA 2 views" in text and all(n in text for n in GOOD_IN_TREE)
    csv_out = tmp_path / "p.csv"
    assert predict_command(run, [str(inputs["single"])], top_k=5, output_format="table", out=csv_out,
                           console=console, err_console=err) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]  # top-k capped at the 3 classes; .csv suffix -> csv
    with pytest.raises(PlantidError, match="--format"):
        predict_command(run, [str(inputs["single"])], output_format="xml", console=console, err_console=err)
    with pytest.raises(PlantidError, match="--top-k"):
        predict_command(run, [str(inputs["single"])], top_k=0, console=console, err_console=err)
    with pytest.raises(PlantidError, match="TTA"):
        predict_command(run, [str(inputs["single"])], tta="default", backend="onnx", console=console, err_console=err)
