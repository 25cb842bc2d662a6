"""The one place where contributor text becomes page text: every page writer goes through here.

Python-Markdown passes raw HTML through and turns ``[x](javascript:...)`` into a live link, so
text from YAML is HTML-escaped first and then every Markdown-active character is
backslash-escaped. Bidirectional overrides and invisible characters are shown as their code
points, so a title cannot reorder or hide the text around it. Only http(s) URLs become links.
"""

from __future__ import annotations

import functools
import html
import json
import re

MARKDOWN_ACTIVE = re.compile(r"([\\`*_{}\[\]()#+\-.!|])")  # Python-Markdown's escapable set, plus tables' |
# Explicit directional formatting and invisible characters that change how neighbouring text reads.
HIDDEN = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
SAFE_URL = re.compile(r"^https?://[^\s<>\"'`]+$", re.IGNORECASE)
LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 _-]")
YAML_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # one string literal in json.dumps output


def reveal_hidden(text: str) -> str:
    return HIDDEN.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)


@functools.lru_cache(maxsize=1 << 16)  # a title is escaped on every page that lists the paper
def md(text: str) -> str:
    """Contributor text as inert Markdown: one line, HTML-escaped, Markdown syntax escaped."""
    one_line = " ".join(reveal_hidden(str(text)).split())
    return MARKDOWN_ACTIVE.sub(r"\\\1", html.escape(one_line, quote=True))


def code(text: str) -> str:
    """Contributor text as an inline code span. Markdown shows a code span's content literally
    (it escapes < and & itself, and backslashes stay visible), so ``md()`` must not be used inside
    one; the backtick run is chosen longer than any run inside, and ``|`` is kept out of tables."""
    one_line = " ".join(reveal_hidden(str(text)).split()).replace("|", "\u2223")
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", one_line)), default=0) + 1)
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{ticks}{pad}{one_line}{pad}{ticks}"


@functools.lru_cache(maxsize=1 << 16)
def html_text(text: str) -> str:
    """Contributor text as inert HTML text: one line, hidden characters shown, HTML-escaped, and
    brackets as entities, so that no Markdown link syntax appears should Markdown ever read it."""
    escaped = html.escape(" ".join(reveal_hidden(str(text)).split()), quote=True)
    return escaped.replace("[", "&#91;").replace("]", "&#93;")


def title_heading(text: str, *, searched: bool = True) -> str:
    """Front matter and H1 for a page named by contributor text.

    mkdocs takes a page's title from its H1 as escaped HTML, and Material writes it into <title>
    through Jinja's ``striptags``, which un-escapes the entities again: a title holding
    "</title><script>" would end the element and run. A front-matter title is written into
    <title> and the header verbatim, so each such page gets one, HTML-escaped (brackets too, so
    that no Markdown link syntax appears anywhere in the page source), as a JSON string, which
    YAML reads as it is.

    ``searched=False`` keeps the theme's search plugin from parsing the page (its entry is then
    written by :mod:`moekb.search`)."""
    return f"{front_matter(text, searched=searched)}\n# {md(text)}"


def front_matter(title: str, *, searched: bool = True) -> str:
    """The front matter of :func:`title_heading`, for pages that write their own H1."""
    search = "" if searched else "search:\n  exclude: true\n"
    return f"---\ntitle: {yaml_json_string(html_text(title))}\n{search}---\n"


def yaml_json_string(text: str) -> str:
    """``text`` as a string literal that JSON and YAML read alike. ``json.dumps`` writes a character
    beyond U+FFFF as a surrogate pair, which PyYAML (mkdocs' reader) turns into two broken
    characters; so such characters are written as they are, and only what YAML cannot hold in a
    double-quoted scalar (controls, line separators, surrogates, non-characters) is escaped."""
    return YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def safe_url(url: str | None) -> str | None:
    """The URL if it is plain http(s), else None; parentheses are percent-encoded for Markdown."""
    if not url or not SAFE_URL.match(url):
        return None
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def fence(code: str, language: str = "") -> str:
    """A fenced code block that no backtick run inside ``code`` can close; bidirectional and
    invisible characters are shown as code points there too (they would reorder the code)."""
    code = reveal_hidden(code)
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{code.rstrip()}\n{ticks}"


