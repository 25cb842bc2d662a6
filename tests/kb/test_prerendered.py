"""Paper pages written as HTML and rendered without Python-Markdown (moekb.prerendered)."""

from __future__ import annotations

import logging
import posixpath
from types import SimpleNamespace
from pathlib import Path

import markdown
import pytest
import yaml
from mkdocs.config import load_config
from mkdocs.structure.files import File, Files

from hypothesis import given, settings
from hypothesis import strategies as st

from moekb.markup import front_matter, html_text
from moekb.prerendered import (FRONT_MATTER, LinkResolver, PrerenderedPage, is_prerendered, nav_titles,
                               read_front_matter, toc_tokens)
from moekb.site import Anchors

ROOT = Path(__file__).resolve().parents[2]
PAGE = """---
title: "A &lt;b&gt; title"
search:
  exclude: true
---

<h1 id="a-title">A &lt;b&gt; title<a class="headerlink" href="#a-title" title="Permanent link">&para;</a></h1>
<p><a href="other.md">other</a> <a href="../taxonomy/engine/index.md#scope">engine</a> <a href="https://example.org/x.md">out</a></p>
<h2 id="one">One<a class="headerlink" href="#one" title="Permanent link">&para;</a></h2>
<h3 id="one-a">One a<a class="headerlink" href="#one-a" title="Permanent link">&para;</a></h3>
<h2 id="two">Two<a class="headerlink" href="#two" title="Permanent link">&para;</a></h2>
"""


def site_files(tmp_path: Path, *, directory_urls: bool, broken_link: bool = False):
    docs = tmp_path / "docs"
    pages = {"index.md": "# Home\n", "generated/papers/a.md": PAGE, "generated/papers/other.md": PAGE,
             "generated/papers/index.md": "# All\n", "generated/taxonomy/engine/index.md": "# Engine\n"}
    if broken_link:
        pages["generated/papers/a.md"] = PAGE.replace("other.md", "missing.md")
    for name, text in pages.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nuse_directory_urls: {str(directory_urls).lower()}\n")
    config = load_config(str(tmp_path / "mkdocs.yml"))
    files = Files([File(name, config.docs_dir, config.site_dir, config.use_directory_urls) for name in pages])
    return config, files


@pytest.mark.parametrize("directory_urls", [True, False])
def test_links_become_the_urls_mkdocs_gives_and_the_toc_nests(tmp_path, directory_urls):
    config, files = site_files(tmp_path, directory_urls=directory_urls)
    file = files.get_file_from_path("generated/papers/a.md")
    page = PrerenderedPage(file, config, LinkResolver(files))
    assert file.page is page
    page.read_source(config)
    page.render(config, files)
    other, engine = files.get_file_from_path("generated/papers/other.md"), files.get_file_from_path("generated/taxonomy/engine/index.md")
    assert f'href="{other.url_relative_to(file)}"' in page.content
    assert f'href="{engine.url_relative_to(file)}#scope"' in page.content
    assert 'href="https://example.org/x.md"' in page.content  # external links are left alone
    assert page.title == "A &lt;b&gt; title" and page.meta["search"] == {"exclude": True}
    [h1] = page.toc.items
    assert (h1.id, h1.level, [c.id for c in h1.children]) == ("a-title", 1, ["one", "two"])
    assert [c.id for c in h1.children[0].children] == ["one-a"]
    assert page.present_anchor_ids == {"a-title", "one", "one-a", "two"}


def test_a_link_to_a_missing_page_is_reported_like_mkdocs_does(tmp_path, caplog):
    config, files = site_files(tmp_path, directory_urls=True, broken_link=True)
    page = PrerenderedPage(files.get_file_from_path("generated/papers/a.md"), config, LinkResolver(files))
    page.read_source(config)
    with caplog.at_level(logging.INFO, logger="mkdocs.moekb"):
        page.render(config, files)
    [record] = [r for r in caplog.records if "missing.md" in r.getMessage()]
    assert record.levelno == logging.WARNING  # mkdocs' default for links.not_found: --strict fails
    assert "generated/papers/a.md" in record.getMessage()


def test_links_to_anchors_are_checked_as_mkdocs_checks_markdown_links(tmp_path, caplog):
    config, files = site_files(tmp_path, directory_urls=True)
    resolver = LinkResolver(files)
    pages = {name: PrerenderedPage(files.get_file_from_path(name), config, resolver)
             for name in ("generated/papers/a.md", "generated/papers/other.md")}
    for page in pages.values():
        page.read_source(config)
        page.markdown = page.markdown.replace('href="other.md"', 'href="other.md#two"').replace(
            'href="../taxonomy/engine/index.md#scope"', 'href="other.md#nowhere"')
        page.render(config, files)
    with caplog.at_level(logging.INFO, logger="mkdocs"):
        pages["generated/papers/a.md"].validate_anchor_links(files=files, log_level=logging.WARNING)
    problems = [r.getMessage() for r in caplog.records if "anchor" in r.getMessage()]
    assert problems == ["Doc file 'generated/papers/a.md' contains a link 'other.md#nowhere', but the doc "
                        "'generated/papers/other.md' does not contain an anchor '#nowhere'."]


