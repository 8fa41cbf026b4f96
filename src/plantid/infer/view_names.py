"""`--tta` text -> test-time view names, without torch. The names and named sets are the settings'
vocabulary (plantid.config); `plantid.infer.tta` maps each name to the tensor operation."""

from __future__ import annotations

from collections.abc import Sequence

from plantid.config import DEFAULT_VIEW_SET, VIEW_NAMES, VIEW_SETS
from plantid.errors import PlantidError

DEFAULT_SET = DEFAULT_VIEW_SET


def parse_tta(spec: str | None, default: Sequence[str] | str = DEFAULT_SET) -> tuple[str, ...]:
    """A set's name ('flips', 'report', 'dihedral') -> its views; 'hflip,rot+10' -> those views plus
    identity; None/''/'none' -> no TTA; 'default' -> `default` (a run's `eval.tta`: a set's name or
    a list of views), so a recipe can choose the views that match its training augmentation."""
    if not spec or spec.lower() in ("none", "off"):
        return ()
    key = spec.lower()
    if key == "default":
        return parse_tta(default if isinstance(default, str) else ",".join(default)) or ("identity",)
    if key in VIEW_SETS:
        return VIEW_SETS[key]
    names = tuple(dict.fromkeys(["identity", *[s.strip() for s in spec.split(",") if s.strip()]]))
    unknown = [n for n in names if n not in VIEW_NAMES]
    if unknown:
        raise PlantidError(f"unknown TTA view {unknown[0]!r}: use default, one of the sets {', '.join(VIEW_SETS)} "
                           f"or a comma list of {', '.join(VIEW_NAMES)}")
    return names
