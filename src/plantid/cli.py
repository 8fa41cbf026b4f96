"""The `plantid` command line: one thin function per command, no logic beyond parsing and printing.

Every user error surfaces as a PlantidError, printed as one line (exit code 2), never a traceback.
Heavy imports happen inside commands so `plantid --help` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from plantid.errors import PlantidError, disk_error
from plantid.runtime import keep_freed_memory

app = typer.Typer(
    name="plantid",
    help="Turn a folder of plant photos (one subfolder per species) into a trained, evaluated and "
    "deployable species classifier.\n\nTypical session:\n\n"
    "  plantid scan photos/\n\n  plantid train --data photos/ --recipe cpu-default --out runs/demo\n\n"
    "  plantid evaluate runs/demo --tta default\n\n  plantid report runs/demo\n\n"
    "  plantid predict runs/demo leaf.jpg\n\n  plantid serve runs/demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# soft wrap: a message is one line for the terminal to fold, so a path in it is never cut by a
# newline (it stays whole to copy, at any terminal width); tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DataArg = Annotated[Path, typer.Argument(help="Image folder: one subfolder per class (or train/val/test subfolders).")]
RunArg = Annotated[Path, typer.Argument(help="A run folder written by `plantid train`.")]
DataOption = Annotated[Optional[Path], typer.Option(help="Image folder (one subfolder per class) or a split.csv.")]
RecipeOption = Annotated[str, typer.Option(help="Recipe name (see `plantid recipes`) or a YAML file.")]
VerboseOption = Annotated[bool, typer.Option(help="More logging.")]
# train, tune and ablate take extra arguments: key=value settings (`train.epochs=3`)
SETTINGS_ARGS = {"allow_extra_args": True, "ignore_unknown_options": False}
NearDupOption = Annotated[Optional[int], typer.Option(
    help="Largest perceptual-hash distance (bits of 64) at which two photos count as the same photo "
    "re-sized/re-encoded/re-cropped; default 10, chosen on the shared data sets; negative turns it off.")]
TTA_HELP = ("Test-time augmentation: a set (default = the run's eval.tta, flips unless set: the photo, its "
            "mirrors and half turn; report: "
            "the report's six views; dihedral: all 8 turns and mirrors) or a comma list of views "
            "such as hflip,rot90,rot+10,shift.")


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    logger = logging.getLogger("plantid")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _require_data(path: Path) -> None:
    """Refuse a missing image folder or manifest at once, before any heavy import or output."""
    if not path.exists():
        raise PlantidError(f"{path}: no such folder or file; pass an image folder (one subfolder per species) "
                           "or a split.csv written by `plantid split`")


def _require_run(run: Path, backend: str = "torch") -> None:
    """Refuse a path that is not a trained run folder at once, before any heavy import. The ONNX
    backends also take an export folder or a .onnx file, which their loader checks itself."""
    from plantid.runfolder import ONNX_FILE, check_run_folder

    exported_only = run.suffix == ".onnx" or (run / ONNX_FILE).is_file()  # an export folder or file
    if backend.startswith("onnx") or (backend == "auto" and exported_only):
        if not run.exists():
            raise PlantidError(f"{run}: no such run folder or ONNX export; pass the --out folder of `plantid train`")
        return
    check_run_folder(run)


def _require_writable_file(out: Path) -> None:
    """Refuse an output file that cannot be written before any work is done, so nothing computed is lost."""
    if out.is_dir():
        raise PlantidError(f"--out {out}: is a folder; give a file name such as {out / 'predictions.csv'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PlantidError(f"--out {out}: the folder {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise PlantidError(f"--out {out}: not writable; choose a file in a folder you can write to")


def _require_free_port(host: str, port: int) -> None:
    """Refuse a port that cannot be bound (in use, privileged, bad address) before the model loads."""
    import socket

    if not 1 <= port <= 65535:
        raise PlantidError(f"--port {port}: not a port number; use one from 1 to 65535, e.g. --port 8000")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PlantidError(f"--host {host}: not an address of this machine ({exc.strerror}); use 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            free = _free_port_near(family, kind, proto, address, port)
            suggestion = f"e.g. --port {free}, free now" if free else "none of the next 50 ports is free either"
            raise PlantidError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                               f"choose another --port ({suggestion})") from None


def _free_port_near(family, kind, proto, address: tuple, port: int, tries: int = 50) -> int | None:
    """The first port after `port` (wrapping to 8000) that binds on `address` now, or None."""
    import socket

    start = port + 1 if port < 65535 else 8000
    for candidate in [p for p in range(start, start + tries) if 1024 <= p <= 65535]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], candidate, *address[2:]))
            except OSError:
                continue
            return candidate
    return None


def _run_data_root(run: Path) -> Path | None:
    """The photo folder a run folder trained on (data.root of its config.yaml), when it has one."""
    from plantid.config import load_run_config
    from plantid.runfolder import RunFolder

    config = RunFolder(run).config
    root = load_run_config(config).data.root if config.is_file() else None
    return Path(root) if root else None


def _writing_into_run(run: Path, command: str):
    """The lock a command holds while it writes into a run folder; refuses a run inside its own photo
    folder first (a report's figures there would be scanned as photos by the next training)."""
    from plantid.outputs import refuse_inside_data
    from plantid.runlock import run_lock

    if run.is_dir():
        refuse_inside_data(run, _run_data_root(run), option="run folder")
    return run_lock(run, command)


def _near_dup_option(distance: Optional[int]) -> dict[str, int]:
    """scan_folder's near_duplicate_distance when --near-dup-distance was given (else its default)."""
    return {} if distance is None else {"near_duplicate_distance": distance}


@app.command()
def scan(
    data: DataArg,
    out: Annotated[Optional[Path], typer.Option(help="Where to write scan.json (default: ./scan.json).")] = Path("scan.json"),
    near_dup_distance: NearDupOption = None,
) -> None:
    """Check every photo: decode it fully, list bad files with the reason, report duplicates and near duplicates.

    Example: plantid scan photos/ --out runs/scan.json
    """
    _require_data(data)
    from plantid.data.scan import print_scan_table, scan_folder, write_scan_json

    report = scan_folder(data, progress=True, **_near_dup_option(near_dup_distance))
    print_scan_table(report, console)
    if out is not None:
        write_scan_json(report, out)
        console.print(f"wrote {out}")


@app.command()
def split(
    data: DataArg,
    out: Annotated[Path, typer.Option(help="Output folder for split.csv (and the folder layout with --materialize).")],
    val: Annotated[float, typer.Option(help="Fraction of each class for validation.")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of each class for test.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Split seed: same data + seed = byte-identical manifest.")] = 0,
    materialize: Annotated[Optional[str], typer.Option(help="Also write train/val/test/<class>/ folders: copy or link.")] = None,
    near_dup_distance: NearDupOption = None,
) -> None:
    """Deterministic stratified train/val/test split, written as a split.csv manifest.

    When --out already holds a split.csv, it grows: every photo it lists keeps its split, only new
    photos are assigned, removed ones drop out (delete the file to split afresh).

    Example: plantid split photos/ --out splits/ --val 0.15 --test 0.15 --seed 0 --materialize link
    """
    _require_data(data)
    from plantid.outputs import refuse_inside_data

    refuse_inside_data(out, data)
    from plantid.data.scan import scan_folder
    from plantid.data.split import describe_growth, split_or_grow, write_manifest
    from plantid.data.split import materialize as write_layout
    from plantid.runfolder import MANIFEST_FILE

    if materialize not in (None, "copy", "link"):
        raise PlantidError(f"--materialize must be copy or link, not '{materialize}'")
    report = scan_folder(data, progress=True, **_near_dup_option(near_dup_distance))
    rows, growth = split_or_grow(report, out / MANIFEST_FILE, val=val, test=test, seed=seed)
    if growth is not None:
        console.print(describe_growth(growth), highlight=False)
    manifest = write_manifest(rows, out / MANIFEST_FILE)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.split] = counts.get(row.split, 0) + 1
    console.print(f"wrote {manifest}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report.near_duplicate_groups and not report.presplit:
        console.print(f"kept each of {len(report.near_duplicate_groups)} near-duplicate group(s) on one side")
    if materialize:
        write_layout(rows, out, mode=materialize)
        console.print(f"wrote the train/val/test folders under {out} ({materialize})")


@app.command()
def explore(
    source: Annotated[Path, typer.Argument(help="Image folder or a split.csv manifest.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNG plots.")] = Path("explore"),
    samples: Annotated[int, typer.Option(help="Sample images per class in the grid.")] = 8,
) -> None:
    """Class-distribution chart, a sample grid per class and a size/mode summary.

    Example: plantid explore photos/ --out explore/
    """
    _require_data(source)
    from plantid.outputs import refuse_inside_data

    refuse_inside_data(out, source if source.is_dir() else None)
    from plantid.data.explore import explore as run_explore

    run_explore(source, out, console=console, samples_per_class=samples)  # prints what it wrote


@app.command(context_settings=SETTINGS_ARGS)
def train(
    ctx: typer.Context,
    data: DataOption = None,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe name (see `plantid recipes`) or a YAML file "
                                                  "(default: cpu-default, or with --from that run's recipe).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default: runs/<recipe>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from its last.ckpt.")] = None,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="Start from this run's weights (same network; "
                                                     "new classes get fresh rows), on a shorter plan, growing its split.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Train a classifier; extra arguments are key=value overrides of the recipe.

    Settings: any section.key=value after the options (train.budget_minutes=5, data.image_size=160,
    train.epochs=12, model.name=resnet50); `plantid recipes cpu-default` lists every setting with its
    value and what it does.

    Examples:

      plantid train --data photos/ --recipe cpu-default --out runs/lite0

      plantid train --data photos/ --recipe seed-convnext-large train.devices=4 train.strategy=ddp

      plantid train --resume runs/lite0

      plantid train --data photos/ --from runs/lite0 --out runs/lite0-2
    """
    from plantid.config import load_config

    _setup_logging(verbose)
    overrides = list(ctx.args)
    cfg = None
    if resume is not None:
        if overrides or data is not None or from_run is not None:
            raise PlantidError("--resume continues a run with its saved config; drop --data, --from and overrides")
    else:
        if data is not None:
            _require_data(data)
            key = "data.manifest" if data.suffix == ".csv" else "data.root"
            overrides.insert(0, f"{key}={data}")
        if from_run is not None:
            _require_run(from_run)
            overrides.insert(0, f"train.init_from={from_run.resolve()}")
            parent_recipe, parent_root = _parent_settings(from_run)
            if recipe is None and parent_recipe is None:
                raise PlantidError(f"{from_run}: not trained with a shipped recipe; pass its recipe with --recipe")
            recipe = recipe or parent_recipe
            if data is None and parent_root is not None:
                overrides.insert(0, f"data.root={parent_root}")  # the same folder, grown or corrected since
        cfg = load_config(recipe or "cpu-default", overrides)  # validate before the heavy imports below
        if from_run is not None:
            from plantid.train.warm_start import shorter_plan

            cfg = shorter_plan(cfg, list(ctx.args))
        out = out or Path("runs") / cfg.recipe
        from plantid.outputs import refuse_inside_data

        refuse_inside_data(out, cfg.data.root)

    run_dir = resume if cfg is None else out
    with _writing_into_run(run_dir, "train"):
        try:
            _train_and_fit(cfg, run_dir)
        except KeyboardInterrupt:  # typer would exit 130 in silence
            err_console.print(f"interrupted; continue the run with `plantid train --resume {run_dir}`", highlight=False)
            raise typer.Exit(130) from None


def _train_and_fit(cfg, run_dir: Path) -> None:
    """`plantid train` once it holds the run folder: train, fit trust, log to MLflow, print."""
    from plantid.train.run import train_run

    if cfg is None:
        result = train_run(None, run_dir, resume=True)
    else:
        result = train_run(cfg, run_dir)
    from plantid.runlock import started_for_another_device

    if started_for_another_device():
        return  # the first process reports the run and fits its trust
    val = f"{result.best_val_acc:.4f}" if result.best_val_acc is not None else "n/a"
    test_acc = f"{result.test_acc:.4f}" if result.test_acc is not None else "n/a"
    console.print(
        f"run {result.run_dir}: best val acc {val}, test acc {test_acc}, "
        f"{result.epochs_run} epochs in {result.train_seconds:.0f} s"
        + (f", peak memory {result.peak_memory_mb / 1024:.2f} GB" if result.peak_memory_mb else "")
        + f"; best checkpoint {result.best_checkpoint}"
    )
    from plantid.trustfit.fit import fit_after_training

    fitted = fit_after_training(result.run_dir)
    if fitted is not None:
        console.print(_trust_line(result.run_dir, fitted))
        from plantid.track.mlflow_store import log_run_files, tracking_uri

        # trust.json too, when the run is tracked in MLflow (in the store this command named)
        log_run_files(result.run_dir, store=tracking_uri(cfg.track, run_dir) if cfg is not None else None)


def _parent_settings(run: Path) -> tuple[Optional[str], Optional[Path]]:
    """The shipped recipe (None for a recipe file) and the photo folder a run was trained with, for
    `train --from RUN` without --recipe or --data."""
    from plantid.config import load_run_config, recipe_names
    from plantid.runfolder import RunFolder

    config = load_run_config(RunFolder(run).config)
    return (config.recipe if config.recipe in recipe_names() else None), config.data.root


def _trust_line(run: Path, fitted) -> str:
    m = fitted.measured
    from plantid.records import describe_detector
    from plantid.trust.selective import promise_note

    return (f"trust fitted ({run}/trust.json): {describe_detector(fitted.summary())} score"
            f", unknown above {fitted.threshold:.4g} "
            f"(keeps {100 * m['val_kept']:.1f}% of {m['val_photos']} val photos); temperature {fitted.temperature:.3f}, "
            f"val ECE {100 * m['val_ece'][0]:.2f}% -> {100 * m['val_ece'][1]:.2f}%"
            + (f" ({100 * m['val_ece_crossfit']:.2f}% cross-fitted)" if "val_ece_crossfit" in m else "")
            + (f"; unsure below {100 * fitted.answer_level:.0f}% top probability" if fitted.answer_level is not None else "")
            + ("" if m.get("keep_promised", True) else
               f"\nwarning: {promise_note(m['val_photos'], fitted.keep, m['keep_confidence'])}"))


@app.command(name="trust")
def trust_command(
    run: RunArg,
    keep: Annotated[Optional[float], typer.Option(help="Share of new photos of the known species kept as known (default: the run's trust.keep, 0.95).")] = None,
    answered_accuracy: Annotated[Optional[float], typer.Option(help="Target accuracy of the photos named a species; below the level that reaches it on val the answer is 'unsure between A and B' (default: the run's trust.answered_accuracy, 0.95).")] = None,
    detector: Annotated[Optional[str], typer.Option(help="mahalanobis+knn+stage (new runs' default), mahalanobis+knn, knn, mahalanobis, energy, maxlogit or msp (default: the run's trust.detector).")] = None,
    k: Annotated[Optional[int], typer.Option(help="The k-th nearest training photo, for the knn detectors.")] = None,
    combine: Annotated[Optional[str], typer.Option(help="How the mahalanobis+knn detectors join their parts: mean (default) or max.")] = None,
    rank: Annotated[Optional[int], typer.Option(help="Leading feature directions each part of the mahalanobis+knn detectors keeps (smaller trust files and exported models); 0 keeps them all (default: the run's trust.rank).")] = None,
) -> None:
    """Fit (or refit) what judges a run's predictions: the "not one of my species" score and its
    threshold, and the temperature that calibrates the probabilities. Uses train and val photos only.

    Example: plantid trust runs/lite0 --keep 0.95
    """
    from plantid.config import TrustConfig, load_run_config
    from plantid.runfolder import RunFolder
    from plantid.trustfit.fit import fit_trust

    _setup_logging()
    config_path = RunFolder(run).config
    base = load_run_config(config_path).trust if config_path.is_file() else TrustConfig()
    updates = {name: value for name, value in (("keep", keep), ("detector", detector), ("k", k), ("combine", combine),
                                               ("answered_accuracy", answered_accuracy)) if value is not None}
    if rank is not None:
        updates["rank"] = rank or None
    from pydantic import ValidationError

    try:
        cfg = TrustConfig.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PlantidError(f"bad value for --{where}: {err['msg']} (got {err.get('input')!r})") from None
    with _writing_into_run(run, "trust"):
        fitted, written = fit_trust(run, cfg)
    console.print(_trust_line(run, fitted))
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)


@app.command()
def recipes(
    name: Annotated[Optional[str], typer.Argument(help="A recipe (or YAML file) to list every setting of, with its value and what it does.")] = None,
) -> None:
    """List the shipped training recipes, or every setting of one with its value and a line of help.

    Any setting can be changed on the command line as section.key=value, e.g.
    `plantid train --data photos/ train.budget_minutes=5 data.image_size=160`.

    Examples: plantid recipes; plantid recipes cpu-default
    """
    from plantid.config import load_config, recipe_names

    if name is None:
        for recipe_name in recipe_names():
            cfg = load_config(recipe_name)
            console.print(f"{recipe_name}: {cfg.model.name}, {cfg.data.image_size} px, {cfg.train.epochs} epochs, "
                          f"{cfg.train.precision}")
        console.print("every setting of one, with what it does: plantid recipes NAME", highlight=False)
        return
    from rich.table import Table

    from plantid.settings_help import setting_rows

    table = Table(title=f"{name}: change any setting with section.key=value after `plantid train`", title_justify="left")
    for column in ("setting", "value", "what it does"):
        table.add_column(column, overflow="fold")
    for key, value, help_text in setting_rows(load_config(name)):
        table.add_row(key, _setting_text(value), help_text)
    console.print(table)


def _setting_text(value: object) -> str:
    """A setting's value as it would be typed after `key=`."""
    import yaml

    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _command_line() -> str:
    """The command as typed, for files that say what produced them."""
    import shlex

    return shlex.join(["plantid", *sys.argv[1:]])


@app.command(context_settings=SETTINGS_ARGS)
def tune(
    ctx: typer.Context,
    data: DataOption = None,
    recipe: RecipeOption = "cpu-default",
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold (earlier runs of the command count).")] = 20,
    budget_minutes: Annotated[Optional[float], typer.Option(help="Wall time of this search; each trial gets its share.")] = None,
    space: Annotated[str, typer.Option(help="Search space: 'default' or a YAML file of config keys -> distributions.")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="Tune folder: study.db, trials/, best.yaml (default: runs/tune-<recipe>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    verbose: VerboseOption = False,
) -> None:
    """Search a recipe's settings with Optuna (TPE, median pruning on val accuracy); extra
    arguments are key=value overrides, which also fix those keys. Run it again to continue.

    Examples:

      plantid tune --data photos/ --recipe cpu-default --trials 20 --budget-minutes 240

      plantid tune --data photos/ --recipe simple-cnn --trials 8 --space my_space.yaml train.epochs=5

      plantid train --recipe runs/tune-cpu-default/best.yaml
    """
    if data is None:
        raise PlantidError("pass --data PATH: an image folder (one subfolder per species) or a split.csv")
    _require_data(data)
    if trials < 1:
        raise PlantidError(f"--trials {trials}: a study needs at least 1 trial (e.g. --trials 20)")
    from plantid.tune.study import tune as run_tune

    _setup_logging(verbose)
    result = run_tune(data, recipe, trials, out or Path("runs") / f"tune-{Path(recipe).stem}", overrides=list(ctx.args),
                      space=space, budget_minutes=budget_minutes, seed=seed, command=_command_line())
    console.print(f"study {result.folder.study_db}: {result.complete} complete, {result.pruned} pruned, "
                  f"{result.failed} failed or interrupted ({result.ran} run now)", highlight=False)
    if result.best_number is None:
        console.print("no trial has completed yet; run the same command again to continue", highlight=False)
        return
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    console.print(f"best trial {result.best_number}: val acc {result.best_value:.4f} ({params})", highlight=False)
    for note in result.skipped_plots:
        console.print(f"skipped {note}", highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in [result.recipe, *result.plots])}; train it with "
                  f"`plantid train --recipe {result.recipe}`", highlight=False)


