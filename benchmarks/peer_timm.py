"""plantid vs timm's own train.py: the same split, backbone, weights, image size and epoch budget.

Runs `plantid train` and PyTorch Image Models' reference `train.py` (+ `validate.py` for the
test split), from a checkout of timm's repository (`--timm-dir`; default ../shared/peers/timm,
beside this repository), one after the other in one invocation, and prints a table of wall time,
training images per second of wall time, val and test accuracy (results/peer_timm.json), then a
Markdown copy of the table and the command line for docs/benchmarks.md.

    .venv/bin/python benchmarks/peer_timm.py                                 # cpu-default, full data
    .venv/bin/python benchmarks/peer_timm.py --epochs 4 --image-size 96
    .venv/bin/python benchmarks/peer_timm.py --max-images-per-class 12 --epochs 1 --image-size 64  # smoke

How the two runs are kept comparable:
  * one `plantid split --materialize link` (seed 0, 15% val, 15% test) feeds both: plantid reads
    its split.csv, timm reads the train/ val/ test/ class folders (symlinks); a class map file
    pins timm's label indices so a class missing from one split cannot shift them;
  * both start from the same file: the lite0 ImageNet weights written timm-keyed by
    `save_timm_state_dict` (`--pretrained-path` for timm, `model.weights=<file>` for plantid);
  * the optimizer, LR, weight decay, schedule (cosine, per step), warm-up, label smoothing,
    dropout, drop-path, batch sizes, seed and precision come from the plantid recipe, and timm's
    `--head-init-scale` gives its new classifier plantid's init (std 0.01; --timm-stock-head
    keeps timm's, which starts 8 classes at a loss near 7);
    a fractional warm-up (cpu-default: 0.5 epoch) goes to timm through a `-c` YAML file because
    its `--warmup-epochs` flag only takes integers;
  * timm evaluates with `--crop-pct 1.0 --interpolation bilinear`: the whole photo stretched to
    the input size, as plantid does (timm's default would center-crop 87.5%);
  * plantid's photo cache goes to a fresh folder in the work dir, so its wall time includes
    decoding the photos, as timm's does;
  * wall time is the whole subprocess (start-up, training, per-epoch validation, checkpoints and
    the final test: for timm, train.py plus validate.py); neither tool's thread settings are
    touched, and timm's loader uses --timm-workers (default 1) worker processes.
Differences that remain (timm has no equivalent) are listed under "notes" in the JSON output.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from plantid.records import read_summary

from cells import PHOTO_SUFFIXES, plantid_cmd, run_logged

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "an2dl2022-plants"
DEFAULT_TIMM = REPO.parent / "shared" / "peers" / "timm"


# -- shared steps --------------------------------------------------------------------------------
def reduced_copy(data: Path, dest: Path, per_class: int) -> Path:
    """dest/<class>/<file> symlinks to the first `per_class` photos (by name) of each class."""
    if dest.exists():
        shutil.rmtree(dest)
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)[:per_class]
        (dest / cls.name).mkdir(parents=True)
        for f in files:
            (dest / cls.name / f.name).symlink_to(f.resolve())
    return dest


def read_split(manifest: Path) -> tuple[list[str], dict[str, int]]:
    """Class names (sorted) and the number of photos per split in a plantid split.csv."""
    classes: set[str] = set()
    counts: dict[str, int] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            classes.add(row["label"])
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    return sorted(classes), counts


def timm_head_std(model_name: str, num_classes: int) -> float:
    """Std of the classifier weights timm initialises for `model_name` with `num_classes` outputs."""
    import timm
    import torch

    torch.manual_seed(0)
    weight = timm.create_model(model_name, pretrained=False, num_classes=num_classes).get_classifier().weight
    return float(weight.detach().std())


def timm_settings(cfg, num_classes: int, stock_head: bool = False) -> tuple[list[str], dict, list[str]]:
    """timm train.py flags (plus `-c` YAML defaults) that mirror a plantid RunConfig, and notes
    on what has no timm equivalent."""
    from plantid.train.augment import PRESETS

    notes: list[str] = []
    flags: list[str] = []
    yaml_defaults: dict = {}

    # optimizer and schedule
    if cfg.optim.schedule not in ("cosine", "constant"):
        raise SystemExit(f"optim.schedule={cfg.optim.schedule} has no timm train.py equivalent; "
                         "use --set optim.schedule=cosine")
    flags += ["--opt", cfg.optim.name, "--lr", f"{cfg.optim.lr:g}", "--weight-decay", f"{cfg.optim.weight_decay:g}",
              "--sched", cfg.optim.schedule, "--sched-on-updates", "--min-lr", "0"]
    warmup = cfg.optim.warmup_epochs
    if float(warmup).is_integer():
        flags += ["--warmup-epochs", str(int(warmup))]
    else:
        yaml_defaults["warmup_epochs"] = float(warmup)  # argparse's type=int refuses 0.5 on the CLI
    if cfg.optim.name == "sgd":
        flags += ["--momentum", "0.9"]
    notes.append("timm excludes biases and norm weights from weight decay; plantid decays every parameter")
    notes.append("warm-up: timm ramps linearly from 1e-5 and its cosine spans the whole run; plantid ramps "
                 "from lr/steps and runs its cosine over the steps after warm-up")

    # loss and regularisation
    if cfg.loss.name != "ce":
        notes.append(f"loss.name={cfg.loss.name}: timm trains with plain cross-entropy")
    flags += ["--smoothing", f"{cfg.loss.label_smoothing:g}", "--drop", f"{cfg.model.dropout:g}",
              "--drop-path", f"{cfg.model.drop_path:g}"]
    if cfg.model.head != "linear":
        notes.append(f"model.head={cfg.model.head}: timm keeps the backbone's linear classifier")
    elif stock_head:
        notes.append("timm keeps its stock classifier init (uniform 1/sqrt(classes): logit std ~4, initial loss ~7); "
                     "plantid re-initialises the head with std 0.01")
    else:
        # plantid re-initialises the new linear head with std 0.01 (zero bias); timm's EfficientNet
        # init is uniform(+-1/sqrt(num_classes)), std 0.2 for 8 classes: scale it with timm's own flag
        std = timm_head_std(cfg.model.name, num_classes)
        scale = 0.01 / std
        flags += ["--head-init-scale", f"{scale:.3g}"]
        notes.append(f"--head-init-scale {scale:.3g} gives timm's new classifier plantid's init std 0.01 "
                     f"(timm's stock init has std {std:.3g}; --timm-stock-head keeps it)")
    if cfg.model.freeze:
        notes.append(f"model.freeze={cfg.model.freeze:g}: timm train.py fine-tunes every layer")
    if cfg.train.patience:
        notes.append(f"train.patience={cfg.train.patience}: timm train.py has no early stopping")

    # augmentation: plantid's batched affine + photometric + cutout, mapped onto timm's transforms
    spec = PRESETS[cfg.augment.preset].scaled(cfg.augment.strength)
    if spec == PRESETS["none"]:
        flags += ["--no-aug"]
    else:
        lo = round(max(0.08, (1.0 - spec.zoom - spec.shift) ** 2), 2)
        flags += ["--scale", f"{lo:g}", "1.0", "--ratio", "0.9", "1.1",
                  "--hflip", "0.5" if spec.hflip else "0", "--vflip", "0.5" if spec.vflip else "0",
                  "--color-jitter", f"{round(max(spec.brightness, spec.contrast), 3):g}",
                  "--reprob", f"{round(spec.cutout_prob, 3):g}"]
        notes.append(f"augmentation: plantid preset={cfg.augment.preset} strength={cfg.augment.strength:g} "
                     f"(shift {spec.shift:.3g}, rotate {spec.rotate_deg:.3g} deg, zoom {spec.zoom:.3g}, "
                     f"brightness {spec.brightness:.3g}, contrast {spec.contrast:.3g}, cutout p={spec.cutout_prob:.3g}); "
                     "timm gets RandomResizedCrop over that area range, flips, colour jitter and random erasing, "
                     "no rotation")
    if cfg.augment.mix_prob > 0 and (cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0):
        flags += ["--mixup", f"{cfg.augment.mixup_alpha:g}", "--cutmix", f"{cfg.augment.cutmix_alpha:g}",
                  "--mixup-prob", f"{cfg.augment.mix_prob:g}"]
    flags += ["--train-interpolation", "bilinear", "--interpolation", "bilinear", "--crop-pct", "1.0"]

    # the loop
    flags += ["-vb", str(cfg.data.eval_batch_size), "--seed", str(cfg.train.seed)]
    if cfg.model.channels_last:
        flags += ["--channels-last"]
    if cfg.train.precision.startswith("bf16"):
        flags += ["--amp", "--amp-dtype", "bfloat16"]
    elif cfg.train.precision.startswith("16"):
        flags += ["--amp", "--amp-dtype", "float16"]
    return flags, yaml_defaults, notes


def best_timm_val(summary_csv: Path) -> tuple[float, int]:
    """Best eval_top1 (as a fraction) in timm's summary.csv, and the number of epochs run."""
    with open(summary_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{summary_csv}: no epochs recorded")
    return max(float(r["eval_top1"]) for r in rows) / 100.0, len(rows)


def fmt_row(r: dict) -> list[str]:
    return [r["tool"], r["model"], str(r["image_size"]), str(r["epochs"]), f"{r['wall_seconds']:.1f}",
            f"{r['train_images_per_second']:.1f}", f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}"]


HEADER = ["tool", "model", "px", "epochs", "wall s", "train img/s", "val acc", "test acc"]


# -- main -----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder, one subfolder per class")
    parser.add_argument("--recipe", default="cpu-default", help="plantid recipe whose settings both tools use")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's train.epochs")
    parser.add_argument("--image-size", type=int, default=None, help="default: the recipe's data.image_size")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's data.batch_size")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra plantid overrides (mirrored to timm where it has the setting)")
    parser.add_argument("--work", type=Path, default=None, help="keep split, runs and logs here (default: a temp folder)")
    parser.add_argument("--max-images-per-class", type=int, default=None, metavar="N",
                        help="smoke tests: use only the first N photos of each class (symlinked into the work dir)")
    parser.add_argument("--weights", default="lite-package", help="pretrained source passed to save_timm_state_dict")
    parser.add_argument("--order", choices=["plantid-first", "timm-first"], default="plantid-first")
    parser.add_argument("--timm-dir", type=Path, default=DEFAULT_TIMM, help="folder with timm's train.py and validate.py")
    parser.add_argument("--timm-stock-head", action="store_true",
                        help="keep timm's own classifier init instead of matching plantid's (std 0.01)")
    parser.add_argument("--timm-workers", type=int, default=1, help="timm DataLoader worker processes")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="default: benchmarks/results/peer_timm.json (WORK/peer_timm.json with --max-images-per-class)")
    args = parser.parse_args()

    from plantid.config import load_config
    from plantid.errors import PlantidError
    from plantid.models.backbone import save_timm_state_dict

    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}; pass --data FOLDER")
    for script in ("train.py", "validate.py"):
        if not (args.timm_dir / script).is_file():
            raise SystemExit(f"no {script} in {args.timm_dir}; pass --timm-dir")

    # settings: the recipe (+ --set) gives the defaults, the CLI flags win
    try:
        base = load_config(args.recipe, list(args.overrides))
        epochs = args.epochs or base.train.epochs
        size = args.image_size or base.data.image_size
        batch = args.batch_size or base.data.batch_size
    except PlantidError as exc:
        raise SystemExit(str(exc)) from None

    work = (args.work or Path(tempfile.mkdtemp(prefix="plantid-peer-timm-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "split", "plantid", "plantid-cache", "timm"):
        if (work / sub).exists():
            shutil.rmtree(work / sub)
    print(f"work dir: {work}", flush=True)

    data = args.data.absolute()
    if args.max_images_per_class:
        data = reduced_copy(args.data.absolute(), work / "data", args.max_images_per_class)

    # one split for both tools
    split_dir = work / "split"
    run_logged(plantid_cmd("split", str(data), "--out", str(split_dir), "--materialize", "link"), work / "split.log", cwd=None)
    manifest = split_dir / "split.csv"
    classes, counts = read_split(manifest)
    n_train, n_val, n_test = counts.get("train", 0), counts.get("val", 0), counts.get("test", 0)
    if not (n_train and n_val and n_test):
        raise SystemExit(f"split has train {n_train}, val {n_val}, test {n_test} photos; every split needs some")
    class_map = work / "class_map.txt"
    class_map.write_text("".join(f"{c}\n" for c in classes))
    print(f"split: {len(classes)} classes, train {n_train}, val {n_val}, test {n_test}", flush=True)

    # the plantid run's settings, validated, and their timm counterparts
    user_keys = {o.split("=", 1)[0].strip() for o in args.overrides}
    weights = work / "weights_timm.pth"
    try:
        base_model = load_config(args.recipe, list(args.overrides)).model.name
        save_timm_state_dict(weights, base_model, weights=args.weights)
        plantid_overrides = [*args.overrides, f"train.epochs={epochs}", f"data.image_size={size}",
                             f"data.batch_size={batch}", "train.progress=false",
                             f"data.cache_dir={work / 'plantid-cache'}"]
        if "model.weights" not in user_keys:
            plantid_overrides.append(f"model.weights={weights}")
        if "model.members" not in user_keys:
            plantid_overrides.append("model.members=1")  # timm's train.py trains one network
        cfg = load_config(args.recipe, plantid_overrides)
    except PlantidError as exc:
        raise SystemExit(str(exc)) from None
    model = cfg.model.name
    timm_flags, timm_yaml, notes = timm_settings(cfg, len(classes), stock_head=args.timm_stock_head)
    if "model.weights" in user_keys:
        notes.append(f"plantid uses model.weights={cfg.model.weights}; timm uses {args.weights}")

    plantid_train = plantid_cmd("train", "--data", str(manifest), "--recipe", args.recipe,
                                "--out", str(work / "plantid"), *plantid_overrides)
    timm_train_cmd = [sys.executable, str(args.timm_dir / "train.py")]
    if timm_yaml:
        import yaml

        timm_cfg = work / "timm_defaults.yaml"
        timm_cfg.write_text(yaml.safe_dump(timm_yaml))
        timm_train_cmd += ["-c", str(timm_cfg)]
    timm_train_cmd += [
        "--data-dir", str(split_dir), "--train-split", "train", "--val-split", "val", "--class-map", str(class_map),
        "--model", model, "--pretrained", "--pretrained-path", str(weights), "--num-classes", str(len(classes)),
        "--img-size", str(size), "-b", str(batch), "--epochs", str(epochs),
        "--workers", str(args.timm_workers), "--device", "cpu",
        "--output", str(work / "timm"), "--experiment", "run", "--checkpoint-hist", "1", "--log-interval", "50",
        *timm_flags,
    ]
    timm_run = work / "timm" / "run"
    timm_test_json = work / "timm_test.json"
    timm_val_cmd = [
        sys.executable, str(args.timm_dir / "validate.py"), "--data-dir", str(split_dir), "--split", "test",
        "--class-map", str(class_map), "--model", model, "--num-classes", str(len(classes)),
        "--img-size", str(size), "--crop-pct", "1.0", "--interpolation", "bilinear",
        "-b", str(cfg.data.eval_batch_size), "--checkpoint", str(timm_run / "model_best.pth.tar"),
        "--device", "cpu", "--workers", str(args.timm_workers),
        "--results-file", str(timm_test_json), "--results-format", "json",
    ]
    if cfg.model.channels_last:
        timm_val_cmd.append("--channels-last")

    def run_plantid() -> dict:
        print("running plantid train ...", flush=True)
        wall = run_logged(plantid_train, work / "plantid.log", cwd=None)
        summary = read_summary(work / "plantid")
        return {"tool": "plantid", "model": summary.model, "image_size": summary.image_size,
                "epochs": summary.epochs_run, "wall_seconds": wall, "val_acc": summary.best_val_acc,
                "test_acc": summary.test_acc, "train_seconds_reported": summary.train_seconds,
                "commands": [shlex.join(plantid_train)]}

    def run_timm() -> dict:
        print("running timm train.py + validate.py ...", flush=True)
        train_wall = run_logged(timm_train_cmd, work / "timm_train.log", cwd=None)
        test_wall = run_logged(timm_val_cmd, work / "timm_validate.log", cwd=None)
        val_acc, epochs_run = best_timm_val(timm_run / "summary.csv")
        test = json.loads(timm_test_json.read_text())
        return {"tool": "timm train.py", "model": model, "image_size": size, "epochs": epochs_run,
                "wall_seconds": train_wall + test_wall, "train_py_seconds": round(train_wall, 1),
                "validate_py_seconds": round(test_wall, 1), "val_acc": val_acc, "test_acc": float(test["top1"]) / 100.0,
                "commands": [shlex.join(timm_train_cmd), shlex.join(timm_val_cmd)]}

    runners = [run_plantid, run_timm] if args.order == "plantid-first" else [run_timm, run_plantid]
    results = {fn.__name__: fn() for fn in runners}
    rows = [results["run_plantid"], results["run_timm"]]
    for r in rows:
        r["wall_seconds"] = round(r["wall_seconds"], 1)
        r["train_images_per_second"] = round(r["epochs"] * n_train / r["wall_seconds"], 1)

    p, t = rows
    speed = t["wall_seconds"] / p["wall_seconds"]
    delta = (p["test_acc"] - t["test_acc"]) * 100
    verdict = (f"plantid is {speed:.2f}x faster" if speed >= 1 else f"plantid is {1 / speed:.2f}x slower") + \
        f", test accuracy delta {delta:+.1f} points"

    widths = [max(len(h), *(len(fmt_row(r)[i]) for r in rows)) for i, h in enumerate(HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print()
    print(line(HEADER))
    print("-" * len(line(HEADER)))
    for r in rows:
        print(line(fmt_row(r)))
    print(verdict)

    invocation = shlex.join([".venv/bin/python", os.path.relpath(Path(__file__).absolute(), Path.cwd()), *sys.argv[1:]])
    print("\nMarkdown (docs/benchmarks.md):\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(HEADER))) + "|")
    for r in rows:
        print("| " + " | ".join(fmt_row(r)) + " |")
    print(f"\n{verdict}; split train {n_train} / val {n_val} / test {n_test} photos, {len(classes)} classes, "
          f"{os.cpu_count()} CPU cores.\n")
    print(f"Command: `{invocation}`")

    payload = {
        "command": invocation, "recipe": args.recipe, "overrides": args.overrides, "model": model,
        "image_size": size, "epochs": epochs, "batch_size": batch, "order": args.order,
        "max_images_per_class": args.max_images_per_class, "cpu_count": os.cpu_count(),
        "split": {"classes": len(classes), "train": n_train, "val": n_val, "test": n_test},
        "speedup": round(speed, 3), "test_acc_delta_points": round(delta, 2),
        "timm_defaults_yaml": timm_yaml, "notes": notes, "runs": rows,
    }
    json_out = args.json_out or (work / "peer_timm.json" if args.max_images_per_class
                                 else REPO / "benchmarks" / "results" / "peer_timm.json")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {json_out}")


if __name__ == "__main__":
    main()
