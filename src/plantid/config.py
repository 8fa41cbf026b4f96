"""Every setting of a run as validated data: pydantic models, YAML recipes and key=value overrides.

A recipe is a YAML file (shipped ones live in `plantid/recipes/`); `load_config` merges the
recipe with dotted overrides such as `train.epochs=3 model.name=convnext_large` and validates the
result, so an unknown key or a bad value is a one-line PlantidError naming it.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plantid.errors import PlantidError, first_line


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the photos are, how they are split, and how batches are fed."""

    root: Path | None = None  # image folder (one subfolder per class) or an already split root
    manifest: Path | None = None  # an existing split.csv to use instead of splitting `root`
    # share of the photos held out for validation (checkpoint choice, trust fitting)
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)  # share of the photos held out for the final test
    split_seed: int = 0  # seed of the stratified split
    # 'auto': from the train photos' resolution when the run starts (plantid.train.plan)
    image_size: Annotated[int, Field(ge=8, le=1024)] | Literal["auto"] = 224
    batch_size: int = Field(32, ge=1)  # training photos per optimizer step
    # photos per forward and backward pass: a batch's gradients are summed over batch_size /
    # micro_batch_size passes (Lightning's accumulate_grad_batches), so activations take that much
    # less memory for the same optimizer steps; BatchNorm sees the smaller batches. None: the batch
    micro_batch_size: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(128, ge=1)  # photos per batch in validation, evaluation and trust fitting
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes (0: in the main process)
    cache_dir: Path | None = None  # default: ~/.cache/plantid

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> "DataConfig":
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"data.micro_batch_size={self.micro_batch_size} must divide data.batch_size="
                             f"{self.batch_size} (for example {self.batch_size // 2})")
        return self

    @property
    def loader_batch_size(self) -> int:
        """Training photos per forward and backward pass: the micro-batch when one is set."""
        return self.micro_batch_size or self.batch_size

    @property
    def accumulate_batches(self) -> int:
        """Passes summed into one optimizer step (Lightning's `accumulate_grad_batches`)."""
        return self.batch_size // self.loader_batch_size


class ModelConfig(_Section):
    """Which network: any timm model name, or `simple_cnn` / `inception` from scratch."""

    name: str = "tf_efficientnet_lite0"  # any timm model name, or simple_cnn / inception
    weights: str = "auto"  # auto | none | hub | lite-package | path/to/file.(pth|safetensors)
    freeze: float = Field(0.0, ge=0.0)  # >= 1: first N layers; 0 < f < 1: that fraction of layers
    head: Literal["linear", "seed"] = "linear"  # seed: GAP, Dropout, Dense(hidden) ReLU, Dense(classes)
    head_hidden: int = Field(1024, ge=1)  # width of the seed head's hidden dense layer
    dropout: float = Field(0.2, ge=0.0, lt=1.0)  # dropout before the classifier
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # stochastic depth rate of the backbone's blocks
    l1: float = Field(0.0, ge=0.0)  # L1 penalty on the head's hidden dense layer
    l2: float = Field(0.0, ge=0.0)  # L2 penalty on the head's hidden dense layer
    channels_last: bool = False  # NHWC memory layout (faster convolutions on most CPUs and GPUs)
    # recompute the backbone's activations during the backward pass instead of keeping them: less
    # memory for a slower step (timm models that support it)
    grad_checkpointing: bool = False
    # > 1: that many copies of the network train side by side (each with its own head, data
    # order, dropout and augmentation draws) and predict together by averaging their probabilities.
    members: int = Field(1, ge=1, le=16)
    # probe: the linear head starts as a logistic regression on the frozen features of the
    # training photos (plantid.train.head_init); random: timm's initialisation
    head_init: Literal["random", "probe"] = "random"

    @model_validator(mode="after")
    def _probe_needs_a_linear_head(self) -> ModelConfig:
        if self.head_init == "probe" and self.head != "linear":
            raise ValueError("model.head_init=probe fits a linear head: use it with model.head=linear")
        return self

    @property
    def label(self) -> str:
        """The network as logs, summaries and reports name it: 'tf_efficientnet_lite0', '2 x ...'."""
        name = self.name.strip()
        return f"{self.members} x {name}" if self.members > 1 else name


