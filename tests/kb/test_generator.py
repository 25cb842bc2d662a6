"""The generator as a pure function, its exports, and atomic writing, all without mkdocs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from mkdocs.exceptions import PluginError

from moekb.bib import parse_bibtex
from moekb.build import build, build_if_changed, generate
from moekb.errors import MoekbError
from moekb.load import load_knowledge_base
from moekb.output import StagedTree
from moekb.mkdocs_hook import on_pre_build
from moekb.site import SiteRenderer, doc_link, href, render_site

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (Path(__file__).parent / "bad_entries" / "cites-self" / "lovelace2024test.yaml").read_text()


def entry(paper_id: str, title: str, arxiv: str, *, cites: str = "", perspective="engine", sub="sparse-mllm") -> str:
    return (TEMPLATE.replace("lovelace2024test", paper_id).replace("A Test Entry", title)
            .replace("2401.12345", arxiv).replace(f"cites: [{paper_id}]", f"cites: [{cites}]")
            .replace("perspective: engine", f"perspective: {perspective}").replace("subcategory: sparse-mllm", f"subcategory: {sub}"))


@pytest.fixture
def small_project(make_project):
    return make_project({
        "lovelace2024test.yaml": entry("lovelace2024test", "Experts for Everyone", "2401.12345", cites="turing2024other"),
        "turing2024other.yaml": entry("turing2024other", "Routing Without Tears", "2402.12345",
                                      perspective="adapter", sub="missing-modality"),
    })


def test_every_page_is_generated(small_project):
    kb = load_knowledge_base(small_project)
    files = render_site(kb)
    for name in ("taxonomy/index.md", "papers/index.md", "gaps/index.md", "downloads/index.md",
                 "downloads/papers.bib", "downloads/papers.json", "snippets/home.md",
                 "papers/lovelace2024test/index.md", "papers/turing2024other/index.md",
                 "taxonomy/engine/index.md", "taxonomy/engine/sparse-mllm/index.md",
                 "taxonomy/adapter/missing-modality/index.md", "gaps/interpretable-routing/index.md"):
        assert name in files, name
    subcategories = sum(len(p.subcategories) for p in kb.taxonomy.perspectives)
    assert sum(1 for f in files if f.startswith("taxonomy/") and f.count("/") == 3) == subcategories  # taxonomy/<p>/<s>/index.md


def test_paper_page_links_identifiers_and_both_citation_directions(small_project):
    files = render_site(load_knowledge_base(small_project))
    citing, cited = files["papers/lovelace2024test/index.md"], files["papers/turing2024other/index.md"]
    assert '<a href="https://arxiv.org/abs/2401.12345">https://arxiv.org/abs/2401.12345</a>' in citing
    assert '<a href="https://arxiv.org/pdf/2401.12345">' in citing
    assert "### Cites (1)" in citing and '<a href="../turing2024other/">Routing Without Tears</a>' in citing
    assert "### Cited by (1)" in cited and '<a href="../lovelace2024test/">Experts for Everyone</a>' in cited
    assert '??? quote "Cite"' in citing and "    ```bibtex\n    @inproceedings{lovelace2024test," in citing
    assert 'href="../../taxonomy/adapter/missing-modality/"' in cited
    # no reference list was read for either entry: shown as unchecked, never as "cites nothing"
    assert "Citations not checked" in citing and "Citations not checked" in cited


def test_links_between_pages_are_directory_urls_for_html_and_files_for_markdown():
    assert href("papers/a/index.md", "papers/b/index.md") == "../b/"
    assert href("papers/index.md", "papers/b/index.md") == "b/"
    assert href("papers/a/index.md", "taxonomy/engine/index.md") == "../../taxonomy/engine/"
    assert href("taxonomy/engine/sparse-mllm/index.md", "index.md") == "../../../"
    assert href("graph/index.md", "assets/javascripts/explorer.js") == "../assets/javascripts/explorer.js"
    assert href("gaps/index.md", "gaps/x/index.md#engine") == "x/#engine"
    assert href("papers/a/index.md", "papers/a/neighbourhood.svg") == "neighbourhood.svg"
    assert doc_link("taxonomy/engine/index.md", "taxonomy/engine/sparse-mllm/index.md") == "sparse-mllm/index.md"
    assert doc_link("gaps/index.md", "gaps/x/index.md#engine") == "x/index.md#engine"


def test_gap_matrix_counts_papers_per_perspective(small_project):
    page = render_site(load_knowledge_base(small_project))["gaps/index.md"]
    row = next(line for line in page.splitlines() if line.startswith("| [Interpretable routing]"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # engine, learner, adapter, foundations, total
    assert cells[1:] == ["[1](interpretable-routing/index.md#engine)", "0", "[1](interpretable-routing/index.md#adapter)", "0", "2"]


def test_home_counts_and_latest_additions(small_project):
    snippet = render_site(load_knowledge_base(small_project))["snippets/home.md"]
    assert "| **All** |" in snippet and "**2**" in snippet
    assert "(papers/turing2024other/index.md)" in snippet


@pytest.mark.parametrize(("provenance", "shown"), [
    ("https://arxiv.org/html/2401.12345v2", '<a href="https://arxiv.org/html/2401.12345v2">'),
    ("code-index:60896287700", "full-text copy held in the research store's code index (file 60896287700)"),
])
def test_a_read_reference_list_says_where_it_was_read(make_project, provenance, shown):
    text = entry("lovelace2024test", "Experts for Everyone", "2401.12345", cites="turing2024other").replace(
        "cites: [turing2024other]", f"cites: [turing2024other]\nreferences_from: {provenance}")
    kb = load_knowledge_base(make_project({
        "lovelace2024test.yaml": text,
        "turing2024other.yaml": entry("turing2024other", "Routing Without Tears", "2402.12345")}))
    page = render_site(kb)["papers/lovelace2024test/index.md"]
    assert shown in page
    assert "Citations not checked" not in page
    assert kb.paper["lovelace2024test"].citations_checked
    assert (kb.paper["lovelace2024test"].references_copy is not None) == provenance.startswith("code-index:")


def test_contributor_text_is_escaped(make_project):
    hostile = entry("lovelace2024test", "<script>alert(1)</script> [x](javascript:alert(1)) | `tick`", "2401.12345")
    kb = load_knowledge_base(make_project({"lovelace2024test.yaml": hostile}))
    for name, text in render_site(kb).items():
        if name.endswith(".md") and not name.startswith("downloads"):
            # code blocks show text verbatim
            text = re.sub(r"(`{3,})\w*\n.*?\n\s*\1", "", text, flags=re.S)
            assert "<script>" not in text, name
            assert "](javascript:" not in text, name


def test_bibtex_export_parses_back_with_the_same_keys():
    kb = load_knowledge_base(ROOT)
    library = parse_bibtex(render_site(kb)["downloads/papers.bib"])
    assert library.failed_blocks == []
    entries = [*kb.papers, *kb.surveys]
    assert [e.key for e in library.entries] == [p.id for p in entries]
    by_key = {e.key: e for e in library.entries}
    for paper in entries:
        fields = by_key[paper.id].fields_dict
        assert fields["title"].value == paper.title
        assert fields["author"].value == " and ".join(paper.authors)
        assert fields["year"].value == str(paper.year)


def test_json_export_holds_every_entry():
    kb = load_knowledge_base(ROOT)
    data = json.loads(render_site(kb)["downloads/papers.json"])
    assert [p["id"] for p in data["papers"]] == [p.id for p in kb.papers]
    assert [p["id"] for p in data["surveys"]] == [p.id for p in kb.surveys]
    assert {p["id"] for p in data["perspectives"]} == {"engine", "learner", "adapter", "foundations"}
    with_method = [p for p in data["papers"] if "method" in p]
    assert with_method and all(isinstance(p["method"]["name"], str) for p in with_method)


def test_csv_export_has_a_row_per_entry_and_the_method_columns():
    import csv
    import io

    kb = load_knowledge_base(ROOT)
    rows = list(csv.DictReader(io.StringIO(render_site(kb)["downloads/papers.csv"])))
    assert [r["id"] for r in rows] == [p.id for p in [*kb.papers, *kb.surveys]]
    limoe = next(r for r in rows if r["id"] == "mustafa2022limoe")
    assert limoe["method.name"] == "LIMoE" and limoe["authors"].startswith("Basil Mustafa; Carlos Riquelme")


def test_a_failed_build_leaves_the_previous_output(small_project):
    build(small_project)
    generated = small_project / "docs"
    before = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    assert before
    (small_project / "papers" / "turing2024other.yaml").write_text("title: [unclosed\n")
    with pytest.raises(MoekbError):
        build(small_project)
    after = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    assert after == before


def test_a_build_failing_while_rendering_leaves_the_previous_output_and_no_staged_files(small_project, monkeypatch):
    """(In worker processes too: tests/kb/test_workers.py.)"""
    build(small_project)
    generated = small_project / "docs"
    before = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    paper = small_project / "papers" / "turing2024other.yaml"
    paper.write_text(paper.read_text().replace("Routing Without Tears", "Renamed"))  # the lists change: staged
    staged = []
    monkeypatch.setattr(StagedTree, "add", lambda self, name, content, add=StagedTree.add: (
        staged.append(name), add(self, name, content))[1])

    def broken_paper_page(self, paper):  # the overview pages render (and are staged) before the paper pages
        raise RuntimeError("a rendering bug")

    monkeypatch.setattr(SiteRenderer, "paper_page", broken_paper_page)
    with pytest.raises(RuntimeError, match="a rendering bug"):
        build(small_project, jobs=1)
    assert "papers/index.md" in staged
    after = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    assert after == before  # nothing renamed into place, every staged temporary file removed


def test_rebuild_writes_only_changes_and_removes_stale_pages(small_project):
    _, written, removed = build(small_project)
    assert written > 0 and removed == 0
    _, written, removed = build(small_project)
    assert (written, removed) == (0, 0)
    (small_project / "papers" / "lovelace2024test.yaml").unlink()
    _, written, removed = build(small_project)
    # the deleted paper's page and citation diagram, and the diagram of the paper it cited (no neighbours left)
    assert removed == 3
    assert not (small_project / "docs/papers/lovelace2024test.md").exists()


def test_the_hook_skips_generation_only_while_the_pages_match_their_inputs(small_project):
    assert build_if_changed(small_project) is not None  # nothing generated yet
    assert build_if_changed(small_project) is None
    entry_file = small_project / "papers" / "turing2024other.yaml"
    entry_file.write_text(entry_file.read_text().replace("Routing Without Tears", "Routing With Tears"))
    assert build_if_changed(small_project) is not None
    assert "Routing With Tears" in (small_project / "docs/papers/turing2024other/index.md").read_text()
    assert build_if_changed(small_project) is None
    (small_project / "docs/papers/turing2024other/index.md").unlink()  # a generated page lost by hand
    assert build_if_changed(small_project) is not None
    assert (small_project / "docs/papers/turing2024other/index.md").is_file()
    for damaged in ("[]", '{"digest": "x"}', "not json"):  # a stamp that cannot vouch for the pages
        (small_project / ".cache/moekb-build.json").write_text(damaged)
        assert build_if_changed(small_project) is not None
    entry_file.write_text("title: [unclosed\n")  # invalid input is never skipped as "unchanged"
    with pytest.raises(MoekbError):
        build_if_changed(small_project)


def test_build_never_touches_hand_written_pages(small_project):
    guide = small_project / "docs" / "impls" / "guide.md"
    guide.parent.mkdir(parents=True)
    guide.write_text("# A guide\n")
    (small_project / "docs" / "index.md").write_text("# Home\n")
    build(small_project)
    assert guide.read_text() == "# A guide\n" and (small_project / "docs" / "index.md").read_text() == "# Home\n"


def test_mkdocs_hook_turns_invalid_input_into_a_plugin_error(small_project):
    (small_project / "papers" / "turing2024other.yaml").write_text("id: turing2024other\n")
    config = SimpleNamespace(config_file_path=str(small_project / "mkdocs.yml"))
    with pytest.raises(PluginError, match=r"papers/turing2024other.yaml:1: missing required field 'title'"):
        on_pre_build(config)


def test_generate_is_deterministic(small_project):
    assert generate(small_project)[1] == generate(small_project)[1]


def test_subcategory_pages_link_code_notebook_and_guide():
    kb = load_knowledge_base(ROOT)
    files = render_site(kb, implementations={"reference_impls/conf_gate.py": "x = 1\n"}, guides={"conf_gate.md"})
    page = files["taxonomy/adapter/missing-modality/index.md"]
    assert "[reference\\_impls/conf\\_gate\\.py](../../../code/conf_gate/index.md)" in page
    assert "[guide](../../../impls/conf_gate.md)" in page
    bare = render_site(kb, implementations={"reference_impls/conf_gate.py": "x = 1\n"})["taxonomy/adapter/missing-modality/index.md"]
    assert "[guide]" not in bare


def test_a_paper_with_a_reference_implementation_links_to_it():
    kb = load_knowledge_base(ROOT)
    owners = [o for p in kb.taxonomy.perspectives for o in (p, *p.subcategories) if o.implements]
    assert owners, "the taxonomy names the papers its implementations follow"
    files = render_site(kb, implementations={o.reference_impl: "x = 1\n" for o in owners}, guides=set())
    for owner in owners:
        for paper_id in owner.implements:
            page = files[f"papers/{paper_id}/index.md"]
            assert "## Run it" in page and "../../code/" in page, paper_id  # an HTML link: URL-relative


def test_bibtex_keeps_math_in_titles_and_reads_back(make_project):
    from moekb.add import entries_from_bibtex
    from moekb.bib import bibtex_entries

    project = make_project({"lovelace2024test.yaml": entry("lovelace2024test", "M$^4$oE: Experts & $100 Costs", "2401.12345")})
    kb = load_knowledge_base(project)
    text = bibtex_entries(kb.papers, kb.taxonomy)["lovelace2024test"]
    assert "title = {{M$^4$oE: Experts \\& \\$100 Costs}}" in text  # math kept; a lone $ and & escaped
    [new] = entries_from_bibtex(text.encode(), "x.bib", kb.taxonomy)
    assert new.fields["title"] == "M$^4$oE: Experts & $100 Costs"


def test_recently_added_page_and_a_valid_atom_feed(make_project):
    import feedparser

    project = make_project({
        "lovelace2024test.yaml": entry("lovelace2024test", "Experts <for> Everyone", "2401.12345") + "added: 2026-12-01\n",
        "turing2024other.yaml": entry("turing2024other", "Routing & More", "2402.12345") + "added: 2026-11-02\n",
    })
    kb = load_knowledge_base(project)
    files = render_site(kb, site_url="https://example.org/moekb/")
    feed = feedparser.parse(files["recent/feed.xml"])
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.feed.title.startswith("moekb") and feed.version == "atom10"
    assert [e.link for e in feed.entries] == ["https://example.org/moekb/papers/lovelace2024test/",
                                              "https://example.org/moekb/papers/turing2024other/"]  # newest first
    assert feed.entries[0].title == "Experts <for> Everyone"  # escaped in the XML, read back as written
    assert all(e.updated.startswith(str(kb.paper[e.link.split("/")[-2]].added)) for e in feed.entries)
    assert "## " in files["recent/index.md"] and "feed.xml" in files["recent/index.md"]
    relative = feedparser.parse(render_site(kb)["recent/feed.xml"])  # no site address: links relative to the feed
    assert not relative.bozo and all(e.link.endswith("/") for e in relative.entries)


def test_start_here_lists_papers_per_perspective(small_project):
    page = render_site(load_knowledge_base(small_project))["start/index.md"]
    assert "## MoE as an Efficient Multimodal Engine" in page and "papers/lovelace2024test/index.md" in page
