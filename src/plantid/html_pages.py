"""plantid's one template layer: HTML pages from the package's Jinja2 templates, every value escaped.

The report (report.html) and the label audit (audit.html) are rendered from the templates in
plantid/templates/ by an Environment with autoescape on for every template whatever its suffix,
so a value from a run folder (a class name, a path, a config value, a note) can never become
markup: the markup is the templates' text alone. StrictUndefined makes a value that a template
names but is not given an error, not a silent blank.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jinja2

# Template filters: (name, function) pairs, a tuple so that the Environment built with them is cached.
Filters = tuple[tuple[str, Callable[..., str]], ...]


@functools.lru_cache(maxsize=8)
def _environment(filters: Filters) -> jinja2.Environment:
    """The Environment for the package's templates with these filters (built once per filter set)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("plantid", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(dict(filters))
    return env


def render_page(template: str, /, filters: Filters = (), **context) -> str:
    """Render the package template `template` with `context`, every value HTML-escaped.

    `filters` adds the formatting filters the template uses (a page's own, defined beside the
    code that fills it). A value the template needs and `context` lacks raises
    jinja2.UndefinedError, so a renamed field fails loudly instead of printing nothing.
    """
    return _environment(tuple(filters)).get_template(template).render(**context)
