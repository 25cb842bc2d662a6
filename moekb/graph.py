"""The citation graph of the knowledge base: a networkx DiGraph, its headline figures and exports.

An edge ``a -> b`` means paper ``a`` cites paper ``b``; only citations between entries exist
(validation rejects a ``cites`` id that is not an entry). Node attributes carry what the
explorer filters on and what an export is useful with. A citation cycle is reported as a warning,
never an error: two preprints can cite each other's revised versions, so a cycle is suspicious
but can be true.

The explorer's layout is computed here too, in O(n): one row per perspective, one disc per
sub-category along it, with its papers on a sunflower spiral, the most cited in the middle. So position reads as taxonomy, colour as perspective, size as citations, and the picture
is the same on every build (a force layout costs seconds at thousands of papers and moves nodes
on every build).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import networkx as nx

from moekb.charts import perspective_colours
from moekb.errors import Problem
from moekb.model import KnowledgeBase

EDGES_KEY = "edges"  # node_link_data's key for edges, stated so readers need not guess the default
LIST_SEPARATOR = "; "  # GraphML has no list type, so list attributes are joined with this
PAGERANK_DIGITS = 6  # rounded so that exports do not change with floating-point noise
GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
NODE_SPACING = 30.0  # layout units: papers on a sunflower spiral sit about 1.8x this apart
CLUSTER_GAP = 50.0  # layout units between neighbouring discs and rows


def citation_graph(kb: KnowledgeBase, *, ranked: bool = True) -> nx.DiGraph:
    """Every paper a node (inserted in id order, so exports diff cleanly), every citation an edge;
    ``ranked=False`` leaves out the in-KB citation counts and PageRank (enough to find cycles)."""
    graph = nx.DiGraph()
    for paper in kb.papers:
        attrs = {
            "title": paper.title,
            "authors": list(paper.authors),
            "year": paper.year,
            "perspective": paper.perspective,
            "subcategory": paper.subcategory,
            "modalities": list(paper.modalities),
            "gaps": list(paper.gaps),
            "venue": paper.venue,
            "arxiv": paper.arxiv,
            "doi": paper.doi,
            "path": paper.path,
        }
        graph.add_node(paper.id, **{k: v for k, v in attrs.items() if v is not None})
    for paper in kb.papers:
        for target in paper.cites:
            if target in graph:
                graph.add_edge(paper.id, target)
    if not ranked:
        return graph
    ranks = pagerank(graph)
    for node in graph.nodes:
        graph.nodes[node]["in_kb_citations"] = graph.in_degree(node)
        graph.nodes[node]["pagerank"] = round(ranks[node], PAGERANK_DIGITS)
    return graph


def pagerank(graph: nx.DiGraph, *, alpha: float = 0.85, max_iter: int = 100, tol: float = 1e-6) -> dict[str, float]:
    """PageRank by power iteration, as ``nx.pagerank`` defines it (same defaults, uniform
    teleport, a dangling paper's rank spread over all papers, stop when the L1 change is below
    ``n * tol``). networkx computes it through scipy, whose import alone takes longer than this
    loop over a few thousand citations; a test checks both agree."""
    nodes = list(graph)
    n = len(nodes)
    if n == 0:
        return {}
    index = {node: i for i, node in enumerate(nodes)}
    out_degree = [graph.out_degree(node) for node in nodes]
    edges = [(index[s], index[t]) for s, t in graph.edges]
    dangling = [i for i, d in enumerate(out_degree) if d == 0]
    rank = [1.0 / n] * n
    for _ in range(max_iter):
        base = (alpha * sum(rank[i] for i in dangling) + 1.0 - alpha) / n  # dangling mass + teleport
        new = [base] * n
        for s, t in edges:
            new[t] += alpha * rank[s] / out_degree[s]
        change = sum(abs(a - b) for a, b in zip(new, rank))
        rank = new
        if change < n * tol:
            return dict(zip(nodes, rank))
    raise nx.PowerIterationFailedConvergence(max_iter)


def citation_cycles(graph: nx.DiGraph) -> list[list[str]]:
    """One cycle (as a closed path of ids) per group of papers that cite each other round in a loop.

    A strongly connected component with more than one paper holds at least one cycle; reporting one
    per component stays linear, where listing every simple cycle can grow exponentially.
    """
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            edges = nx.find_cycle(graph.subgraph(component), source=min(component))
            path = [source for source, _ in edges]
            cycles.append([*path, path[0]])
    return sorted(cycles)


def cycle_warnings(graph: nx.DiGraph) -> list[Problem]:
    """The cycles as file-located warnings, for the command line and the build log."""
    return [Problem(graph.nodes[cycle[0]].get("path", cycle[0]), 0,
                    "warning: citation cycle " + " -> ".join(cycle) +
                    " (papers citing each other in a loop; check that each 'cites' is right)")
            for cycle in citation_cycles(graph)]


@dataclass(frozen=True)
class GraphSummary:
    nodes: int
    edges: int
    components: int  # weakly connected: citations in either direction join papers
    largest_component: int
    isolated: int  # papers that neither cite nor are cited within the knowledge base
    cycles: list[list[str]]
    most_cited: list[tuple[str, int, float]]  # (id, in-KB citations, PageRank), most cited first


def summarise(graph: nx.DiGraph, top: int = 10) -> GraphSummary:
    components = list(nx.weakly_connected_components(graph))
    ranked = sorted(graph.nodes, key=lambda n: (-graph.in_degree(n), -graph.nodes[n]["pagerank"], n))
    return GraphSummary(
        nodes=graph.number_of_nodes(),
        edges=graph.number_of_edges(),
        components=len(components),
        largest_component=max((len(c) for c in components), default=0),
        isolated=sum(1 for n in graph.nodes if graph.degree(n) == 0),
        cycles=citation_cycles(graph),
        most_cited=[(n, graph.in_degree(n), graph.nodes[n]["pagerank"]) for n in ranked[:top]
                    if graph.in_degree(n) > 0],
    )


PRIVATE_ATTRIBUTES = {"path"}  # build details, not properties of the paper


def export_attributes(graph: nx.DiGraph) -> nx.DiGraph:
    """The graph as published: the source path is a build detail, not a property of the paper."""
    public = graph.copy()
    for _, attrs in public.nodes(data=True):
        for key in PRIVATE_ATTRIBUTES:
            attrs.pop(key, None)
    return public


def graph_json(graph: nx.DiGraph) -> str:
    """node-link JSON; read it back with ``nx.node_link_graph(data, edges="edges")``.

    The data ``nx.node_link_data(export_attributes(graph), edges="edges")`` gives (a test checks
    that), built without copying the graph first."""
    data = {"directed": True, "multigraph": False, "graph": dict(graph.graph),
            "nodes": [{**{k: v for k, v in attrs.items() if k not in PRIVATE_ATTRIBUTES}, "id": node}
                      for node, attrs in graph.nodes(data=True)],
            EDGES_KEY: [{**attrs, "source": s, "target": t} for s, t, attrs in graph.edges(data=True)]}
    return json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n"  # one line: it is megabytes at scale


GRAPHML_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}  # as networkx names them
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 cannot hold


def graph_graphml(graph: nx.DiGraph) -> str:
    """GraphML, with list attributes (authors, modalities, gaps) joined by ``LIST_SEPARATOR``.

    Written directly: ``nx.generate_graphml`` builds an ElementTree of the whole graph first,
    a third of a second at 2000 papers. The output is what networkx writes (key ids named after the
    attributes, networkx's type names), and a test reads both back and compares them."""
    nodes: list[tuple[str, dict]] = []  # the published attributes, lists joined, without copying the graph
    keys: dict[str, str] = {}
    for node, attrs in graph.nodes(data=True):
        flat = {k: LIST_SEPARATOR.join(v) if isinstance(v, list) else v
                for k, v in attrs.items() if k not in PRIVATE_ATTRIBUTES}
        for key, value in flat.items():
            keys.setdefault(key, GRAPHML_TYPES[type(value)])
        nodes.append((node, flat))

    def text(value) -> str:
        return escape(NOT_XML.sub("\ufffd", str(value)))

    out = ['<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
           'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
           'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">']
    out += [f'<key id={quoteattr(key)} for="node" attr.name={quoteattr(key)} attr.type="{kind}" />'
            for key, kind in keys.items()]
    out.append('<graph edgedefault="directed">')
    opening = {key: f"<data key={quoteattr(key)}>" for key in keys}
    for node, attrs in nodes:
        data = "".join(f"{opening[k]}{text(v)}</data>" for k, v in attrs.items())
        out.append(f"<node id={quoteattr(text(node))}>{data}</node>")
    out += [f"<edge source={quoteattr(text(s))} target={quoteattr(text(t))} />" for s, t in graph.edges]
    out.append("</graph></graphml>")
    return "\n".join(out) + "\n"


def explorer_layout(kb: KnowledgeBase, graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Positions for the explorer: one row per perspective, one disc per sub-category along it."""
    rows = []
    for perspective in kb.taxonomy.perspectives:
        discs = []
        for sub in perspective.subcategories:
            papers = sorted(kb.in_subcategory(sub.id), key=lambda p: (-graph.in_degree(p.id), p.id))
            if papers:
                discs.append((papers, NODE_SPACING * (math.sqrt(len(papers)) + 0.5)))
        if discs:
            rows.append(discs)
    positions: dict[str, tuple[float, float]] = {}
    top = 0.0
    for discs in rows:
        height = 2 * max(radius for _, radius in discs)
        left = -(sum(2 * radius for _, radius in discs) + CLUSTER_GAP * (len(discs) - 1)) / 2  # centred rows
        for papers, radius in discs:
            cx, cy = left + radius, top + height / 2
            left += 2 * radius + CLUSTER_GAP
            for k, paper in enumerate(papers):
                r, theta = NODE_SPACING * math.sqrt(k + 0.5), k * GOLDEN_ANGLE
                positions[paper.id] = (round(cx + r * math.cos(theta), 1), round(cy + r * math.sin(theta), 1))
        top += height + CLUSTER_GAP
    return positions


def explorer_data(kb: KnowledgeBase, graph: nx.DiGraph) -> dict:
    """What the explorer page inlines: nodes with position and size, edges, and the filter choices.

    Plain data only; the page writer serialises it with ``markup.json_for_script`` and the script
    writes every label with ``textContent``, so no contributor text is ever parsed as HTML.
    """
    positions = explorer_layout(kb, graph)
    tax = kb.taxonomy
    nodes = [{"id": n, "title": a["title"], "year": a["year"], "perspective": a["perspective"],
              "subcategory": a["subcategory"], "modalities": a["modalities"], "gaps": a["gaps"],
              "authors": a["authors"], "cited_by": a["in_kb_citations"],
              "x": positions[n][0], "y": positions[n][1]}
             for n, a in graph.nodes(data=True)]
    colours = perspective_colours(tax)
    used_modalities = {m for p in kb.papers for m in p.modalities}
    index = {n: i for i, n in enumerate(graph.nodes)}
    return {
        "nodes": nodes,
        # [citing, cited] as positions in "nodes": ids spelled out would be most of a large page
        "edges": sorted([index[s], index[t]] for s, t in graph.edges),
        "perspectives": [{"id": p.id, "name": p.name, "colour": colours[p.id]} for p in tax.perspectives],
        "subcategories": [{"id": s.id, "name": s.name, "perspective": p.id}
                          for p in tax.perspectives for s in p.subcategories],
        "modalities": [{"id": m.id, "name": m.name} for m in tax.vocabularies.modalities if m.id in used_modalities],
        "gaps": [{"id": g.id, "name": g.name} for g in tax.gaps],
    }
