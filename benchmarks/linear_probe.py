"""The floor: a linear probe on frozen ImageNet features of tf_efficientnet_lite0.

No fine-tuning at all: each photo is resized once (the yardstick's size rule), its pooled
penultimate features are read from the frozen network, and a multinomial logistic regression
(scikit-learn, standardised features, C=1) is fitted on every photo of the given folder, then
scored on each `--eval` folder. What any fine-tune must clear to be worth its time.

    .venv/bin/python benchmarks/linear_probe.py inner/ --eval outside=outside/ --out probe.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import timm
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader
from torchvision import transforms

from cells import write_json
from baseline_finetune import DEFAULT_WEIGHTS, MODEL, Photos, folder_items, image_size_for, make_weights_file


@torch.no_grad()
def features(model: torch.nn.Module, items: list[tuple[str, int]], size: int, normalize) -> np.ndarray:
    """Pooled penultimate features (N x C) of `items` at `size` px, no augmentation."""
    loader = DataLoader(Photos(items, size, transforms.Compose([transforms.ToTensor(), normalize])), batch_size=128)
    return np.concatenate([model(x).numpy() for x, _ in loader]) if len(loader.dataset) else np.zeros((0, 1))


def main() -> None:
    """Extract features, fit the probe, score every set, print and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a photo folder (one subfolder per class): every photo fits the probe")
    ap.add_argument("--eval", action="append", default=[], metavar="NAME=FOLDER", help="score a folder")
    ap.add_argument("--out", type=Path, help="write the JSON result here too")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = ap.parse_args()

    started = time.perf_counter()
    classes, items = folder_items(args.data)
    index = {c: i for i, c in enumerate(classes)}
    size = image_size_for([p for p, _ in items])
    model = timm.create_model(MODEL, pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(make_weights_file(args.weights)))).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    normalize = transforms.Normalize(cfg["mean"], cfg["std"])
    train = [(p, index[c]) for p, c in items]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(features(model, train, size, normalize), np.array([label for _, label in train]))
    fit_seconds = time.perf_counter() - started

    accuracies = {}
    for spec in args.eval:
        name, _, folder = spec.partition("=")
        scored = [(p, index[c]) for p, c in folder_items(Path(folder))[1] if c in index]
        labels = np.array([label for _, label in scored])
        accuracies[name] = float((probe.predict(features(model, scored, size, normalize)) == labels).mean())
    result = {"method": "linear-probe", "data": str(args.data), "model": MODEL, "image_size": size,
              "classes": len(classes), "n": {"train": len(train)}, "accuracy": accuracies,
              "wall_seconds": round(fit_seconds, 1), "threads": torch.get_num_threads()}
    write_json(result, args.out, echo=True)


if __name__ == "__main__":
    main()