def test_the_shared_relative_urls_equal_mkdocs_own_for_every_pair(tmp_path):
    names = ["index.md", "a.md", "generated/papers/a.md", "generated/papers/b.md", "generated/papers/index.md",
             "generated/taxonomy/engine/index.md", "generated/taxonomy/engine/x.md", "impls/moe.md"]
    for directory_urls in (True, False):
        files = Files([File(n, str(tmp_path), str(tmp_path / "site"), directory_urls) for n in names])
        resolver = LinkResolver(files)
        for _ in range(2):  # the second round is answered from the shared cache
            for source in files:
                folder = posixpath.dirname(source.src_uri)
                for target in files:
                    link = posixpath.relpath(target.src_uri, folder or ".")
                    assert resolver.url(folder, link, source.url) == target.url_relative_to(source), \
                        (directory_urls, source.src_uri, target.src_uri)
                # and the same through resolve(), which keeps its own per-folder cache of hrefs
                page = SimpleNamespace(file=source, url=source.url, links_to_anchors={})
                html = "".join(f'<a href="{posixpath.relpath(t.src_uri, folder or ".")}#x">' for t in files)
                expected = "".join(f'<a href="{t.url_relative_to(source)}#x">' for t in files)
                assert resolver.resolve(html, page, None) == expected, (directory_urls, source.src_uri)


def test_nav_titles_name_each_listed_file():
    nav = [{"Home": "index.md"}, "plain.md", {"Taxonomy": ["generated/taxonomy/index.md",
                                                          {"Engine": "generated/taxonomy/engine/index.md"}]},
           {"Papers": "generated/papers/index.md"}, {"Deep": [{"Deeper": [{"Leaf": "a/b.md"}]}]}]
    assert nav_titles(nav) == {"index.md": "Home", "generated/taxonomy/engine/index.md": "Engine",
                               "generated/papers/index.md": "Papers", "a/b.md": "Leaf"}
    assert nav_titles(None) == {}


def test_paper_pages_and_the_lists_of_papers_are_prerendered(tmp_path):
    def file(name):
        return File(name, str(tmp_path), str(tmp_path / "site"), True)

    for html in ("generated/papers/x2024y.md", "generated/papers/index.md", "generated/taxonomy/engine/sparse-mllm.md",
                 "generated/gaps/sustainability.md", "generated/graph/index.md"):
        assert is_prerendered(file(html)), html
    for markdown_page in ("generated/taxonomy/index.md", "generated/taxonomy/engine/index.md", "generated/gaps/index.md",
                          "generated/code/moe.md", "papers/x.md", "index.md"):
        assert not is_prerendered(file(markdown_page)), markdown_page


def test_the_generator_writes_html_exactly_for_those_pages():
    from moekb.load import load_knowledge_base
    from moekb.site import is_html_page, render_site

    files = render_site(load_knowledge_base(ROOT))
    for name, text in files.items():
        if name.endswith(".md") and not name.startswith("snippets/"):
            body = text.split("---\n", 2)[2] if text.startswith("---\n") else text
            assert body.lstrip().startswith("<h1 id=") == is_html_page(name), name


def test_heading_ids_follow_the_toc_extension():
    """The ids the generator writes are those Python-Markdown's toc extension would give the headings."""
    headings = ["Summary", "Cites (3)", "Cited by (0)", "Summary", "Mixture-of-Experts: A <Survey> & more",
                "Ünïcödé títle", "Summary"]
    anchors = Anchors()
    ours = [anchors.new(h) for h in headings]
    source = "\n\n".join(f"## {h.replace('<', '&lt;')}" for h in headings)
    md = markdown.Markdown(extensions=["toc"])
    md.convert(source)
    theirs = [token["id"] for token in md.toc_tokens]
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(title=st.text(), searched=st.booleans())
def test_the_generators_front_matter_reads_as_yaml_reads_it(title, searched):
    """Titles beyond U+FFFF included, which json.dumps would write as surrogate pairs that PyYAML
    (mkdocs' reader of the other pages' front matter) reads as two broken characters."""
    text = FRONT_MATTER.match(front_matter(title, searched=searched)).group(1)
    expected = {"title": html_text(title), **({} if searched else {"search": {"exclude": True}})}
    assert read_front_matter(text) == yaml.safe_load(text) == expected


@pytest.mark.parametrize("text", ["title: plain words\n", 'title: "a"\nhide: [toc]\n', 'title: "a\\u00e9"\nsearch:\n  exclude: false\n',
                                  "title: 'single'\n", "template: x.html\n"])
def test_other_front_matter_is_read_by_yaml(text):
    assert read_front_matter(text) == yaml.safe_load(text)
