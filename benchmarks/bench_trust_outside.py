"""Unknown-photo rejection and calibration of the runs `bench_outside.py` trained, on photos they never saw.

For every run folder `WORK/<set>/seed<S>/<method>` (plantid's runs of bench_outside.py: the report
seeds and the selection seeds with their arms), without training anything:

* its outside photos (the same collection, never seen): the share kept as known at the run's
  threshold, the test-set ECE before and after the temperature, and the three answers' coverage
  and accuracy, as `plantid evaluate RUN --split OUTSIDE` wrote them (eval_outside.json);
* foreign photos: a seeded draw of photos of the paired shared set (the leaves against the
  flowers, the fruit photos against PlantVillage, and back), and generated noise and flat
  colours: the share answered "not one of the species".

So a change of the default recipe can be checked for a loss on what it does not aim at. Prints a
table and writes benchmarks/results/trust_outside.json.

    .venv/bin/python benchmarks/bench_trust_outside.py --work runs/bench-outside-sel --seeds 10 11 12
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from bench_small_folders import generated, photos_of
from cells import DATASETS, REPO, git_commit, load_results, markdown_table, save_results

RESULTS = REPO / "benchmarks" / "results" / "trust_outside.json"
PAIRS = {"an2dl2022-plants": "oxford17-flowers", "oxford17-flowers": "an2dl2022-plants",
         "fruits10-web": "plantvillage39-leaves", "plantvillage39-leaves": "fruits10-web"}
FOREIGN = 200  # photos of the paired set, per run
GENERATED = 40
KEYS = ("outside_kept", "ece_before", "ece_after", "coverage", "answered_accuracy", "foreign_unknown",
        "generated_unknown")


def measure(run: Path, foreign: list[Path], made: list[Path]) -> dict:
    """The run's numbers on its outside photos (from eval_outside.json) and on foreign ones (predicted)."""
    from plantid.infer.predictor import Predictor

    evaluation = json.loads((run / "eval_outside.json").read_text(encoding="utf-8"))
    trust = evaluation["trust"]
    predictor = Predictor.from_run(run)
    others = [p for p in predictor.predict([str(p) for p in foreign]) if p.ok]
    fake = [p for p in predictor.predict([str(p) for p in made]) if p.ok]
    return {
        "outside_photos": evaluation["n_images"],
        "outside_acc": evaluation["metrics"]["accuracy"],
        "outside_kept": trust["kept"],
        "ece_before": trust["calibration"]["ece_before"],
        "ece_after": trust["calibration"]["ece_after"],
        "coverage": trust["answers"]["coverage"],
        "answered_accuracy": trust["answers"]["answered_accuracy"],
        "val_photos": trust.get("val_photos"),
        "foreign_photos": len(others),
        "foreign_unknown": round(statistics.fmean(p.unknown for p in others), 4),
        "generated_unknown": round(statistics.fmean(p.unknown for p in fake), 4),
    }


def table(cells: list[dict]) -> str:
    """Mean over seeds per data set, runs folder and method."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], f"{Path(c['run']).parents[2].name}: {c['method']}"), []).append(c)
    rows = []
    for (dataset, method), group in sorted(groups.items()):
        mean = {k: statistics.fmean(c[k] for c in group) for k in KEYS}
        rows.append([dataset, method, ", ".join(str(c["seed"]) for c in group),
                     *(f"{100 * mean[k]:.1f}" for k in KEYS)])
    return markdown_table(["data set", "runs: method", "seeds", "outside kept %", "ECE before %", "ECE after %",
                           "answered %", "answered right %", "foreign unknown %", "generated unknown %"], rows, left=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-outside", help="bench_outside.py's run folders")
    ap.add_argument("--datasets", nargs="+", default=list(PAIRS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["plantid"], help="run folder names (arms), e.g. plantid+test0")
    ap.add_argument("--root", type=Path, default=DATASETS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = ap.parse_args()
    done = {(c["dataset"], c["seed"], c["method"]) for c in load_results(args.out)["cells"]}
    for seed in [] if args.table else args.seeds:
        for name in args.datasets:
            runs = {m: args.work / name / f"seed{seed}" / m for m in args.methods if (name, seed, m) not in done}
            runs = {m: run for m, run in runs.items() if (run / "eval_outside.json").is_file()}
            if not runs:
                continue
            pool = [p for paths in photos_of(args.root / PAIRS[name]).values() for p in paths]
            foreign = random.Random(seed).sample(pool, FOREIGN)
            made = generated(args.work / "generated" / f"seed{seed}", GENERATED, seed)
            for method, run in runs.items():
                print(f"{name} seed {seed} {method} ...", flush=True)
                cell = {"dataset": name, "seed": seed, "method": method, "run": str(run),
                        **measure(run, foreign, made), "commit": git_commit()}
                results = load_results(args.out)
                results["cells"].append(cell)
                results["command"] = "python benchmarks/bench_trust_outside.py (one call per --work; see cells' run)"
                save_results(results, args.out, KEYS)
    print(table(load_results(args.out)["cells"]))


if __name__ == "__main__":
    main()
