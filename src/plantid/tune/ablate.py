"""`plantid ablate`: the report's comparisons, each arm trained once on one fixed split and seed.

A suite is data (`plantid/tune/suites/<name>.yaml`, or any YAML file of that form): named arms,
each a recipe plus overrides, and named comparisons listing the arms they compare. Every arm
trains in its own run folder under RUNS with the same split (made once, RUNS/split.csv), the
same seeds and the same time budget, and is evaluated on val and test, without and with the
run's test-time views. The command is resumable: a finished arm is reused, an interrupted one
continues from its last.ckpt, an evaluation already written is read back. The markdown table
(`plantid.tune.ablate_report`) chooses nothing on test: the best arm of each comparison is the
best by val accuracy, and test is reported beside it.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from plantid.config import RunConfig, load_config, load_yaml
from plantid.errors import PlantidError, first_line
from plantid.evaluate.evaluation import evaluate_run
from plantid.fileio import write_json_atomic, write_text_atomic
from plantid.records import Evaluation, TrainSummary, read_evaluation, read_summary
from plantid.runfolder import RunFolder
from plantid.train.run import prepare_manifest, train_run
from plantid.tune.ablate_report import ablation_markdown, provenance

log = logging.getLogger("plantid")

DEFAULT_SUITE = "seed"
SETTINGS_FILE = "ablate.json"  # in RUNS: what the arms there were trained with
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Arm:
    """One configuration of a suite: a recipe plus `section.key=value` overrides."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How the table names the arm's settings: 'cpu-default, loss.name=focal'."""
        return ", ".join([self.recipe, *self.overrides])


@dataclass(frozen=True)
class Suite:
    """A named set of arms and the comparisons (groups of arm names) drawn from them."""

    name: str
    arms: dict[str, Arm]
    comparisons: dict[str, list[str]]
    source: str


@dataclass
class ArmResult:
    """One arm's run and its four accuracies (val/test, without/with views)."""

    arm: Arm
    run_dir: Path
    summary: TrainSummary
    val: float
    test: float | None
    val_views: float | None
    test_views: float | None
    views: list[str] = field(default_factory=list)
    reused: bool = False


@dataclass
class AblationResult:
    """What `ablate` leaves: the markdown file, the runs folder and every arm's result."""

    out: Path
    runs: Path
    results: dict[str, ArmResult]
    markdown: str


def suite_names() -> list[str]:
    """Names of the suites shipped with plantid."""
    folder = resources.files("plantid.tune") / "suites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str = DEFAULT_SUITE) -> Suite:
    """Read a shipped suite (by name) or a suite YAML file, checking every arm and comparison."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        source = f"suite {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlantidError(f"suite {path}: cannot read it ({first_line(exc)}); pass a YAML file or one of "
                               f"{', '.join(suite_names())}") from None
    else:
        resource = resources.files("plantid.tune") / "suites" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise PlantidError(f"unknown suite '{name_or_path}': use one of {', '.join(suite_names())} "
                               "or a path to a .yaml file")
        source, text = f"suite {name_or_path}", resource.read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PlantidError(f"{source} is not valid YAML: {first_line(exc)}") from None
    return parse_suite(data, source, default_name=path.stem)


def parse_suite(data: Any, source: str, default_name: str = "custom") -> Suite:
    """{suite, arms: {name: {recipe, set: [...]}}, comparisons: {title: [arm, ...]}} -> Suite."""
    example = "e.g. arms: {focal: {recipe: cpu-default, set: [loss.name=focal]}}"
    if not isinstance(data, dict) or not isinstance(data.get("arms"), dict) or not data["arms"]:
        raise PlantidError(f"{source} must be a YAML mapping with 'arms' ({example})")
    arms: dict[str, Arm] = {}
    for name, spec in data["arms"].items():
        name = str(name)
        if not _ARM_NAME.match(name):
            raise PlantidError(f"{source}: arm name '{name}' must be letters, digits, '.', '_' or '-' (it names a folder)")
        if not isinstance(spec, dict) or not isinstance(spec.get("recipe"), str):
            raise PlantidError(f"{source}: arm '{name}' needs a recipe ({example})")
        sets = spec.get("set") or []
        if isinstance(sets, str) or not all(isinstance(s, str) and "=" in s for s in sets):
            raise PlantidError(f"{source}: arm '{name}': 'set' must be a list of section.key=value strings")
        extra = sorted(set(spec) - {"recipe", "set"})
        if extra:
            raise PlantidError(f"{source}: arm '{name}': unknown field '{extra[0]}' (use recipe and set)")
        arms[name] = Arm(name, spec["recipe"], tuple(sets))
    comparisons = data.get("comparisons") or {"all": list(arms)}
    if not isinstance(comparisons, dict):
        raise PlantidError(f"{source}: 'comparisons' must map a title to a list of arm names")
    for title, names in comparisons.items():
        if not isinstance(names, list) or not names:
            raise PlantidError(f"{source}: comparison '{title}' must be a list of arm names")
        unknown = [n for n in names if n not in arms]
        if unknown:
            raise PlantidError(f"{source}: comparison '{title}' names arm '{unknown[0]}', which is not among the arms")
    return Suite(str(data.get("suite") or default_name), arms, {str(k): list(v) for k, v in comparisons.items()}, source)


def arm_settings(budget_minutes: float | None, seed: int, overrides: list[str]) -> list[str]:
    """Overrides every arm gets, in order: seeds, the time budget (a cap on training for every
    recipe, and what 'auto' epochs plan for), then the user's own."""
    settings = [f"data.split_seed={seed}", f"train.seed={seed}"]
    if budget_minutes is not None:
        settings += [f"train.max_minutes={budget_minutes:g}", f"train.budget_minutes={budget_minutes:g}"]
    return settings + list(overrides)


