"""The built site in a real browser: the citation-graph explorer, search, the sortable table, and
that every kind of page works offline (no request leaves 127.0.0.1, no console error).

Expected numbers come from the same build's downloads/papers.json, so they do not depend on the
code under test.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

GRAPH = "graph/"
VISIBLE_NODES = "moekbExplorer.nodes(':visible').map(n => n.id())"
HIDE_HEADER = ".md-header, .md-tabs { visibility: hidden !important; }"


@pytest.fixture(scope="module")
def papers(site) -> list[dict]:
    return site.json("downloads/papers.json")["papers"]


def open_explorer(tab, site):
    tab.page.goto(site.url(GRAPH), wait_until="networkidle")
    tab.page.wait_for_selector("#moekb-explorer[data-ready=true]")


def visible_nodes_once_settled(page, expected: set[str], timeout_ms: int = 5000) -> set[str]:
    """The ids Cytoscape draws, read once they equal ``expected`` or the time is up (Cytoscape
    applies style changes on its next frame, so an immediate read can see the previous state)."""
    try:
        page.wait_for_function(f"(want) => {{ const got = {VISIBLE_NODES}; return got.length === want.length && "
                               "want.every(id => got.includes(id)); }", arg=sorted(expected), timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - the assertion below reports the difference
        pass
    return set(page.evaluate(VISIBLE_NODES))


def node_on_screen(tab, paper_id: str) -> tuple[float, float]:
    """Where a node is drawn, in page coordinates (Cytoscape draws on a canvas, not in the DOM)."""
    page = tab.page
    canvas = page.locator(".moekb-explorer__canvas")
    x, y = page.evaluate(f"(() => {{ const p = moekbExplorer.getElementById({paper_id!r}).renderedPosition(); "
                         "return [p.x, p.y]; })()")
    # The mouse only reaches what is in the viewport: scroll the node itself (not just some part of
    # the canvas) to the middle of the window; Cytoscape notices the scroll.
    top = page.evaluate("document.querySelector('.moekb-explorer__canvas').getBoundingClientRect().top + window.scrollY")
    page.evaluate(f"window.scrollTo(0, {top + y} - window.innerHeight / 2)")
    page.wait_for_timeout(200)
    box = canvas.bounding_box()
    return box["x"] + x, box["y"] + y


def test_explorer_draws_one_node_per_paper_and_one_edge_per_citation(site, tab, papers, artifacts):
    ids = {p["id"] for p in papers}
    citations = sum(1 for p in papers for c in p.get("cites", []) if c in ids)  # surveys are not in the graph
    open_explorer(tab, site)
    page = tab.page
    counts = page.evaluate("[moekbExplorer.nodes().length, moekbExplorer.edges().length, "
                           "moekbExplorer.nodes(':visible').length, moekbExplorer.edges(':visible').length]")
    assert counts == [len(papers), citations, len(papers), citations]
    assert set(page.evaluate(VISIBLE_NODES)) == {p["id"] for p in papers}
    # Every node is drawn inside the canvas, not off-screen.
    width, height = page.evaluate("[moekbExplorer.width(), moekbExplorer.height()]")
    box = page.evaluate("moekbExplorer.nodes().renderedBoundingBox()")
    assert 0 <= box["x1"] and box["x2"] <= width and 0 <= box["y1"] and box["y2"] <= height
    status = page.locator(".moekb-explorer__status").inner_text()
    assert f"Showing {len(papers)} of {len(papers)} papers and {citations} of {citations} citations" in status
    # The sticky header would cover the top of the element once it is scrolled into view.
    page.locator("#moekb-explorer").screenshot(path=str(artifacts / "explorer.png"), style=HIDE_HEADER)
    tab.assert_clean()


def test_perspective_filter_hides_the_other_perspectives(site, tab, papers):
    by_perspective = Counter(p["perspective"] for p in papers)
    keep = by_perspective.most_common(1)[0][0]
    open_explorer(tab, site)
    page = tab.page
    for perspective in by_perspective:
        if perspective != keep:
            page.locator(f"input[name=perspective][value={perspective}]").uncheck()
    expected = {p["id"] for p in papers if p["perspective"] == keep}
    visible = visible_nodes_once_settled(page, expected)
    assert visible == expected
    visible_edges = page.evaluate("moekbExplorer.edges(':visible').map(e => [e.source().id(), e.target().id()])")
    assert visible_edges == [] or all(s in visible and t in visible for s, t in visible_edges)
    assert len(visible_edges) == sum(1 for p in papers if p["id"] in visible for t in p.get("cites", []) if t in visible)
    page.get_by_role("button", name="Reset").click()
    page.wait_for_function(f"moekbExplorer.nodes(':visible').length === {len(papers)}")
    tab.assert_clean()


def test_sub_category_modality_gap_and_year_filters_combine(site, tab, papers):
    gap = Counter(g for p in papers for g in p.get("gaps", [])).most_common(1)[0][0]
    years = sorted({p["year"] for p in papers})
    start = years[len(years) // 2]
    open_explorer(tab, site)
    page = tab.page
    page.locator("select[name=gap]").select_option(gap)
    page.locator("input[name=from]").fill(str(start))
    expected = {p["id"] for p in papers if gap in p.get("gaps", []) and p["year"] >= start}
    assert expected and visible_nodes_once_settled(page, expected) == expected
    shown = [p for p in papers if p["id"] in expected]
    sub = Counter(p["subcategory"] for p in shown).most_common(1)[0][0]
    modality = next(m for p in shown if p["subcategory"] == sub for m in p["modalities"])
    page.locator("select[name=subcategory]").select_option(sub)
    page.locator("select[name=modality]").select_option(modality)
    expected = {p["id"] for p in shown if p["subcategory"] == sub and modality in p["modalities"]}
    assert expected and visible_nodes_once_settled(page, expected) == expected
    tab.assert_clean()


def test_search_box_highlights_matching_papers(site, tab, papers):
    target = papers[0]
    open_explorer(tab, site)
    tab.page.get_by_label("Search the graph").fill(target["id"])
    matches = tab.page.evaluate("moekbExplorer.nodes('.match').map(n => n.id())")
    assert target["id"] in matches and len(matches) < len(papers)
    tab.assert_clean()


def test_hover_shows_title_and_year_and_click_opens_the_paper(site, tab, artifacts):
    graph = site.json("downloads/graph.json")
    node = max(graph["nodes"], key=lambda n: (n["in_kb_citations"], n["id"]))
    open_explorer(tab, site)
    page = tab.page
    x, y = node_on_screen(tab, node["id"])
    page.mouse.move(x, y)
    tip = page.locator(".moekb-explorer__tip")
    tip.wait_for(state="visible")
    assert tip.inner_text() == f"{node['title']} ({node['year']})"
    page.mouse.click(x, y)
    page.wait_for_url(re.compile(rf"/papers/{node['id']}/$"))
    assert page.locator("article h1").inner_text().removesuffix("¶").strip() == node["title"]  # ¶: the permalink
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts / "paper.png"), full_page=True)
    tab.assert_clean()


def test_the_explorer_script_loads_on_the_graph_page_alone(site, tab):
    page = tab.page
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(site.url("papers/"), wait_until="networkidle")
    assert not any("cytoscape" in url or "explorer.js" in url for url in requested)
    page.goto(site.url(GRAPH), wait_until="networkidle")
    page.wait_for_selector("#moekb-explorer[data-ready=true]")
    assert any("cytoscape" in url for url in requested)
    tab.assert_clean()


def distinctive_title_word(papers: list[dict]) -> tuple[str, dict]:
    """A long word that appears in exactly one paper's title, and the paper."""
    words = Counter(w for p in papers for w in set(re.findall(r"[A-Za-z]{7,}", p["title"].lower())))
    for paper in papers:
        for word in sorted(set(re.findall(r"[A-Za-z]{7,}", paper["title"].lower()))):
            if words[word] == 1:
                return word, paper
    raise AssertionError("no title has a word of its own")


