"""Training-step speed of a recipe's network on this machine's accelerator, by setting:
deterministic kernels on/off, cuDNN autotuning on/off, batch size. Prints a table and writes
JSON (results/gpu_step.json). Random photos, random init: this times steps, not learning.

    python benchmarks/bench_gpu_step.py --recipe seed-convnext-large           # on a GPU
    python benchmarks/bench_gpu_step.py --recipe cpu-default --image-size 64 --steps 3   # smoke test on a CPU

Each step is what PlantClassifierModule.training_step does: uint8 batch on the device -> float,
batched augmentation, forward under the run's autocast, loss + head penalty, backward, Adam.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from plantid.config import load_config  # noqa: E402
from plantid.data.tensors import to_unit_float  # noqa: E402
from plantid.train.module import PlantClassifierModule  # noqa: E402
from plantid.train.optim import build_optimizer  # noqa: E402

SETTINGS = [  # (label, deterministic, cudnn.benchmark, batch-size factor)
    ("deterministic kernels", True, False, 1),
    ("non-deterministic", False, False, 1),
    ("non-deterministic + cudnn.benchmark", False, True, 1),
    ("non-deterministic + cudnn.benchmark, 2x batch", False, True, 2),
]


def time_steps(module: PlantClassifierModule, batch: int, size: int, steps: int, warmup: int,
               device: torch.device) -> float:
    """Training photos per second over `steps` steps after `warmup` untimed ones."""
    cfg = module.cfg
    optimizer = build_optimizer(module.model, cfg.optim)
    photos = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, len(module.classes), (batch,), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                else nullcontext())
    module.train()

    def step() -> None:
        x = module.augment(to_unit_float(photos, channels_last=cfg.model.channels_last))
        with autocast:
            logits = module.model(x)
            loss = module.loss_fn(logits.float(), labels) + module.model.regularization()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="seed-convnext-large")
    parser.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_step.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.recipe, ["model.weights=none"])
    size = args.image_size or cfg.data.image_size
    classes = [f"Species{i}" for i in range(1, 9)]
    rows = []
    for label, deterministic, benchmark, factor in SETTINGS:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.benchmark = benchmark
        torch.manual_seed(0)
        module = PlantClassifierModule(cfg.model_dump(mode="json"), classes, [100] * len(classes)).to(device)
        if cfg.model.channels_last:
            module = module.to(memory_format=torch.channels_last)
        batch = cfg.data.batch_size * factor
        speed = time_steps(module, batch, size, args.steps, args.warmup, device)
        rows.append({"setting": label, "batch": batch, "image_size": size, "images_per_s": round(speed, 1)})
        print(f"{label:<48} batch {batch:>3}  {size} px  {speed:8.1f} img/s", flush=True)
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"recipe": args.recipe, "device": name, "torch": torch.__version__, "steps": args.steps, "rows": rows}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
