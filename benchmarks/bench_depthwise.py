"""Depthwise convolution backward on CPU: PyTorch's against plantid's small-map weight gradient.

    .venv/bin/python benchmarks/bench_depthwise.py [--threads 2] [--json-out FILE]

Part 1 times the weight gradient of single depthwise convolutions (batch 32, channels-last, the
shapes of tf_efficientnet_lite0 and ConvNeXt) with PyTorch's convolution backward and with
plantid's tap-by-tap sum (its time includes its forward pass), on maps smaller than, equal to and larger than the kernel. Part 2 times
whole training steps (forward, backward, AdamW) of `cpu-default`'s model (lite0, first 30 layers
frozen, channels-last, batch 32) with plain layers and after `use_small_map_depthwise`, alternating,
at the recipe's two
image sizes. Medians; the machine is a shared VM, so repeat before trusting a <10% difference.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from plantid.config import load_config  # noqa: E402
from plantid.fileio import write_json_atomic  # noqa: E402
from plantid.models import build_model  # noqa: E402
from plantid.runtime import keep_freed_memory  # noqa: E402
from plantid.train.depthwise import DepthwiseConv2d, SmallMapDepthwiseConv2d, use_small_map_depthwise  # noqa: E402

SHAPES = [  # channels, kernel, map side
    (1152, 5, 4), (1152, 5, 5), (1152, 5, 6), (672, 5, 4), (1152, 3, 4), (1536, 7, 6), (1536, 7, 7),
]


def _median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def weight_gradients(repeats: int) -> list[dict]:
    """Milliseconds for one depthwise weight gradient, PyTorch vs plantid, per shape."""
    rows = []
    for channels, kernel, side in SHAPES:
        pad = kernel // 2
        x = torch.randn(32, channels, side, side).contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, 1, kernel, kernel, requires_grad=True)
        grad_out = torch.randn(32, channels, side, side).contiguous(memory_format=torch.channels_last)

        def pytorch():
            torch.ops.aten.convolution_backward(grad_out, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0],
                                                channels, [False, True, False])

        def plantid():
            out = DepthwiseConv2d.apply(x, w, None, (pad, pad))
            torch.autograd.grad(out, w, grad_out)

        rows.append({"channels": channels, "kernel": kernel, "map": side, "kernel_exceeds_map": kernel > side,
                     "pytorch_ms": round(_median_ms(pytorch, repeats), 2),
                     "plantid_ms": round(_median_ms(plantid, repeats), 2)})
    return rows


def training_steps(sizes: list[int], repeats: int) -> list[dict]:
    """Images/s of cpu-default's training step with PyTorch's depthwise backward and with plantid's."""
    cfg = load_config("cpu-default")
    torch.manual_seed(0)
    plain = build_model(cfg.model, num_classes=8, image_size=cfg.data.image_size).train()
    plain = plain.to(memory_format=torch.channels_last)
    small_map = copy.deepcopy(plain)
    use_small_map_depthwise(small_map)
    models = {False: plain, True: small_map}
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for k, m in models.items()}
    rows = []
    for size in sizes:
        x = torch.rand(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 8, (32,))

        def step(ours: bool) -> None:
            optimizers[ours].zero_grad()
            F.cross_entropy(models[ours](x), labels).backward()
            optimizers[ours].step()

        def calls() -> int:
            return sum(m.small_map_calls for m in small_map.modules() if isinstance(m, SmallMapDepthwiseConv2d))

        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(2):
            step(False), step(True)
        before = calls()
        for _ in range(repeats):  # alternate, so drifts in machine load hit both alike
            for ours in (False, True):
                start = time.perf_counter()
                step(ours)
                times[ours].append(time.perf_counter() - start)
        rows.append({"image_size": size, "routed_convolutions": (calls() - before) // repeats,
                     "pytorch_images_per_s": round(32 / statistics.median(times[False]), 1),
                     "plantid_images_per_s": round(32 / statistics.median(times[True]), 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192])
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks" / "results" / "depthwise.json")
    args = parser.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    console = Console()

    grads = weight_gradients(args.repeats)
    table = Table(title=f"depthwise weight gradient, batch 32, channels-last, {args.threads} threads (ms)")
    for col in ("channels", "kernel", "map", "PyTorch", "plantid"):
        table.add_column(col, justify="right")
    for r in grads:
        table.add_row(str(r["channels"]), str(r["kernel"]), f"{r['map']}x{r['map']}", f"{r['pytorch_ms']:.2f}",
                      f"{r['plantid_ms']:.2f}" + (" (used)" if r["kernel_exceeds_map"] else " (not used)"))
    console.print(table)

    steps = training_steps(args.sizes, args.repeats)
    table = Table(title="cpu-default training step (lite0, batch 32), images/s")
    for col in ("px", "small-map convs per step", "PyTorch", "plantid", "speed-up"):
        table.add_column(col, justify="right")
    for r in steps:
        table.add_row(str(r["image_size"]), str(r["routed_convolutions"]), f"{r['pytorch_images_per_s']:.1f}",
                      f"{r['plantid_images_per_s']:.1f}", f"{r['plantid_images_per_s'] / r['pytorch_images_per_s']:.2f}x")
    console.print(table)
    write_json_atomic(args.json_out, {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                                      "weight_gradients": grads, "training_steps": steps})
    console.print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
