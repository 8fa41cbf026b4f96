"""Warm start: a new network takes an earlier run's weights, the classifier's rows following the class names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from plantid.config import load_config, load_run_config
from plantid.errors import PlantidError
from plantid.models import build_model
from plantid.train.warm_start import WARM_LR, class_row_keys, load_parent_weights, parent_manifest, shorter_plan


def _parent_state(run: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    ckpt = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return state, list(ckpt["hyper_parameters"]["classes"])


def test_classes_keep_their_rows_new_ones_are_fresh_removed_ones_dropped(trained_run: Path, tiny_classes) -> None:
    parent_cfg = load_run_config(trained_run / "config.yaml")
    cfg = parent_cfg.model_copy(update={"train": parent_cfg.train.model_copy(update={"init_from": trained_run})})
    classes = [tiny_classes[2], "new", tiny_classes[0]]  # one dropped (tiny_classes[1]), one new, order changed
    torch.manual_seed(0)
    model = build_model(cfg.model, len(classes), cfg.data.image_size)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    counts = load_parent_weights(model, cfg, classes)
    assert counts == {"kept": 2, "new": 1, "dropped": 1}

    old, old_classes = _parent_state(trained_run)
    rows = class_row_keys(model, len(classes))
    assert rows and all(k in old for k in rows)
    state = model.state_dict()
    for key, value in state.items():
        if key in rows:
            assert torch.equal(value[0], old[key][old_classes.index(tiny_classes[2])])
            assert torch.equal(value[2], old[key][old_classes.index(tiny_classes[0])])
            assert torch.equal(value[1], fresh[key][1])  # the new class keeps its fresh initialisation
        else:
            assert torch.equal(value, old[key]), key


def test_another_network_is_refused(trained_run: Path, tiny_classes) -> None:
    cfg = load_config("simple-cnn", [f"train.init_from={trained_run}", "model.name=inception", "data.image_size=32"])
    model = build_model(cfg.model, 3, 32)
    with pytest.raises(PlantidError, match="another network"):
        load_parent_weights(model, cfg, list(tiny_classes))


def test_shorter_plan_halves_epochs_or_budget_at_the_final_size_and_a_lower_rate(trained_run: Path) -> None:
    fixed = load_config("simple-cnn", ["train.epochs=9", "train.resize_phases=[{epochs: 6, image_size: 32}]",
                                       "data.image_size=64"])
    short = shorter_plan(fixed, [])
    assert short.train.epochs == 5 and short.train.resize_phases == []
    assert short.optim.lr == pytest.approx(fixed.optim.lr * WARM_LR)
    kept = shorter_plan(fixed, ["train.epochs=9", "optim.lr=0.01", "train.resize_phases=[{epochs: 6, image_size: 32}]"])
    assert kept.train.epochs == 9 and kept.optim.lr == fixed.optim.lr and kept.train.resize_phases == fixed.train.resize_phases
    planned = load_config("cpu-default")
    warm = shorter_plan(planned, [])
    assert warm.train.plan_share == 0.5 and planned.train.plan_share == 1.0
    assert warm.train.resize_phases == [] and planned.train.resize_phases == "auto"
    assert parent_manifest(load_config("simple-cnn", [f"train.init_from={trained_run}"])) == trained_run / "split.csv"
    assert parent_manifest(fixed) is None


def test_from_a_run_of_a_recipe_file_needs_the_recipe(tmp_path: Path) -> None:
    from plantid.config import dump_config
    from tests.support.cli import PLANTID, one_line_error

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("simple-cnn").model_copy(update={"recipe": "my-tuned"})
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (run / "best.ckpt").write_bytes(b"")  # refused before it is read
    proc = subprocess.run([*PLANTID, "train", "--from", str(run), "--data", str(tmp_path)], capture_output=True,
                          text=True)
    assert "pass its recipe with --recipe" in one_line_error(proc)
