"""The theme's navigation, rendered once for all paper pages instead of once per paper page.

Material renders the whole site navigation (the sidebar and the tabs) into every page. For a
page that is not in the navigation, nothing in it is marked active, and every link in it is
relative to the page's folder, so two paper pages side by side (``generated/papers/a/`` and
``generated/papers/b/``) get identical navigation HTML. With thousands of paper pages, rendering
it once per folder of pages instead of once per page removes a large part of the template time.

:func:`share_navigation` wraps the theme's template loader: the partials named in
:data:`SHARED_PARTIALS` are served by a small wrapper template that renders the theme's own
partial the first time and replays the stored HTML afterwards, for pages :class:`SharedChrome`
says may share it. Every other page, and every other template, renders exactly as before.
Set ``MOEKB_SHARED_CHROME=0`` to switch this off (the tests check that both give the same pages).
"""

from __future__ import annotations

import os
import posixpath

import jinja2

from moekb.prerendered import page_folder

SHARED_PARTIALS = ("partials/nav.html", "partials/tabs.html")  # Material's sidebar navigation and tabs
THEME_PREFIX = "moekb-theme"  # the theme's own partials stay reachable as "moekb-theme/partials/..."
WRAPPER = """\
{%- set key = moekb_shared_chrome.key(page, "NAME") -%}
{%- if key is none -%}{% include "PREFIX/NAME" %}
{%- elif moekb_shared_chrome.has(key) -%}{{ moekb_shared_chrome.get(key) }}
{%- else -%}{% set html %}{% include "PREFIX/NAME" %}{% endset %}{{ moekb_shared_chrome.put(key, html) }}
{%- endif -%}"""


class SharedChrome:
    """Decides which pages share a partial's HTML, and stores it for one build."""

    def __init__(self, may_share) -> None:
        self.may_share = may_share  # page -> bool: the page is outside the navigation
        self.stored: dict[tuple[str, str], str] = {}

    def key(self, page, name: str) -> tuple[str, str] | None:
        if page is None or not self.may_share(page):
            return None
        # The partial's links are relative to the page's folder; from sibling folders they are the same.
        base = page_folder(page.url)
        return None if base == "." else (name, posixpath.dirname(base))

    def has(self, key) -> bool:
        return key in self.stored

    def get(self, key) -> str:
        return self.stored[key]

    def put(self, key, html: str) -> str:
        self.stored[key] = html
        return html


def share_navigation(env: jinja2.Environment, may_share) -> jinja2.Environment:
    """Serve :data:`SHARED_PARTIALS` through the wrapper, for pages for which ``may_share(page)``."""
    if os.environ.get("MOEKB_SHARED_CHROME", "1") == "0":
        return env
    wrappers = {name: WRAPPER.replace("NAME", name).replace("PREFIX", THEME_PREFIX) for name in SHARED_PARTIALS}
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader(wrappers), env.loader,
                                      jinja2.PrefixLoader({THEME_PREFIX: env.loader})])
    env.globals["moekb_shared_chrome"] = SharedChrome(may_share)
    return env
