"""Batches for Lightning: a manifest plus the pixel cache, as uint8 channels-last tensors.

Batches are ``(images, labels)``: ``images`` is a uint8 tensor of shape (B, S, S, 3), not
normalized (augmentation and normalization run on the training device in the model code), and
``labels`` is int64 class indices into `PlantDataModule.classes` (the manifest's sorted labels).
Training batches for an ensemble carry one such batch per member (M x B x ...).

Speed: the dataset exposes ``__getitems__`` so the DataLoader fetches a whole batch with one
fancy-indexing read of the memory-mapped cache instead of B single reads plus a stack.

Reproducibility: training order comes from `EpochShuffleSampler`, a permutation drawn from a
``torch.Generator`` seeded with (seed, epoch); Lightning calls ``set_epoch`` on it every epoch, so a
run resumed at epoch k sees exactly the order it would have seen. Under DDP Lightning wraps the
sampler in its ``DistributedSamplerWrapper``, which forwards ``set_epoch``.

An empty val or test split gives ``[]`` from its dataloader method (Lightning then skips that
loop); `split_size` tells callers whether a split has photos.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler
from torch.utils.data._utils.collate import default_collate

from plantid.data.cache import build_cache, default_cache_dir
from plantid.data.split import SPLITS, Manifest, read_manifest
from plantid.errors import PlantidError


class CachedImageDataset(Dataset):
    """Items ``(uint8 tensor S x S x 3, int64 label)`` from rows `indices` of a cached pixel array.

    Pickling (worker processes started with spawn/forkserver) re-opens a memmap from its file
    instead of copying the pixels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        return torch.from_numpy(np.array(self.images[row])), torch.tensor(self.labels[row])

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(self.images[rows])), torch.from_numpy(self.labels[rows])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        img = self.images
        if isinstance(img, np.memmap) and img.filename is not None:
            state["images"] = ("memmap", str(img.filename), int(img.offset), tuple(img.shape))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        img = state["images"]
        if isinstance(img, tuple) and img and img[0] == "memmap":
            _, filename, offset, shape = img
            state["images"] = np.memmap(filename, dtype=np.uint8, mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


class MemberViewsDataset(Dataset):
    """The training set as seen by an ensemble of `members` networks, each in its own order.

    Item i of member k is photo ``order_k[i]`` of `base`, where member 0 keeps the sampler's order
    and every other member a fixed permutation drawn from (seed, k): composed with the sampler's
    per-epoch shuffle, each member walks the data in its own random order, as if trained alone.
    A batch is ``(uint8 M x B x S x S x 3, int64 M x B)``. The permutations are bijections, so
    DDP shards of the index space stay disjoint for every member.
    """

    def __init__(self, base: CachedImageDataset, members: int, seed: int = 0):
        self.base = base
        n = len(base)
        orders = [np.arange(n, dtype=np.int64)]
        for k in range(1, members):
            g = torch.Generator()
            g.manual_seed(_epoch_seed(seed, -k))  # negative "epochs": never a sampler's seed
            orders.append(torch.randperm(n, generator=g).numpy())
        self.orders = np.stack(orders)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Photo i of every member: (uint8 M x S x S x 3, int64 M)."""
        images, labels = self.__getitems__([i])
        return images[:, 0], labels[:, 0]

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        views = [self.base.__getitems__(order[np.asarray(idx, dtype=np.int64)]) for order in self.orders]
        return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def collate_batch(data: Any) -> Any:
    """Pass through batches already assembled by ``__getitems__``; default-collate anything else."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data
    return default_collate(data)


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"plantid-epoch\0{seed}\0{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of range(n) that depends only on (seed, epoch); call set_epoch each epoch."""

    def __init__(self, n: int, seed: int = 0):
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class PlantDataModule(L.LightningDataModule):
    """Reads a split.csv manifest, caches the pixels of all its photos once, and serves uint8 batches."""

    def __init__(
        self,
        manifest_path: Path,
        image_size: int,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        cache_dir: Path | None = None,
        seed: int = 0,
        members: int = 1,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise PlantidError(f"batch sizes must be at least 1 (got {batch_size}, {eval_batch_size})")
        self.manifest_path = Path(manifest_path)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = int(seed)
        self.members = int(members)
        self._manifest: Manifest | None = None
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._indices: dict[str, np.ndarray] = {}
        self._datasets: dict[str, CachedImageDataset] = {}
        self._train_sampler: EpochShuffleSampler | None = None

    # ---- manifest-level information (no pixels needed) -------------------------------------
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.manifest_path)
        return self._manifest

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, in class order."""
        return list(self.manifest.class_counts("train").values())

    def split_size(self, split: str) -> int:
        return len(self.manifest.rows_for(split))

    def paths_for(self, split: str) -> list[str]:
        """Photo paths of a split, in the order its (unshuffled) dataloader yields them."""
        return [r.path for r in self.manifest.rows_for(split)]

    # ---- Lightning hooks ------------------------------------------------------------------------
    def _cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def prepare_data(self) -> None:
        """Build the cache once per node (Lightning calls this on local rank 0 only)."""
        if self._images is None:
            self._images = build_cache(
                [r.path for r in self.manifest.rows], self.image_size, self._cache_dir(), progress=False
            )

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest and open (building if needed) the pixel cache; cheap when called again."""
        if self._datasets:
            return
        m = self.manifest
        index = {c: i for i, c in enumerate(m.classes)}
        self._labels = np.array([index[r.label] for r in m.rows], dtype=np.int64)
        if self._images is None:
            self._images = build_cache([r.path for r in m.rows], self.image_size, self._cache_dir(), progress=False)
        splits = np.array([r.split for r in m.rows])
        for s in SPLITS:
            idx = np.flatnonzero(splits == s).astype(np.int64)
            self._indices[s] = idx
            self._datasets[s] = CachedImageDataset(self._images, self._labels, idx)

    def dataset(self, split: str) -> CachedImageDataset:
        if split not in SPLITS:
            raise PlantidError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        self.setup()
        return self._datasets[split]

    def dataloader_for(self, split: str, shuffle: bool = False, members: int = 1) -> DataLoader | list:
        """A DataLoader over one split ([] when the split is empty).

        ``shuffle=True`` uses the training batch size and an `EpochShuffleSampler` seeded with
        ``seed``; the last batch is dropped only when it would hold a single photo (BatchNorm
        cannot train on one). Otherwise photos come in manifest order with ``eval_batch_size``.
        ``members`` > 1 gives each ensemble member its own batch (see `MemberViewsDataset`).
        """
        ds: Dataset = self.dataset(split)
        if members > 1:
            ds = MemberViewsDataset(ds, members, self.seed)
        n = len(ds)
        if n == 0:
            return []
        if shuffle:
            sampler: Sampler[int] = EpochShuffleSampler(n, self.seed)
            batch_size = self.batch_size
            drop_last = n > 1 and n % batch_size == 1
        else:
            sampler = SequentialSampler(ds)
            batch_size = self.eval_batch_size
            drop_last = False
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self.dataloader_for("train", shuffle=True, members=self.members)
        if not isinstance(loader, DataLoader):
            raise PlantidError(f"{self.manifest_path}: the train split is empty; re-run `plantid split` with smaller val/test")
        return loader

    def val_dataloader(self) -> DataLoader | list:
        return self.dataloader_for("val")

    def test_dataloader(self) -> DataLoader | list:
        return self.dataloader_for("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self.dataloader_for("test")