class AugmentConfig(_Section):
    """Batched augmentation applied on the training device; `preset` picks the recipe."""

    # none | flip | seed (flips, shifts, rotation, zoom, colour jitter)
    preset: Literal["none", "flip", "seed"] = "seed"
    strength: float = Field(1.0, ge=0.0, le=3.0)  # scales shifts, rotation, zoom, colour jitter
    # Share of samples that get the shift/rotation/zoom warp. Bilinear resampling softens every
    # warped photo, so a model that only ever saw warped photos meets sharper ones in evaluation.
    warp_prob: float = Field(1.0, ge=0.0, le=1.0)
    # Swap rows and columns of a random half of the photos: with both flips, every quarter turn
    # and mirror (the 8 symmetries of the square) becomes equally likely. Exact, no resampling.
    transpose: bool = False
    # Upside-down flips of half the photos: null keeps the preset's (the seed preset flips both
    # ways, right for leaves shot from above); false for photos that have an up, such as plants
    # photographed standing.
    vflip: bool | None = None
    mixup_alpha: float = Field(0.0, ge=0.0)  # > 0: MixUp with this Beta parameter (see mix_prob)
    cutmix_alpha: float = Field(0.0, ge=0.0)  # > 0: CutMix with this Beta parameter (see mix_prob)
    mix_prob: float = Field(0.0, ge=0.0, le=1.0)  # probability a batch is mixed (CutMix or MixUp)


class LossConfig(_Section):
    """Classification loss and imbalance handling."""

    name: Literal["ce", "weighted_ce", "focal"] = "ce"  # ce | weighted_ce (inverse class frequency) | focal
    gamma: float = Field(2.0, ge=0.0)  # focal loss focusing parameter
    alpha: Literal["none", "balanced"] | list[float] = "none"  # per-class weights for focal loss
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # share of the target spread over the other classes


class LRPhase(_Section):
    """One phase of the seed's triangular cyclical learning rate."""

    epochs: int = Field(..., ge=1)
    min_lr: float = Field(..., gt=0)
    max_lr: float = Field(..., gt=0)
    step_epochs: float = Field(2.0, gt=0)  # half-cycle length, in epochs


class OptimConfig(_Section):
    """Optimizer and learning-rate schedule."""

    name: Literal["adam", "adamw", "sgd"] = "adam"  # adam | adamw | sgd
    lr: float = Field(1e-3, gt=0)  # peak learning rate
    weight_decay: float = Field(0.0, ge=0.0)  # L2 weight decay (decoupled for adamw)
    # timm's rule (False): biases, norm weights and a backbone's no_weight_decay() names are not
    # decayed. True decays every trainable tensor, as plantid's optimizer did before timm's.
    decay_biases_and_norms: bool = False
    # learning-rate schedule: constant | cyclic | onecycle | cosine
    schedule: Literal["constant", "cyclic", "onecycle", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)  # linear warm-up before the schedule, in epochs
    phases: list[LRPhase] = Field(default_factory=list)  # for schedule=cyclic
    # Layer-wise LR decay: each backbone block trains at this times the rate of the next one
    # (the classifier at the full rate); unset trains every layer at optim.lr.
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)


class ResizePhase(_Section):
    """Early training epochs at a smaller image size (progressive resizing)."""

    epochs: int = Field(..., ge=1)
    image_size: int = Field(..., ge=8, le=1024)


