"""`plantid audit`: the training photos most likely mislabelled or ambiguous, confident-learning style.

A model scored on the photos it was trained on has memorised their labels, so its own
probabilities cannot say which labels are wrong. The audit therefore gets *out-of-fold*
probabilities instead: pooled features of every train and val photo (from the run's pretrained
backbone, or from the fine-tuned model itself), then a K-fold cross-validated logistic
regression on those features (scikit-learn's `cross_val_predict`), so each photo is scored by a
classifier that never saw its label. cleanlab's `find_label_issues` (confident learning) flags
the photos whose given label disagrees with those probabilities, ranked by self-confidence (the
out-of-fold probability of the given label); the rest follow in the same order.

Measured on the shared data sets with 5% of the labels flipped (benchmarks/bench_audit.py,
docs: benchmarks/results/audit.json): the ImageNet backbone's features find the flips better than
the fine-tuned model's, which has learned the flipped labels, so `features='auto'` uses the
pretrained backbone whenever the run has one.

Outputs, in the run folder and written atomically: `audit.csv` (every audited photo, most
suspicious first) and `audit.html` (a self-contained grid of the flagged photos, thumbnails
embedded, with the given and the suggested label).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plantid.errors import PlantidError
from plantid.fileio import write_text_atomic

log = logging.getLogger("plantid")

AUDIT_CSV = "audit.csv"
AUDIT_HTML = "audit.html"
FEATURE_SOURCES = ("auto", "pretrained", "model")
CSV_HEADER = ["rank", "path", "split", "given", "suggested", "given_prob", "suggested_prob", "quality", "flagged"]
THUMB_PX = 128


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
    from plantid.models.classifier import SeedHead, members_of

    layers = []
    for member in members_of(model):
        head = getattr(member, "head", None)
        layers.append(head.fc1 if isinstance(head, SeedHead) else member.backbone.get_classifier())
    return layers


def pooled_features(model, images: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """Pooled penultimate features (N x D float32) of uint8 N x S x S x 3 photos through `model`.

    The features are the input of the model's first head layer (what the backbone's global
    pooling gives), captured with a forward pre-hook, so any Classifier (timm, seed head, the
    scratch nets) or Ensemble (members' features side by side) works without its own code.
    `rows` selects rows of `images` (a memory-mapped cache) without copying all of it.
    """
    import torch

    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    layers = _pooled_layers(model)
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.register_forward_pre_hook(lambda _m, args, i=i: captured[i].append(args[0].detach().flatten(1)))
             for i, layer in enumerate(layers)]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = np.ascontiguousarray(images[rows[start : start + batch_size]])
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not rows.size:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat([torch.cat(c) for c in captured], dim=1).float().numpy()


def has_pretrained_backbone(config) -> bool:
    """Whether the run's backbone started from pretrained weights (not a from-scratch net)."""
    from plantid.models.factory import SCRATCH_MODELS

    return config.model.name.strip() not in SCRATCH_MODELS and config.model.weights.strip().lower() != "none"


def feature_model(trained, source: str):
    """The network whose pooled features the audit uses: 'model' (the run's), 'pretrained' or 'auto'.

    'pretrained' rebuilds the run's architecture with its configured pretrained weights (one
    network, fresh head, which is never used), so the features have not seen the run's labels.
    'auto' is 'pretrained' when the run has pretrained weights, else 'model'. Returns (model, name).
    """
    if source not in FEATURE_SOURCES:
        raise PlantidError(f"--features {source!r}: use one of {', '.join(FEATURE_SOURCES)}")
    pretrained = has_pretrained_backbone(trained.config)
    if source == "auto":
        source = "pretrained" if pretrained else "model"
    if source == "model":
        return trained.model, "model"
    if not pretrained:
        raise PlantidError(
            f"{trained.checkpoint}: {trained.config.model.name} was trained from scratch and has no pretrained "
            "backbone; use --features model"
        )
    from plantid.models import build_model

    cfg = trained.config.model.model_copy(update={"members": 1})
    return build_model(cfg, len(trained.classes), trained.image_size).eval(), "pretrained"


# -- out-of-fold probabilities and ranking -------------------------------------------------------
def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5,
                      seed: int = 0, c: float = 1.0) -> tuple[np.ndarray, int]:
    """K-fold cross-validated logistic-regression probabilities (N x num_classes) and the K used.

    Each photo's probabilities come from a standardized logistic regression fitted on the other
    folds only, so its own label never leaks into its score. K is `folds`, lowered to the size of
    the smallest class (stratified folds need one photo of each class per fold).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
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
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    compact = np.searchsorted(present, labels)  # sklearn orders its columns by the labels present
    probs = cross_val_predict(clf, features, compact, cv=cv, method="predict_proba")
    full = np.zeros((len(labels), num_classes), dtype=np.float64)
    full[:, present] = probs
    return full, k


def rank_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's verdict: (order most suspicious first, flagged mask, label quality scores).

    The photos `cleanlab.filter.find_label_issues` flags come first, ranked by self-confidence
    (the out-of-fold probability of the given label); the others follow in the same order.
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
    order = np.lexsort((np.arange(len(labels)), quality, ~flagged))  # flagged first, then by quality
    return order, flagged, quality


# -- the run-level audit --------------------------------------------------------------------------
def _cache_dir(config) -> Path:
    from plantid.data.cache import default_cache_dir

    return Path(config.data.cache_dir).expanduser() if config.data.cache_dir is not None else default_cache_dir()


def audit_run(run_dir: str | Path, features: str = "auto", folds: int = 5, splits: Sequence[str] = ("train", "val"),
              limit: int = 100, seed: int = 0, write: bool = True) -> AuditResult:
    """Audit the labels of a run's `splits` photos and write audit.csv and audit.html into the run.

    The photos come from the run's split.csv through the one preprocessing at the run's image
    size (reusing the training cache); `features` picks the feature network (`feature_model`);
    `limit` caps the photos shown in the HTML grid (the CSV lists them all).
    """
    from plantid.data.cache import build_cache
    from plantid.data.split import SPLITS, read_manifest
    from plantid.infer.checkpoint import load_trained

    run_dir = Path(run_dir)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise PlantidError(f"--splits {','.join(splits)}: use a comma list of {', '.join(SPLITS)}")
    trained = load_trained(run_dir)
    manifest = read_manifest(run_dir / "split.csv")
    unknown = sorted(set(manifest.classes) - set(trained.classes))
    if unknown:
        raise PlantidError(f"{run_dir / 'split.csv'}: labels {unknown} are not classes of the model; "
                           "the split does not belong to this checkpoint")
    picked = [i for i, r in enumerate(manifest.rows) if r.split in splits]
    if not picked:
        raise PlantidError(f"{run_dir / 'split.csv'}: no {' or '.join(splits)} photos to audit; choose --splits")
    # Every manifest row, in order, as training built it, so the training cache is reused.
    pixels = build_cache([r.path for r in manifest.rows], trained.image_size, _cache_dir(trained.config))
    index = {c: i for i, c in enumerate(trained.classes)}
    rows_idx = np.array(picked, dtype=np.int64)
    labels = np.array([index[manifest.rows[i].label] for i in picked], dtype=np.int64)

    net, source = feature_model(trained, features)
    log.info("audit: %d photos, %s features", len(picked), source)
    feats = pooled_features(net, pixels, rows_idx)
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


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.card img{width:100%;image-rendering:auto;border-radius:4px}
.given{color:#b00020}.suggested{color:#0a7a2f}.path{color:#666}
"""


