"""`plantid audit`: the training photos most likely mislabelled or ambiguous, confident-learning style.

A model scored on the photos it was trained on has memorised their labels, so its own
probabilities cannot say which labels are wrong. The audit therefore gets *out-of-fold*
probabilities instead: pooled features of every train and val photo (from the run's pretrained
backbone, or from the fine-tuned model itself), then a K-fold cross-validated logistic
regression on those features (scikit-learn's `cross_val_predict`), so each photo is scored by a
classifier that never saw its label. Photos are ranked by cleanlab's self-confidence (the
out-of-fold probability of the given label), and cleanlab's `find_label_issues` (confident
learning) flags those whose given label disagrees with the probabilities.

Measured on the shared data sets with 5% of the labels flipped (benchmarks/bench_audit.py,
benchmarks/results/audit*.json; recall of the flips in the top 10%, chance 10%), the run's own
features against its pretrained backbone's: leaf 40 a class 62.5% against 56.3% (after 3 and
after 9 epochs), leaf 120 a class at cpu-default's 192 px 78.6% against 69.0%, flowers 40 a class
96.4% against 96.4%; only leaf 120 a class at 128 px went the other way (61.9% against 66.7%).
Out-of-fold, the fine-tuned features find flips that the run's own in-sample probabilities do
not (57% of the flower flips after 9 epochs: it has learned them), so `features='auto'` takes
the run's own network. Its features are each stage's channel means and standard deviations,
which found more flips than the final pooled features alone.

Outputs, in the run folder and written atomically: `audit.csv` (every audited photo, most
suspicious first) and `audit.html` (a self-contained grid of the flagged photos, thumbnails
embedded, with the given and the suggested label).
"""

from __future__ import annotations

import base64
import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plantid.data.cache import build_cache, resolve_cache_dir
from plantid.data.split import SPLITS, read_manifest
from plantid.errors import PlantidError
from plantid.fileio import write_text_atomic
from plantid.html_pages import render_page
from plantid.infer.checkpoint import load_trained
from plantid.models import build_model
from plantid.models.classifier import SeedHead, members_of
from plantid.models.factory import SCRATCH_MODELS
from plantid.runfolder import AUDIT_CSV, AUDIT_HTML, RunFolder

log = logging.getLogger("plantid")

FEATURE_SOURCES = ("auto", "pretrained", "model")
CSV_HEADER = ["rank", "path", "split", "given", "suggested", "given_prob", "suggested_prob", "quality", "flagged"]
THUMB_PX = 128
# Logistic-regression L2 strengths searched per training fold; chosen on the benchmark's folders
# were 0.01 (leaf, 271 photos) to 0.1 (flowers, 578); C_FALLBACK when a class is too small to search.
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
C_FALLBACK = 0.1
# Which pooled features the audit fits on (see feature_pieces): each backbone stage's channel
# means and standard deviations found more flipped labels than the final pooled features alone.
FEATURE_PARTS = ("mean", "std")


@dataclass
class AuditRow:
    """One audited photo: its given label against the out-of-fold probabilities."""

    path: str
    split: str
    given: str
    suggested: str
    given_prob: float  # out-of-fold probability of the given label (cleanlab's self-confidence)
    suggested_prob: float
    quality: float  # cleanlab's label quality score (self-confidence): low = suspicious
    flagged: bool  # cleanlab's find_label_issues marks it as a likely label issue
    row: int  # the photo's row in the pixel cache (for thumbnails)


@dataclass
class AuditResult:
    """The ranked photos (most suspicious first), the feature source used and the files written."""

    rows: list[AuditRow]
    features: str
    folds: int
    csv_path: Path | None = None
    html_path: Path | None = None

    @property
    def flagged(self) -> list[AuditRow]:
        return [r for r in self.rows if r.flagged]


# -- features -----------------------------------------------------------------------------------
def _pooled_layers(model) -> list:
    """The first head layer of each network: its input is the backbone's pooled features."""
    layers = []
    for member in members_of(model):
        head = getattr(member, "head", None)
        layers.append(head.fc1 if isinstance(head, SeedHead) else member.backbone.get_classifier())
    return layers


def _stage_modules(model) -> list:
    """The modules whose outputs are the backbone's stage feature maps (timm's `feature_info`)."""
    modules = []
    for member in members_of(model):
        info = getattr(member.backbone, "feature_info", None) or []
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        modules += [member.backbone.get_submodule(d["module"]) for d in dicts if d.get("module")]
    return modules