def test_site_search_finds_a_paper_by_a_word_of_its_title(site, tab, papers):
    word, paper = distinctive_title_word(papers)
    page = tab.page
    page.goto(site.url(""), wait_until="networkidle")
    page.locator("input.md-search__input").click()
    page.keyboard.type(word)  # Material searches on key events, which fill() does not send
    hit = page.locator(f".md-search-result__item a[href*='papers/{paper['id']}/']").first
    hit.wait_for(state="visible")
    assert any(url.endswith("search/search_index.json") for url in tab.requests), "the search worker's fetch was not seen"
    tab.assert_clean()


def test_all_papers_table_sorts_by_year_when_its_header_is_clicked(site, tab, papers):
    page = tab.page
    page.goto(site.url("papers/"), wait_until="networkidle")
    table = page.locator(".moekb-table table").first
    header = table.locator("th", has_text="Year")
    column = [h.strip() for h in table.locator("th").all_inner_texts()].index("Year") + 1
    before = table.locator(f"tbody tr td:nth-child({column})").all_inner_texts()
    assert sorted(int(y) for y in before) == sorted(p["year"] for p in papers)
    orders = []
    for _ in range(2):
        header.click()
        years = [int(y) for y in table.locator(f"tbody tr td:nth-child({column})").all_inner_texts()]
        order = header.get_attribute("aria-sort")
        assert years == sorted(years, reverse=order == "descending"), order
        orders.append(order)
    assert sorted(orders) == ["ascending", "descending"]
    tab.assert_clean()


def every_kind_of_page(site) -> list[str]:
    pages = ["", "taxonomy/", "papers/", "gaps/", GRAPH, "charts/",
             "downloads/"]
    for folder in ("taxonomy/*", "taxonomy/*/*", "gaps/*", "papers/*", "code/*", "notebooks/*"):
        found = sorted(p.parent for p in site.folder.glob(f"{folder}/index.html"))
        # Every notebook and code page (the notebook renderer is the likeliest to reach for a CDN); one of the rest.
        for page in found if folder.startswith(("code", "notebooks")) else found[:1]:
            pages.append(page.relative_to(site.folder).as_posix() + "/")
    return list(dict.fromkeys(pages))


def test_every_kind_of_page_loads_offline_without_errors(site, tab):
    pages = every_kind_of_page(site)
    visited = []
    for page in pages:
        response = tab.page.goto(site.url(page), wait_until="networkidle")
        assert response.ok, page
        visited.append(page)
        if page == "charts/":
            widths = tab.page.eval_on_selector_all("article img", "imgs => imgs.map(i => i.naturalWidth)")
            assert len(widths) == 2 and all(w > 0 for w in widths), "a chart did not load"
        foreign, errors = tab.foreign_requests(), list(tab.errors)
        assert foreign == [] and errors == [], f"on {page}: requests {foreign}, errors {errors}"
    assert any(p.startswith("papers/") and p != "papers/" for p in visited)
    tab.assert_clean()