def audit_html(result: AuditResult, pixels: np.ndarray, title: str = "Label audit", limit: int = 100) -> str:
    """A self-contained HTML page: the flagged photos as a grid, thumbnails embedded as data URIs."""
    shown = result.flagged[: max(0, limit)]
    total = len(result.rows)
    n_flag = len(result.flagged)
    cards = []
    for rank, r in enumerate(shown, start=1):
        cards.append(
            f'<div class="card"><img alt="{html.escape(Path(r.path).name)}" src="{_thumbnail(pixels[r.row])}">'
            f"<div>#{rank} &middot; {html.escape(r.split)}</div>"
            f'<div class="given">given: {html.escape(r.given)} ({r.given_prob:.0%})</div>'
            f'<div class="suggested">suggested: {html.escape(r.suggested)} ({r.suggested_prob:.0%})</div>'
            f'<div class="path">{html.escape(r.path)}</div></div>'
        )
    if not shown:
        body = "<p>No likely label issues found.</p>"
    else:
        more = f" (the first {len(shown)} shown; all in {AUDIT_CSV})" if len(shown) < n_flag else ""
        body = f'<div class="grid">{"".join(cards)}</div>' + (f"<p>{more}</p>" if more else "")
    return (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{n_flag} of {total} photos flagged as likely mislabelled or ambiguous (cleanlab confident learning on "
        f"{result.folds}-fold out-of-fold probabilities from {html.escape(result.features)} features), most "
        f"suspicious first. Percentages are out-of-fold probabilities. Every photo's score is in {AUDIT_CSV}.</p>"
        f"{body}</body></html>\n"
    )
