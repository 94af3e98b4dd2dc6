"""The Jinja environment the report and the dashboard render with.

Templates are ``report/templates/*.html.j2`` and the stylesheet and script are
``report/static/``; both are read with :mod:`importlib.resources`, so they load the same
from a source checkout and from an installed wheel. Static files are inlined into the page
at render time: every page is one self-contained document. Autoescape is on for all of it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import jinja2
from markupsafe import Markup

#: the package whose ``templates/`` and ``static/`` folders hold the pages
_PACKAGE = "courierflow.report"
#: the stylesheet that names every colour once
STYLESHEET = "courierflow.css"


@cache
def static_text(name: str) -> str:
    """The text of ``report/static/NAME``."""
    return resources.files(_PACKAGE).joinpath("static", name).read_text(encoding="utf-8")


def _template_source(name: str) -> str:
    return resources.files(_PACKAGE).joinpath("templates", name).read_text(encoding="utf-8")


def _fixed(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals (coordinates in the SVG drawings)."""
    return f"{value:.{digits}f}"


def count_label(value: float) -> str:
    """A y-axis figure short enough for a chart's margin: ``0.25``, ``111``, ``1,450``."""
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def format_seconds(value: float | None) -> str:
    """``1.25 s``, ``250 ms``, or ``-`` for no value."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


@cache
def environment() -> jinja2.Environment:
    """The shared environment: autoescaped, strict about undefined names, with
    ``static(name)`` (a static file's text, inlined) and the ``fixed``, ``seconds`` and
    ``count_label`` filters."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # our own files, trusted as markup: a stylesheet or script inlined as it is
    env.globals["static"] = lambda name: Markup(static_text(name))
    env.filters["fixed"] = _fixed
    env.filters["seconds"] = format_seconds
    env.filters["count_label"] = count_label
    return env


def render(template: str, **context: object) -> str:
    """Render ``templates/TEMPLATE`` with ``context``."""
    return environment().get_template(template).render(**context)


@cache
def palette() -> dict[str, str]:
    """The colours the stylesheet names in ``:root`` (``--delivered: #2f9e6b`` gives
    ``{"delivered": "#2f9e6b"}``), for drawings made outside the page (the PNG)."""
    root = static_text(STYLESHEET).split(":root", 1)[1].split("}", 1)[0]
    return dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{3,8})\s*;", root))
