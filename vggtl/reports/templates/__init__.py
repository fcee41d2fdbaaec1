"""The page templates (Jinja2, autoescaped) and :func:`render`.

``base.html.j2`` holds what every page shares: the styles, the gallery
script and the layout. A page extends it (``report.html.j2``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from markupsafe import Markup


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@functools.cache
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, safe_svg=Markup)
    from vggtl.reports.svg import CHART_STYLE

    env.globals["chart_style"] = Markup(CHART_STYLE)
    return env


def render(name: str, **context) -> str:
    """The template ``name`` rendered with ``context``."""
    return environment().get_template(name).render(**context)
