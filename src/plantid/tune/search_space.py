"""A search space as data: a YAML mapping of plantid config keys to Optuna distributions.

    optim.lr: {type: float, low: 5.0e-4, high: 5.0e-3, log: true}
    model.freeze: {type: categorical, choices: [0.0, 0.15, 0.3, 0.5]}
    train.epochs: {type: int, low: 3, high: 9}

Keys are the dotted settings of `plantid.config` (the ones `plantid train` takes as overrides);
shipped spaces live in `plantid/tune/spaces/` (`default`), any other is a path to a YAML file.
Every key and every bound is checked against the recipe before a trial runs, so a typo is a
one-line error naming the file, not a failed trial an hour in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from plantid.config import RunConfig, load_yaml, validate_config
from plantid.errors import PlantidError, first_line

DEFAULT_SPACE = "default"
_EXAMPLE = "e.g. optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"


def space_names() -> list[str]:
    """Names of the search spaces shipped with plantid."""
    folder = resources.files("plantid.tune") / "spaces"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_space_text(name_or_path: str) -> tuple[str, str]:
    """(source, YAML text) of a shipped space by name or of a YAML file, or a one-line error."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            return f"search space {path}", path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise PlantidError(f"search space {path}: cannot read it ({why}); pass a readable YAML file "
                               f"or one of {', '.join(space_names())}") from None
    resource = resources.files("plantid.tune") / "spaces" / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise PlantidError(f"unknown search space '{name_or_path}': use one of {', '.join(space_names())} "
                           "or a path to a .yaml file")
    return f"search space {name_or_path}", resource.read_text(encoding="utf-8")


def load_space(name_or_path: str = DEFAULT_SPACE) -> dict[str, BaseDistribution]:
    """Read a search space (shipped name or YAML path) into {config key: Optuna distribution}."""
    source, text = read_space_text(name_or_path)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PlantidError(f"{source} is not valid YAML: {first_line(exc)}") from None
    return parse_space(data, source)


def _known_keys() -> set[str]:
    keys: set[str] = set()
    for section, values in RunConfig().model_dump().items():
        if isinstance(values, dict):
            keys.update(f"{section}.{name}" for name in values)
    return keys


def _distribution(key: str, spec: Any, source: str) -> BaseDistribution:
    where = f"{source}: '{key}'"
    if not isinstance(spec, dict) or "type" not in spec:
        raise PlantidError(f"{where} must be a mapping with a type (float, int or categorical); {_EXAMPLE}")
    spec = dict(spec)
    kind = str(spec.pop("type")).strip().lower()
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}}
    if kind not in allowed:
        raise PlantidError(f"{where}: unknown type '{kind}'; use float, int or categorical")
    extra = sorted(set(spec) - allowed[kind])
    if extra:
        raise PlantidError(f"{where}: '{extra[0]}' is not a field of a {kind} distribution "
                           f"(use {', '.join(sorted(allowed[kind]))})")
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError("choices must be a non-empty list")
            return CategoricalDistribution(choices)
        if "low" not in spec or "high" not in spec:
            raise ValueError("give both low and high")
        log, step = bool(spec.get("log", False)), spec.get("step")
        if kind == "float":
            return FloatDistribution(float(spec["low"]), float(spec["high"]), log=log,
                                     step=None if step is None else float(step))
        if any(not isinstance(spec[b], int) or isinstance(spec[b], bool) for b in ("low", "high")):
            raise ValueError("low and high of an int distribution must be whole numbers")
        return IntDistribution(spec["low"], spec["high"], log=log, step=int(step or 1))
    except (TypeError, ValueError) as exc:
        raise PlantidError(f"{where}: {first_line(exc)}; {_EXAMPLE}") from None


def parse_space(data: Any, source: str) -> dict[str, BaseDistribution]:
    """Turn a parsed YAML mapping into {config key: distribution}; unknown keys are refused."""
    if not isinstance(data, dict) or not data:
        raise PlantidError(f"{source} must be a YAML mapping of config keys to distributions; {_EXAMPLE}")
    known = _known_keys()
    space: dict[str, BaseDistribution] = {}
    for key, spec in data.items():
        key = str(key).strip()
        if key not in known:
            raise PlantidError(f"{source}: unknown setting '{key}' (keys are section.name as in "
                               "`plantid train` overrides, e.g. optim.lr, model.freeze)")
        space[key] = _distribution(key, spec, source)
    return space


def without_fixed(space: dict[str, BaseDistribution], overrides: list[str]) -> dict[str, BaseDistribution]:
    """The space less the keys the user set on the command line: those are fixed, not searched."""
    fixed = {item.split("=", 1)[0].strip() for item in overrides if "=" in item}
    return {k: d for k, d in space.items() if k not in fixed}


def apply_params(cfg: RunConfig, params: dict[str, Any], source: str = "trial") -> RunConfig:
    """`cfg` with each dotted key of `params` set (validated), e.g. {'optim.lr': 0.002}."""
    data = cfg.model_dump(mode="json")
    for key, value in params.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return validate_config(data, source=source)


def check_space(space: dict[str, BaseDistribution], cfg: RunConfig, source: str) -> None:
    """Refuse a space whose bounds or choices the recipe cannot take (e.g. image_size 4096)."""
    for key, dist in space.items():
        values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
        for value in values:
            apply_params(cfg, {key: value}, source=f"{source}: {key}={value!r}")


def suggest(trial: Any, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Ask an Optuna trial for one value of each key (a re-queued trial gets its fixed values)."""
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return params