def feature_pieces(model, images: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 64
                   ) -> dict[str, np.ndarray]:
    """Pooled features of uint8 N x S x S x 3 photos, in one forward pass, by where they come from.

    'head': the input of each network's first head layer (the backbone's globally pooled
    features), captured with a forward pre-hook; 'mean' and 'std': each stage feature map's
    per-channel spatial mean and standard deviation (stages from timm's `feature_info`; empty
    for a network without it). Any Classifier (timm, seed head, the scratch nets) or Ensemble
    (members side by side) works without its own code. `rows` selects rows of `images` (a
    memory-mapped cache) without copying all of it.
    """
    import torch

    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    heads, stages = _pooled_layers(model), _stage_modules(model)
    got: dict[str, list[list[torch.Tensor]]] = {"head": [[] for _ in heads], "mean": [[] for _ in stages],
                                                "std": [[] for _ in stages]}

    def keep_stage(i: int):
        def hook(_m, _args, out):
            got["mean"][i].append(out.detach().float().mean(dim=(2, 3)))
            got["std"][i].append(out.detach().float().std(dim=(2, 3)))
        return hook

    hooks = [layer.register_forward_pre_hook(lambda _m, args, i=i: got["head"][i].append(args[0].detach().flatten(1)))
             for i, layer in enumerate(heads)]
    hooks += [module.register_forward_hook(keep_stage(i)) for i, module in enumerate(stages)]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = np.ascontiguousarray(images[rows[start : start + batch_size]])
                model(torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0))
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (torch.cat([torch.cat(c) for c in lists], dim=1).float().numpy() if rows.size and lists
                  else np.zeros((len(rows), 0), dtype=np.float32))
            for key, lists in got.items()}


def pooled_features(model, images: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 64,
                    parts: Sequence[str] = ("head",)) -> np.ndarray:
    """The `parts` of `feature_pieces` side by side (N x D float32); by default the pooled head input."""
    pieces = feature_pieces(model, images, rows, batch_size)
    unknown = set(parts) - set(pieces)
    if unknown:
        raise ValueError(f"unknown feature parts {sorted(unknown)}: use {sorted(pieces)}")
    return np.concatenate([pieces[p] for p in parts], axis=1)


def has_pretrained_backbone(config) -> bool:
    """Whether the run's backbone started from pretrained weights (not a from-scratch net)."""
    return config.model.name.strip() not in SCRATCH_MODELS and config.model.weights.strip().lower() != "none"


def feature_model(trained, source: str):
    """The network whose pooled features the audit uses: 'model' (the run's), 'pretrained' or 'auto'.

    'pretrained' rebuilds the run's architecture with its configured pretrained weights (one
    network, fresh head, which is never used), so the features have not seen the run's labels.
    'auto' is the measured best source: 'model' (module docstring). Returns (model, name).
    """
    if source not in FEATURE_SOURCES:
        raise PlantidError(f"--features {source!r}: use one of {', '.join(FEATURE_SOURCES)}")
    if source in ("auto", "model"):
        return trained.model, "model"
    if not has_pretrained_backbone(trained.config):
        raise PlantidError(
            f"{trained.checkpoint}: {trained.config.model.name} was trained from scratch and has no pretrained "
            "backbone; use --features model"
        )

    cfg = trained.config.model.model_copy(update={"members": 1})
    return build_model(cfg, len(trained.classes), trained.image_size).eval(), "pretrained"


