"""The theme's page chrome, rendered once for all paper pages instead of once per paper page.

Material renders the whole site navigation (the sidebar and the tabs), the palette toggle, the
search box, the footer, the stylesheet and script tags and its configuration JSON into every page.
None of them depends on the page when the page is not in the navigation (nothing is marked active,
there is no previous or next page), except through links, which are relative to the page's folder.
So two paper pages side by side (``generated/papers/a/`` and ``generated/papers/b/``) get the same
chrome, byte for byte, and with thousands of paper pages, rendering it once per folder of pages
instead of once per page removes most of the template time. What is the page's own (title,
canonical URL, table of contents, content) is rendered for every page as before.

:func:`share_chrome` wraps the theme's template loader: the partials named in
:data:`SHARED_PARTIALS` and the blocks of the page template named in :data:`SHARED_BLOCKS` are
served through small wrapper templates that render the theme's own the first time and replay the
stored HTML afterwards, for pages :class:`SharedChrome` says may share it. Every other page, and
every other template, renders exactly as before. Set ``MOEKB_SHARED_CHROME=0`` to switch this off
(a test builds a site both ways and compares every page, up to the whitespace collapsed here).
"""

from __future__ import annotations

import os
import posixpath
import re

import jinja2

from moekb.prerendered import page_folder

# Material 9.8's partials and blocks that hold no page-specific text for a page outside the nav
# (read in material/templates/base.html and partials/); the byte-for-byte test guards the list.
SHARED_PARTIALS = ("partials/nav.html", "partials/tabs.html", "partials/palette.html", "partials/search.html",
                   "partials/footer.html")
SHARED_BLOCKS = ("styles", "libs", "fonts", "analytics", "config", "scripts")
PAGE_TEMPLATE = "main.html"
THEME_PREFIX = "moekb-theme"  # the theme's own templates stay reachable as "moekb-theme/<name>"
PARTIAL_WRAPPER = """\
{%- set key = moekb_shared_chrome.key(page, "NAME") -%}
{%- if key is none -%}{% include "PREFIX/NAME" %}
{%- elif moekb_shared_chrome.has(key) -%}{{ moekb_shared_chrome.get(key) }}
{%- else -%}{% set html %}{% include "PREFIX/NAME" %}{% endset %}{{ moekb_shared_chrome.put(key, html) }}
{%- endif -%}"""
BLOCK_WRAPPER = """\
{%- block NAME -%}
{%- set key = moekb_shared_chrome.key(page, "block NAME") -%}
{%- if key is none -%}{{ super() }}
{%- elif moekb_shared_chrome.has(key) -%}{{ moekb_shared_chrome.get(key) }}
{%- else -%}{{ moekb_shared_chrome.put(key, super()) }}
{%- endif -%}
{%- endblock -%}"""


WHITESPACE = re.compile(r"\s+")


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
        """Store and return ``html``; a partial's runs of whitespace are collapsed to one space,
        which HTML renders the same (the partials hold no ``pre``, ``textarea`` or script), and
        which takes the sidebar navigation, repeated in every paper page, from 11 to 6 KB."""
        if key[0] in SHARED_PARTIALS:
            html = WHITESPACE.sub(" ", html)
        self.stored[key] = html
        return html


def share_chrome(env: jinja2.Environment, may_share) -> jinja2.Environment:
    """Serve the shared partials and blocks through the wrappers, for pages for which ``may_share(page)``."""
    if os.environ.get("MOEKB_SHARED_CHROME", "1") == "0":
        return env
    wrappers = {name: PARTIAL_WRAPPER.replace("NAME", name).replace("PREFIX", THEME_PREFIX) for name in SHARED_PARTIALS}
    wrappers[PAGE_TEMPLATE] = f'{{% extends "{THEME_PREFIX}/{PAGE_TEMPLATE}" %}}' + "".join(
        BLOCK_WRAPPER.replace("NAME", name) for name in SHARED_BLOCKS)
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader(wrappers), env.loader,
                                      jinja2.PrefixLoader({THEME_PREFIX: env.loader})])
    env.globals["moekb_shared_chrome"] = SharedChrome(may_share)
    return env
