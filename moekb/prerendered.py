"""Pages the generator has already written as HTML, rendered by mkdocs without Python-Markdown.

A knowledge base of thousands of papers has thousands of paper pages, and Python-Markdown with
this site's extensions costs several milliseconds on each (building the parser with its
extensions, then the inline patterns over every line), most of a build's time; the pages that
list papers (all papers, each sub-category and gap) hold tables of thousands of rows. The
generator knows the structure of those pages exactly, so it writes their body as HTML (under the
usual front matter; see :func:`moekb.site.is_html_page`), and :class:`PrerenderedPage` hands
that body to the theme directly. What Markdown would have done for such a page is done here:

* links to other documentation files (``../taxonomy/engine/index.md``) become the URLs mkdocs
  gives those files, relative to this page, and a link to a missing file is reported the way
  mkdocs reports one (a warning, so ``--strict`` fails);
* the table of contents is read from the headings, which the generator writes with ids and
  permalinks as the ``toc`` extension does;
* the heading ids are recorded, so links to ``page.md#anchor`` are checked against them, and so
  are this page's own links to anchors elsewhere, so mkdocs checks those too.

mkdocs (1.6) lets a plugin put its own ``Page`` on a file in ``on_files``, before the navigation
is built; the hook does that for :func:`is_prerendered`. The page still goes through every plugin
event, the theme template, the sitemap and link validation like any other.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re

import yaml
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.structure.toc import get_toc
from mkdocs.utils import get_relative_url

from moekb.build import GENERATED
from moekb.site import is_html_page

log = logging.getLogger("mkdocs.moekb")

GENERATED_FOLDER = GENERATED.relative_to("docs").as_posix() + "/"  # docs/generated/x.md is page generated/x.md
HEADING = re.compile(r'<h([1-6]) id="([^"]+)">(.*?)<a class="headerlink"')
LINK = re.compile(r'href="([^":#?]+\.md)(#[^"]*)?"')  # relative links to documentation files
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FRONT_MATTER = re.compile(r"\A---\n(.*?\n)---\n", re.DOTALL)
GENERATED_FRONT_MATTER = re.compile(r'title: ("(?:[^"\\\n]|\\.)*")\n(search:\n  exclude: true\n)?')


def is_prerendered(file: File) -> bool:
    """Whether the generator wrote this documentation file's body as HTML (:func:`moekb.site.is_html_page`)."""
    uri = file.src_uri
    return uri.startswith(GENERATED_FOLDER) and is_html_page(uri[len(GENERATED_FOLDER):])


class PrerenderedPage(Page):
    """A documentation page whose body is already HTML (written by :mod:`moekb.site`)."""

    def __init__(self, file: File, config, links: "LinkResolver", *, nav_title: str | None = None) -> None:
        """``nav_title``: the file's title in the ``nav`` configuration (see :func:`nav_titles`):
        mkdocs keeps a page a plugin has set even when the nav lists the file, so the page takes it
        here as mkdocs would have. Without one, the title comes from the front matter."""
        super().__init__(nav_title, file, config)
        self.links = links

    def read_source(self, config) -> None:
        source = config.plugins.on_page_read_source(page=self, config=config)
        if source is None:
            source = self.file.content_string
        match = FRONT_MATTER.match(source)
        self.meta = read_front_matter(match.group(1)) if match else {}
        self.markdown = source[match.end():] if match else source

    def render(self, config, files: Files) -> None:
        if self.markdown is None:
            raise RuntimeError("`markdown` field hasn't been set (via `read_source`)")
        # mkdocs records links to anchors only above DEBUG (anchor checks are skipped at -v): the same here
        self.links_to_anchors = {} if log.getEffectiveLevel() > logging.DEBUG else None
        self.content = self.links.resolve(self.markdown, self, config)
        headings = HEADING.findall(self.content)
        self.toc = get_toc(toc_tokens(headings))
        self._title_from_render = None
        self.present_anchor_ids = {anchor for _, anchor, _ in headings}


def read_front_matter(text: str) -> dict:
    """The front matter the generator writes (:func:`moekb.markup.front_matter`: a title as a JSON
    string, which YAML reads as JSON does, and perhaps the search exclusion) without a YAML parser;
    anything else through libyaml, which still takes microseconds where mkdocs' own reader
    (pure-Python PyYAML) takes a large part of a millisecond."""
    match = GENERATED_FRONT_MATTER.fullmatch(text)
    if match is None:
        return yaml.load(text, Loader=SAFE_LOADER) or {}
    meta = {"title": json.loads(match.group(1))}
    if match.group(2):
        meta["search"] = {"exclude": True}
    return meta


