"""The citation graph of the knowledge base: its headline figures, its exports, the explorer's data.

The graph is plain data (:class:`CitationGraph`: ids, attributes, edges in the entries' order);
components, cycles' groups and GraphML go through networkx (:func:`to_networkx`, also for analysis
with every attribute). PageRank is a short power iteration of our own: networkx's needs
scipy, whose import alone takes longer than the build; a test compares the two.

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

import functools
import json
import math
import re
from collections import deque
from dataclasses import dataclass, field

import networkx as nx

from moekb.charts import perspective_colours
from moekb.errors import Problem
from moekb.fields import graph_attributes
from moekb.model import KnowledgeBase

EDGES_KEY = "edges"  # node_link_data's key for edges, stated so readers need not guess the default
LIST_SEPARATOR = "; "  # GraphML has no list type, so list attributes are joined with this
PAGERANK_DIGITS = 6  # rounded so that exports do not change with floating-point noise
GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
NODE_SPACING = 30.0  # layout units: papers on a sunflower spiral sit about 1.8x this apart
CLUSTER_GAP = 50.0  # layout units between neighbouring discs and rows


@dataclass
class CitationGraph:
    """Papers (in id order, with their attributes) and the citations between them."""

    nodes: dict[str, dict] = field(default_factory=dict)  # paper id -> attributes
    edges: list[tuple[str, str]] = field(default_factory=list)  # (citing, cited), in the order entries list them

    def neighbours(self, *, cited: bool) -> dict[str, list[str]]:
        """``{paper: the papers it cites}``, or with ``cited=True`` the papers citing it."""
        out: dict[str, list[str]] = {node: [] for node in self.nodes}
        for source, target in self.edges:
            out[target if cited else source].append(source if cited else target)
        return out

    @functools.cached_property
    def cites(self) -> dict[str, list[str]]:
        return self.neighbours(cited=False)

    @functools.cached_property
    def cited_by(self) -> dict[str, list[str]]:
        return self.neighbours(cited=True)

    def in_degree(self, node: str) -> int:
        return len(self.cited_by[node])


def citation_graph(kb: KnowledgeBase, *, bare: bool = False) -> CitationGraph:
    """Every paper a node (inserted in id order, so exports diff cleanly), every citation an edge;
    with ``bare=True`` a node holds only its file's path, without the paper's attributes, in-KB
    citation counts and PageRank (enough to find and report cycles)."""
    graph = CitationGraph()
    for paper in kb.papers:
        if bare:
            graph.nodes[paper.id] = {} if paper.path is None else {"path": paper.path}
            continue
        attrs = graph_attributes(paper)
        graph.nodes[paper.id] = {k: v for k, v in attrs.items() if v is not None}
    seen: set[tuple[str, str]] = set()
    for paper in kb.papers:
        for target in paper.cites:
            if target in graph.nodes and (paper.id, target) not in seen:  # a DiGraph holds an edge once
                seen.add((paper.id, target))
                graph.edges.append((paper.id, target))
    if bare:
        return graph
    ranks = pagerank(graph)
    for node, attrs in graph.nodes.items():
        attrs["in_kb_citations"] = graph.in_degree(node)
        attrs["pagerank"] = round(ranks[node], PAGERANK_DIGITS)
    return graph


def to_networkx(graph: CitationGraph, *, attributes: bool = True):
    """The graph as a ``networkx.DiGraph``, nodes and edges in the same order, with the same attributes
    (or, with ``attributes=False``, the ids alone: what the graph algorithms need)."""
    out = nx.DiGraph()
    out.add_nodes_from((node, dict(attrs) if attributes else {}) for node, attrs in graph.nodes.items())
    out.add_edges_from(graph.edges)
    return out


class PageRankDidNotConverge(RuntimeError):
    pass


def pagerank(graph: CitationGraph, *, alpha: float = 0.85, max_iter: int = 100, tol: float = 1e-6) -> dict[str, float]:
    """PageRank by power iteration, as ``nx.pagerank`` defines it (same defaults, uniform
    teleport, a dangling paper's rank spread over all papers, stop when the L1 change is below
    ``n * tol``). networkx computes it through scipy, whose import alone takes longer than this
    loop over a few thousand citations; a test checks both agree."""
    nodes = list(graph.nodes)
    n = len(nodes)
    if n == 0:
        return {}
    index = {node: i for i, node in enumerate(nodes)}
    out_degree = [len(graph.cites[node]) for node in nodes]
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
    raise PageRankDidNotConverge(f"PageRank did not converge in {max_iter} iterations")


def strongly_connected_components(graph: CitationGraph) -> list[set[str]]:
    """Groups of papers that cite each other round in a loop (networkx's iterative Tarjan)."""
    return [set(component) for component in nx.strongly_connected_components(to_networkx(graph, attributes=False))]


def shortest_cycle_through(graph: CitationGraph, start: str, within: set[str]) -> list[str]:
    """The shortest closed path ``start -> ... -> start`` inside ``within`` (breadth first,
    successors in citation order, so the same cycle on every build)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in graph.cites[node]:
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if successor in within and successor not in parent:
                parent[successor] = node
                queue.append(successor)
    raise ValueError(f"no cycle through {start}")


def citation_cycles(graph: CitationGraph) -> list[list[str]]:
    """One cycle (as a closed path of ids) per group of papers that cite each other round in a loop:
    the shortest through the group's first id.

    A strongly connected component with more than one paper holds at least one cycle; reporting one
    per component stays linear, where listing every simple cycle can grow exponentially.
    """
    return sorted(shortest_cycle_through(graph, min(component), component)
                  for component in strongly_connected_components(graph) if len(component) > 1)


def cycle_warnings(graph: CitationGraph) -> list[Problem]:
    """The cycles as file-located warnings, for the command line and the build log."""
    return [Problem(graph.nodes[cycle[0]].get("path", cycle[0]), 0,
                    "warning: citation cycle " + " -> ".join(cycle) +
                    " (papers citing each other in a loop; check that each 'cites' is right)")
            for cycle in citation_cycles(graph)]


def weakly_connected_components(graph: CitationGraph) -> list[set[str]]:
    """Papers joined by citations in either direction."""
    return [set(component) for component in nx.weakly_connected_components(to_networkx(graph, attributes=False))]


@dataclass(frozen=True)
class GraphSummary:
    nodes: int
    edges: int
    components: int  # weakly connected: citations in either direction join papers
    largest_component: int
    isolated: int  # papers that neither cite nor are cited within the knowledge base
    cycles: list[list[str]]
    most_cited: list[tuple[str, int, float]]  # (id, in-KB citations, PageRank), most cited first


def summarise(graph: CitationGraph, top: int = 10) -> GraphSummary:
    components = weakly_connected_components(graph)
    ranked = sorted(graph.nodes, key=lambda n: (-graph.in_degree(n), -graph.nodes[n]["pagerank"], n))
    return GraphSummary(
        nodes=len(graph.nodes),
        edges=len(graph.edges),
        components=len(components),
        largest_component=max((len(c) for c in components), default=0),
        isolated=sum(1 for n in graph.nodes if not graph.cites[n] and not graph.cited_by[n]),
        cycles=citation_cycles(graph),
        most_cited=[(n, graph.in_degree(n), graph.nodes[n]["pagerank"]) for n in ranked[:top]
                    if graph.in_degree(n) > 0],
    )


PRIVATE_ATTRIBUTES = {"path"}  # build details, not properties of the paper


def published(attrs: dict) -> dict:
    """A node's attributes as exported: the source path is a build detail, not a property of the paper."""
    return {k: v for k, v in attrs.items() if k not in PRIVATE_ATTRIBUTES}


def export_attributes(graph: CitationGraph) -> CitationGraph:
    """The graph as published (:func:`published`), for comparing the exports with networkx's own."""
    return CitationGraph({node: published(attrs) for node, attrs in graph.nodes.items()}, list(graph.edges))


def graph_json(graph: CitationGraph) -> str:
    """node-link JSON; read it back with ``nx.node_link_graph(data, edges="edges")``.

    The data ``nx.node_link_data(to_networkx(export_attributes(graph)), edges="edges")`` gives (a
    test checks that), built without copying the graph first."""
    data = {"directed": True, "multigraph": False, "graph": {},
            "nodes": [{**published(attrs), "id": node} for node, attrs in graph.nodes.items()],
            EDGES_KEY: [{"source": s, "target": t} for s, t in graph.edges]}
    return json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n"  # one line: it is megabytes at scale


NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # characters XML 1.0 cannot hold


def graph_graphml(graph: CitationGraph) -> str:
    """GraphML by networkx, with list attributes (authors, modalities, gaps) joined by ``LIST_SEPARATOR``
    (GraphML has no list type) and characters XML 1.0 cannot hold replaced."""
    out = nx.DiGraph()
    for node, attrs in graph.nodes.items():
        out.add_node(node, **{k: clean(LIST_SEPARATOR.join(v) if isinstance(v, list) else v)
                              for k, v in published(attrs).items()})
    out.add_edges_from(graph.edges)
    # not pretty-printed: GraphML is read by tools, and indenting took a quarter of the writer's time at 2000 papers
    return "\n".join(nx.generate_graphml(out, prettyprint=False)) + "\n"


def clean(value):
    return NOT_XML.sub("\ufffd", value) if isinstance(value, str) else value


def explorer_layout(kb: KnowledgeBase, graph: CitationGraph) -> dict[str, tuple[float, float]]:
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


def explorer_data(kb: KnowledgeBase, graph: CitationGraph) -> dict:
    """What the explorer page inlines: nodes with position and size, edges, and the filter choices.

    Plain data only; the page writer serialises it with ``markup.json_for_script`` and the script
    writes every label with ``textContent``, so no contributor text is ever parsed as HTML.
    """
    positions = explorer_layout(kb, graph)
    tax = kb.taxonomy
    nodes = [{"id": n, "title": a["title"], "year": a["year"], "perspective": a["perspective"],
              "subcategory": a["subcategory"], "modalities": a["modalities"], "gaps": a["gaps"],
              "authors": a["authors"], "cited_by": a["in_kb_citations"], "method": a.get("method", ""),
              "domain": a.get("domain", ""), "checked": a["citations_checked"],
              "x": positions[n][0], "y": positions[n][1]}
             for n, a in graph.nodes.items()]
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