class TrainConfig(_Section):
    """The loop: epochs, early stopping, hardware, precision, seeds."""

    # 'auto': as many as fit train.budget_minutes, planned from a throughput probe at the start
    # (plantid.train.plan); the run's config.yaml records the number it chose.
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = 10
    budget_minutes: float | None = Field(None, gt=0)  # the time 'auto' epochs plan for
    # The share of that budget, and of the epoch cap, 'auto' epochs plan for: a warm start
    # (`plantid train --from RUN`) trains on half (plantid.train.warm_start).
    plan_share: float = Field(1.0, gt=0.0, le=1.0)
    planned: str | None = None  # how plantid.train.plan resolved the 'auto' settings (a note)
    # Stop after this many minutes of training even if epochs remain (then test as usual); a
    # resumed run counts the minutes it already trained.
    max_minutes: float | None = Field(None, gt=0)
    patience: int = Field(0, ge=0)  # early stopping on val accuracy; 0 disables it
    seed: int = 0  # seed of weights, data order and augmentation
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int | str = 1  # GPUs (or CPU processes) per node
    num_nodes: int = Field(1, ge=1)  # machines in a multi-node run
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp ...
    precision: str = "auto"  # auto (bf16-mixed on a bf16-capable GPU, else 32-true) | 32-true | bf16-mixed | 16-mixed
    threads: int = Field(0, ge=0)  # torch intra-op threads on CPU; 0 keeps torch's default
    compile: bool = False  # torch.compile the model
    # CPU: train depthwise convolutions whose kernel exceeds their feature map with plantid's
    # weight gradient, 3-7x faster there than PyTorch's (plantid.train.depthwise). Same gradients.
    small_map_depthwise: bool = True
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: validate, test and save an EMA of the weights
    # Progressive resizing: the first epochs train at these sizes, in order; the epochs after
    # them, validation and test use data.image_size.
    # 'auto': two thirds of the epochs at two thirds of the final size (plantid.train.plan).
    resize_phases: list[ResizePhase] | Literal["auto"] = Field(default_factory=list)
    deterministic: bool = True  # deterministic kernels: a rerun repeats bit for bit on one machine
    # false: the run never scores its test split (train_summary's test_acc is null). For choosing
    # settings on val, where a test split is read once per decision, to report it.
    score_test: bool = True
    # A run folder whose weights this run starts from (`plantid train --from RUN`): its classes
    # keep their head rows, new classes get fresh ones, removed ones are dropped (plantid.train.warm_start).
    init_from: Path | None = None
    limit_train_batches: float | int = 1.0  # share (or count) of training batches per epoch
    limit_val_batches: float | int = 1.0  # share (or count) of validation batches per epoch
    log_every_n_steps: int = Field(10, ge=1)  # optimizer steps between logged training metrics
    progress: bool = True  # show the progress line

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, value: int | str) -> int | str:
        # Lightning's own refusal of devices=0 is a traceback after the scan; say it at the start
        text = str(value).strip()
        if text in ("auto", "-1") or (isinstance(value, int) and value >= 1):
            return value
        if isinstance(value, str) and all(part.strip().isdigit() for part in text.split(",") if part.strip()) \
                and text.strip(","):
            return value
        raise ValueError("must be a number of devices (1 or more), -1 or auto for all, or a list of "
                         "device indices such as '0,1'")

    @model_validator(mode="after")
    def _budget_for_auto_epochs(self) -> "TrainConfig":
        if self.epochs == "auto" and self.budget_minutes is None:
            raise ValueError("train.epochs=auto plans from a time budget: set train.budget_minutes too "
                             "(e.g. train.budget_minutes=10) or give a number of epochs")
        return self


# The vocabulary of test-time views (data only: plantid.infer.tta maps each name to the tensor
# operation that makes the view, plantid.infer.view_names parses `--tta` text into names).
VIEW_NAMES: tuple[str, ...] = (
    "identity", "hflip", "vflip", "rot180",  # exact: no pixel is resampled
    "transpose", "rot90", "rot270", "antitranspose",  # exact quarter turns and diagonal mirrors
    "rot+10", "rot-10", "shift", "shift-",  # resampled bilinearly
)
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "flips": ("identity", "hflip", "vflip", "rot180"),
    "report": ("identity", "hflip", "vflip", "rot+10", "rot-10", "shift"),
    "dihedral": ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose"),
}
DEFAULT_VIEW_SET = "flips"


