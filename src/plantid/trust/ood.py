"""Out-of-distribution scores: how unlike the training photos a photo's features and logits are.

Each detector is a small `nn.Module` whose state is plain tensors (buffers), so it is saved as
safetensors, runs beside the classifier in PyTorch and is exported inside the ONNX graph. All of
them map (features N x D, logits N x K) to a score N where HIGHER means LESS like the training
photos; a photo is "unknown" when its score is above the run's threshold.

* ``knn``: distance of the L2-normalised penultimate features to their k-th nearest training
  photo (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors").
* ``mahalanobis``: smallest Mahalanobis distance of the features to a class mean, with one
  covariance shared by the classes (Lee et al. 2018), shrunk towards a scaled identity.
* ``energy``: -logsumexp(logits) (Liu et al. 2020); ``maxlogit``: -max logit; ``msp``: -max
  softmax probability. They need no fitting.
* ``mahalanobis+knn``: Mahalanobis and k-NN together. Mahalanobis separates other photos
  (flowers for the leaf model) best, k-NN flat colours and noise. Each part is standardised on the
  validation photos, (score - median) / (95th percentile - median), and the parts are averaged
  (``combine="mean"``, the default since 2026-12-02) or their largest taken (``combine="max"``,
  each divided by its 95th percentile: the rule of trust files written before). Why the mean:
  a known photo is often in the tail of ONE part by chance, which under the max pushes the
  threshold up, while a foreign photo is high in all parts; averaging narrows the known photos'
  scores more than the foreign ones' (docs/decisions.md, 2026-12-02 "The unknown-photo score
  averages its parts instead of taking the largest").
* ``mahalanobis+knn+stage`` (the default): the same, plus a third part, the Mahalanobis distance of the pooled
  output of the backbone's last stage (`Classifier.last_stage`) to the training photos' class
  means there (the feature ensemble of Lee et al. 2018, one more layer); its features are the
  columns after `split` (the penultimate width). The middle stage, tried first, told photos apart
  by how they were taken (docs/decisions.md, 2026-12-02 "The unknown-photo score reads the
  backbone's last stage too").

`DETECTORS` is the factory keyed by name; `fit_detector` builds one from training features.
benchmarks/bench_ood.py measures them against each other.

Why not pytorch-ood's detectors: there a detector (`pytorch_ood.api.Detector`) is a plain Python
object fitted from a DataLoader, not an `nn.Module` whose state is buffers, so it could be neither
saved as safetensors beside the checkpoint nor traced into the exported ONNX graph, which is
where a deployed model needs its score. The formulas are the papers' few lines each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from plantid.errors import PlantidError

__all__ = ["DETECTORS", "Columns", "Energy", "KNNDistance", "LowRankMahalanobis", "Mahalanobis", "MaxLogit",
           "MaxSoftmax", "ProjectedKNN", "ScaledParts", "TrustHead", "build_detector", "fit_detector"]


def _class_means_and_covariance(features: torch.Tensor, labels: torch.Tensor,
                                shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K x D; a class without training photos gets an unreachable mean) and the pooled
    within-class covariance shrunk towards a scaled identity, (1 - s) C + s tr(C)/D I, in float64."""
    f = features.double()
    classes = torch.unique(labels)
    full = torch.full((int(labels.max()) + 1, f.shape[1]), 1e6, dtype=torch.float64)
    full[classes] = torch.stack([f[labels == c].mean(dim=0) for c in classes])
    centred = f - full[labels]
    cov = centred.T @ centred / max(1, len(f) - len(classes))
    d = cov.shape[0]
    return full, (1.0 - shrinkage) * cov + shrinkage * torch.trace(cov) / d * torch.eye(d, dtype=cov.dtype)


class KNNDistance(nn.Module):
    """Euclidean distance of the unit-length features to the k-th nearest unit-length training feature."""

    def __init__(self, bank: torch.Tensor, k: int = 1):
        super().__init__()
        if bank.ndim != 2 or len(bank) == 0:
            raise PlantidError("the k-NN detector needs a non-empty N x D bank of training features")
        self.k = int(max(1, min(k, len(bank))))
        self.register_buffer("bank", bank.float())

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, k: int = 1) -> KNNDistance:
        """Keep the L2-normalised training features as the bank."""
        return cls(nn.functional.normalize(features.float(), dim=1), k=k)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(features.float(), dim=1)
        similarity = z @ self.bank.T
        kth = torch.topk(similarity, self.k, dim=1).values[:, -1]
        return torch.sqrt(torch.clamp(2.0 - 2.0 * kth, min=0.0))

    def state(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}


