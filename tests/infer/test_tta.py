"""Test-time augmentation views and named view sets."""

import pytest
import torch
from torch import nn

from plantid.errors import PlantidError
from plantid.infer.tta import VIEWS, predict_proba
from plantid.infer.view_names import VIEW_NAMES, VIEW_SETS, parse_tta


def _photo(n=3, size=10, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_dihedral_views_are_the_eight_distinct_symmetries_of_the_square():
    x = _photo()
    views = [VIEWS[name](x) for name in VIEW_SETS["dihedral"]]
    for i, a in enumerate(views):
        # pixels are moved, never resampled
        assert torch.equal(a.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)
        assert not any(torch.equal(a, b) for b in views[i + 1:])
    rot90 = VIEWS["rot90"]
    assert torch.equal(rot90(rot90(x)), VIEWS["rot180"](x))
    assert torch.equal(rot90(VIEWS["rot270"](x)), x)
    assert torch.equal(VIEWS["transpose"](x)[..., 2, 7], x[..., 7, 2])


def test_named_sets_and_comma_lists():
    assert parse_tta("default") == VIEW_SETS["flips"] == ("identity", "hflip", "vflip", "rot180")
    assert parse_tta("REPORT") == ("identity", "hflip", "vflip", "rot+10", "rot-10", "shift")
    assert parse_tta("vflip, rot90") == ("identity", "vflip", "rot90")
    assert parse_tta(None) == parse_tta("none") == ()
    # 'default' is what a run's eval.tta says: a set's name or a list of views
    assert parse_tta("default", default="report") == VIEW_SETS["report"]
    assert parse_tta("default", default=["rot90", "hflip"]) == ("identity", "rot90", "hflip")
    assert parse_tta("none", default="dihedral") == ()
    assert tuple(VIEWS) == VIEW_NAMES  # every name has its operation, and no operation lacks a name
    for names in VIEW_SETS.values():
        assert set(names) <= set(VIEWS)
    with pytest.raises(PlantidError, match="unknown TTA view 'sideways'.*dihedral"):
        parse_tta("hflip,sideways")


def test_averaging_over_a_group_of_views_makes_predictions_invariant_to_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x = _photo(size=10)
    turned = VIEWS["rot90"](x)
    assert not torch.allclose(predict_proba(model, x), predict_proba(model, turned), atol=1e-4)
    assert torch.allclose(predict_proba(model, x, VIEW_SETS["dihedral"]),
                          predict_proba(model, turned, VIEW_SETS["dihedral"]), atol=1e-6)
    mirrored = VIEWS["hflip"](x)
    assert torch.allclose(predict_proba(model, x, VIEW_SETS["flips"]),
                          predict_proba(model, mirrored, VIEW_SETS["flips"]), atol=1e-6)
