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

from markupsafe import Markup, escape

MARKDOWN_ACTIVE = re.compile(r"([\\`*_{}\[\]()#+\-.!|])")  # Python-Markdown's escapable set, plus tables' |
# Explicit directional formatting and invisible characters that change how neighbouring text reads.
HIDDEN = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
SAFE_URL = re.compile(r"^https?://[^\s<>\"'`]+$", re.IGNORECASE)
YAML_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # one string literal in json.dumps output
MATH = re.compile(r"(\$[^$\s][^$]*\$)")  # an inline-math span in a title, such as "M$^4$oE"
MATH_CLASS = "moekb-math"  # docs/assets/javascripts/math.js renders these spans with KaTeX


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
def inert_html(text: str) -> Markup:
    """Contributor text as inert HTML: one line, hidden characters shown, escaped by markupsafe, and
    brackets as entities, so that no Markdown link syntax appears should Markdown ever read it."""
    one_line = " ".join(reveal_hidden(str(text)).split())
    return Markup(str(escape(one_line)).replace("[", "&#91;").replace("]", "&#93;"))


@functools.lru_cache(maxsize=1 << 16)
def title_html(text: str) -> Markup:
    """A title as inert HTML whose inline math (``$...$``) sits in spans that KaTeX renders; the TeX
    itself is escaped text, so a span can only ever become KaTeX's output."""
    if "$" not in text or not MATH.search(text):
        return inert_html(text)
    def words(part: str) -> Markup:  # inert_html trims; the spaces around a formula stay
        return Markup(" " if part[:1].isspace() else "") + inert_html(part) + Markup(" " if part[-1:].isspace() else "")

    return Markup("").join(
        Markup('<span class="{}">{}</span>').format(MATH_CLASS, inert_html(part[1:-1])) if MATH.fullmatch(part)
        else words(part) for part in MATH.split(text) if part)


def front_matter(title: str, description: str | None = None, *, searched: bool = True) -> str:
    """A page's front matter: its title and description, HTML-escaped. The theme writes them into the
    header, ``<title>`` and ``<meta name="description">`` as they are (no escaping of its own).
    ``searched=False`` keeps a page that lists every paper out of both engines' search indexes: each
    paper has a page of its own there, and Zensical refuses a field of more than 32,768 words."""
    lines = [f"title: {yaml_json_string(str(inert_html(title)))}"]
    if description:
        lines.append(f"description: {yaml_json_string(str(inert_html(description)))}")
    if not searched:
        lines.append("search:\n  exclude: true")
    return "---\n" + "\n".join(lines) + "\n---\n"


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


def json_for_script(value: object) -> str:
    """JSON that can sit inside <script> without ending it (``</script>``) or opening a comment.

    The script element sits in a Markdown page; brackets are escaped too, so the JSON holds no
    ``[text](url)`` that Markdown could turn into a link should it ever treat the line as text.
    """
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return JSON_STRING.sub(lambda m: m.group().replace("[", "\\u005b").replace("]", "\\u005d"), text)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose cells are already escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)
