"""Related work (bibliographic coupling and co-citation): a hand-checked graph, and random graphs
against a transcription of the definitions with sets, one paper at a time."""

from __future__ import annotations

import random
from collections import Counter

import networkx as nx
import pytest

from moekb.graph import CitationGraph
from moekb.related import PRIOR_LATER, RELATED, Neighbourhood, Related, RelatedWork


def as_citation_graph(graph: nx.DiGraph) -> CitationGraph:
    return CitationGraph(nodes={node: {} for node in graph}, edges=list(graph.edges))


def naive(graph: nx.DiGraph, paper: str) -> Neighbourhood:
    """The definitions in the module docstring, read literally."""
    cites = lambda p: set(graph.successors(p))  # noqa: E731
    cited_by = lambda p: set(graph.predecessors(p))  # noqa: E731
    candidates = []
    for other in graph:
        if other == paper:
            continue
        shared, co_citers = cites(paper) & cites(other), cited_by(paper) & cited_by(other)
        if shared or co_citers:
            candidates.append(Related(other, len(shared) + len(co_citers), tuple(sorted(shared)), tuple(sorted(co_citers))))
    related = tuple(sorted(candidates, key=lambda r: (-r.score, r.paper))[:RELATED])
    members = {r.paper for r in related}
    prior, later = Counter(), Counter()
    for member in members:
        prior.update(p for p in cites(member) if p != paper and p not in members)
        later.update(p for p in cited_by(member) if p != paper and p not in members)
    top = lambda c: tuple(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:PRIOR_LATER])  # noqa: E731
    return Neighbourhood(related, top(prior), top(later))


def test_hand_checked_graph():
    # x and y both cite a and b; z cites x and y (co-citation); w cites y only
    graph = nx.DiGraph([("x", "a"), ("x", "b"), ("y", "a"), ("y", "b"), ("z", "x"), ("z", "y"), ("w", "y"),
                        ("y", "c")])
    related = RelatedWork(as_citation_graph(graph)).of("x")
    # y shares both references and the citer z; z and w share nothing with x, so only y is related
    assert related.related == (Related("y", 3, ("a", "b"), ("z",)),)
    assert related.prior == (("a", 1), ("b", 1), ("c", 1))  # what the related set cites, ties by id
    assert related.later == (("w", 1), ("z", 1))  # what cites the related set (x cites a and b, not y)


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_match_the_definitions(seed):
    rng = random.Random(seed)
    nodes = [f"p{i:02d}" for i in range(40)]
    edges = {(a, b) for a in nodes for b in nodes if a != b and rng.random() < 0.08}
    graph = nx.DiGraph(sorted(edges))
    graph.add_nodes_from(nodes)
    index = RelatedWork(as_citation_graph(graph))
    for node in nodes:
        assert index.of(node) == naive(graph, node), node


def test_a_paper_outside_the_graph_has_no_related_work():
    assert RelatedWork(as_citation_graph(nx.DiGraph([("a", "b")]))).of("zzz") == Neighbourhood((), (), ())
