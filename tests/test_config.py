"""Recipes load and validate; bad keys and values are one-line errors naming them."""

import pytest

from plantid.config import load_config, recipe_names
from plantid.errors import PlantidError
from tests.support.refusals import refusal


def test_every_shipped_recipe_validates():
    names = recipe_names()
    assert {"cpu-default", "seed-convnext-large", "simple-cnn", "inception"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.recipe == name


def test_seed_recipe_is_the_report_as_written():
    cfg = load_config("seed-convnext-large")
    assert cfg.model.name == "convnext_large" and cfg.data.image_size == 224
    assert cfg.model.head == "seed" and cfg.model.head_hidden == 1024
    assert cfg.optim.name == "adam" and cfg.optim.schedule == "cyclic"
    assert [(p.epochs, p.min_lr, p.max_lr) for p in cfg.optim.phases] == [
        (15, 1e-6, 1e-5), (32, 1e-5, 1e-4), (9, 1e-6, 1e-5)]
    assert cfg.train.epochs == 56 and cfg.train.patience > 0
    assert cfg.model.freeze == pytest.approx(88 / 295, abs=1e-4)


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config("cpu-default", ["train.epochs=3", "model.name=resnet18", "optim.lr=1e-4", "train.devices=2"])
    assert cfg.train.epochs == 3 and cfg.model.name == "resnet18"
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.train.devices == 2


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epoch=3", "unknown setting 'train.epoch'"),
        ("data.image_size=-5", "bad value for 'data.image_size'"),
        ("loss.name=hinge", "bad value for 'loss.name'"),
        ("nonsense", "must look like section.key=value"),
        # view names are checked when the recipe loads, not later at evaluate or predict time
        ("eval.tta=hflip,sideways", "bad value for 'eval.tta': unknown TTA view 'sideways'"),
        ("eval.tta=[vflip, upside]", "unknown TTA view 'upside'"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    assert expected in refusal(load_config, "cpu-default", [override])


def test_eval_tta_accepts_set_names_and_view_lists():
    assert load_config("cpu-default", ["eval.tta=report"]).eval.tta == "report"
    assert load_config("cpu-default", ["eval.tta=[hflip, rot90]"]).eval.tta == ["hflip", "rot90"]


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(PlantidError, match="cpu-default"):
        load_config("no-such-recipe")
