"""The pixel cache and the DataModule, on real JPEGs and real tensors."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from plantid.data.cache import build_cache, cache_key, cache_paths, default_cache_dir
from plantid.data.datamodule import EpochShuffleSampler, PlantDataModule
from plantid.data.images import load_image
from plantid.data.split import read_manifest
from plantid.errors import PlantidError


def _paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def _data_file(paths: list[str], size: int, cache_dir: Path) -> Path:
    return cache_paths(cache_key(paths, size), cache_dir)[0]


def test_round_trip_equals_load_image(tiny_folder: Path, tmp_path: Path) -> None:
    paths = _paths(tiny_folder)
    arr = build_cache(paths, 24, tmp_path / "cache")
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint8 and arr.shape == (36, 24, 24, 3)
    assert not arr.flags.writeable
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(arr[i], load_image(p, 24))
    with pytest.raises(ValueError):
        arr[0, 0, 0, 0] = 1  # read-only
    assert not list((tmp_path / "cache").glob(".*tmp"))


def test_second_build_reuses_the_file(tiny_folder: Path, tmp_path: Path) -> None:
    paths = _paths(tiny_folder)
    cache = tmp_path / "cache"
    first = build_cache(paths, 32, cache)
    data = _data_file(paths, 32, cache)
    stamp = data.stat().st_mtime_ns, data.stat().st_ino
    time.sleep(0.01)
    second = build_cache(paths, 32, cache)
    assert (data.stat().st_mtime_ns, data.stat().st_ino) == stamp
    assert Path(second.filename) == data
    np.testing.assert_array_equal(first, second)
    assert len(list(cache.glob("*.u8"))) == 1


def test_changed_inputs_rebuild(tiny_folder: Path, tmp_path: Path) -> None:
    paths = _paths(tiny_folder)
    cache = tmp_path / "cache"
    build_cache(paths, 16, cache)
    subset = paths[::2]
    sub = build_cache(subset, 16, cache)  # another manifest -> another cache
    assert sub.shape[0] == len(subset) and Path(sub.filename) != _data_file(paths, 16, cache)
    np.testing.assert_array_equal(sub[3], load_image(subset[3], 16))
    other_size = build_cache(paths, 20, cache)
    assert other_size.shape == (36, 20, 20, 3)
    # a photo rewritten in place (new content, new mtime) changes the key and the pixels
    target = Path(paths[0])
    Image.new("RGB", (32, 32), (0, 0, 255)).save(target, format="JPEG")
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    rebuilt = build_cache(paths, 16, cache)
    np.testing.assert_array_equal(rebuilt[0], load_image(paths[0], 16))
    assert rebuilt[0, 8, 8, 2] > 200 and rebuilt[0, 8, 8, 0] < 50


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "no-sidecar", "bad-sidecar"])
def test_damaged_cache_is_rebuilt(tiny_folder: Path, tmp_path: Path, damage: str) -> None:
    paths = _paths(tiny_folder)
    cache = tmp_path / "cache"
    good = np.array(build_cache(paths, 16, cache))
    data, meta = cache_paths(cache_key(paths, 16), cache)
    if damage == "truncate":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    elif damage == "corrupt":
        raw = bytearray(data.read_bytes())
        raw[100:200] = bytes(255 - b for b in raw[100:200])
        data.write_bytes(bytes(raw))
    elif damage == "no-sidecar":
        meta.unlink()
    else:
        meta.write_text("{not json")
    before = data.stat().st_mtime_ns
    time.sleep(0.01)
    again = build_cache(paths, 16, cache)
    np.testing.assert_array_equal(again, good)
    assert data.stat().st_mtime_ns != before  # rebuilt, not trusted


def test_undecodable_or_missing_photo_is_a_plantid_error(tiny_folder: Path, tmp_path: Path) -> None:
    paths = _paths(tiny_folder)
    broken = Path(paths[5])
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(PlantidError, match="plantid scan") as exc:
        build_cache(paths, 16, tmp_path / "cache")
    assert str(broken) in str(exc.value)
    assert not list((tmp_path / "cache").glob("*.u8"))  # nothing half-built is left as a cache
    gone = tiny_folder / "a" / "gone.jpg"
    with pytest.raises(PlantidError, match="plantid scan") as exc:
        build_cache([paths[0], str(gone)], 16, tmp_path / "cache")
    assert str(gone) in str(exc.value)


def test_unwritable_cache_dir_and_default(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PlantidError, match="PLANTID_CACHE") as exc:
        build_cache(_paths(tiny_folder), 16, blocker / "cache")
    assert str(blocker / "cache") in str(exc.value)
    monkeypatch.setenv("PLANTID_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("PLANTID_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "plantid"


def test_the_folder_keeps_the_most_recently_used_caches_within_its_limit(
    tiny_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    import fcntl

    paths, cache = _paths(tiny_folder), tmp_path / "cache"
    one_cache = 36 * 16 * 16 * 3
    monkeypatch.setenv("PLANTID_CACHE_MAX_GB", str(2.5 * one_cache / 1e9))  # room for two
    first, second, third = (_data_file(paths[:n], 16, cache) for n in (36, 35, 34))
    build_cache(paths, 16, cache)
    build_cache(paths[:35], 16, cache)
    old = time.time() - 3600
    os.utime(first.with_suffix(".json"), (old, old))
    os.utime(second.with_suffix(".json"), (old - 60, old - 60))
    build_cache(paths, 16, cache)  # a reuse makes `first` the most recent
    build_cache(paths[:34], 16, cache)
    assert first.exists() and not second.exists() and not second.with_suffix(".json").exists()

    # a cache that another process holds is passed over: the next oldest goes instead
    with open(first.with_suffix(".lock"), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        build_cache(paths[:33], 16, cache)
    assert first.exists() and not third.exists()
    build_cache(paths[:32], 16, cache)
    assert len(list(cache.glob("*.u8"))) == 2 and not first.exists()

    monkeypatch.setenv("PLANTID_CACHE_MAX_GB", "ten")
    with pytest.raises(PlantidError, match="PLANTID_CACHE_MAX_GB='ten'"):
        build_cache(paths[:31], 16, cache)


def test_empty_path_list(tmp_path: Path) -> None:
    arr = build_cache([], 16, tmp_path / "cache")
    assert arr.shape == (0, 16, 16, 3) and arr.dtype == np.uint8


# ---- DataModule -----------------------------------------------------------------------------


def _dm(manifest: Path, tmp_path: Path, **kw) -> PlantDataModule:
    kw.setdefault("batch_size", 4)
    kw.setdefault("eval_batch_size", 5)
    return PlantDataModule(manifest, image_size=16, cache_dir=tmp_path / "cache", **kw)


def test_datamodule_batches(tiny_manifest: Path, tmp_path: Path) -> None:
    dm = _dm(tiny_manifest, tmp_path)
    assert dm.classes == ["a", "b", "c"] and dm.num_classes == 3
    assert dm.class_counts == [6, 6, 6]
    dm.setup("fit")
    images = dm._images
    dm.setup("fit")  # idempotent: same arrays
    assert dm._images is images
    m = read_manifest(tiny_manifest)
    val_rows = m.rows_for("val")
    batches = list(dm.val_dataloader())
    assert [len(b[1]) for b in batches] == [5, 4]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8 and x.shape == (9, 16, 16, 3)
    assert y.dtype == torch.int64
    assert y.tolist() == [dm.classes.index(r.label) for r in val_rows]
    for i, r in enumerate(val_rows):
        np.testing.assert_array_equal(x[i].numpy(), load_image(r.path, 16))
    assert dm.paths_for("val") == [r.path for r in val_rows]
    train = list(dm.train_dataloader())
    assert sum(len(b[1]) for b in train) == 18 and train[0][0].shape == (4, 16, 16, 3)
    assert sorted(torch.cat([b[1] for b in train]).tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    # content of a shuffled batch still matches its labels: class colours differ (red, green, blue)
    xb, yb = train[0]
    dominant = xb.float().mean(dim=(1, 2)).argmax(dim=1)
    assert dominant.tolist() == yb.tolist()
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 9


def _order(dm: PlantDataModule, epoch: int) -> list[int]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    # identify each image by its pixel sum (all tiny_folder images differ)
    return [int(v) for b in loader for v in b[0].reshape(len(b[0]), -1).sum(dim=1)]


def test_epoch_order_is_reproducible_across_restarts(tiny_manifest: Path, tmp_path: Path) -> None:
    a = _dm(tiny_manifest, tmp_path, seed=5)
    b = _dm(tiny_manifest, tmp_path, seed=5)  # a "restarted process"
    assert _order(a, 0) == _order(b, 0)
    assert _order(a, 3) == _order(b, 3)
    assert _order(a, 0) != _order(a, 1)
    assert sorted(_order(a, 0)) == sorted(_order(a, 1))
    assert _order(a, 2) != _order(_dm(tiny_manifest, tmp_path, seed=6), 2)
    s = EpochShuffleSampler(10, seed=1)
    s.set_epoch(4)
    first = list(s)
    s.set_epoch(0)
    s.set_epoch(4)
    assert list(s) == first and sorted(first) == list(range(10))


def test_each_ensemble_member_walks_the_training_set_in_its_own_order(tiny_manifest: Path, tmp_path: Path) -> None:
    single = _dm(tiny_manifest, tmp_path, seed=5)
    dm = _dm(tiny_manifest, tmp_path, seed=5, members=3)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    batches = list(loader)
    assert batches[0][0].shape == (3, 4, 16, 16, 3) and batches[0][1].shape == (3, 4)
    photo, label = loader.dataset[0]  # one item: that photo of every member
    assert photo.shape == (3, 16, 16, 3) and label.shape == (3,)
    images = torch.cat([b[0] for b in batches], dim=1)  # members x 18 photos
    labels = torch.cat([b[1] for b in batches], dim=1)
    ids = images.reshape(3, 18, -1).sum(dim=2).long()  # pixel sums tell the photos apart
    assert ids[0].tolist() == _order(single, 2)  # member 0 keeps the sampler's order
    for member in range(3):
        assert sorted(ids[member].tolist()) == sorted(_order(single, 2))  # every photo once per epoch
        dominant = images[member].float().mean(dim=(1, 2)).argmax(dim=1)
        assert dominant.tolist() == labels[member].tolist()  # labels travel with their photos
    assert ids[0].tolist() != ids[1].tolist() != ids[2].tolist() != ids[0].tolist()
    again = _dm(tiny_manifest, tmp_path, seed=5, members=3).train_dataloader()  # a restarted run
    again.sampler.set_epoch(2)
    assert torch.equal(torch.cat([b[0] for b in again], dim=1), images)


def test_single_image_last_batch_is_dropped(tiny_manifest: Path, tmp_path: Path) -> None:
    dm = _dm(tiny_manifest, tmp_path, batch_size=17)  # 18 train images -> 17 + 1
    sizes = [len(b[1]) for b in dm.train_dataloader()]
    assert sizes == [17]
    dm2 = _dm(tiny_manifest, tmp_path, batch_size=16)  # 16 + 2 is fine
    assert [len(b[1]) for b in dm2.train_dataloader()] == [16, 2]


def test_empty_split_gives_empty_list(tiny_folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "trainonly.csv"
    lines = ["path,label,split,sha256"] + [f"{p},{Path(p).parent.name},train," for p in _paths(tiny_folder)]
    manifest.write_text("\n".join(lines) + "\n")
    dm = _dm(manifest, tmp_path)
    assert dm.val_dataloader() == [] and dm.test_dataloader() == []
    assert dm.split_size("val") == 0 and dm.split_size("train") == 36


def test_dataset_pickles_without_pixels_and_workers_work(tiny_manifest: Path, tmp_path: Path) -> None:
    dm = _dm(tiny_manifest, tmp_path, num_workers=1)
    ds = dm.dataset("train")
    blob = pickle.dumps(ds)
    assert len(blob) < 5_000  # the memmap is re-opened from its file, not copied
    clone = pickle.loads(blob)
    for i in (0, 7):
        np.testing.assert_array_equal(clone[i][0].numpy(), ds[i][0].numpy())
        assert int(clone[i][1]) == int(ds[i][1])
    got = torch.cat([b[1] for b in dm.val_dataloader()]).tolist()
    assert got == [dm.classes.index(r.label) for r in read_manifest(tiny_manifest).rows_for("val")]


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 3)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.uint8 and x.shape[-1] == 3
        if batch_idx == 0:
            self.seen.append([])
        self.seen[-1].extend(y.tolist())
        feats = x.float().mean(dim=(1, 2)) / 255.0
        return torch.nn.functional.cross_entropy(self.layer(feats), y)

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_drives_set_epoch(tiny_manifest: Path, tmp_path: Path) -> None:
    def run() -> list[list[int]]:
        model = _Recorder()
        trainer = L.Trainer(
            max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=_dm(tiny_manifest, tmp_path, seed=11))
        return model.seen

    first, second = run(), run()
    assert len(first) == 3 and all(len(e) == 18 for e in first)
    assert first == second  # same seed -> same order every epoch, across fresh Trainers
    assert first[0] != first[1]  # set_epoch was called: epochs differ
