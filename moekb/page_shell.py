"""Paper pages poured into a shell: the theme's page template rendered once per shape of page.

With the chrome shared (:mod:`moekb.shared_chrome`), a paper page still costs most of a
millisecond in the theme's template: Jinja builds a context and walks ``main.html``, ``base.html``
and a dozen partials for every page, to place the same few texts (the title, the table of
contents, the content, the canonical URL) into the same HTML. With thousands of paper pages that
is the largest part of a build. So for pages outside the navigation, the template is rendered
once per *shape* of page with marked stand-ins for those texts, and every page of that shape is
that HTML with its own texts put in where the marks were, transformed as the template transformed
the stand-in there (as is, ``| e``, ``| striptags`` or ``| striptags | e``).

What may change the template's course is part of the shape, not a text: the folder (links are
relative to it), whether each text is empty, the front matter other than ``title`` and
``description``, the levels of the table of contents, whether the content has its own ``<h1>``.
Nothing is trusted on faith: a shape is used only after the first two pages of that shape,
rendered by the template as usual, came out equal to what the shell makes of them, and a stand-in
the template treated in any other way rules the shape out, for the whole build. Pages in the
navigation, and shapes ruled out, are rendered by the template as before.
Set ``MOEKB_PAGE_SHELL=0`` to switch this off; a test builds a site with and without it and
compares every page.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field

import jinja2
from mkdocs.structure.toc import AnchorLink

from moekb.shared_chrome import PAGE_TEMPLATE, SharedChrome

MARK = re.compile(r"moekbshell(\d+)a(.*?)moekbshell\1z", re.DOTALL)
# The stand-in's middle holds a tag and an entity, so that each of the filters below leaves a
# different trace of it, and the template's treatment of every occurrence can be told apart.
PROBE_MIDDLE = " <i>&amp;</i> "
TEXT_META = ("title", "description")  # front matter printed as text; every other key is shape
VERIFIED_PAGES = 2  # pages of a shape rendered both ways, and compared, before the shell is trusted


def transforms(env: jinja2.Environment) -> dict[str, object]:
    """The ways Material's templates print a page's texts, as the environment's own filters do them."""
    escape, striptags = env.filters["e"], env.filters["striptags"]
    return {"as is": str, "e": lambda s: str(escape(s)), "striptags": lambda s: str(striptags(s)),
            "striptags | e": lambda s: str(escape(striptags(s)))}


def toc_shape(items) -> tuple:
    return tuple((item.level, bool(getattr(item, "typeset", None)), toc_shape(item.children)) for item in items)


def page_texts(page, text) -> dict:
    """The page's own texts, each passed through ``text(name, value)`` in a fixed order, as the
    attributes of a page: ``{"title": ..., "content": ..., "canonical_url": ..., "meta": ...,
    "toc": ...}``. Empty texts stay as they are (the template may test them)."""

    def own(name, value):
        return text(name, value) if isinstance(value, str) and value else value

    def toc(items) -> list:
        rebuilt = []
        for item in items:
            title, url = own("toc title", item.title), own("toc url", item.url)
            link = AnchorLink(title, url[1:] if url.startswith("#") else url, item.level)
            link.children = toc(item.children)
            rebuilt.append(link)
        return rebuilt

    return {"title": own("title", page.title), "content": own("content", page.content),
            "canonical_url": own("canonical_url", page.canonical_url),
            "meta": {key: own(key, value) if key in TEXT_META else value for key, value in page.meta.items()},
            "toc": toc(page.toc)}


def probe_page(page, texts: dict):
    """A copy of the page whose texts are stand-ins; everything else is the real page's (its URL
    above all, from which the template's relative links are computed, and its type, from which
    :class:`SharedChrome` decides what the page shares)."""
    probe = copy.copy(page)
    for name, value in texts.items():
        setattr(probe, name, value)
    return probe


@dataclass
class Shell:
    """The HTML of one shape of page, cut at the stand-ins: ``pieces[0] text pieces[1] text ...``."""

    pieces: list[str]
    slots: list[tuple[int, object]]  # (which text, how it is printed) between consecutive pieces
    verified: int = 0

    def fill(self, texts: list[str]) -> str:
        out = [self.pieces[0]]
        for (index, transform), piece in zip(self.slots, self.pieces[1:]):
            out.append(transform(texts[index]))
            out.append(piece)
        return "".join(out)