class EvalConfig(_Section):
    """What `--tta default` means for this run (`plantid evaluate`, `plantid predict`): a set's
    name (flips, report, dihedral), 'none', or a list of views (VIEW_NAMES)."""

    tta: str | list[str] = DEFAULT_VIEW_SET  # test-time views `--tta default` averages (plantid.infer.view_names)

    @field_validator("tta")
    @classmethod
    def _known_views(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "off", *VIEW_SETS):
            return v
        names = [n.strip() for n in (v.split(",") if isinstance(v, str) else v) if n.strip()]
        unknown = [n for n in names if n not in VIEW_NAMES]
        if unknown:
            raise ValueError(f"unknown TTA view {unknown[0]!r}: use one of the sets {', '.join(VIEW_SETS)} "
                             f"or a list of {', '.join(VIEW_NAMES)}")
        return v


class TrustConfig(_Section):
    """What `plantid train` (and `plantid trust RUN`) fit after training to judge predictions
    (plantid.trust): the out-of-distribution detector and the share of known photos it keeps."""

    # mahalanobis+knn+stage: three scores, Mahalanobis and k-NN on the penultimate features and
    # Mahalanobis on the backbone's last stage, each standardised on the val photos and averaged
    # (`combine`); chosen with benchmarks/bench_ood.py over three split seeds of both shared sets,
    # among detectors that keep photos of the known species taken a little differently
    # (docs/decisions.md)
    detector: Literal["mahalanobis+knn+stage", "mahalanobis+knn", "knn", "mahalanobis", "energy", "maxlogit",
                      "msp"] = "mahalanobis+knn+stage"
    # How the mahalanobis+knn detectors join their parts: "mean" of the standardised scores (a part
    # that errs alone is outvoted), or "max" (unknown when any part finds the photo unusual; the
    # rule of runs fitted before 2026-12-02; docs/decisions.md)
    combine: Literal["mean", "max"] = "mean"
    k: int = Field(50, ge=1)  # the k-th nearest training photo (knn, mahalanobis+knn)
    # mahalanobis+knn detectors: each part keeps its features' `rank` leading directions and one
    # variance for the rest (plantid.trust.ood.LowRankMahalanobis, ProjectedKNN), so the detector's
    # tensors in the run and in an exported model are r x D instead of D x D and N x D; None: all
    rank: int | None = Field(128, ge=1)
    # Share of the validation photos the threshold keeps as known; the rest of the world above it
    # is answered "unknown".
    keep: float = Field(0.95, gt=0.0, lt=1.0)
    # How sure the threshold must be to keep `keep` of NEW photos (a finite-sample conformal bound over
    # the draw of the val photos, plantid.trust.selective); a small val split raises the threshold.
    keep_confidence: float = Field(0.9, gt=0.0, lt=1.0)
    # Target accuracy of the photos answered with one species, on val: below the level that reaches it
    # the answer is "unsure between A and B" (plantid.infer.answers).
    answered_accuracy: float = Field(0.95, gt=0.0, le=1.0)
    enabled: bool = True  # fit at the end of `plantid train`


class TrackConfig(_Section):
    """Where a run is also tracked besides TensorBoard (plantid.track): an MLflow store, no server.

    The default store is a SQLite database in `mlruns/` beside the run folder (why SQLite:
    plantid.track.mlflow_store); `$MLFLOW_TRACKING_URI`, when set, is used instead, and
    `tracking_uri` (any MLflow URI: sqlite:///..., http://...) overrides both. A store that
    cannot be written is a warning, never a failed run.
    """

    mlflow: bool = True  # also log the run to an MLflow store
    tracking_uri: str | None = None  # MLflow URI; default $MLFLOW_TRACKING_URI or mlruns/ beside the run
    experiment: str = Field("plantid", min_length=1)  # MLflow experiment name


