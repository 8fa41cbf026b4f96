"""Weights files as `{name: tensor}`: read safely (safetensors, or torch.load(weights_only=True)
only), list their keys cheaply, and write them atomically. Nothing here knows which model a file
is for."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from plantid.errors import PlantidError
from plantid.fileio import atomic_path

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def cache_dir() -> Path:
    """Folder for converted weights: `$PLANTID_CACHE/weights`, default `~/.cache/plantid/weights`."""
    root = os.environ.get("PLANTID_CACHE") or "~/.cache/plantid"
    return Path(root).expanduser() / "weights"


def arch_name(model_name: str) -> str:
    """`tf_efficientnet_lite0.in1k` -> `tf_efficientnet_lite0` (the architecture, without its tag)."""
    return model_name.split(".", 1)[0]


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
            raise PlantidError(f"{path}: cannot read safetensors file ({short_error(exc)})") from None
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
        raise PlantidError(f"{path}: cannot read weights file ({short_error(exc)}); is it truncated or corrupt?") from None
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
            raise PlantidError(f"{path}: cannot read safetensors file ({short_error(exc)})") from None
        if not keys:
            raise PlantidError(f"{path}: not a state dict (the file holds no tensors)")
        return {k[len("module."):] if k.startswith("module.") else k for k in keys}
    return set(load_state_dict_file(path, mmap=True))


def short_error(exc: BaseException) -> str:
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