class Mahalanobis(nn.Module):
    """min over classes of (f - mu_c)^T P (f - mu_c), P the inverse of the shared, shrunk covariance.

    Stored whitened: `whiten` W with W^T W = P and the whitened class means W mu_c, so the
    distance is a plain squared Euclidean one, ||W f - W mu_c||^2, computed as a difference (no
    |a|^2 - 2ab + |b|^2 expansion, which loses float32 precision).
    """

    def __init__(self, means: torch.Tensor, whiten: torch.Tensor):
        super().__init__()
        self.register_buffer("whiten", whiten.float())  # D' x D
        self.register_buffer("means", means.float())  # K x D', whitened class means

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 0.1) -> Mahalanobis:
        """Class means and the pooled within-class covariance, (1 - s) C + s tr(C)/D I, whitened."""
        full, cov = _class_means_and_covariance(features, labels, shrinkage)
        eigenvalues, vectors = torch.linalg.eigh(cov)
        whiten = (vectors / eigenvalues.clamp(min=1e-12).sqrt()).T  # W = L^-1/2 V^T: W^T W = C^-1
        return cls(full @ whiten.T, whiten)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        g = features.float() @ self.whiten.T
        return (g.unsqueeze(1) - self.means.unsqueeze(0)).square().sum(dim=2).min(dim=1).values

    def state(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "whiten": self.whiten}