def arm_config(arm: Arm, manifest: Path, settings: list[str]) -> RunConfig:
    """The arm's config: its recipe, the common settings, then its own overrides (which win)."""
    return load_config(arm.recipe, [f"data.manifest={manifest}", *settings, *arm.overrides])


def _check_settings(runs: Path, identity: dict[str, Any]) -> None:
    """Refuse to mix arms trained with other common settings; record new arms' definitions."""
    path = runs / SETTINGS_FILE
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"common": identity["common"], "arms": {}}
    if stored.get("common") != identity["common"]:
        raise PlantidError(f"{runs} holds arms trained with other settings ({path}); use the same --data, "
                           "--budget-minutes, --seed and overrides, or another --runs folder")
    for name, spec in identity["arms"].items():
        if name in stored["arms"] and stored["arms"][name] != spec:
            raise PlantidError(f"{runs}/{name} was trained as {stored['arms'][name]}, not {spec}; delete that "
                               "folder or use another --runs folder")
    stored["arms"].update(identity["arms"])
    write_json_atomic(path, stored)


def train_arm(cfg: RunConfig, run_dir: Path) -> bool:
    """Train the arm, continue it from last.ckpt, or reuse it when finished; True when reused."""
    run = RunFolder(run_dir)
    if run.summary.is_file() and run.checkpoint() is not None:
        return True
    if run.last_checkpoint.is_file():
        log.info("%s: continuing from %s", run_dir.name, run.last_checkpoint)
        train_run(None, run_dir, resume=True)
    else:
        train_run(cfg, run_dir)
    return False


def evaluate_arm(run_dir: Path, split: str) -> tuple[float, float | None, list[str]]:
    """(accuracy, accuracy with the run's views, the views) on a split, from its eval file when
    one with views is already there, else by `plantid evaluate --tta default`."""
    record = read_evaluation(run_dir, split)
    if record is None or record.tta is None:
        record = Evaluation.model_validate(
            evaluate_run(run_dir, split=split, tta="default", console=Console(file=io.StringIO())))
    tta = record.tta
    return record.metrics.accuracy, tta.metrics.accuracy if tta else None, list(tta.views) if tta else []


def ablate(data: Path, suite: str = DEFAULT_SUITE, *, out: Path = Path("docs/ablations.md"), runs: Path | None = None,
           overrides: list[str] | None = None, budget_minutes: float | None = 10.0, seed: int = 0,
           command: str = "plantid ablate") -> AblationResult:
    """Train and evaluate every arm of `suite` on `data` (one split, one seed, `budget_minutes`
    of training per arm), then write the comparison tables as markdown to `out` (atomically)."""
    data = Path(data).expanduser()
    if not data.exists():
        raise PlantidError(f"{data}: no such folder or file; pass an image folder (one subfolder per species) "
                           "or a split.csv written by `plantid split`")
    if budget_minutes is not None and budget_minutes <= 0:
        raise PlantidError(f"--budget-minutes {budget_minutes:g}: give a positive number of minutes per arm")
    chosen = load_suite(suite)
    runs = Path(runs) if runs is not None else Path("runs") / f"ablate-{chosen.name}"
    settings = arm_settings(budget_minutes, seed, list(overrides or []))
    manifest = RunFolder(runs).manifest
    configs = {name: arm_config(arm, manifest, settings) for name, arm in chosen.arms.items()}

    runs.mkdir(parents=True, exist_ok=True)
    _check_settings(runs, {"common": {"data": str(data.resolve()), "settings": settings},
                           "arms": {n: {"recipe": a.recipe, "set": list(a.overrides)} for n, a in chosen.arms.items()}})
    if not manifest.is_file():
        data_key = "data.manifest" if data.suffix == ".csv" else "data.root"
        first = next(iter(chosen.arms.values()))
        prepare_manifest(load_config(first.recipe, [*settings, f"{data_key}={data.resolve()}"]), runs)

    results: dict[str, ArmResult] = {}
    for i, (name, arm) in enumerate(chosen.arms.items(), start=1):
        log.info("arm %d/%d %s (%s)", i, len(chosen.arms), name, arm.label)
        run_dir = runs / name
        reused = train_arm(configs[name], run_dir)
        summary = read_summary(run_dir)
        if summary is None:
            raise PlantidError(f"{run_dir}: training ended without train_summary.json; run the command again")
        val, val_views, views = evaluate_arm(run_dir, "val")
        test = test_views = None
        if summary.test_acc is not None:
            test, test_views, _ = evaluate_arm(run_dir, "test")
        results[name] = ArmResult(arm, run_dir, summary, val, test, val_views, test_views, views, reused)

    text = ablation_markdown(chosen, results, provenance(command, data, manifest, seed, budget_minutes, settings))
    write_text_atomic(out, text)
    return AblationResult(Path(out), runs, results, text)