@app.command(context_settings=SETTINGS_ARGS)
def ablate(
    ctx: typer.Context,
    data: DataOption = None,
    suite: Annotated[str, typer.Option(help="Suite of arms: 'seed' (the report's comparisons) or a YAML file.")] = "seed",
    budget_minutes: Annotated[float, typer.Option(help="Training minutes per arm (a cap; 'auto' epochs plan for it).")] = 10.0,
    seed: Annotated[int, typer.Option(help="Split seed and training seed of every arm.")] = 0,
    runs: Annotated[Optional[Path], typer.Option(help="Folder of the arms' run folders (default: runs/ablate-<suite>).")] = None,
    out: Annotated[Path, typer.Option(help="Markdown file written from the results.")] = Path("docs/ablations.md"),
) -> None:
    """Train each arm of a suite once on one fixed split and seed, evaluate val and test without
    and with views, and write the tables (best by val) to --out. Extra arguments are key=value
    overrides for every arm. Run it again to continue: finished arms are reused.

    Examples:

      plantid ablate --data photos/ --suite seed --budget-minutes 10

      plantid ablate --data photos/ --suite my_suite.yaml --out docs/my_ablations.md train.epochs=3
    """
    if data is None:
        raise PlantidError("pass --data PATH: an image folder (one subfolder per species) or a split.csv")
    _require_data(data)
    if out.is_dir():
        raise PlantidError(f"--out {out}: is a folder; give a markdown file such as {out / 'ablations.md'}")
    from plantid.tune.ablate import ablate as run_ablate

    _setup_logging()
    result = run_ablate(data, suite, out=out, runs=runs, overrides=list(ctx.args), budget_minutes=budget_minutes,
                        seed=seed, command=_command_line())
    for name, r in result.results.items():
        views = f"{100 * r.val_views:.2f}%" if r.val_views is not None else "n/a"
        test = f"{100 * r.test:.2f}%" if r.test is not None else "n/a"
        console.print(f"{name}: val {100 * r.val:.2f}% ({views} with views), test {test}"
                      f"{' (reused)' if r.reused else ''}", highlight=False)
    console.print(f"wrote {result.out} (runs in {result.runs})", highlight=False)


