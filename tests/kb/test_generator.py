"""The generator as a pure function, its exports, and atomic writing, all without mkdocs."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from mkdocs.exceptions import PluginError

from moekb.bib import parse_bibtex
from moekb.build import CollectorPause, build, generate
from moekb.errors import MoekbError
from moekb.load import load_knowledge_base
from moekb.mkdocs_hook import on_build_error, on_pre_build
from moekb.site import render_site

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
                 "papers/lovelace2024test.md", "papers/turing2024other.md",
                 "taxonomy/engine/index.md", "taxonomy/engine/sparse-mllm.md",
                 "taxonomy/adapter/missing-modality.md", "gaps/interpretable-routing.md"):
        assert name in files, name
    subcategories = sum(len(p.subcategories) for p in kb.taxonomy.perspectives)
    assert sum(1 for f in files if f.startswith("taxonomy/") and not f.endswith("index.md")) == subcategories


def test_paper_page_links_identifiers_and_both_citation_directions(small_project):
    files = render_site(load_knowledge_base(small_project))
    citing, cited = files["papers/lovelace2024test.md"], files["papers/turing2024other.md"]
    assert '<a href="https://arxiv.org/abs/2401.12345">abstract</a>' in citing
    assert '<a href="https://arxiv.org/pdf/2401.12345">PDF</a>' in citing
    assert ">Cites (1)<" in citing and '<a href="turing2024other.md">Routing Without Tears</a>' in citing
    assert ">Cited by (1)<" in cited and '<a href="lovelace2024test.md">Experts for Everyone</a>' in cited
    assert '<span class="nc">@inproceedings</span><span class="p">{</span><span class="nl">lovelace2024test</span>' in citing
    assert 'href="../taxonomy/adapter/missing-modality.md"' in cited


def test_gap_matrix_counts_papers_per_perspective(small_project):
    page = render_site(load_knowledge_base(small_project))["gaps/index.md"]
    row = next(line for line in page.splitlines() if line.startswith("| [Interpretable routing]"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # engine, learner, adapter, foundations, total
    assert cells[1:] == ["[1](interpretable-routing.md#engine)", "0", "[1](interpretable-routing.md#adapter)", "0", "2"]


def test_home_counts_and_latest_additions(small_project):
    snippet = render_site(load_knowledge_base(small_project))["snippets/home.md"]
    assert "| **All** |" in snippet and "**2**" in snippet
    assert "(generated/papers/turing2024other.md)" in snippet


def test_contributor_text_is_escaped(make_project):
    hostile = entry("lovelace2024test", "<script>alert(1)</script> [x](javascript:alert(1)) | `tick`", "2401.12345")
    kb = load_knowledge_base(make_project({"lovelace2024test.yaml": hostile}))
    for name, text in render_site(kb).items():
        if name.endswith(".md") and not name.startswith("downloads"):
            # code blocks show text verbatim
            text = re.sub(r"(`{3,})bibtex\n.*?\n\1|<div class=\"highlight\">.*?</div>", "", text, flags=re.S)
            assert "<script>" not in text, name
            assert "](javascript:" not in text, name


def test_bibtex_export_parses_back_with_the_same_keys():
    kb = load_knowledge_base(ROOT)
    library = parse_bibtex(render_site(kb)["downloads/papers.bib"])
    assert library.failed_blocks == []
    assert [e.key for e in library.entries] == [p.id for p in kb.papers]
    by_key = {e.key: e for e in library.entries}
    for paper in kb.papers:
        fields = by_key[paper.id].fields_dict
        assert fields["title"].value == paper.title
        assert fields["author"].value == " and ".join(paper.authors)
        assert fields["year"].value == str(paper.year)


def test_json_export_holds_every_entry():
    kb = load_knowledge_base(ROOT)
    data = json.loads(render_site(kb)["downloads/papers.json"])
    assert [p["id"] for p in data["papers"]] == [p.id for p in kb.papers]
    assert {p["id"] for p in data["perspectives"]} == {"engine", "learner", "adapter", "foundations"}


def test_a_failed_build_leaves_the_previous_output(small_project):
    build(small_project)
    generated = small_project / "docs" / "generated"
    before = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    assert before
    (small_project / "papers" / "turing2024other.yaml").write_text("title: [unclosed\n")
    with pytest.raises(MoekbError):
        build(small_project)
    after = {p: p.read_bytes() for p in generated.rglob("*") if p.is_file()}
    assert after == before


def test_rebuild_writes_only_changes_and_removes_stale_pages(small_project):
    _, written, removed = build(small_project)
    assert written > 0 and removed == 0
    _, written, removed = build(small_project)
    assert (written, removed) == (0, 0)
    (small_project / "papers" / "lovelace2024test.yaml").unlink()
    _, written, removed = build(small_project)
    assert removed == 1  # the deleted paper's page
    assert not (small_project / "docs/generated/papers/lovelace2024test.md").exists()


def test_mkdocs_hook_turns_invalid_input_into_a_plugin_error(small_project):
    (small_project / "papers" / "turing2024other.yaml").write_text("id: turing2024other\n")
    config = SimpleNamespace(config_file_path=str(small_project / "mkdocs.yml"))
    thresholds = gc.get_threshold()
    with pytest.raises(PluginError, match=r"papers/turing2024other.yaml:1: missing required field 'title'"):
        on_pre_build(config)
    assert gc.get_threshold()[0] >= CollectorPause.THRESHOLD  # paused for the build ...
    on_build_error(error=PluginError("x"))  # ... until mkdocs reports the build failed
    assert gc.get_threshold() == thresholds


def test_the_collector_pause_restores_the_thresholds_and_nests():
    before = gc.get_threshold()
    with CollectorPause():
        assert gc.get_threshold() == (max(CollectorPause.THRESHOLD, before[0]), *before[1:])
        with CollectorPause():
            pass
        assert gc.get_threshold()[0] >= CollectorPause.THRESHOLD  # the inner pause left the outer one in place
    assert gc.get_threshold() == before


def test_generate_is_deterministic(small_project):
    assert generate(small_project)[1] == generate(small_project)[1]


def test_perspective_pages_link_code_notebook_and_guide():
    kb = load_knowledge_base(ROOT)
    files = render_site(kb, implementations={"reference_impls/conf_gate.py": "x = 1\n"}, guides={"conf_gate.md"})
    page = files["taxonomy/adapter/index.md"]
    assert '<a href="../../code/conf_gate.md"><code>reference_impls/conf_gate.py</code></a>' in page
    assert '<a href="../../../impls/conf_gate.md">guide</a>' in page
    if "adapter_conf_gate.ipynb" in kb.notebooks:
        assert '<a href="../../notebooks/adapter_conf_gate.md">' in page
    sub = files["taxonomy/adapter/missing-modality.md"]  # a sub-category without its own links shows its perspective's
    assert '<a href="../../code/conf_gate.md"><code>reference_impls/conf_gate.py</code></a>' in sub
    assert ">guide</a>" not in render_site(kb, implementations={"reference_impls/conf_gate.py": "x = 1\n"})[
        "taxonomy/adapter/index.md"]