def nav_titles(nav) -> dict[str, str]:
    """``{docs-relative path: title}`` for the files the ``nav`` configuration names with a title."""
    titles: dict[str, str] = {}
    stack = list(nav or [])
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for title, value in item.items():
                if isinstance(value, str):
                    titles[value] = title
                else:
                    stack.extend(value or [])
        elif isinstance(item, list):
            stack.extend(item)
    return titles


class LinkResolver:
    """URLs of documentation files relative to pages, for one build's files.

    Thousands of paper pages sit side by side and link the same few hundred pages, so both the
    file lookup and the relative URL are computed once per target and folder of pages: from
    ``generated/papers/a/`` and ``generated/papers/b/`` every other page has the same relative URL.
    """

    def __init__(self, files: Files) -> None:
        self.files = files
        self._targets: dict[tuple[str, str], File | None] = {}
        self._relative: dict[tuple[str, str], str] = {}
        # (source folder, page folder's parent) -> {target: (URL, target's URL + "/")}
        self._shared: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}

    def resolve(self, html: str, page: Page, config) -> str:
        """``html`` of ``page`` with each relative ``href`` to a documentation file (``x.md``,
        ``../y/index.md#part``) replaced by that file's URL from the page; a missing target is
        reported as mkdocs reports one in Markdown (``validation.links.not_found``) and left as is.
        A link to an anchor (``#part``) is recorded in ``page.links_to_anchors``, when mkdocs keeps
        that record, so that mkdocs checks the anchor exists as it does for Markdown links."""
        folder = posixpath.dirname(page.file.src_uri)
        base = page_folder(page.url)
        anchors = page.links_to_anchors
        # URLs the same from every sibling folder: of targets outside the page's folder (see url())
        shared = self._shared.setdefault((folder, posixpath.dirname(base)), {}) if base != "." else {}
        inside = base + "/"

        def replace(match: re.Match) -> str:
            target, fragment = match.group(1), match.group(2) or ""
            known = shared.get(target)
            url = known[0] if known and not known[1].startswith(inside) else self.url(folder, target, page.url, base)
            if url is None:
                log.log(config.validation.links.not_found,
                        f"Doc file '{page.file.src_uri}' contains a link '{target}', but the target "
                        f"'{posixpath.normpath(posixpath.join(folder, target))}' is not found among documentation files.")
                return match.group()
            if fragment and anchors is not None:
                anchors.setdefault(self._targets[(folder, target)], {})[fragment[1:]] = target + fragment
            return f'href="{url}{fragment}"'

        return LINK.sub(replace, html)

    def url(self, folder: str, target: str, page_url: str, base: str | None = None) -> str | None:
        """The URL of ``target`` (a path relative to docs-relative ``folder``) from the page at
        ``page_url``, whose :func:`page_folder` is ``base`` (computed when not given)."""
        key = (folder, target)
        linked = self._targets.get(key, False)
        if linked is False:
            linked = self._targets[key] = self.files.get_file_from_path(posixpath.normpath(posixpath.join(folder, target)))
        if linked is None:
            return None
        # mkdocs' relative URLs start from the page's folder (the page URL itself when it ends in
        # "/"). From sibling folders, a target outside them has the same URL: "../" + the URL from
        # their common parent. Anything else is computed for the page itself.
        base = page_folder(page_url) if base is None else base
        if base == "." or (linked.url + "/").startswith(base + "/"):
            return get_relative_url(linked.url, page_url)
        parent = posixpath.dirname(base)
        url = self._relative.get((linked.url, parent))
        if url is None:
            url = self._relative[(linked.url, parent)] = get_relative_url(linked.url, page_url)
        self._shared.setdefault((folder, parent), {})[target] = (url, linked.url + "/")
        return url


def page_folder(page_url: str) -> str:
    """The folder relative URLs start from on the page at ``page_url`` ("." at the site root)."""
    return posixpath.normpath(page_url if page_url.endswith("/") else page_url.rpartition("/")[0] or ".")


def toc_tokens(headings: list[tuple[str, str, str]]) -> list[dict]:
    """The ``toc`` extension's token tree (``level``, ``id``, ``name``, ``children``) of the
    headings, as ``HEADING.findall`` gives them."""
    root: list[dict] = []
    stack: list[dict] = []
    for level, anchor, name in headings:
        token = {"level": int(level), "id": anchor, "name": name, "children": []}
        while stack and stack[-1]["level"] >= token["level"]:
            stack.pop()
        (stack[-1]["children"] if stack else root).append(token)
        stack.append(token)
    return root
