"""`/docs` works with no network: Swagger UI's script and stylesheet are served by the app itself."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from plantid.serve.app import create_app


def test_docs_page_loads_its_assets_from_the_app(trained_run: Path):
    client = TestClient(create_app(trained_run, backend="torch"))
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page.text)
    assert len(assets) == 2
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by the app"
        asset = client.get(url)
        assert asset.status_code == 200
        assert len(asset.content) > 10_000  # the real bundle, not an error page
    assert client.get("/openapi.json").json()["paths"]["/api/predict"]