def _top_directions(covariance: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `rank` leading eigenvectors (rank x D) and eigenvalues of a covariance, and the mean of the rest."""
    eigenvalues, vectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues = eigenvalues.clamp(min=1e-12)
    rest = eigenvalues[:-rank].mean() if rank < len(eigenvalues) else eigenvalues.min()
    return vectors[:, -rank:].T.flip(0), eigenvalues[-rank:].flip(0), rest


class LowRankMahalanobis(nn.Module):
    """Mahalanobis distance to the nearest class mean with a covariance of rank `r` plus one variance.

    The shared, shrunk covariance is kept along its r leading directions V (r x D, variances
    lambda) and replaced by the mean of its other eigenvalues, sigma^2, elsewhere (probabilistic
    PCA): d = sum_i (v_i . e)^2 / lambda_i + (|e|^2 - |V e|^2) / sigma^2 with e = f - mu_c. It stores
    r x D numbers instead of D x D (1,280 x 1,280 for lite0), and the part of e outside the leading
    directions, where photos unlike the training ones stand out, still counts at full weight.
    """

    def __init__(self, means: torch.Tensor, basis: torch.Tensor, variances: torch.Tensor, residual: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means.float())  # K x D class means
        self.register_buffer("basis", basis.float())  # r x D leading directions
        self.register_buffer("variances", variances.float())  # r
        self.register_buffer("residual", residual.float().reshape(()))  # the variance everywhere else

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 0.1,
            rank: int = 128) -> LowRankMahalanobis:
        """Class means and the pooled within-class covariance, shrunk as `Mahalanobis.fit`, kept at `rank`."""
        means, cov = _class_means_and_covariance(features, labels, shrinkage)
        basis, variances, residual = _top_directions(cov, min(int(rank), cov.shape[0]))
        return cls(means, basis, variances, residual)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        e = features.float().unsqueeze(1) - self.means.unsqueeze(0)  # N x K x D, a difference: no precision lost
        along = e @ self.basis.T  # N x K x r
        inside = along.square().sum(dim=2)
        outside = (e.square().sum(dim=2) - inside).clamp(min=0.0)
        return ((along.square() / self.variances).sum(dim=2) + outside / self.residual).min(dim=1).values

    def state(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "basis": self.basis, "variances": self.variances, "residual": self.residual}


class ProjectedKNN(nn.Module):
    """`KNNDistance` with the bank kept along the r leading directions of the unit-length training features.

    |z - b|^2 = |z - m|^2 + |b - m|^2 - 2 (z - m).(b - m) (m the bank's mean) is kept exactly but for the
    cross term, read in the leading directions only: what lies outside them is mostly noise that
    averages out in the product, while each photo's own distance from m, all directions counted,
    stays. The bank shrinks from N x D to N x r numbers plus r x D for the directions.
    """

    def __init__(self, centre: torch.Tensor, basis: torch.Tensor, bank: torch.Tensor, bank_norms: torch.Tensor,
                 k: int = 1):
        super().__init__()
        if bank.ndim != 2 or len(bank) == 0:
            raise PlantidError("the k-NN detector needs a non-empty N x r bank of training features")
        self.k = int(max(1, min(k, len(bank))))
        self.register_buffer("centre", centre.float())  # D, mean of the unit-length training features
        self.register_buffer("basis", basis.float())  # r x D
        self.register_buffer("bank", bank.float())  # N x r, the training photos along the basis
        self.register_buffer("bank_norms", bank_norms.float())  # N, |b - m|^2 in all D directions

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, k: int = 1, rank: int = 128) -> ProjectedKNN:
        """Unit-length training features, their principal directions and the bank along them."""
        z = nn.functional.normalize(features.double(), dim=1)
        centre = z.mean(dim=0)
        centred = z - centre
        covariance = centred.T @ centred / max(1, len(z) - 1)
        basis, _, _ = _top_directions(covariance, min(int(rank), covariance.shape[0]))
        return cls(centre, basis, centred @ basis.T, centred.square().sum(dim=1), k=k)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        centred = nn.functional.normalize(features.float(), dim=1) - self.centre
        squared = centred.square().sum(dim=1, keepdim=True) + self.bank_norms - 2.0 * (centred @ self.basis.T) @ self.bank.T
        kth = torch.topk(squared, self.k, dim=1, largest=False).values[:, -1]
        return torch.sqrt(torch.clamp(kth, min=0.0))

    def state(self) -> dict[str, torch.Tensor]:
        return {"centre": self.centre, "basis": self.basis, "bank": self.bank, "bank_norms": self.bank_norms}


class Columns(nn.Module):
    """A detector reading only the feature columns [start, stop) (stop None: to the end)."""

    def __init__(self, detector: nn.Module, start: int = 0, stop: int | None = None):
        super().__init__()
        self.detector = detector
        self.start, self.stop = int(start), None if stop is None else int(stop)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.detector(features[:, self.start:self.stop], logits)

    def state(self) -> dict[str, torch.Tensor]:
        return self.detector.state()


class Energy(nn.Module):
    """-logsumexp of the logits: low energy (high score) means no class claims the photo strongly."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(logits.float(), dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        return {}


class MaxLogit(nn.Module):
    """-max logit (Hendrycks et al. 2022)."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -logits.float().max(dim=1).values

    def state(self) -> dict[str, torch.Tensor]:
        return {}


class MaxSoftmax(nn.Module):
    """-max softmax probability (a baseline from the literature; bench_ood.py compares it)."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -torch.softmax(logits.float(), dim=1).max(dim=1).values

    def state(self) -> dict[str, torch.Tensor]:
        return {}


class ScaledParts(nn.Module):
    """Several detectors' scores, each standardised on the validation photos, combined into one.

    Part i is read as (score_i - centre_i) / scale_i; `combine` "max" takes the largest (unknown
    when any part finds the photo unusual), "mean" their average (a part that errs alone is
    outvoted by the others). Trust files written before the mean existed carry no centres and
    no `combine`: they load as "max" with zero centres, exactly as they were fitted.
    """

    def __init__(self, detectors: list[nn.Module], scales: torch.Tensor, centres: torch.Tensor | None = None,
                 combine: str = "max"):
        super().__init__()
        if combine not in COMBINE:
            raise PlantidError(f"unknown way to combine detector parts '{combine}': use one of {', '.join(COMBINE)}")
        self.parts = nn.ModuleList(detectors)
        self.combine = combine
        self.register_buffer("scales", scales.float())
        self.register_buffer("centres", torch.zeros_like(self.scales) if centres is None else centres.float())

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scores = (torch.stack([d(features, logits) for d in self.parts], dim=1) - self.centres) / self.scales
        return scores.max(dim=1).values if self.combine == "max" else scores.mean(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"scales": self.scales, "centres": self.centres}
        for i, d in enumerate(self.parts):
            out.update({f"part{i}.{k}": v for k, v in d.state().items()})
        return out


COMBINE = ("max", "mean")
SCALE_QUANTILE = 0.95  # "max": each part divided by its val 95th percentile
CENTRE_QUANTILE = 0.5  # "mean": each part centred on its val median and divided by (95th - median)


def _fit_maha_knn(features: torch.Tensor, labels: torch.Tensor, k: int = 1, shrinkage: float = 0.1,
                  split: int | None = None, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                  combine: str = "max", rank: int | None = None, **_) -> ScaledParts:
    """Mahalanobis and k-NN on the first `split` columns (all when None), a last-stage
    Mahalanobis on the rest when there is a rest; each standardised on the val photos and
    combined by `combine`. With `rank`, each part keeps its features' `rank` leading directions
    (`LowRankMahalanobis`, `ProjectedKNN`) where they have more columns than that."""
    if val is None:
        raise PlantidError("the mahalanobis+knn detectors scale their parts on validation photos; none were given")
    split = features.shape[1] if split is None else int(split)
    penultimate = features[:, :split]

    def mahalanobis(f: torch.Tensor) -> nn.Module:
        if rank is not None and rank < f.shape[1]:
            return LowRankMahalanobis.fit(f, labels, shrinkage=shrinkage, rank=rank)
        return Mahalanobis.fit(f, labels, shrinkage=shrinkage)

    knn = (ProjectedKNN.fit(penultimate, labels, k=k, rank=rank) if rank is not None and rank < split
           else KNNDistance.fit(penultimate, labels, k=k))
    parts = [Columns(mahalanobis(penultimate), 0, split), Columns(knn, 0, split)]
    if split < features.shape[1]:  # a model without stages (no `feature_info`) has no third part
        parts.append(Columns(mahalanobis(features[:, split:]), split))
    with torch.no_grad():
        val_scores = [p(*val).double() for p in parts]
    high = torch.stack([torch.quantile(v, SCALE_QUANTILE) for v in val_scores])
    if combine == "mean":
        centres = torch.stack([torch.quantile(v, CENTRE_QUANTILE) for v in val_scores])
        return ScaledParts(parts, (high - centres).clamp(min=1e-12), centres, combine)
    return ScaledParts(parts, high.clamp(min=1e-12), None, combine)


def _load_mahalanobis(s: dict[str, torch.Tensor], prefix: str) -> nn.Module:
    if f"{prefix}.basis" in s:
        return LowRankMahalanobis(*(s[f"{prefix}.{name}"] for name in ("means", "basis", "variances", "residual")))
    return Mahalanobis(s[f"{prefix}.means"], s[f"{prefix}.whiten"])


def _load_maha_knn(s: dict[str, torch.Tensor], k: int = 1, split: int | None = None, combine: str = "max",
                   **_) -> ScaledParts:
    knn = (ProjectedKNN(*(s[f"part1.{name}"] for name in ("centre", "basis", "bank", "bank_norms")), k=k)
           if "part1.basis" in s else KNNDistance(s["part1.bank"], k=k))
    parts = [Columns(_load_mahalanobis(s, "part0"), 0, split), Columns(knn, 0, split)]
    if "part2.means" in s:
        parts.append(Columns(_load_mahalanobis(s, "part2"), split))
    return ScaledParts(parts, s["scales"], s.get("centres"), combine)


def _fit_plain(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    return lambda features, labels, **_: cls()


# name -> (fit(features, labels, **settings), load(state tensors, **settings))
DETECTORS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "knn": (lambda f, y, k=1, **_: KNNDistance.fit(f, y, k=k), lambda s, k=1, **_: KNNDistance(s["bank"], k=k)),
    "mahalanobis": (lambda f, y, shrinkage=0.1, **_: Mahalanobis.fit(f, y, shrinkage=shrinkage),
                    lambda s, **_: Mahalanobis(s["means"], s["whiten"])),
    "mahalanobis+knn": (_fit_maha_knn, _load_maha_knn),
    "mahalanobis+knn+stage": (_fit_maha_knn, _load_maha_knn),  # fitted on features with the stage's columns
    "energy": (_fit_plain(Energy), lambda s, **_: Energy()),
    "maxlogit": (_fit_plain(MaxLogit), lambda s, **_: MaxLogit()),
    "msp": (_fit_plain(MaxSoftmax), lambda s, **_: MaxSoftmax()),
}


def _known(name: str) -> str:
    if name not in DETECTORS:
        raise PlantidError(f"unknown OOD detector '{name}': use one of {', '.join(DETECTORS)}")
    return name


def fit_detector(name: str, features: torch.Tensor, labels: torch.Tensor, **settings) -> nn.Module:
    """Fit detector `name` on training features (N x D) and labels (N); settings such as k=...

    `val=(features, logits)` of validation photos is used by detectors that scale their parts
    (mahalanobis+knn) and ignored by the others.
    """
    return DETECTORS[_known(name)][0](features, labels, **settings)


def build_detector(name: str, state: dict[str, torch.Tensor], **settings) -> nn.Module:
    """Rebuild a fitted detector from its saved tensors (see each detector's `state()`)."""
    try:
        return DETECTORS[_known(name)][1](state, **settings)
    except KeyError as exc:
        raise PlantidError(f"the saved '{name}' detector lacks its tensor {exc}; refit with `plantid trust RUN`") from None


class TrustHead(nn.Module):
    """(features, logits) -> (calibrated probabilities softmax(logits / T), OOD score).

    Runs after `Classifier.features_and_logits(x, head.taps)` in PyTorch and inside the exported
    ONNX graph; `taps` names the backbone modules whose pooled outputs the detector also reads.
    """

    def __init__(self, detector: nn.Module, temperature: float = 1.0, taps: tuple[str, ...] = ()):
        super().__init__()
        self.detector = detector
        self.taps = tuple(taps)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(logits.float() / self.temperature, dim=1)
        return probabilities, self.detector(features, logits)
