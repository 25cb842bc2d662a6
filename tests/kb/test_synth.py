"""`moekb synth`: a synthetic corpus that validates, uses every vocabulary, is fixed by its seed,
never lands in papers/, and builds into a site (mkdocs, through MOEKB_PAPERS) with one search entry
per paper."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from built_pages import internal_targets, unresolved

from moekb.build import generate
from moekb.cli import main
from moekb.errors import MoekbError
from moekb.identifiers import arxiv_year
from moekb.load import load_knowledge_base, load_taxonomy
from moekb.site import GENERATED_FOLDERS
from moekb.synth import synthetic_corpus, write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]
N = 60  # more than the largest vocabulary (32 venues), so every value can be used


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("synth") / "papers", N, seed=7, root=ROOT)


@pytest.fixture(scope="module")
def kb(corpus):
    return load_knowledge_base(ROOT, corpus)


def test_the_synthetic_corpus_validates(kb, corpus):
    assert len(kb.papers) == N == len(list(corpus.glob("*.yaml")))


def test_every_vocabulary_is_used(kb):
    tax = kb.taxonomy
    assert {p.perspective for p in kb.papers} == set(tax.perspective)
    assert {p.subcategory for p in kb.papers} == set(tax.subcategory)
    assert {m for p in kb.papers for m in p.modalities} == set(tax.modality)
    assert {g for p in kb.papers for g in p.gaps} == set(tax.gap)
    assert {p.venue for p in kb.papers} - {None} == set(tax.venue)
    assert {p.bibtex_type for p in kb.papers} - {None} == {k.id for k in tax.vocabularies.entry_kinds}
    assert any(p.venue is None for p in kb.papers), "some entries are preprints"
    assert {bool(p.arxiv) for p in kb.papers} == {True, False}, "some entries have only a DOI or a URL"


def test_fields_have_realistic_lengths(kb):
    for paper in kb.papers:
        assert 6 <= len(paper.title.split()) <= 16, paper.title
        assert 2 <= len(paper.authors) <= 12
        assert len(set(paper.authors)) == len(paper.authors)
        assert paper.summary.count(". ") + paper.summary.endswith(".") == 3, paper.summary
        assert len(paper.cites) <= 15
    assert max(len(p.cites) for p in kb.papers) >= 8, "citations are not all tiny"


def test_arxiv_ids_are_unique_and_match_the_year(kb):
    ids = [p.arxiv for p in kb.papers if p.arxiv]
    assert len(ids) == len(set(ids))
    for paper in kb.papers:
        if paper.arxiv:
            assert arxiv_year(paper.arxiv) in (paper.year, paper.year - 1), (paper.arxiv, paper.year)


def test_citations_form_an_acyclic_graph_pointing_back_in_time(kb):
    order = {paper.id: i for i, paper in enumerate(sorted(kb.papers, key=lambda p: p.year))}
    edges = [(p.id, target) for p in kb.papers for target in p.cites]
    assert len(edges) > N, "the graph has edges"
    for source, target in edges:
        assert kb.paper[target].year <= kb.paper[source].year
    # Kahn's algorithm consumes every node only when there is no cycle
    remaining = {p.id: len(p.cites) for p in kb.papers}
    ready = [i for i, n in remaining.items() if n == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for citing in kb.cited_by[node]:
            remaining[citing] -= 1
            if remaining[citing] == 0:
                ready.append(citing)
    assert seen == N and order


def test_the_same_seed_gives_the_same_files_and_another_seed_others():
    taxonomy = load_taxonomy(ROOT)
    first, again, other = (synthetic_corpus(taxonomy, 40, seed) for seed in (3, 3, 4))
    assert first == again
    assert first != other and len(other) == 40


@pytest.mark.parametrize("where", ["papers", "papers/sub", "."])
def test_refuses_the_projects_papers_folder_and_folders_holding_it(where, tmp_path):
    before = sorted(p.name for p in (ROOT / "papers").iterdir())
    with pytest.raises(MoekbError, match="refusing to write synthetic papers"):
        write_synthetic_corpus(ROOT / where, 5, root=ROOT, force=True)
    link = tmp_path / "looks-elsewhere"
    link.symlink_to(ROOT / "papers")
    with pytest.raises(MoekbError, match="refusing"):
        write_synthetic_corpus(link, 5, root=ROOT, force=True)
    assert sorted(p.name for p in (ROOT / "papers").iterdir()) == before


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale2020entry.yaml").write_text("id: stale2020entry\n")
    with pytest.raises(MoekbError, match="not empty"):
        write_synthetic_corpus(out, 5, root=ROOT)
    assert [p.name for p in out.iterdir()] == ["stale2020entry.yaml"]
    write_synthetic_corpus(out, 35, root=ROOT, force=True)
    assert not (out / "stale2020entry.yaml").exists(), "--force leaves exactly the new corpus"
    assert len(load_knowledge_base(ROOT, out).papers) == 35


def test_the_command_line(tmp_path, capsys):
    out = tmp_path / "cli-corpus"
    assert main(["--root", str(ROOT), "synth", "--n", "33", "--out", str(out), "--seed", "5"]) == 0
    assert "wrote 33 synthetic papers" in capsys.readouterr().out
    assert main(["--root", str(ROOT), "synth", "--n", "33", "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["--root", str(ROOT), "synth", "--n", "3", "--out", str(ROOT / "papers")]) == 1
    assert "refusing" in capsys.readouterr().err
    assert main(["--root", str(ROOT), "synth", "--n", "0", "--out", str(tmp_path / "none")]) == 1


def test_the_generator_reads_the_corpus_from_moekb_papers(corpus, monkeypatch):
    monkeypatch.setenv("MOEKB_PAPERS", str(corpus))
    kb, files = generate(ROOT)
    assert len(kb.papers) == N
    assert sum(1 for name in files if name.startswith("papers/") and name.endswith("/index.md") and name != "papers/index.md") == N


def build_site(corpus: Path, project: Path, **env: str) -> Path:
    """`MOEKB_PAPERS=<corpus> mkdocs build --strict` in a copy of the project."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns(*GENERATED_FOLDERS))
    for name in ("taxonomy", "moekb", "notebooks", "reference_impls", "papers"):
        if (ROOT / name).exists():
            (project / name).symlink_to(ROOT / name)
    site = project / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                            cwd=project, capture_output=True, text=True,
                            env={**os.environ, "MOEKB_PAPERS": str(corpus), "NO_MKDOCS_2_WARNING": "1", **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return site


@pytest.fixture(scope="module")
def built_site(corpus, tmp_path_factory) -> Path:
    return build_site(corpus, tmp_path_factory.mktemp("project"))


def test_mkdocs_builds_the_synthetic_corpus(built_site, kb):
    for paper in kb.papers:
        assert (built_site / "papers" / paper.id / "index.html").is_file()
    listing = (built_site / "papers" / "index.html").read_text(encoding="utf-8")
    assert f"{N} method papers" in listing
    assert not list(built_site.rglob("generated"))  # no /generated/ in any URL
    sizes = [page.stat().st_size for page in built_site.rglob("*.html")]
    assert max(sizes) < 2 * 1024 * 1024


def test_the_engines_own_search_indexes_every_paper_page(built_site, kb):
    """No entries are added after the build: the theme's search plugin reads the paper pages themselves,
    so a paper is found by its title, authors, method name and arXiv id."""
    index = json.loads((built_site / "search" / "search_index.json").read_text(encoding="utf-8"))
    pages = {d["location"] for d in index["docs"] if "#" not in d["location"]}
    assert {f"papers/{p.id}/" for p in kb.papers} <= pages
    text = {}
    for doc in index["docs"]:
        text.setdefault(doc["location"].split("#")[0], []).append(doc["title"] + " " + doc["text"])
    for paper in kb.papers[:20]:
        words = " ".join(text[f"papers/{paper.id}/"])
        assert html.escape(paper.authors[-1]) in words and str(paper.year) in words
        if paper.arxiv:
            assert paper.arxiv in words
        if paper.method:
            assert html.escape(paper.method.name) in words


def test_perspective_pages_stay_short_as_the_corpus_grows(tmp_path):
    from moekb.site import PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE, render_site

    kb = load_knowledge_base(ROOT, write_synthetic_corpus(tmp_path / "big", 300, seed=1, root=ROOT))
    files = render_site(kb)
    for perspective in kb.taxonomy.perspectives:
        page = files[f"taxonomy/{perspective.id}/index.md"]
        rows = page.count('><td><a href="../../papers/')
        assert rows == sum(min(len(kb.in_subcategory(s.id)), PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE)
                           for s in perspective.subcategories)
        for sub in perspective.subcategories:
            n = len(kb.in_subcategory(sub.id))
            if n > PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE:
                assert f"[all {n}]({sub.id}/index.md)" in page
            sub_page = files[f"taxonomy/{perspective.id}/{sub.id}/index.md"]
            assert sub_page.count('><td><a href="../../../papers/') == n


def test_every_link_on_a_generated_page_reaches_a_built_page(built_site, kb):
    """HTML blocks carry directory URLs the generator computed, Markdown links are resolved by the
    engine: every link on every built page reaches a built page or file."""
    pages = sorted(built_site.rglob("index.html"))
    assert len(pages) > N
    for page in pages:
        assert unresolved(page) == [], page
        html = page.read_text(encoding="utf-8")
        assert not re.search(r'href="[^":]*\.md[#"]', html), page  # no link left pointing at a source file
    for paper in kb.papers[:5]:
        html = (built_site / "papers" / paper.id / "index.html").read_text(encoding="utf-8")
        assert 'aria-label="Table of contents"' in html and 'href="#summary" class="md-nav__link"' in html
    listing = (built_site / "papers" / "index.html").read_text(encoding="utf-8")
    assert listing.count('" data-id="') == N  # one row per paper
    notebook = built_site / "notebooks" / "engine_moe_llava" / "index.html"
    assert [t for t in internal_targets(notebook) if t.endswith(".png")], "the notebook's figures are linked files"
