"""The three answers plantid gives for a photo, and the words every surface uses for them.

* ``species``: the model names one species; its calibrated probability is at or above the run's
  answer level, chosen on val so that photos answered this way were right at the run's target
  accuracy (`trust.answered_accuracy`).
* ``unsure``: the photo looks like the known species, but the top probability is below that
  level: "unsure between A and B", the two most likely.
* ``unknown``: the unknown-photo score is above the run's threshold: the photo does not look
  like the photos of any of the N species (it may show something else, or be taken very
  differently).

A run without trust files (no calibration, no unknown check) always answers ``species``.
Predict, the JSON API, the page and the report take the text from here, so they say the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AnswerKind = Literal["species", "unsure", "unknown"]

MEANING: dict[str, str] = {
    "species": "named with a probability at or above the level at which val photos were right {target} of the time",
    "unsure": "looks like the known species, but no single one reached that level: the two most likely are named",
    "unknown": "does not look like the photos of any of the {n} species it was trained on",
}


@dataclass(frozen=True)
class Answer:
    """One photo's answer: its kind, the species it names (one, two, or the closest for unknown), and a sentence."""

    kind: AnswerKind
    species: tuple[str, ...]
    text: str

    def as_json(self) -> dict:
        """The API's "answer" object."""
        return {"kind": self.kind, "species": list(self.species), "text": self.text}


def answer_for(top: list[tuple[str, float]], unknown: bool | None, level: float | None, n_classes: int) -> Answer:
    """The answer for a photo's top species (most likely first, calibrated), its unknown flag, and
    the run's answer level (None: no level, every known photo is named)."""
    best, p = top[0]
    if unknown:
        return Answer("unknown", (best,), f"Not one of the {n_classes} species: the photo does not look like any of "
                                          f"them (closest: {best}, {100 * p:.0f}%)")
    if level is not None and p < level and len(top) > 1:
        second, q = top[1]
        return Answer("unsure", (best, second), f"Unsure between {best} ({100 * p:.0f}%) and {second} ({100 * q:.0f}%)")
    return Answer("species", (best,), f"{best} ({100 * p:.0f}%)")


def short_label(answer: Answer) -> str:
    """A table cell: 'Species3', 'unsure: A or B', 'unknown (closest: A)'."""
    if answer.kind == "unknown":
        return f"unknown (closest: {answer.species[0]})"
    if answer.kind == "unsure":
        return f"unsure: {answer.species[0]} or {answer.species[1]}"
    return answer.species[0]


def meanings(n_classes: int, target: float | None) -> dict[str, str]:
    """What each answer means for this run, for the page, the report and `plantid evaluate`."""
    shown = f"{100 * target:g}%" if target is not None else "the target share"
    return {k: v.format(n=n_classes, target=shown) for k, v in MEANING.items()}