class RunConfig(_Section):
    """A whole run: the union of all sections. Saved as config.yaml in each run folder."""

    recipe: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @field_validator("recipe")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


def recipe_names() -> list[str]:
    """Names of the recipes shipped with plantid."""
    folder = resources.files("plantid") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_recipe(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("plantid") / "recipes" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise PlantidError(
                f"unknown recipe '{name_or_path}': use one of {', '.join(recipe_names())} or a path to a .yaml file"
            )
        text = resource.read_text(encoding="utf-8")
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise PlantidError(f"recipe {name_or_path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise PlantidError(f"recipe {name_or_path} must be a YAML mapping of sections")
    data.setdefault("recipe", Path(name_or_path).stem)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (value parsed as YAML) to a nested dict, returning it."""
    for item in overrides:
        if "=" not in item:
            raise PlantidError(f"override '{item}' must look like section.key=value (e.g. train.epochs=5)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise PlantidError(f"override '{item}' has an empty key")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PlantidError(f"override '{item}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def setting_keys() -> list[str]:
    """Every dotted setting name (`train.epochs`, ...), section by section."""
    return [f"{section}.{name}" for section, field in RunConfig.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            for name in field.annotation.model_fields]


def closest_settings(key: str, n: int = 3) -> list[str]:
    """The setting names closest to a misspelt `key` (difflib), best first; a right name in the wrong
    section is found by its last part."""
    keys = setting_keys()
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if not close and "." in key:
        tails = difflib.get_close_matches(key.rsplit(".", 1)[1], [k.rsplit(".", 1)[1] for k in keys], n=n)
        close = [k for k in keys if k.rsplit(".", 1)[1] in tails]
    return close[:n]


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a nested dict into a RunConfig, turning the first problem into a one-line error."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        # drop pydantic's union branch tags ('constrained-int', "literal['auto']") from the path
        where = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or str(p).isidentifier())
        if err["type"] == "extra_forbidden":
            close = closest_settings(where)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "check the spelling"
            raise PlantidError(f"{source}: unknown setting '{where}' ({hint} `plantid recipes "
                               f"{data.get('recipe') or 'cpu-default'}` lists every setting)") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise PlantidError(f"{source}: bad value for '{where}': {msg} (got {err.get('input')!r})") from None


MAX_YAML_VALUES = 100_000  # a config or recipe holds a few hundred; aliases may not expand past this


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that run code) that refuses a document whose anchors and
    aliases expand to more than MAX_YAML_VALUES values: ten nested anchors of nine aliases each (a
    "billion laughs" config.yaml in a run folder from elsewhere) grew to gigabytes when read."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"its anchors and aliases expand to more than {MAX_YAML_VALUES:,} values")
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (each shared node sized once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node that contains itself counts once, not forever
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_YAML_VALUES + 1)
    return sizes[id(node)]


def load_yaml(text: str) -> Any:
    """YAML text as Python data, safely: plain types only, alias expansion bounded, nesting too
    deep for the parser a YAMLError like any other bad YAML (one line at the caller)."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def load_config(recipe: str = "cpu-default", overrides: list[str] | None = None) -> RunConfig:
    """Load a shipped recipe (by name) or a YAML file, apply overrides, and validate."""
    data = apply_overrides(_read_recipe(recipe), list(overrides or []))
    return validate_config(data, source=f"recipe {recipe}")


def load_run_config(path: str | Path) -> RunConfig:
    """Load the config.yaml saved in a run folder."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except OSError:
        raise PlantidError(f"{path}: cannot read run config; is this a plantid run folder?") from None
    except yaml.YAMLError as exc:  # edited by hand, or damaged: one line, not a parser traceback
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else f" ({first_line(exc)})"
        raise PlantidError(f"{path}: not valid YAML{where}; fix it, or train again into a new folder "
                           "(`plantid train --data DATA --out NEW_RUN`)") from None
    return validate_config(data, source=str(path))


def dump_config(cfg: RunConfig) -> str:
    """The YAML text of a config, as saved in run folders (paths as strings)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