@app.command()
def evaluate(
    run: RunArg,
    split: Annotated[Optional[str], typer.Option(help="test, val, train, or a folder of class subfolders "
                                                      "(default: test, or val for a run without a test split).")] = None,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP)] = None,
    ood: Annotated[Optional[list[Path]], typer.Option(help="A folder of photos that are none of the run's species "
                                                      "(any layout; repeat for more): how many are answered unknown.")] = None,
) -> None:
    """Accuracy, balanced accuracy, macro-F1, per-class table, confusion matrix and error grid;
    with trust files also calibration (ECE before/after the temperature) and, with --ood, the
    unknown-photo check (AUROC, share rejected, share of the split kept).

    Example: plantid evaluate runs/lite0 --split test --tta default --ood other_photos/
    """
    _require_run(run)
    from plantid.evaluate.evaluation import default_split, evaluate_run

    _setup_logging()
    if split is None:
        split = default_split(run)
        if split == "val":
            err_console.print(f"note: {run} has no test split (trained with data.test=0): evaluating val", highlight=False)
    with _writing_into_run(run, "evaluate"):
        evaluate_run(run, split=split, tta=tta, console=console, ood=list(ood or []))
        from plantid.track.mlflow_store import log_run_files

        log_run_files(run)  # the evaluation's files to the run's MLflow run, when it has one


