"""Source 3 of pretrained weights: timm's Hugging Face hub (or a model's torch.hub URL).

A file already in the local cache is used offline; otherwise it is downloaded when the hub is
reachable, and an unreachable hub is found out in seconds, not after huggingface_hub's retries.
Only public APIs (timm's pretrained configs, huggingface_hub, torch.hub) are used.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from plantid.errors import PlantidError
from plantid.models.state_dicts import arch_name, short_error


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


def _safe_alternatives(filename: str) -> list[str]:
    """The .safetensors names a hub repository may hold instead of a pickled .bin (as timm tries)."""
    if filename == "pytorch_model.bin":
        return ["model.safetensors"]
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors"]
    if filename.endswith(".bin"):
        return [filename[: -len(".bin")] + ".safetensors"]
    return []


def _hub_candidates(model_name: str) -> tuple[Any, list[str]]:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # an unknown pretrained tag, e.g. resnet18.nosuchtag
        raise PlantidError(f"{model_name}: {short_error(exc)}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise PlantidError(
            f"timm publishes no pretrained weights for {model_name}: use model.weights=none to train "
            f"from scratch or model.weights=/path/to/{arch_name(model_name)}.safetensors"
        )
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    return cfg, [*_safe_alternatives(filename), filename]


def _cached_hub_file(cfg: Any, filenames: list[str]) -> Path | None:
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")  # 'org/name@revision'
        revision = revision or None
        for filename in filenames:
            found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache(), revision=revision)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url and _url_cache_path(cfg.url).is_file():
        return _url_cache_path(cfg.url)
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    return None


def _url_cache_path(url: str) -> Path:
    """Where torch.hub keeps a downloaded checkpoint URL (the same place timm's loader looks)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _offline_message(model_name: str) -> str:
    return (
        f"no pretrained weights for {model_name} offline: pass "
        f"model.weights=/path/to/{arch_name(model_name)}.safetensors, use model.weights=none to train "
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
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            repo, _, revision = cfg.hf_hub_id.partition("@")
            for filename in filenames:
                try:
                    return Path(hf_hub_download(repo, filename, revision=revision or None, cache_dir=_hf_cache()))
                except EntryNotFoundError:
                    continue
        if cfg.url:
            target = _url_cache_path(cfg.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=True)
            return target
    except PlantidError:
        raise
    except Exception as exc:
        raise PlantidError(f"{_offline_message(model_name)} (download failed: {short_error(exc)})") from None
    raise PlantidError(_offline_message(model_name))
