"""Which out-of-distribution detector should plantid fit after training? Measured, not guessed.

For each (run, foreign photo folder) pair, e.g. the leaf model against the flower photos and the
flower model against the leaf photos, this script computes the run's penultimate features and
logits once (cached under --cache) for its train, val and test photos, the foreign photos and
generated images (uniform and Gaussian noise, flat colours, smooth blobs), then for every
candidate detector (plantid.trust.ood):

* fits it on the TRAIN features and places the threshold that keeps 95% of the VAL photos
  (exactly what `plantid trust` does);
* SELECTION (validation-style data): AUROC and share rejected at that threshold, for val photos
  against half A of the foreign photos (a fixed half by path hash) and half of the generated ones;
* REPORT (the goal's numbers): share of TEST photos kept, share of half B of the foreign photos
  and of the other generated half rejected, AUROC of test against each; and, as the usual
  "FPR at 95% TPR" measure, the share rejected at the threshold that keeps exactly 95% of the
  TEST photos (`rejected_at_test95`).

* SHIFT (selection data too): the share of VAL photos still kept at that threshold after a mild
  change of how they were taken: JPEG quality 30, a 1-pixel blur, half the resolution, brightness
  x1.3, contrast x0.7, colour x0.6. The classifier still names most of them right, so a detector
  that calls them unknown fails the user whose camera differs from the training photos'.

The detector picked is, among those keeping at least 80% of the shifted val photos on average on
every pair (SHIFT_KEEP), the one with the best worst-case rejection on the selection data (ties:
mean AUROC); the test split plays no part in the choice. Prints a table and writes
benchmarks/results/ood.json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ood.py \
        --pair runs/demo/train=../shared/datasets/oxford17-flowers \
        --pair runs/flowers/train=../shared/datasets/an2dl2022-plants
    .venv/bin/python benchmarks/bench_ood.py --pair x=y --write-generated runs/bench-ood/generated
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES: list[tuple[str, dict]] = [
    ("msp", {}), ("maxlogit", {}), ("energy", {}), ("mahalanobis", {}), ("mahalanobis", {"shrinkage": 0.01}),
    ("knn", {"k": 1}), ("knn", {"k": 5}), ("knn", {"k": 20}), ("knn", {"k": 50}),
    ("mahalanobis+knn", {"k": 1}), ("mahalanobis+knn", {"k": 20}), ("mahalanobis+knn", {"k": 50}),
    ("mahalanobis+knn+stage", {"k": 50}),
    ("mahalanobis+knn", {"k": 50, "combine": "mean"}), ("mahalanobis+knn+stage", {"k": 50, "combine": "mean"}),
    *(("mahalanobis+knn+stage", {"k": 50, "combine": "mean", "rank": r}) for r in (64, 128, 256)),
]
KEEP = 0.95
SHIFT_KEEP = 0.80  # a detector must keep this share of mildly shifted val photos (mean over the shifts)


def shifted_photos(images: np.ndarray) -> dict[str, np.ndarray]:
    """The same photos taken a little differently: uint8 N x S x S x 3 per shift name."""
    import io

    from PIL import Image, ImageEnhance, ImageFilter

    def jpeg30(im):
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=30)
        return Image.open(buffer).convert("RGB")

    def half_resolution(im):
        side = im.size[0]
        return im.resize((side // 2, side // 2), Image.BILINEAR).resize((side, side), Image.BICUBIC)

    shifts = {"jpeg30": jpeg30, "blur1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
              "half_res": half_resolution, "bright1.3": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
              "contrast0.7": lambda im: ImageEnhance.Contrast(im).enhance(0.7),
              "colour0.6": lambda im: ImageEnhance.Color(im).enhance(0.6)}
    return {name: np.stack([np.asarray(fn(Image.fromarray(img))) for img in images]) for name, fn in shifts.items()}


def generated_images(n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """uint8 n x S x S x 3 batches of four kinds of images that are no plant at all."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    gauss = np.clip(rng.normal(128, rng.uniform(20, 70, size=(n, 1, 1, 1)), size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    flat = np.broadcast_to(rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.uint8), (n, size, size, 3)).copy()
    small = rng.integers(0, 256, size=(n, 3, 6, 6)).astype(np.float32)
    blobs = torch.nn.functional.interpolate(torch.from_numpy(small), size=(size, size), mode="bicubic",
                                            align_corners=False).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return {"noise_uniform": uniform, "noise_gaussian": gauss, "flat": flat, "blobs": blobs}


def half_of(path: str) -> int:
    """0 (selection half A) or 1 (report half B), fixed by the path's hash."""
    return hashlib.sha256(path.encode()).digest()[0] & 1


def list_photos(folder: Path) -> list[str]:
    from plantid.infer.cli_predict import expand_inputs

    return [str(p) for p in expand_inputs([str(folder)])]