@app.command()
def report(run: RunArg) -> None:
    """Write one self-contained HTML report (plots inlined) for a run.

    Example: plantid report runs/lite0
    """
    _require_run(run)
    from plantid.evaluate.report import build_report

    with _writing_into_run(run, "report"):
        path = build_report(run)
        console.print(f"report: {path}")
        from plantid.track.mlflow_store import log_run_files

        log_run_files(run)  # the report to the run's MLflow run, when it has one


@app.command()
def runs(
    folder: Annotated[Path, typer.Argument(help="A folder of run folders, searched at any depth.")] = Path("runs"),
) -> None:
    """A table of the runs under FOLDER, newest first: recipe, the settings that differ from it,
    data set, best val, test, test with views (after `plantid evaluate --tta`), training time.

    Example: plantid runs runs/
    """
    from plantid.track.runs_table import find_runs, runs_table

    _setup_logging()
    rows = find_runs(folder)
    if not rows:
        console.print(f"no runs under {folder} (a run folder holds config.yaml and train_summary.json)", highlight=False)
        return
    # piped output has no terminal width to fit: wide enough that the numbers stay on one line
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(runs_table(rows, title=f"{len(rows)} runs under {folder}, newest first"))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN RUN...", help="Two or more run folders.")],
    out: Annotated[Path, typer.Option(help="The PNG of their curves overlaid (from each metrics.csv).")] = Path("compare.png"),
) -> None:
    """Runs side by side: results, the settings that differ, and one figure of their training curves.

    Example: plantid compare runs/lite0 runs/lite0-focal --out compare.png
    """
    from plantid.track.compare import check_runs

    check_runs(run_dirs)
    _require_writable_file(out)
    from plantid.track.compare import compare_runs, comparison_tables

    result = compare_runs(run_dirs, out)
    for table in comparison_tables(result):
        console.print(table)
    console.print(f"curves: {result.figure}", highlight=False)


