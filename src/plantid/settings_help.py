"""Every `section.key` setting of a run with its value and one line of help, for `plantid recipes NAME`
and the "did you mean" of an unknown setting.

The help is a field's pydantic `description` when it has one, else the comment written beside or
just above the field in plantid/config.py: the settings are documented once, where they are defined.
"""

from __future__ import annotations

import inspect
import io
import tokenize
from functools import cache
from typing import Any

from pydantic import BaseModel

from plantid.config import RunConfig


def _is_section(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


@cache
def _source_comments(model: type[BaseModel]) -> dict[str, str]:
    """{field name: its comment} from the class source: the comment on the field's line, else the
    comment lines right above it, joined."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0]
        if not (line.startswith("    ") and not line.startswith("     ") and name.isidentifier() and ":" in stripped
                and name in model.model_fields):
            continue
        if number in comments:
            found[name] = comments[number]
            continue
        above, row = [], number - 1
        while row in comments and lines[row - 1].strip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        if above:
            found[name] = " ".join(above)
    return found


def _one_line(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def setting_rows(config: RunConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, one-line help) for every setting of `config`, section by section."""
    rows: list[tuple[str, Any, str]] = []
    for section_name, section_field in RunConfig.model_fields.items():
        section_type = section_field.annotation
        if not _is_section(section_type):
            continue
        section = getattr(config, section_name)
        comments = _source_comments(section_type)
        for name, field in section_type.model_fields.items():
            help_text = field.description or comments.get(name) or ""
            rows.append((f"{section_name}.{name}", getattr(section, name), _one_line(help_text)))
    return rows
