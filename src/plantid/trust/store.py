"""A run's trust files: trust.json (settings, threshold, temperature, measurements) and
trust.safetensors (the detector's tensors). No pickles; both written atomically.

The JSON records the checkpoint the trust was fitted for (name, size, SHA-256) and the SHA-256 of
the tensors file, so a retrained or resumed run, or a half-copied folder, is never judged with a
detector fitted for other weights: `load_trust` then returns None with a one-line warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from plantid.errors import PlantidError, first_line
from plantid.fileio import atomic_path, sha256_file
from plantid.records import TRUST_FORMAT, TrustNumbers, TrustRecord, read_trust
from plantid.runfolder import TRUST_JSON, TRUST_TENSORS
from plantid.trust.ood import TrustHead, build_detector

log = logging.getLogger("plantid")



@dataclass
class FittedTrust:
    """Everything fitted after training: detector name, settings and tensors, temperature, threshold."""

    detector: str
    settings: dict[str, Any]  # e.g. {"k": 50, "taps": ["blocks.2"], "split": 1280}
    tensors: dict[str, torch.Tensor]
    temperature: float
    threshold: float  # OOD score above it -> unknown
    keep: float  # the share of validation photos the threshold was chosen to keep
    classes: list[str]
    measured: dict[str, Any] = field(default_factory=dict)  # validation numbers at fitting time
    # calibrated top probability below which a known-looking photo is answered "unsure between A and B"
    # (plantid.trust.selective); None in trust files fitted before it existed: every photo is named
    answer_level: float | None = None
    answered_accuracy: float | None = None  # the val accuracy of named photos the level was chosen for

    def head(self):
        """The TrustHead (detector + temperature) as an nn.Module in eval mode."""
        return TrustHead(build_detector(self.detector, self.tensors, **self.settings), self.temperature,
                         taps=tuple(self.settings.get("taps") or ())).eval()

    def summary(self) -> dict[str, Any]:
        """What predictors and exports publish about it (JSON-ready, no tensors)."""
        return {"detector": self.detector, **self.settings, "temperature": self.temperature,
                "threshold": self.threshold, "keep": self.keep, "answer_level": self.answer_level,
                "answered_accuracy": self.answered_accuracy}


def save_trust(run_dir: Path, trust: FittedTrust, checkpoint: Path) -> list[Path]:
    """Write RUN/trust.safetensors, then RUN/trust.json naming it and the checkpoint; return both paths."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors_path, json_path = run_dir / TRUST_TENSORS, run_dir / TRUST_JSON
    check_trust_numbers(trust.summary(), json_path, "the fit did not give usable numbers; train the run "
                        "again (a diverged training?) before fitting trust")
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in trust.tensors.items()}
    if not tensors:
        tensors = {"_empty": torch.zeros(0)}  # safetensors files need at least one entry
    try:
        with atomic_path(tensors_path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": TRUST_FORMAT, "detector": trust.detector})
    except Exception as exc:  # safetensors reports a full disk as its own error type, not OSError
        if isinstance(exc, OSError):
            raise
        raise PlantidError(f"{tensors_path}: could not be written ({first_line(exc)}); free disk space on the drive "
                           f"of {run_dir} or make it writable, then run the same command again (nothing was left "
                           "half-written)") from None
    checkpoint = Path(checkpoint)
    TrustRecord(
        format=TRUST_FORMAT,
        **trust.summary(),
        settings=trust.settings,
        classes=trust.classes,
        measured=trust.measured,
        tensors_file=TRUST_TENSORS,
        tensors_sha256=sha256_file(tensors_path),
        checkpoint=checkpoint.name,
        checkpoint_size=checkpoint.stat().st_size,
        checkpoint_sha256=sha256_file(checkpoint),
    ).write(json_path)
    return [tensors_path, json_path]


def check_trust_numbers(meta: dict[str, Any], path: Path, fix: str) -> None:
    """Refuse, in one line naming the value, a trust.json whose temperature, threshold or keep is
    missing, not a finite number, or out of its range."""
    try:
        TrustNumbers.model_validate(meta)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise PlantidError(f"{path}: {name} {err['msg'].lower()} (got {str(err.get('input'))[:40]}); {fix}") from None


def load_trust(run_dir: Path, checkpoint: Path, classes: list[str]) -> FittedTrust | None:
    """The run's fitted trust, or None (with a one-line warning) when missing or fitted for other weights."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    record = read_trust(run_dir)
    if record is None:
        return None
    checkpoint = Path(checkpoint)
    fix = f"refit with `plantid trust {run_dir}`"
    if record.checkpoint_size != checkpoint.stat().st_size or record.checkpoint_sha256 != sha256_file(checkpoint):
        log.warning("%s was fitted for another %s (retrained or resumed since); predictions are not checked "
                    "for unknown photos: %s", run_dir / TRUST_JSON, checkpoint.name, fix)
        return None
    if list(record.classes) != list(classes):
        raise PlantidError(f"{run_dir / TRUST_JSON}: its classes differ from the model's; {fix}")
    tensors_path = run_dir / TRUST_TENSORS
    if not tensors_path.is_file() or sha256_file(tensors_path) != record.tensors_sha256:
        raise PlantidError(f"{tensors_path}: missing or not the file {TRUST_JSON} names; {fix}")
    try:
        tensors = {k: v for k, v in load_file(str(tensors_path)).items() if k != "_empty"}
    except (OSError, ValueError):
        raise PlantidError(f"{tensors_path}: unreadable; {fix}") from None
    return FittedTrust(detector=record.detector, settings=dict(record.settings), tensors=tensors,
                       temperature=record.temperature, threshold=record.threshold, keep=record.keep,
                       classes=list(classes), measured=dict(record.measured), answer_level=record.answer_level,
                       answered_accuracy=record.answered_accuracy)