@app.command()
def predict(
    run: RunArg,
    paths: Annotated[Optional[list[str]], typer.Argument(help="Image files, folders (recursive) or globs.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many species to list per image.")] = 3,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP)] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    out: Annotated[Optional[Path], typer.Option(help="Write the predictions to this file.")] = None,
    backend: Annotated[str, typer.Option(help="auto: the run's ONNX export when it matches the checkpoint, else torch; "
                                               "or torch (checkpoint), onnx, onnx-int8 (made by `plantid export`).")] = "auto",
    group: Annotated[Optional[str], typer.Option(help="Several photos of one plant, one answer: 'folder' (each folder "
                                                      "is one plant) or a CSV with columns group,file.")] = None,
) -> None:
    """Predict the species of photos; bad files are reported and skipped. Says which backend answered.

    Example: plantid predict runs/lite0 leaf.jpg more_leaves/ --top-k 3 --format csv --out preds.csv
    Several photos of one plant: plantid predict runs/lite0 plants/ --group folder
    """
    _require_run(run, backend)
    if out is not None:
        _require_writable_file(out)
        from plantid.outputs import refuse_inside_data

        refuse_inside_data(out, _run_data_root(run) if run.is_dir() else None)
    from plantid.infer.cli_predict import predict_command

    code = predict_command(run, paths or [], top_k=top_k, tta=tta, output_format=output_format, out=out,
                           backend=backend, console=console, err_console=err_console, group=group)
    raise typer.Exit(code)


