"""Hostile text in every free-text field is shown as text in every generated page.

The whole site is built (render_site through the mkdocs hook, then `mkdocs build --strict`) from a
copy of the project whose only papers carry HTML, `javascript:` links, Markdown link and image
injection, Jinja and snippet syntax, very long strings and bidirectional / zero-width characters.
The HTML is then parsed: no script, link, image or event handler may come from those fields, and
the text must be visible as written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from moekb.site import GENERATED_FOLDERS

ROOT = Path(__file__).resolve().parents[2]
LONG = "x" * 5000 + " " + "word " * 2000

# Each payload carries the marker "pwn" so any live element made from it can be found.
PAYLOADS = {
    "script": "<script>alert('pwn-script')</script>",
    "title-break": "</title><script>alert('pwn-title')</script><title>",
    "img": "<img src=x onerror=alert('pwn-img')>",
    "closing": "</p></div></table><svg onload=alert('pwn-svg')>",
    "js-link": "[click me](javascript:alert('pwn-mdlink'))",
    "raw-link": "<a href=\"javascript:alert('pwn-a')\">pwn-a</a>",
    "md-image": "![pwn-mdimg](https://evil.example/pwn-mdimg.png)",
    "md-ref": "[pwn-ref][1]\n\n[1]: https://evil.example/pwn-ref",
    "autolink": "<https://evil.example/pwn-autolink>",
    "jinja": "{{ config.site_name }} {% include 'pwn-jinja' %}",
    "snippet": "--8<-- \"mkdocs.yml\"",
    "attr-list": "text{: onclick=\"alert('pwn-attr')\" }",
    "admonition": "!!! danger \"pwn-admonition\"",
    "entity": "&lt;script&gt;pwn-entity&lt;/script&gt;",
    "table": "| pwn | table |\n|---|---|",
    "bidi": "abc\u202egnp.exe\u200b\u2066pwn-bidi\u2069",
}
HOSTILE_URL = "https://evil.example/\"><script>alert('pwn-url')</script>"


def hostile_entry(paper_id: str, arxiv: str, title: str, summary: str, notes: str, cites: list[str]) -> dict:
    return {
        "id": paper_id, "title": title, "authors": [PAYLOADS["img"], PAYLOADS["bidi"], "Ada " + PAYLOADS["jinja"]],
        "year": 2024, "perspective": "engine", "subcategory": "sparse-mllm", "domain": "general", "modalities": ["image", "text"],
        "summary": summary, "arxiv": arxiv, "url": HOSTILE_URL, "code": "https://evil.example/<img/src=x/onerror=alert('pwn-code')>",
        "venue": "NeurIPS", "gaps": ["interpretable-routing"], "cites": cites, "bibtex_type": "inproceedings",
        "verified_from": [HOSTILE_URL, "https://arxiv.org/abs/" + arxiv], "notes": notes,
        "method": {"name": PAYLOADS["script"] + PAYLOADS["bidi"], "routing": "token-choice-topk", "experts": 4, "top_k": 2,
                   "base_models": [PAYLOADS["img"]], "weights": ["org/model", HOSTILE_URL]},
        "references_from": HOSTILE_URL,
    }


def write_yaml(path: Path, data: dict) -> None:
    yaml = YAML(typ="rt")
    yaml.width = 4096
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)


TITLE = re.compile(r"<title>(.*?)</title", re.S | re.I)


class PageScan(HTMLParser):
    """Collects what a browser would make live: scripts, links, images, frames, event handlers.

    A browser reads <title> as plain text up to the first "</title" (Python's parser does not), so
    the title is taken out first, as a browser would, and must end as the site's titles end."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.live: list[str] = []
        self.text: list[str] = []
        self.in_script = False
        self.scripts: list[str] = []
        self.titles: list[str] = []

    def feed(self, data: str) -> None:
        # the document's <title> is in the head; inline SVG in the body has <title> tooltips of its own,
        # which are foreign elements, not raw text
        head, _, body = data.partition("<body")
        self.titles += TITLE.findall(head)
        super().feed(TITLE.sub("<title></title", head) + _ + body)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name.startswith("on") and "pwn" in (value or ""):
                self.live.append(f"<{tag} {name}={value!r}>")
        for name in ("href", "src", "action", "formaction", "data", "xlink:href"):
            value = (attrs.get(name) or "").strip().lower()
            if value.startswith(("javascript:", "data:", "vbscript:")) or "evil.example" in value and tag != "a":
                self.live.append(f"<{tag} {name}={attrs[name]!r}>")
        # a <meta name="description"> holds the summary as its (escaped) content: text, not markup
        inert = {"content"} if tag == "meta" and attrs.get("name") == "description" and "http-equiv" not in attrs else set()
        if tag in ("iframe", "object", "embed", "svg", "form", "base", "meta") and any(
                "pwn" in (v or "") for k, v in attrs.items() if k not in inert):
            self.live.append(f"<{tag}>")
        if tag == "img" and "pwn" in " ".join(v or "" for v in attrs.values()):
            self.live.append(f"<img {attrs}>")
        self.in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def links_to(page: str, host: str) -> list[str]:
    scan = LinkScan()
    scan.feed(page)
    return [href for href in scan.hrefs if host in href]


class LinkScan(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("hostile")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns(*GENERATED_FOLDERS))
    shutil.copytree(ROOT / "taxonomy", project / "taxonomy")
    (project / "moekb").mkdir()
    shutil.copy(ROOT / "moekb" / "mkdocs_hook.py", project / "moekb" / "mkdocs_hook.py")
    papers = project / "papers"
    papers.mkdir()
    for watched in YAML(typ="rt").load((ROOT / "mkdocs.yml").read_text(encoding="utf-8")).get("watch", []):
        (project / watched).mkdir(parents=True, exist_ok=True)  # mkdocs requires them; empty is fine
    everything = " ".join(PAYLOADS.values())
    write_yaml(papers / "evil2024pwn.yaml", hostile_entry(
        "evil2024pwn", "2401.12345", title=PAYLOADS["title-break"] + PAYLOADS["script"] + " " + PAYLOADS["js-link"] + " " + PAYLOADS["bidi"],
        summary=everything + " " + LONG, notes=everything, cites=["evil2024other"]))
    write_yaml(papers / "evil2024other.yaml", hostile_entry(
        "evil2024other", "2402.12345", title=PAYLOADS["md-image"] + " " + PAYLOADS["jinja"] + " " + PAYLOADS["raw-link"],
        summary=PAYLOADS["closing"] + " " + PAYLOADS["attr-list"], notes=PAYLOADS["snippet"], cites=[]))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(project / "mkdocs.yml"),
                             "-d", str(project / "site")], capture_output=True, text=True, env=env, cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return project / "site"


