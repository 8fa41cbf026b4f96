"""Shared fixtures: real JPEG folders whose content depends on the class, and one tiny trained run.

* ``make_image_folder(root, classes=("a", "b", "c"), per_class=12, size=32, seed=0) -> Path``
  writes ``root/<class>/<class>_<i>.jpg`` (see tests/support/images.py): class k has a distinct
  dominant colour plus per-image noise and a brighter square, so every file differs and a small
  network separates the classes within a few steps.
* ``tiny_folder``: a tmp folder with 3 classes ("a", "b", "c") x 12 photos of 32x32.
* ``tiny_manifest``: ``split.csv`` for ``tiny_folder`` (val=0.25, test=0.25, seed 0), beside it.
* ``tiny_photos`` (session, read-only): `TINY_CLASSES` x 16 photos of 32x32; the third class name
  holds HTML and quoting characters, so every page, report and file that shows a label is tested
  for escaping.
* ``tiny_classes`` (session): the run's label order, ``sorted(TINY_CLASSES)``.
* ``trained_run`` (session, read-only): one real finished run on ``tiny_photos`` (simple_cnn,
  32 px, 2 epochs), trained once for the whole suite.
* ``copy_run``: a private copy of ``trained_run`` for a test that writes into its run folder.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # test support code (tests/support/) imports as `tests.support.*`
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.images import make_image_folder as _make_image_folder  # noqa: E402

TINY_CLASSES = ("a", "b", '<b>x&y "q"')


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """Factory fixture: ``make_image_folder(root, classes=..., per_class=..., size=..., seed=...) -> root``."""
    return _make_image_folder


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """3 classes (a, b, c) x 12 real 32x32 JPEGs."""
    return _make_image_folder(tmp_path / "photos")


@pytest.fixture
def tiny_manifest(tiny_folder: Path) -> Path:
    """split.csv of `tiny_folder` (val 0.25, test 0.25, seed 0): 6 train, 3 val, 3 test per class."""
    from plantid.data.scan import scan_folder
    from plantid.data.split import make_split, write_manifest

    rows = make_split(scan_folder(tiny_folder), val=0.25, test=0.25, seed=0)
    return write_manifest(rows, tiny_folder.parent / "split.csv")


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every training of the suite (in-process or a `plantid` subprocess) tracks into one SQLite
    MLflow store in a session temp folder, through $MLFLOW_TRACKING_URI: never an mlruns/ in the
    repository, and the store's schema (seconds to create) is made once, not once per run."""
    uri = f"sqlite:///{(tmp_path_factory.mktemp('mlflow') / 'mlflow.db').as_posix()}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    patch.undo()


@pytest.fixture(scope="session")
def tiny_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`TINY_CLASSES` x 16 real 32x32 JPEGs, written once per session; never write into it."""
    return _make_image_folder(tmp_path_factory.mktemp("tiny-photos") / "photos", classes=TINY_CLASSES, per_class=16)


@pytest.fixture(scope="session")
def tiny_classes() -> list[str]:
    """The label order of a run trained on `tiny_photos` (class folders sorted by name)."""
    return sorted(TINY_CLASSES)


@pytest.fixture(scope="session")
def trained_run(tiny_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, finished tiny run folder (simple_cnn, 32 px, 3 classes, 2 epochs), trained once per session.

    16 photos a class split 8/4/4, so an epoch is 3 steps of 8 photos. Treat it as read-only;
    tests that write into a run (evaluate, export, report) take ``copy_run`` instead.
    """
    from plantid.config import load_config
    from plantid.train.run import train_run

    base = tmp_path_factory.mktemp("trained")
    cfg = load_config("simple-cnn", [
        f"data.root={tiny_photos}", "data.image_size=32", "data.val=0.25", "data.test=0.25",
        f"data.cache_dir={base / 'cache'}", "train.epochs=2", "train.progress=false",
        "data.batch_size=8",
    ])
    train_run(cfg, base / "run")
    return base / "run"


@pytest.fixture
def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of `trained_run` that a test may write into."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", symlinks=True))


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/support/browser.py) shared by one module's page tests. Module scope,
    not session: while Playwright's sync API is open it holds an asyncio loop in this thread, and
    tests that call asyncio.run() (the API tests) or open Playwright themselves would fail."""
    from tests.support.browser import launch_chromium

    yield from launch_chromium()
