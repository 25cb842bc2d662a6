"""The citation graph: its numbers on a small hand-checked corpus, the exports read back, the
explorer's data and layout, the charts, and the `moekb graph` command."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest

from moekb import charts
from moekb.cli import main
from moekb.graph import (EDGES_KEY, LIST_SEPARATOR, CitationGraph, citation_cycles, citation_graph, cycle_warnings,
                         explorer_data, explorer_layout, export_attributes, graph_graphml, graph_json, pagerank,
                         strongly_connected_components, summarise, to_networkx, weakly_connected_components)
from moekb.load import load_knowledge_base, load_taxonomy
from moekb.markup import json_for_script
from moekb.model import KnowledgeBase, Paper
from moekb.site import render_site
from moekb.synth import write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy(ROOT)


def paper(paper_id: str, year: int, cites: list[str], *, perspective="engine", sub="sparse-mllm",
          modalities=("image", "text"), gaps=(), title=None) -> Paper:
    return Paper(id=paper_id, title=title or f"Title of {paper_id}", authors=["Ada Lovelace", "Alan Turing"],
                 year=year, perspective=perspective, subcategory=sub, domain="general", modalities=list(modalities),
                 summary="A summary.", verified_from=["https://example.org/"], gaps=list(gaps), cites=cites)


@pytest.fixture
def small_kb(taxonomy) -> KnowledgeBase:
    """a -> b -> c -> a is a cycle; e -> b; d stands alone. b is cited twice, a and c once, d and e never."""
    papers = [
        paper("a2024x", 2024, ["b2023x"], gaps=["sustainability"]),
        paper("b2023x", 2023, ["c2022x"], perspective="adapter", sub="missing-modality", gaps=["sustainability", "lifelong-learning"]),
        paper("c2022x", 2022, ["a2024x"], perspective="foundations", sub="sparse-layers", modalities=["text"]),
        paper("d2021x", 2021, [], perspective="learner", sub="domain-experts", title="Experts <b>& a </script> [x](javascript:alert(1)) tag"),
        paper("e2025x", 2025, ["b2023x"], perspective="adapter", sub="missing-modality"),
    ]
    return KnowledgeBase(taxonomy=taxonomy, papers=papers)


def test_graph_numbers_on_a_small_corpus(small_kb):
    graph = to_networkx(citation_graph(small_kb))
    assert graph.number_of_nodes() == 5 and graph.number_of_edges() == 4
    assert set(graph.edges) == {("a2024x", "b2023x"), ("b2023x", "c2022x"), ("c2022x", "a2024x"), ("e2025x", "b2023x")}
    assert {n: graph.nodes[n]["in_kb_citations"] for n in graph} == {"a2024x": 1, "b2023x": 2, "c2022x": 1, "d2021x": 0, "e2025x": 0}
    ranks = {n: graph.nodes[n]["pagerank"] for n in graph}
    assert sum(ranks.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(ranks, key=ranks.get) == "b2023x"  # cited twice
    assert ranks["d2021x"] == ranks["e2025x"]  # neither is cited: both get only the teleport share
    summary = summarise(citation_graph(small_kb))
    assert (summary.nodes, summary.edges, summary.components, summary.largest_component, summary.isolated) == (5, 4, 2, 4, 1)
    assert summary.most_cited[0][:2] == ("b2023x", 2)
    # a and c are cited once each; c is cited by b, which ranks higher, so c comes first. Uncited papers are not listed.
    assert ranks["c2022x"] > ranks["a2024x"]
    assert [m[0] for m in summary.most_cited] == ["b2023x", "c2022x", "a2024x"]


def test_edges_are_exactly_the_citations(small_kb):
    graph = citation_graph(small_kb)
    assert sorted(graph.edges) == sorted((p.id, t) for p in small_kb.papers for t in p.cites)


def test_a_citation_cycle_is_a_warning_naming_the_file(small_kb):
    graph = citation_graph(small_kb)
    assert citation_cycles(graph) == [["a2024x", "b2023x", "c2022x", "a2024x"]]
    [warning] = cycle_warnings(graph)
    assert "citation cycle a2024x -> b2023x -> c2022x -> a2024x" in str(warning) and "warning" in str(warning)
    assert cycle_warnings(citation_graph(small_kb, bare=True)) == [warning]  # what the mkdocs hook reports
    acyclic = KnowledgeBase(taxonomy=small_kb.taxonomy, papers=[p for p in small_kb.papers if p.id != "c2022x"])
    assert citation_cycles(citation_graph(acyclic)) == []


def test_json_export_reads_back_with_every_attribute(small_kb):
    graph = citation_graph(small_kb)
    data = json.loads(graph_json(graph))
    assert EDGES_KEY in data and "links" not in data
    back = nx.node_link_graph(data, edges=EDGES_KEY)
    assert back.is_directed()
    assert sorted(back.edges) == sorted(graph.edges)
    assert back.nodes["b2023x"]["gaps"] == ["sustainability", "lifelong-learning"]
    assert back.nodes["d2021x"]["title"] == "Experts <b>& a </script> [x](javascript:alert(1)) tag"
    assert back.nodes["b2023x"]["in_kb_citations"] == 2
    assert "path" not in back.nodes["a2024x"]  # build detail, not published


def test_graphml_export_reads_back_with_lists_joined(small_kb):
    graph = citation_graph(small_kb)
    text = graph_graphml(graph)
    ET.fromstring(text.encode("utf-8"))  # well-formed XML despite the '<', '&' in a title
    back = nx.parse_graphml(text)
    assert back.is_directed() and sorted(back.edges) == sorted(graph.edges)
    node = back.nodes["b2023x"]
    assert node["gaps"].split(LIST_SEPARATOR) == ["sustainability", "lifelong-learning"]
    assert node["authors"].split(LIST_SEPARATOR) == ["Ada Lovelace", "Alan Turing"]
    assert int(node["year"]) == 2023 and int(node["in_kb_citations"]) == 2
    assert back.nodes["d2021x"]["title"] == "Experts <b>& a </script> [x](javascript:alert(1)) tag"


def test_our_pagerank_equals_networkx(tmp_path):
    synthetic = write_synthetic_corpus(tmp_path / "papers", 400, seed=3, root=ROOT)
    for kb in (load_knowledge_base(ROOT), load_knowledge_base(ROOT, synthetic)):
        graph = citation_graph(kb)
        theirs = nx.pagerank(to_networkx(graph))
        ours = pagerank(graph)
        assert ours.keys() == theirs.keys()
        assert max(abs(ours[n] - theirs[n]) for n in ours) < 1e-9
    assert pagerank(CitationGraph()) == {}


def test_our_json_is_networkx_node_link_data(small_kb):
    for kb in (small_kb, load_knowledge_base(ROOT)):
        graph = citation_graph(kb)
        assert json.loads(graph_json(graph)) == json.loads(json.dumps(
            nx.node_link_data(to_networkx(export_attributes(graph)), edges=EDGES_KEY), ensure_ascii=False))


def test_our_graphml_reads_back_as_networkx_own_does(small_kb):
    for kb in (small_kb, load_knowledge_base(ROOT)):
        graph = citation_graph(kb)
        flat = to_networkx(export_attributes(graph))
        for _, attrs in flat.nodes(data=True):
            attrs.update({k: LIST_SEPARATOR.join(v) for k, v in attrs.items() if isinstance(v, list)})
        theirs = nx.parse_graphml("\n".join(nx.generate_graphml(flat, named_key_ids=True)))
        ours = nx.parse_graphml(graph_graphml(graph))
        assert list(ours.nodes(data=True)) == list(theirs.nodes(data=True))
        assert list(ours.edges) == list(theirs.edges)
        assert all(type(v) is type(theirs.nodes[n][k]) for n, a in ours.nodes(data=True) for k, v in a.items())


def test_exports_do_not_change_between_builds(small_kb):
    first = citation_graph(small_kb)
    again = citation_graph(KnowledgeBase(taxonomy=small_kb.taxonomy, papers=list(small_kb.papers)))
    assert graph_json(first) == graph_json(again) and graph_graphml(first) == graph_graphml(again)


def test_layout_places_every_paper_once_and_groups_sub_categories(small_kb):
    graph = citation_graph(small_kb)
    positions = explorer_layout(small_kb, graph)
    assert set(positions) == set(graph.nodes)
    assert len(set(positions.values())) == len(positions)  # no two papers on the same spot
    rows = {p.perspective: positions[p.id][1] for p in small_kb.papers}
    assert rows["engine"] < rows["learner"] < rows["adapter"] < rows["foundations"]  # one row per perspective, in taxonomy order


def test_explorer_data_is_inert_inside_a_script_element(small_kb):
    graph = citation_graph(small_kb)
    data = explorer_data(small_kb, graph)
    assert len(data["nodes"]) == 5 and len(data["edges"]) == 4
    assert {p["id"] for p in data["perspectives"]} == {"engine", "learner", "adapter", "foundations"}
    assert len({p["colour"] for p in data["perspectives"]}) == 4
    script = json_for_script(data)
    assert "<" not in script and "](" not in script  # cannot close the element nor become a Markdown link
    assert json.loads(script) == json.loads(json.dumps(data))


def test_site_has_explorer_charts_and_graph_downloads(small_kb):
    files = render_site(small_kb)
    page = files["graph/index.md"]
    payload = re.search(r'<script id="moekb-graph-data">window.moekbGraphData = (.*?);</script>', page, re.S)
    assert payload and len(json.loads(payload.group(1))["nodes"]) == 5
    assert page.count("data-moekb-paper=") == 5  # the explorer opens papers through these links
    assert "Citation cycles" in page and "a2024x → b2023x → c2022x → a2024x" in page
    assert nx.node_link_graph(json.loads(files["downloads/graph.json"]), edges=EDGES_KEY).number_of_edges() == 4
    assert nx.parse_graphml(files["downloads/graph.graphml"]).number_of_nodes() == 5
    assert "[graph.json](graph.json)" in files["downloads/index.md"]
    for name in (charts.PAPERS_PER_YEAR, charts.GAP_HEATMAP):
        svg = files[f"charts/{name}"]
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert f"]({name})" in files["charts/index.md"]
    assert "### Neighbourhood" in files["papers/b2023x/index.md"] and "### Neighbourhood" not in files["papers/d2021x/index.md"]
    assert '<object data="neighbourhood.svg"' in files["papers/b2023x/index.md"]
    svg = files["papers/b2023x/neighbourhood.svg"]  # beside the page, so its links are relative to papers/b2023x/
    # b is cited by a and e and cites c: each neighbour is a link to its page, b itself too
    assert sorted(re.findall(r'<a href="\.\./([a-z0-9]+)/" target="_top">', svg)) == ["a2024x", "b2023x", "c2022x", "e2025x"]
    assert "papers/d2021x/neighbourhood.svg" not in files
    # the explorer's library is loaded by the graph page alone
    assert "cytoscape.min.js" in page
    assert not any("cytoscape" in text for name, text in files.items() if name.endswith(".md") and name != "graph/index.md")


def test_charts_count_what_the_corpus_holds(small_kb):
    years, series = charts.year_series(small_kb)
    assert years == (2021, 2022, 2023, 2024, 2025)
    by_label = {label: counts for label, _, counts in series}
    assert by_label["adapter"] == (0, 0, 1, 0, 1) and by_label["engine"] == (0, 0, 0, 1, 0)
    rows, columns, counts = charts.gap_counts(small_kb)
    sustainability = rows.index(small_kb.taxonomy.gap["sustainability"].name)
    assert dict(zip(columns, counts[sustainability])) == {"engine": 1, "learner": 0, "adapter": 1, "foundations": 0}


def test_charts_are_reproducible_svg_that_needs_no_network(small_kb):
    first = charts.render_charts(small_kb)
    assert first == charts.render_charts(small_kb)  # same bytes, so a rebuild rewrites nothing
    for svg in first.values():
        root = ET.fromstring(svg.encode("utf-8"))  # well-formed
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.find("{http://www.w3.org/2000/svg}title") is not None
        assert "http" not in svg.replace("http://www.w3.org/2000/svg", "") and "@font-face" not in svg


def test_chart_shapes_are_the_counts():
    svg = charts.papers_per_year_svg((2020, 2021), (("engine", "#111111", (2, 0)), ("<learner>", "#222222", (1, 3))))
    root = ET.fromstring(svg.encode("utf-8"))
    ns = "{http://www.w3.org/2000/svg}"
    segments = [r.find(f"{ns}title").text for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert segments == ["2020, engine: 2", "2020, <learner>: 1", "2021, <learner>: 3"]  # no empty segment
    heights = {r.find(f"{ns}title").text: float(r.get("height")) for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None}
    assert heights["2021, <learner>: 3"] == pytest.approx(3 * heights["2020, <learner>: 1"], rel=1e-2)
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert {"3", "2020", "2021", "engine", "<learner>"} <= set(labels)  # totals, years, legend (escaped in the file)
    heat = ET.fromstring(charts.heatmap_svg(("a gap", "b & c"), ("engine", "learner"), ((0, 4), (1, 2))).encode("utf-8"))
    cells = {r.find(f"{ns}title").text: r.get("fill") for r in heat.iter(f"{ns}rect")}
    assert cells["a gap, engine: 0"] == "none"  # thin research stays unfilled
    assert cells["a gap, learner: 4"] == charts.HEAT_HIGH and cells["b & c, engine: 1"] == charts.HEAT_LOW
    assert cells["b & c, learner: 2"] not in (charts.HEAT_LOW, charts.HEAT_HIGH, "none")


def test_real_corpus_graph_has_one_node_per_paper_and_one_edge_per_citation():
    kb = load_knowledge_base(ROOT)
    graph = citation_graph(kb)
    assert list(graph.nodes) == [p.id for p in kb.papers]
    assert len(graph.edges) == sum(1 for p in kb.papers for c in p.cites if c in kb.paper)  # surveys stay out
    assert list(to_networkx(graph).edges) == graph.edges  # the same order: exports diff cleanly


def test_graph_command_prints_headline_figures(make_project, capsys):
    template = (Path(__file__).parent / "bad_entries" / "cites-self" / "lovelace2024test.yaml").read_text()
    citing = template.replace("cites: [lovelace2024test]", "cites: [turing2024other]")
    cited = (template.replace("lovelace2024test", "turing2024other").replace("2401.12345", "2402.12345")
             .replace("cites: [turing2024other]", "cites: []").replace("A Test Entry", "Another Entry"))
    project = make_project({"lovelace2024test.yaml": citing, "turing2024other.yaml": cited})
    assert main(["--root", str(project), "graph"]) == 0
    out = capsys.readouterr().out
    assert "2 nodes (papers), 1 edges" in out
    assert "1 connected components" in out and "0 papers neither cite nor are cited" in out
    assert re.search(r"^\s+1\s+pagerank 0\.\d+\s+turing2024other\s", out, re.M)


def random_graph(seed: int, n: int, edges: int) -> CitationGraph:
    import random

    rng = random.Random(seed)
    nodes = [f"p{i:03d}" for i in range(n)]
    pairs = {(rng.choice(nodes), rng.choice(nodes)) for _ in range(edges)}
    return CitationGraph({node: {} for node in nodes}, sorted(pairs))


@pytest.mark.parametrize("seed", range(12))
def test_components_and_cycles_agree_with_networkx(seed):
    """Random graphs from sparse to dense, self-citations included: the same strongly and weakly
    connected components as networkx, and one real cycle per group of papers citing round in a loop."""
    graph = random_graph(seed, n=60, edges=[20, 60, 120, 400][seed % 4])
    theirs = to_networkx(graph)
    assert sorted(map(sorted, strongly_connected_components(graph))) == sorted(map(sorted, nx.strongly_connected_components(theirs)))
    assert sorted(map(sorted, weakly_connected_components(graph))) == sorted(map(sorted, nx.weakly_connected_components(theirs)))
    cycles = citation_cycles(graph)
    loops = [c for c in nx.strongly_connected_components(theirs) if len(c) > 1]
    assert len(cycles) == len(loops)
    for cycle in cycles:
        assert cycle[0] == cycle[-1] and len(set(cycle[:-1])) == len(cycle) - 1  # closed, no paper twice
        assert all(theirs.has_edge(a, b) for a, b in zip(cycle, cycle[1:]))
        # the shortest through its first paper, which is the group's smallest id
        component = next(c for c in loops if cycle[0] in c)
        assert cycle[0] == min(component)
        assert len(cycle) - 1 == min(len(nx.shortest_path(theirs.subgraph(component), cycle[0], p)) for p in theirs.predecessors(cycle[0]) if p in component)
    summary = summarise(citation_graph_like(graph))
    assert summary.components == nx.number_weakly_connected_components(theirs)
    assert summary.isolated == sum(1 for n in theirs if theirs.degree(n) == 0)


def citation_graph_like(graph: CitationGraph) -> CitationGraph:
    """The graph with the attributes summarise reads (PageRank), as citation_graph gives them."""
    ranks = pagerank(graph)
    return CitationGraph({n: {"pagerank": ranks[n]} for n in graph.nodes}, graph.edges)


def test_a_long_citation_chain_needs_no_recursion():
    nodes = [f"p{i:05d}" for i in range(20000)]
    graph = CitationGraph({n: {} for n in nodes}, [(a, b) for a, b in zip(nodes, nodes[1:])] + [(nodes[-1], nodes[0])])
    [cycle] = citation_cycles(graph)
    assert len(cycle) == 20001 and cycle[0] == cycle[-1] == "p00000"


def test_building_the_site_does_not_import_scipy_or_matplotlib():
    """scipy and matplotlib take longer to import than the whole build; networkx (related work) is
    used, through its own pure-Python algorithms."""
    import subprocess
    import sys

    code = ("import sys; from moekb.build import generate; import moekb.mkdocs_hook; generate(); "
            "imported = [m for m in ('scipy', 'matplotlib', 'torch') if m in sys.modules]; "
            "assert not imported, imported")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