def mermaid_label(text: str) -> str:
    """Mermaid labels from a safe alphabet only: Mermaid parses its own markup and HTML in labels."""
    return LABEL_UNSAFE.sub(" ", text).strip() or "untitled"


def json_for_script(value: object) -> str:
    """JSON that can sit inside <script> without ending it (``</script>``) or opening a comment.

    The script element sits in a Markdown page; brackets are escaped too, so the JSON holds no
    ``[text](url)`` that Markdown could turn into a link should it ever treat the line as text.
    """
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return JSON_STRING.sub(lambda m: m.group().replace("[", "\\u005b").replace("]", "\\u005d"), text)


def table(header: list[str], rows: list[list[str]], attrs: str = "") -> str:
    """A Markdown table whose cells are already escaped; ``attrs`` go to a wrapping div."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    body = "\n".join(lines)
    return f'<div {attrs} markdown="1">\n\n{body}\n\n</div>' if attrs else body


# -- HTML pages ----------------------------------------------------------------------------------
# Paper pages are written as HTML (see moekb.prerendered): thousands of them would otherwise each
# go through Python-Markdown. These helpers produce the markup Python-Markdown and the configured
# extensions (toc permalinks, admonition, superfences, pymdownx.highlight) would, so the theme's
# CSS and scripts treat both kinds of page alike.

def html_link(label_html: str, target: str) -> str:
    """A link whose label is already HTML; ``target`` is an http(s) URL or a generated page path."""
    return f'<a href="{html.escape(target, quote=True)}">{label_html}</a>'


def external_html_link(label: str, url: str | None) -> str:
    """A link only for a plain http(s) URL (:func:`safe_url`), else the escaped label."""
    target = safe_url(url)
    return html_link(html_text(label), target) if target else html_text(label)


def html_code(text: str) -> str:
    """Contributor or project text as an inline code element."""
    return f"<code>{html_text(text)}</code>"


def html_heading(level: int, text_html: str, anchor: str) -> str:
    """A heading with the permalink the ``toc`` extension adds (``permalink: true``)."""
    return (f'<h{level} id="{anchor}">{text_html}<a class="headerlink" href="#{anchor}" '
            f'title="Permanent link">&para;</a></h{level}>')


def html_list(items_html: list[str]) -> str:
    return "<ul>\n" + "\n".join(f"<li>{item}</li>" for item in items_html) + "\n</ul>"


def html_code_block(code: str, language: str, *, fast_highlight=None) -> str:
    """A highlighted block as pymdownx.highlight writes it (Pygments' token classes), or a Mermaid
    block as superfences' ``fence_code_format`` writes it, which the Mermaid script draws.
    ``fast_highlight(code)`` may return that HTML without Pygments' lexer, or None to use it."""
    code = reveal_hidden(code).rstrip()
    if language == "mermaid":
        return f'<pre class="mermaid"><code>{html.escape(code, quote=False)}</code></pre>'
    from pygments import highlight  # imported on first use: most commands never highlight

    body = (fast_highlight and fast_highlight(code)) or highlight(code, *_pygments(language))
    return f'<div class="highlight"><pre><span></span><code>{body}</code></pre></div>'


@functools.lru_cache(maxsize=None)
def _pygments(language: str):
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name

    return get_lexer_by_name(language), HtmlFormatter(nowrap=True)


def html_table(header_html: list[str], rows_html: list[list[str]], attrs: str = "") -> str:
    """A table as the ``tables`` extension writes it; cells are already HTML. ``attrs`` go to a
    wrapping div, as in :func:`table`. Raw HTML, so Markdown leaves its thousands of cells alone."""
    head = "".join(f"<th>{cell}</th>" for cell in header_html)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows_html)
    table = f"<table>\n<thead>\n<tr>{head}</tr>\n</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f"<div {attrs}>\n{table}\n</div>" if attrs else table


def html_note(title: str, text_html: str) -> str:
    """A ``!!! note`` admonition."""
    return f'<div class="admonition note">\n<p class="admonition-title">{html_text(title)}</p>\n<p>{text_html}</p>\n</div>'
