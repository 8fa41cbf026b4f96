"""What several photos of one plant buy: groups of 3 test photos of one class against single photos.

    .venv/bin/python benchmarks/bench_groups.py --run runs/lite0 [--run runs/flowers ...] [--size 3] [--rounds 20]

Each test photo is predicted once (the run's ONNX export when it is current, else torch, as
`plantid predict` chooses). Groups: for each round, every class's test photos are shuffled and cut
into groups of `--size`; a group is answered with plantid.infer.group's rule (the mean of the
calibrated log-probabilities; unknown when the mean OOD score is above the threshold). Reported:
top-1 accuracy of single photos and of groups (mean over rounds, with the rounds' 2.5-97.5%
range), and the share answered "unknown" (of known-species photos, so a false alarm) for both.

An optimistic proxy: the photos of a group are different plants of one species, not several
views of one plant; several photos of one plant share its light, background and age, and
disagree less. Writes benchmarks/results/groups.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "groups.json"


def measure(run: Path, size: int, rounds: int, split: str) -> dict:
    from plantid.data.split import read_manifest
    from plantid.infer.backend_choice import choose_backend
    from plantid.infer.group import combine
    from plantid.infer.predictor import Predictor

    rows = read_manifest(run / "split.csv").rows_for(split)
    predictor = Predictor.from_run(run, backend=choose_backend(run, False).backend)
    predictions = predictor.predict([r.path for r in rows], top_k=1)
    kept = [(r.label, p) for r, p in zip(rows, predictions) if p.ok]
    single_acc = float(np.mean([p.top[0][0] == label for label, p in kept]))
    single_unknown = float(np.mean([bool(p.unknown) for _, p in kept]))
    by_label: dict[str, list] = {}
    for label, p in kept:
        by_label.setdefault(label, []).append(p)
    accs, unknowns, counts = [], [], []
    for seed in range(rounds):
        rng = np.random.default_rng(seed)
        right, unknown, total = 0, 0, 0
        for label, preds in by_label.items():
            order = rng.permutation(len(preds))
            for start in range(0, len(order) - size + 1, size):
                group = combine(label, [preds[i] for i in order[start:start + size]], predictor.classes,
                                predictor.threshold, top_k=1)
                right += group.top[0][0] == label
                unknown += bool(group.unknown)
                total += 1
        accs.append(right / total)
        unknowns.append(unknown / total)
        counts.append(total)
    return {"run": str(run), "split": split, "backend": predictor.backend, "photos": len(kept),
            "group_size": size, "rounds": rounds, "groups_per_round": int(np.mean(counts)),
            "single": {"accuracy": single_acc, "unknown_share": single_unknown},
            "group": {"accuracy": float(np.mean(accs)), "accuracy_range": [float(np.percentile(accs, 2.5)),
                                                                           float(np.percentile(accs, 97.5))],
                      "unknown_share": float(np.mean(unknowns))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(run, args.size, args.rounds, args.split) for run in args.run]
    print(f"{'run':40}{'photos':>8}{'single':>9}{'group of ' + str(args.size):>12}{'range':>16}"
          f"{'unknown 1':>11}{'unknown grp':>12}")
    for r in results:
        lo, hi = r["group"]["accuracy_range"]
        print(f"{r['run'][-40:]:40}{r['photos']:>8}{100 * r['single']['accuracy']:>8.2f}%"
              f"{100 * r['group']['accuracy']:>11.2f}%{f'{100 * lo:.1f}-{100 * hi:.1f}%':>16}"
              f"{100 * r['single']['unknown_share']:>10.1f}%{100 * r['group']['unknown_share']:>11.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results,
                                    "caveat": "groups are different plants of one species, not views of one plant: "
                                              "an optimistic proxy"}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