def html_pages(site: Path) -> dict[str, str]:
    return {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}


def test_no_live_script_link_image_or_handler_comes_from_contributor_text(hostile_site):
    pages = html_pages(hostile_site)
    assert "papers/evil2024pwn/index.html" in pages
    checked = 0
    for name, page in pages.items():
        scan = PageScan()
        scan.feed(page)
        assert scan.live == [], name
        assert len(scan.titles) == 1 and scan.titles[0].endswith("moekb"), (name, scan.titles)
        for script in scan.scripts:
            # Data in inline scripts is JSON with <, > and & escaped: it can neither end the script
            # element nor start another one.
            assert "<script" not in script.lower() and "</" not in script, name
        assert not links_to(page, "evil.example/pwn"), name  # no Markdown link or autolink injected
        checked += "pwn" in page
    assert checked >= 5  # the payload really reached the paper, index, taxonomy and graph pages


def test_hostile_text_is_shown_verbatim_as_text(hostile_site):
    page = (hostile_site / "papers" / "evil2024pwn" / "index.html").read_text(encoding="utf-8")
    scan = PageScan()
    scan.feed(page)
    text = " ".join("".join(scan.text).split())
    for key in ("script", "js-link", "img", "closing", "raw-link", "jinja", "snippet", "attr-list", "admonition",
                "entity", "md-image", "autolink"):
        assert " ".join(PAYLOADS[key].split()) in text, key
    # Bidirectional and zero-width characters are shown as code points, never applied.
    assert "abc[U+202E]gnp.exe[U+200B][U+2066]pwn-bidi[U+2069]" in text
    assert "\u202e" not in page and "\u200b" not in page
    assert "x" * 5000 in text  # a very long word is kept whole


def test_hostile_urls_are_not_links(hostile_site):
    page = (hostile_site / "papers" / "evil2024pwn" / "index.html").read_text(encoding="utf-8")
    assert links_to(page, "evil.example") == []
    scan = PageScan()
    scan.feed(page)
    assert HOSTILE_URL in "".join(scan.text)  # shown, as text
    # The arXiv links built from a valid id stay links.
    assert "https://arxiv.org/abs/2401.12345" in links_to(page, "arxiv.org")


def test_code_spans_show_any_text_literally():
    import markdown

    from moekb.markup import code

    assert code("reference_impls/moe.py") == "`reference_impls/moe.py`"
    assert code("a`b") == "``a`b``" and code("`x") == "`` `x ``"
    for text in ("<script>alert(1)</script>", "a|b", "x`` y", "[l](javascript:x)", "\u202eabc"):
        rendered = markdown.markdown(f"| {code(text)} |\n|---|\n", extensions=["tables"])
        assert "<script" not in rendered and "href" not in rendered, text
        assert rendered.count("<td>") == 1, text  # a '|' cannot split the table cell
    assert "[U+202E]abc" in code("\u202eabc")