def features_for(run: Path, ood_dir: Path, cache: Path, n_generated: int) -> dict[str, np.ndarray]:
    """Features/logits/labels of the run's splits, the foreign photos and generated images (cached .npz).

    The features are the penultimate ones followed by the pooled last stage (`split` holds the
    penultimate width), as `plantid trust` computes them for the default detector.
    """
    key = hashlib.sha256(f"{run.resolve()}|{ood_dir.resolve()}|{n_generated}|laststage|shift".encode()).hexdigest()[:12]
    path = cache / f"{run.parent.name}_{run.name}_{ood_dir.name}_{key}.npz"
    ckpt = next(p for p in (run / "best.ckpt", run / "last.ckpt") if p.is_file())
    if path.is_file() and path.stat().st_mtime > ckpt.stat().st_mtime:
        return dict(np.load(path, allow_pickle=False))
    from plantid.config import TrustConfig
    from plantid.infer.checkpoint import load_trained
    from plantid.infer.predictor import TorchBackend
    from plantid.trustfit.features import features_and_logits, folder_pixels, manifest_pixels
    from plantid.trustfit.fit import feature_layout

    trained = load_trained(run)
    backend = TorchBackend(trained, ())
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    pixels, rows, labels = manifest_pixels(run, trained)
    # the columns `plantid trust` reads for the stage detector (penultimate only for a model without stages)
    layout = feature_layout(TrustConfig(detector="mahalanobis+knn+stage"), trained.model, backend, pixels[rows["val"][:1]])
    taps = tuple(layout.get("taps", ()))
    for split in ("train", "val", "test"):
        out[f"{split}_f"], out[f"{split}_z"] = features_and_logits(backend, pixels, rows[split], 64, taps)
        out[f"{split}_y"] = labels[split]
        print(f"  {run}: {split} features in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out["split"] = np.array(layout.get("split", out["val_f"].shape[1]))
    foreign, used, skipped = folder_pixels(list_photos(ood_dir), trained.image_size)
    out["foreign_f"], out["foreign_z"] = features_and_logits(backend, foreign, None, 64, taps)
    out["foreign_half"] = np.array([half_of(p) for p in used], dtype=np.int64)
    print(f"  {run}: {len(used)} foreign photos ({len(skipped)} unreadable) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    for kind, images in generated_images(n_generated, trained.image_size, seed=0).items():
        out[f"gen_{kind}_f"], out[f"gen_{kind}_z"] = features_and_logits(backend, images, None, 64, taps)
    for name, images in shifted_photos(pixels[rows["val"]]).items():
        out[f"shift_{name}_f"], out[f"shift_{name}_z"] = features_and_logits(backend, images, None, 64, taps)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    from plantid.evaluate.trust_metrics import ood_auroc

    return round(ood_auroc(in_scores, out_scores), 4)


def evaluate_pair(d: dict[str, np.ndarray]) -> list[dict]:
    from plantid.trustfit.fit import STAGE_DETECTORS, choose_threshold  # these read the last stage's columns too
    from plantid.trust.ood import fit_detector

    t = {k: torch.from_numpy(v) for k, v in d.items() if k != "split"}
    split = int(d["split"])
    penultimate = {k: v[:, :split] if k.endswith("_f") else v for k, v in t.items()}
    kinds = sorted({k[4:-2] for k in d if k.startswith("gen_") and k.endswith("_f")})
    n_gen = len(d[f"gen_{kinds[0]}_f"])
    gen_half = np.arange(n_gen) % 2
    results = []
    for name, settings in CANDIDATES:
        f = t if name in STAGE_DETECTORS else penultimate
        extra = {"split": split} if name in STAGE_DETECTORS else {}
        detector = fit_detector(name, f["train_f"], f["train_y"], val=(f["val_f"], f["val_z"]), **settings, **extra)

        def score(prefix: str, detector=detector, f=f) -> np.ndarray:
            with torch.no_grad():
                return detector(f[f"{prefix}_f"], f[f"{prefix}_z"]).double().numpy()

        val, test, foreign = score("val"), score("test"), score("foreign")
        gen = {kind: score(f"gen_{kind}") for kind in kinds}
        threshold = choose_threshold(val, KEEP)
        sel_sets = {"foreign": foreign[d["foreign_half"] == 0],
                    "generated": np.concatenate([g[gen_half == 0] for g in gen.values()])}
        rep_sets = {"foreign": foreign[d["foreign_half"] == 1],
                    **{kind: g[gen_half == 1] for kind, g in gen.items()}}
        selection = {k: {"rejected": round(float(np.mean(v > threshold)), 4), "auroc": auroc(val, v)}
                     for k, v in sel_sets.items()}
        shift_kept = {key[6:-2]: round(float(np.mean(score(key[:-2]) <= threshold)), 4)
                      for key in d if key.startswith("shift_") and key.endswith("_f")}
        test95 = choose_threshold(test, KEEP)
        report = {k: {"rejected": round(float(np.mean(v > threshold)), 4), "auroc": auroc(test, v), "n": int(len(v)),
                      "rejected_at_test95": round(float(np.mean(v > test95)), 4)}
                  for k, v in rep_sets.items()}
        label = name + "".join(f" {k}={v}" for k, v in settings.items())
        results.append({
            "detector": label, "name": name, "settings": settings,
            "val_kept": round(float(np.mean(val <= threshold)), 4),
            "selection": selection,
            "selection_worst_rejected": min(v["rejected"] for v in selection.values()),
            "selection_mean_auroc": round(float(np.mean([v["auroc"] for v in selection.values()])), 4),
            "shift_kept": shift_kept, "shift_kept_mean": round(float(np.mean(list(shift_kept.values()))), 4),
            "test_kept": round(float(np.mean(test <= threshold)), 4), "n_test": int(len(test)),
            "report": report,
        })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", required=True, help="RUN=FOREIGN_PHOTO_FOLDER")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-ood" / "ood_features")
    parser.add_argument("--generated", type=int, default=100, help="images of each generated kind")
    parser.add_argument("--write-generated", type=Path, default=None,
                        help="only write that many generated images of each kind as PNGs (192 px) into this folder "
                             "(a foreign folder for `plantid evaluate --ood`) and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood.json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.write_generated is not None:
        from PIL import Image

        for kind, images in generated_images(args.generated, 192, seed=1).items():
            (args.write_generated / kind).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                Image.fromarray(image).save(args.write_generated / kind / f"{kind}_{i:03d}.png")
        print(f"wrote {4 * args.generated} images under {args.write_generated}")
        return

    pairs = []
    for item in args.pair:
        run, _, ood = item.partition("=")
        d = features_for(Path(run), Path(ood), args.cache, args.generated)
        pairs.append({"run": run, "foreign": ood, "n_train": int(len(d["train_f"])), "n_val": int(len(d["val_f"])),
                      "results": evaluate_pair(d)})

    # one detector for every run: among those that keep shifted val photos on every pair, the best
    # worst case over all pairs' selection data
    names = [r["detector"] for r in pairs[0]["results"]]

    def rows_of(label: str) -> list[dict]:
        return [next(r for r in p["results"] if r["detector"] == label) for p in pairs]

    def worst(label: str) -> tuple[bool, float, float]:
        rows = rows_of(label)
        robust = min(r["shift_kept_mean"] for r in rows) >= SHIFT_KEEP
        return robust, min(r["selection_worst_rejected"] for r in rows), float(np.mean([r["selection_mean_auroc"] for r in rows]))
    chosen = max(names, key=worst)

    for p in pairs:
        kinds = list(p["results"][0]["report"])
        print(f"\n{p['run']} against {p['foreign']} (threshold keeps {KEEP:.0%} of {p['n_val']} val photos)")
        head = (f"{'detector':<28}{'sel worst rej':>14}{'sel AUROC':>10}{'shift kept':>11}{'test kept':>10}"
                + "".join(f"{k[:20]:>21}" for k in kinds))
        print(head)
        print("-" * len(head))
        for r in p["results"]:
            cells = "".join(f"{100 * r['report'][k]['rejected']:>6.1f}%/{100 * r['report'][k]['rejected_at_test95']:>5.1f}%"
                            f" {r['report'][k]['auroc']:>6.4f}" for k in kinds)
            mark = " *" if r["detector"] == chosen else ""
            print(f"{r['detector']:<28}{100 * r['selection_worst_rejected']:>13.1f}%{r['selection_mean_auroc']:>10.4f}"
                  f"{100 * r['shift_kept_mean']:>10.1f}%{100 * r['test_kept']:>9.1f}%{cells}{mark}")
        print("(report columns: % rejected at the val threshold / at the threshold keeping 95% of test, AUROC vs test)")
    print(f"\nchosen (keeps >= {SHIFT_KEEP:.0%} of shifted val photos on every pair, then best worst-case rejection "
          f"on selection data, val + half A): {chosen}")

    from plantid.fileio import write_json_atomic

    write_json_atomic(args.out, {
        "what": "OOD detectors fitted on train features, threshold keeping 95% of val photos; selection on val + "
                "half A of the foreign photos and half of the generated images, report on test + the other halves",
        "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ood.py " + " ".join(f"--pair {x}" for x in args.pair),
        "keep": KEEP, "shift_keep": SHIFT_KEEP, "chosen": chosen, "pairs": pairs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