@app.command()
def export(
    run: RunArg,
    export_format: Annotated[str, typer.Option("--format", help="onnx, web (a static app for phones, offline) or submission.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output file/folder (default: inside the run folder).")] = None,
    quantize: Annotated[Optional[bool], typer.Option("--quantize/--no-quantize", help="int8 weights (onnx: also write model.int8.onnx). "
                                                     "web: int8 by default when it kept its val accuracy, --no-quantize for fp32.")] = None,
    quantization: Annotated[Optional[str], typer.Option(help="How --quantize makes the int8 model (onnx, submission): weights (the default: int8 tensors, "
                                              "float arithmetic: fp32's accuracy at a quarter of its size), static (int8 arithmetic "
                                              "calibrated on train photos: faster on x86 at small sizes, can lose accuracy) or dynamic.")] = None,
) -> None:
    """Export a run: ONNX model + preprocessing.json, a web app folder, or a course-challenge submission folder.

    Example: plantid export runs/lite0 --format onnx
    A phone-ready app that works offline: plantid export runs/lite0 --format web (needs `make web-runtime` once)
    """
    from plantid.infer.export import export_run

    _require_run(run)
    _setup_logging()
    if out is not None:
        from plantid.outputs import refuse_inside_data

        refuse_inside_data(out, _run_data_root(run) if run.is_dir() else None)
    with _writing_into_run(run if run.is_dir() else run.parent, "export"):
        chosen = {"quantization": quantization.strip().lower()} if quantization else {}
        for path in export_run(run, export_format, out=out, quantize=quantize, **chosen):
            if export_format.strip().lower() == "web":
                from plantid.infer.web_export import describe

                console.print(f"wrote {describe(path)}", markup=False, highlight=False)
                continue
            console.print(f"wrote {path}")