# -- out-of-fold probabilities and ranking -------------------------------------------------------
def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5,
                      seed: int = 0) -> tuple[np.ndarray, int]:
    """K-fold cross-validated logistic-regression probabilities (N x num_classes) and the K used.

    Each photo's probabilities come from a standardized logistic regression fitted on the other
    folds only, so its own label never leaks into its score. Its L2 strength is chosen inside
    each training fold by a 3-fold search over `C_GRID` on log-loss (scikit-learn's
    GridSearchCV): a few hundred photos want a strong penalty, thousands a weak one.
    K is `folds`, lowered to the size of the smallest class (stratified folds need one photo of
    each class per fold).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    counts = np.bincount(labels, minlength=num_classes)[present]
    if len(present) < 2:
        raise PlantidError("the audit needs photos of at least two classes")
    k = int(min(folds, counts.min()))
    if k < 2:
        raise PlantidError(f"the audit needs at least 2 photos of each class (one has {counts.min()}); "
                           "add photos or drop that class")
    inner = min(3, int(counts.min() * (k - 1) // k))  # photos of the smallest class in a training fold
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C_FALLBACK, max_iter=3000))
    if inner >= 2:
        clf = GridSearchCV(clf, {"logisticregression__C": list(C_GRID)}, scoring="neg_log_loss",
                           cv=StratifiedKFold(inner, shuffle=True, random_state=seed))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    compact = np.searchsorted(present, labels)  # sklearn orders its columns by the labels present
    probs = cross_val_predict(clf, features, compact, cv=cv, method="predict_proba")
    full = np.zeros((len(labels), num_classes), dtype=np.float64)
    full[:, present] = probs
    return full, k


def rank_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's verdict: (order most suspicious first, flagged mask, label quality scores).

    Every photo is ranked by self-confidence (the out-of-fold probability of its given label);
    `flagged` is what `cleanlab.filter.find_label_issues` calls a likely label issue. On the
    benchmark's folders with 5% of the labels re-drawn six times, self-confidence order put more
    flipped photos in the top 10% than putting the flagged ones first (leaf 62% against 61%,
    flowers 97% against 95%), and the normalized margin fewer (46%, 94%).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    compact = np.searchsorted(present, labels)  # cleanlab wants every class in 0..K-1 to occur
    probs = pred_probs[:, present]
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    quality = get_label_quality_scores(compact, probs, method="self_confidence")
    flagged = find_label_issues(compact, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    order = np.argsort(quality, kind="stable")
    return order, flagged, quality


# -- the run-level audit --------------------------------------------------------------------------
def audit_run(run_dir: str | Path, features: str = "auto", folds: int = 5, splits: Sequence[str] = ("train", "val"),
              limit: int = 100, seed: int = 0, write: bool = True) -> AuditResult:
    """Audit the labels of a run's `splits` photos and write audit.csv and audit.html into the run.

    The photos come from the run's split.csv through the one preprocessing at the run's image
    size (reusing the training cache); `features` picks the feature network (`feature_model`);
    `limit` caps the photos shown in the HTML grid (the CSV lists them all).
    """
    run_dir = Path(run_dir)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise PlantidError(f"--splits {','.join(splits)}: use a comma list of {', '.join(SPLITS)}")
    trained = load_trained(run_dir)
    manifest_path = RunFolder(run_dir).manifest
    manifest = read_manifest(manifest_path)
    unknown = sorted(set(manifest.classes) - set(trained.classes))
    if unknown:
        raise PlantidError(f"{manifest_path}: labels {unknown} are not classes of the model; "
                           "the split does not belong to this checkpoint")
    picked = [i for i, r in enumerate(manifest.rows) if r.split in splits]
    if not picked:
        raise PlantidError(f"{manifest_path}: no {' or '.join(splits)} photos to audit; choose --splits")
    # Every manifest row, in order, as training built it, so the training cache is reused.
    pixels = build_cache([r.path for r in manifest.rows], trained.image_size,
                         resolve_cache_dir(trained.config.data.cache_dir))
    index = {c: i for i, c in enumerate(trained.classes)}
    rows_idx = np.array(picked, dtype=np.int64)
    labels = np.array([index[manifest.rows[i].label] for i in picked], dtype=np.int64)

    net, source = feature_model(trained, features)
    log.info("audit: %d photos, %s features", len(picked), source)
    pieces = feature_pieces(net, pixels, rows_idx)
    feats = np.concatenate([pieces[p] for p in FEATURE_PARTS], axis=1) if pieces["mean"].shape[1] else pieces["head"]
    probs, k = out_of_fold_probs(feats, labels, len(trained.classes), folds=folds, seed=seed)
    order, flagged, quality = rank_label_issues(labels, probs)

    ranked = []
    for i in order:
        r = manifest.rows[picked[i]]
        best = int(np.argmax(probs[i]))
        ranked.append(AuditRow(path=r.path, split=r.split, given=r.label, suggested=trained.classes[best],
                               given_prob=float(probs[i, labels[i]]), suggested_prob=float(probs[i, best]),
                               quality=float(quality[i]), flagged=bool(flagged[i]), row=int(rows_idx[i])))
    result = AuditResult(rows=ranked, features=source, folds=k)
    if write:
        result.csv_path = write_text_atomic(run_dir / AUDIT_CSV, audit_csv(ranked))
        result.html_path = write_text_atomic(
            run_dir / AUDIT_HTML, audit_html(result, pixels, title=f"Label audit: {run_dir.name}", limit=limit))
    return result


# -- outputs --------------------------------------------------------------------------------------
def audit_csv(rows: Sequence[AuditRow]) -> str:
    """The ranking as CSV text: rank, path, split, given and suggested label, probabilities, flag."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for rank, r in enumerate(rows, start=1):
        writer.writerow([rank, r.path, r.split, r.given, r.suggested, f"{r.given_prob:.4f}",
                         f"{r.suggested_prob:.4f}", f"{r.quality:.4f}", int(r.flagged)])
    return buf.getvalue()


def _thumbnail(pixels: np.ndarray) -> str:
    """A photo's cached pixels as an inline JPEG data URI (at most THUMB_PX a side)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels))
    img.thumbnail((THUMB_PX, THUMB_PX))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def audit_html(result: AuditResult, pixels: np.ndarray, title: str = "Label audit", limit: int = 100) -> str:
    """A self-contained HTML page: the flagged photos as a grid, thumbnails embedded as data URIs
    (templates/audit.html.j2, every value escaped: labels and paths are text, never markup)."""
    shown = result.flagged[: max(0, limit)]
    cards = [{"name": Path(r.path).name, "src": _thumbnail(pixels[r.row]), "split": r.split, "path": r.path,
              "given": r.given, "given_prob": f"{r.given_prob:.0%}",
              "suggested": r.suggested, "suggested_prob": f"{r.suggested_prob:.0%}"} for r in shown]
    return render_page("audit.html.j2", title=title, cards=cards, flagged=len(result.flagged), total=len(result.rows),
                       partial=len(shown) < len(result.flagged), folds=result.folds, features=result.features,
                       csv_name=AUDIT_CSV)