@dataclass
class PageShells:
    """The shells of one build, by shape; ``None`` for a shape ruled out."""

    env: jinja2.Environment
    chrome: SharedChrome
    shells: dict[tuple, Shell | None] = field(default_factory=dict)
    poured: int = 0  # pages filled from a trusted shell (for the build log and the tests)

    def shape(self, page) -> tuple | None:
        """What the template may branch on (see the module's docstring), or None for a page the
        shells leave to the template: one in the navigation, or with an edit link."""
        folder = self.chrome.key(page, "page shell")
        if folder is None or page.edit_url or page.previous_page or page.next_page:
            return None
        meta = tuple((key, bool(value) if key in TEXT_META and isinstance(value, str) else repr(value))
                     for key, value in page.meta.items())
        return (folder, bool(page.title), page.canonical_url is None, "<h1" in (page.content or ""), meta,
                toc_shape(page.toc))

    def render(self, template: jinja2.Template, context) -> str:
        page = context.get("page")
        shape = self.shape(page) if page is not None else None
        if shape is None or self.shells.get(shape, True) is None:
            return template.render(context)
        texts: list[str] = []
        page_texts(page, lambda name, value: texts.append(value) or value)
        shell = self.shells.get(shape)
        if shell is not None and shell.verified >= VERIFIED_PAGES:
            self.poured += 1
            return shell.fill(texts)
        html = template.render(context)
        if shell is None:
            shell = self.shells[shape] = self.cut(template, context, page, len(texts))
        if shell is not None:
            if shell.fill(texts) == html:
                shell.verified += 1
            else:
                self.shells[shape] = None
        return html

    def cut(self, template: jinja2.Template, context, page, count: int) -> Shell | None:
        """Render the template once with stand-ins for the page's ``count`` texts, and cut it there."""
        numbers = iter(range(count))
        probes: list[str] = []

        def stand_in(name: str, value: str) -> str:
            number = next(numbers)
            # The template tests the content for a heading of its own (content.html): so must the stand-in.
            middle = PROBE_MIDDLE + ("<h1>" if name == "content" and "<h1" in value else "")
            probe = f"{'#' if value.startswith('#') else ''}moekbshell{number}a{middle}moekbshell{number}z"
            probes.append(probe)
            return probe

        html = template.render({**context, "page": probe_page(page, page_texts(page, stand_in))})
        ways = transforms(self.env)
        pieces, slots, start = [], [], 0
        for match in MARK.finditer(html):
            number = int(match.group(1))
            begin = match.start() - (1 if probes[number].startswith("#") and html[match.start() - 1:match.start()] == "#" else 0)
            printed = html[begin:match.end()]
            way = next((transform for transform in ways.values() if transform(probes[number]) == printed), None)
            if way is None:
                return None
            pieces.append(html[start:begin])
            slots.append((number, way))
            start = match.end()
        pieces.append(html[start:])
        if "moekbshell" in "".join(pieces):  # a stand-in printed in a way not recognised
            return None
        return Shell(pieces, slots)


class ShellTemplate:
    """The page template as mkdocs uses it (``render(context)``), rendered through the shells."""

    def __init__(self, template: jinja2.Template, shells: PageShells) -> None:
        self.template, self.shells = template, shells

    def render(self, context) -> str:
        return self.shells.render(self.template, context)

    def __getattr__(self, name):
        return getattr(self.template, name)


def pour_pages(env: jinja2.Environment) -> PageShells | None:
    """Give pages that may share the chrome (``env.globals["moekb_shared_chrome"]``) a shell when
    mkdocs asks for the page template. ``None`` when switched off (``MOEKB_PAGE_SHELL=0``) or when
    the chrome is not shared."""
    chrome = env.globals.get("moekb_shared_chrome")
    if os.environ.get("MOEKB_PAGE_SHELL", "1") == "0" or not isinstance(chrome, SharedChrome):
        return None
    shells = PageShells(env, chrome)
    get_template = env.get_template

    def get_page_template(name, parent=None, globals=None):
        template = get_template(name, parent, globals)
        return ShellTemplate(template, shells) if name == PAGE_TEMPLATE and parent is None else template

    env.get_template = get_page_template  # mkdocs takes each page's template from here (build._build_page)
    return shells