@app.command()
def serve(
    run: RunArg,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (1-65535).")] = 8000,
    backend: Annotated[str, typer.Option(help="torch, onnx or onnx-int8.")] = "torch",
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        help="Another Host name the server answers to (repeat for more; '*' for any), e.g. the name a "
             "reverse proxy forwards. Always answered: 127.0.0.1, localhost, ::1 and --host.")] = None,
) -> None:
    """A local web page (and JSON API) to identify a plant from a photo.

    Example: plantid serve runs/lite0 --port 8000, then open http://127.0.0.1:8000
    """
    _require_run(run, backend)
    _require_free_port(host, port)
    import uvicorn

    from plantid.serve.app import create_app

    # requests naming any other host are refused (400): a web page that rebinds its own name to
    # this machine's address cannot reach the server
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host, *(allowed_host or [])]
    application = create_app(run, backend=backend, allowed_hosts=hosts)
    console.print(f"serving {run} on http://{host}:{port} (Ctrl+C to stop)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
def audit(
    run: RunArg,
    features: Annotated[str, typer.Option(help="Feature network: auto (the measured best: the fine-tuned run's "
                                               "own), model (the same), or pretrained (its starting backbone).")] = "auto",
    folds: Annotated[int, typer.Option(help="Cross-validation folds for the out-of-fold probabilities.")] = 5,
    splits: Annotated[str, typer.Option(help="Comma list of split.csv splits to audit.")] = "train,val",
    limit: Annotated[int, typer.Option(help="Most photos shown in audit.html (audit.csv lists all).")] = 100,
) -> None:
    """List the training photos most likely mislabelled or ambiguous: audit.csv and audit.html in the run.

    Example: plantid audit runs/lite0 --features auto --folds 5
    """
    from plantid.trustfit.audit import audit_run

    _require_run(run)
    _setup_logging()
    with _writing_into_run(run, "audit"):
        result = audit_run(run, features=features, folds=folds, limit=limit,
                           splits=tuple(s.strip() for s in splits.split(",") if s.strip()))
    for rank, row in enumerate(result.flagged[:10], start=1):
        console.print(f"{rank:3d}. {row.path}: given {row.given} ({row.given_prob:.0%}), "
                      f"suggested {row.suggested} ({row.suggested_prob:.0%})", highlight=False)
    console.print(f"{len(result.flagged)} of {len(result.rows)} photos flagged ({result.features} features, "
                  f"{result.folds}-fold); wrote {result.csv_path} and {result.html_path}", highlight=False)


@app.command(name="sort")
def sort_command(
    run: RunArg,
    photos: Annotated[Path, typer.Argument(help="A folder of unlabelled photos (searched recursively; never changed).")],
    out: Annotated[Path, typer.Option(help="The new folder to file them into: <species>/, unsure/, unknown/, sorted.csv.")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy the photos instead of linking to them.")] = False,
    sure: Annotated[Optional[float], typer.Option(help="Smallest (calibrated) probability filed under a species; below "
                                                  "it: unsure/ (default: the run's own answer level, chosen on val).")] = None,
    backend: Annotated[str, typer.Option(help="torch, onnx or onnx-int8.")] = "torch",
) -> None:
    """File unlabelled photos by species: OUT/<species>/, OUT/unsure/ or OUT/unknown/ (links, or copies
    with --copy), and OUT/sorted.csv with every decision. The originals are never moved or changed.

    Example: plantid sort runs/lite0 new_photos/ --out sorted/
    """
    _require_run(run, backend)
    from plantid.curate.sort import sort_photos

    result = sort_photos(run, photos, out, copy=copy, sure=sure, backend=backend)
    if result.note:
        err_console.print(f"note: {result.note}", highlight=False)
    counts = ", ".join(f"{name} {n}" for name, n in sorted(result.counts().items()))
    console.print(f"sorted {len(result.decisions)} photo(s) into {result.out}: {counts}; every decision in "
                  f"{result.csv_path}", highlight=False)


@app.command()
def review(
    run: RunArg,
    sorted_folder: Annotated[Optional[list[Path]], typer.Option("--sorted", help="A folder written by `plantid sort`: "
                                                                 "its unsure photos are shown too (repeat for more).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (1-65535).")] = 8001,
) -> None:
    """A local page of the photos the run doubts (audit suspects, val/test errors, unsure sorted photos):
    keep, relabel, exclude or undo each, by click or key. Decisions go to RUN/corrections.jsonl.

    Example: plantid audit runs/lite0 && plantid review runs/lite0 --sorted sorted/, then open http://127.0.0.1:8001
    """
    _require_run(run)
    _require_free_port(host, port)
    import uvicorn

    from plantid.serve.review import create_review_app

    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host]
    application = create_review_app(run, list(sorted_folder or []), allowed_hosts=hosts)
    console.print(f"reviewing {run} on http://{host}:{port} (Ctrl+C to stop); then `plantid apply {run} --to FOLDER`")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command(name="apply")
def apply_command(
    run: RunArg,
    to: Annotated[Path, typer.Option("--to", help="The photo folder (one subfolder per species) to carry the decisions out in.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be moved or copied.")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Put every photo back where it was before apply.")] = False,
) -> None:
    """Carry out a review's decisions in the photo folder: relabelled photos move to their new class
    folder, excluded ones into FOLDER/_excluded/ (never deleted); RUN/applied.json records every move
    for --undo. Running it again does nothing new.

    Example: plantid apply runs/lite0 --to photos/ --dry-run
    """
    _require_run(run)
    from plantid.curate.apply import apply_decisions, undo_apply

    with _writing_into_run(run, "apply"):  # applied.json, and no review decision half-way through
        result = (undo_apply if undo else apply_decisions)(run, to, dry_run=dry_run)
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    for op in result.operations:
        console.print(("would " if dry_run else "") + op.describe(), highlight=False)
    what = "undo" if undo else "apply"
    if not result.operations:
        console.print(f"{what}: nothing to do; {to} already matches the decisions" if not undo else
                      f"undo: nothing to undo in {to}", highlight=False)
    elif not dry_run:
        console.print(f"{what}: {len(result.operations)} change(s) made in {to}"
                      + ("" if undo else f" (undo with `plantid apply {run} --to {to} --undo`)"), highlight=False)


def main() -> None:
    """Console-script entry point: run the app, turning PlantidError into a one-line message."""
    keep_freed_memory()
    try:
        app()
    except PlantidError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted (a training run can be continued with `plantid train --resume RUN`)")
        sys.exit(130)
    except OSError as exc:  # a full disk or a read-only folder met half-way: one line, not a traceback
        err_console.print(f"[bold red]error:[/] {disk_error(exc)}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
