"""`plantid tune`: search spaces, pruning, a resumable SQLite study, the best recipe, on real tiny data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from plantid.errors import PlantidError
from tests.support.cli import PLANTID, invoke, one_line_error, run_plantid
from tests.support.refusals import refusal

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tiny(cache: Path, epochs: int = 1) -> list[str]:
    return ["data.image_size=32", "data.batch_size=8", "data.val=0.25", "data.test=0.25", "train.progress=false",
            f"data.cache_dir={cache}", f"train.epochs={epochs}"]


# ---- search spaces -------------------------------------------------------------------------------

def test_default_space_holds_the_issue_keys_as_optuna_distributions():
    from plantid.tune.search_space import load_space

    space = load_space("default")
    assert set(space) == {"model.freeze", "optim.lr", "augment.strength", "loss.label_smoothing", "data.image_size"}
    assert isinstance(space["optim.lr"], FloatDistribution) and space["optim.lr"].log
    assert isinstance(space["data.image_size"], CategoricalDistribution)
    assert all(isinstance(v, int) for v in space["data.image_size"].choices)


def test_space_file_parses_and_trials_draw_inside_it(tmp_path: Path):
    from plantid.config import load_config
    from plantid.tune.search_space import apply_params, load_space, suggest

    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent("""\
        optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        train.epochs: {type: int, low: 2, high: 4}
        loss.name: {type: categorical, choices: [ce, focal]}
    """))
    space = load_space(str(path))
    assert isinstance(space["train.epochs"], IntDistribution)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    base = load_config("simple-cnn")
    for _ in range(5):
        params = suggest(study.ask(), space)
        assert 1e-4 <= params["optim.lr"] <= 1e-2 and 2 <= params["train.epochs"] <= 4
        cfg = apply_params(base, params)
        assert (cfg.optim.lr, cfg.train.epochs, cfg.loss.name) == (params["optim.lr"], params["train.epochs"],
                                                                   params["loss.name"])


# What `plantid tune --space FILE` and `plantid ablate --suite FILE` refuse: one line naming the file.
BAD_SPACES = [  # (file text, words of the refusal)
    ("optim.lr: {type: float, low: [", "not valid YAML"),
    ("optim.nope: {type: float, low: 0.1, high: 1}", "unknown setting 'optim.nope'"),
    ("optim.lr: {type: float, low: 0.1, high: 0.01}", "'optim.lr'"),
    ("optim.lr: {type: gaussian, low: 0.1, high: 1}", "unknown type 'gaussian'"),
    ("optim.lr: 0.001", "must be a mapping with a type"),
    ("train.epochs: {type: int, low: 1.5, high: 3}", "whole numbers"),
    ("- optim.lr", "must be a YAML mapping"),
]
BAD_SUITES = [
    ("arms: {a: {recipe: simple-cnn}}\ncomparisons: {x: [a, b]}", "names arm 'b'"),
    ("arms: {'a/b': {recipe: simple-cnn}}", "arm name 'a/b'"),
    ("arms: {a: {set: [loss.name=focal]}}", "needs a recipe"),
    ("arms: {a: {recipe: simple-cnn, set: loss.name=focal}}", "'set' must be a list"),
    ("arms: [", "not valid YAML"),
]
BAD_TUNE_FILES = [("space", *case) for case in BAD_SPACES] + [("suite", *case) for case in BAD_SUITES]


@pytest.mark.parametrize(("kind", "text", "words"), BAD_TUNE_FILES)
def test_bad_space_or_suite_file_is_a_one_line_error_naming_it(tmp_path: Path, kind: str, text: str, words: str):
    from plantid.tune.ablate import load_suite
    from plantid.tune.search_space import load_space

    path = tmp_path / f"bad {kind}.yaml"
    path.write_text(text + "\n")
    message = refusal({"space": load_space, "suite": load_suite}[kind], str(path))
    assert str(path) in message and words in message


def test_keys_set_on_the_command_line_are_fixed_and_bounds_are_checked_against_the_recipe(tmp_path: Path):
    from plantid.config import load_config
    from plantid.tune.search_space import (
        check_space,
        load_space,
        parse_space,
        without_fixed,
    )

    space = without_fixed(load_space("default"), ["data.image_size=32", "train.epochs=1"])
    assert "data.image_size" not in space and "optim.lr" in space
    too_big = parse_space({"data.image_size": {"type": "categorical", "choices": [64, 4096]}}, "search space x.yaml")
    with pytest.raises(PlantidError, match=r"search space x.yaml: data.image_size=4096"):
        check_space(too_big, load_config("simple-cnn"), source="search space x.yaml")


# ---- the study: lock, resume after a kill, pruning -----------------------------------------------

def test_a_second_search_in_the_same_folder_is_refused_while_one_runs(tmp_path: Path):
    from plantid.tune.folder import TuneFolder
    from plantid.tune.study import hold_lock

    folder = TuneFolder(tmp_path / "tune")
    with hold_lock(folder), pytest.raises(PlantidError, match="another `plantid tune` is working"), \
            hold_lock(folder):
        pass
    with hold_lock(folder):  # released: the next invocation may go on
        pass


def test_a_trial_killed_mid_run_is_failed_and_queued_again_with_its_params(tmp_path: Path):
    """A real process opens the study, starts a trial and is SIGKILLed: the trial stays RUNNING in
    SQLite. The next invocation marks it failed and queues its parameters and run folder again."""
    from plantid.tune.folder import TuneFolder
    from plantid.tune.search_space import load_space, suggest
    from plantid.tune.study import hold_lock, open_study, recover_interrupted

    folder = TuneFolder(tmp_path / "tune")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from plantid.tune.folder import TuneFolder
        from plantid.tune.search_space import load_space, suggest
        from plantid.tune.study import hold_lock, open_study
        folder = TuneFolder(Path({str(folder.root)!r}))
        with hold_lock(folder):
            study = open_study(folder, seed=0)
            done = study.ask()
            suggest(done, load_space("default"))
            study.tell(done, 0.5)
            trial = study.ask()
            suggest(trial, load_space("default"))
            trial.set_user_attr("run_dir", "trials/001")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    states = [t.state for t in optuna.load_study(study_name="plantid", storage=folder.storage_url).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]

    with hold_lock(folder):  # the dead process's lock is gone
        study = open_study(folder, seed=0)
        assert recover_interrupted(study) == [1]
        assert recover_interrupted(study) == []  # queued once, not again
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["run_dir"] == "trials/001"
    assert trials[0].value == 0.5  # the finished trial is kept as it was
    # The queued trial hands its fixed parameters to the next ask, as optimize would.
    again = study.ask()
    assert again.number == 2 and suggest(again, load_space("default")) == trials[1].params


def test_pruning_callback_stops_a_trial_behind_the_others(tmp_path: Path, tiny_photos: Path):
    """A real training run reports val accuracy each epoch; against a finished trial that reached
    an accuracy no run can (2.0), the median pruner stops it at once, before it is tested."""
    from plantid.config import load_config
    from plantid.train.run import train_run
    from plantid.tune.pruning import PruneOnValAcc

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study.add_trial(optuna.create_trial(value=2.0, intermediate_values={0: 2.0, 1: 2.0, 2: 2.0}))
    trial = study.ask()
    cfg = load_config("simple-cnn", [f"data.root={tiny_photos}", *_tiny(tmp_path / "cache", epochs=3)])
    with pytest.raises(optuna.TrialPruned):
        train_run(cfg, tmp_path / "run", callbacks=[PruneOnValAcc(trial)])
    reported = study.trials[1].intermediate_values
    assert list(reported) == [0] and 0.0 <= reported[0] <= 1.0
    assert not (tmp_path / "run" / "train_summary.json").exists()


def test_one_trial_study_writes_a_best_recipe_that_trains_and_resumes_to_nothing(tmp_path: Path, tiny_photos: Path):
    from plantid.config import load_config
    from plantid.train.run import train_run
    from plantid.tune.study import tune

    out = tmp_path / "tune"
    settings = _tiny(tmp_path / "cache")
    result = tune(tiny_photos, "simple-cnn", 1, out, overrides=settings, seed=0, command="plantid tune test")
    assert (result.ran, result.complete, result.best_number) == (1, 1, 0)
    # Trials never saw the test photos: their split is the data's split less its test rows.
    trial_split = (out / "trials" / "000" / "split.csv").read_text()
    full_split = (out / "split.csv").read_text()
    assert ",test," in full_split and ",test," not in trial_split
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert result.skipped_plots and not (out / "importances.png").exists()  # one trial: no importances

    cfg = load_config(str(out / "best.yaml"))
    assert cfg.recipe == "simple-cnn-tuned" and cfg.data.image_size == 32
    for key, value in result.best_params.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
    trained = train_run(cfg, tmp_path / "best-run")
    assert trained.best_val_acc is not None and trained.test_acc is not None

    again = tune(tiny_photos, "simple-cnn", 1, out, overrides=settings)
    assert (again.ran, again.complete) == (0, 1)
    with pytest.raises(PlantidError, match="holds a study with another recipe"):
        tune(tiny_photos, "inception", 2, out, overrides=settings)


@pytest.mark.parametrize(("args", "words"), [
    (["--data", "{tmp}/nope"], "no such folder"),
    (["--data", "{photos}", "--trials", "0"], "--trials 0"),
    (["--data", "{photos}", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["--data", "{photos}", "--space", "{tmp}/space.yaml"], "space.yaml is not valid YAML"),
    ([], "pass --data"),
])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path, tiny_photos: Path, args, words):
    (tmp_path / "space.yaml").write_text("optim.lr: [\n")
    out = tmp_path / "out"
    line = one_line_error(invoke("tune", *[a.format(tmp=tmp_path, photos=tiny_photos) for a in args], "--out", out))
    assert words in line, line
    assert not out.exists()


@pytest.mark.slow
def test_study_killed_during_trial_two_resumes_without_redoing_trial_one(tmp_path: Path, tiny_photos: Path):
    """`plantid tune --trials 2` in a real process, SIGKILLed while trial 2 trains; the same command
    then finishes the study: 2 complete trials, the first untouched, the second's params kept."""
    out = tmp_path / "tune"
    args = ["tune", "--data", str(tiny_photos), "--recipe", "simple-cnn", "--trials", "2", "--out", str(out),
            *_tiny(tmp_path / "cache", epochs=3)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    child = subprocess.Popen([*PLANTID, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    second = out / "trials" / "001" / "config.yaml"
    try:
        deadline = time.monotonic() + 600
        while not second.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    storage = TuneStorage(out)
    killed = storage.trials()
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_ckpt = out / "trials" / "000" / "best.ckpt"
    first_stamp = first_ckpt.stat().st_mtime_ns

    proc = run_plantid(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = storage.trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].value == killed[0].value and first_ckpt.stat().st_mtime_ns == first_stamp
    assert trials[2].params == killed[1].params  # the killed trial's parameters, not new ones
    assert trials[2].user_attrs["run_dir"] == str(out / "trials" / "001")
    assert not (out / "trials" / "002").exists()
    assert f"best trial {max((0, 2), key=lambda n: trials[n].value)}" in proc.stdout
    for name in ("best.yaml", "history.png", "importances.png"):
        assert (out / name).is_file(), name


class TuneStorage:
    """Read a tune folder's study from outside the process that writes it."""

    def __init__(self, out: Path):
        self.url = f"sqlite:///{(out / 'study.db').resolve()}"

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name="plantid", storage=self.url).trials
