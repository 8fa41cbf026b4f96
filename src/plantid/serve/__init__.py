"""The local web page and JSON API (`plantid serve`): predictions and Grad-CAM for one photo."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from plantid.serve.app import create_app  # lazy: `plantid.serve.gradcam` alone does not import FastAPI

        return create_app
    raise AttributeError(f"module 'plantid.serve' has no attribute {name!r}")
