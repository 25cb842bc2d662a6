"""Related work from the citation graph, as Connected Papers finds it: bibliographic coupling and
co-citation, then the prior and later work of the related set.

For a paper X, another paper Y is related when they cite the same papers (bibliographic coupling:
``|cites(X) & cites(Y)|``) or are cited together (co-citation: ``|cited_by(X) & cited_by(Y)|``); the
score is the sum, and the shared papers are kept so the page can name them. Over the related set R,
*prior work* is what R cites most (the shared foundations) and *later work* is what cites R most.
Only citations recorded in the knowledge base count, so papers whose reference lists were not read
are under-connected; the page says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import networkx as nx

from moekb.model import KnowledgeBase

RELATED = 6
PRIOR_LATER = 5


@dataclass(frozen=True)
class Related:
    paper: str
    score: int
    shared_references: tuple[str, ...]  # papers both cite
    co_cited_by: tuple[str, ...]  # papers citing both


@dataclass(frozen=True)
class Neighbourhood:
    related: tuple[Related, ...]
    prior: tuple[tuple[str, int], ...]  # (paper, how many related papers cite it)
    later: tuple[tuple[str, int], ...]  # (paper, how many related papers it cites)


def citation_digraph(kb: KnowledgeBase) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(p.id for p in kb.papers)
    graph.add_edges_from((p.id, c) for p in kb.papers for c in p.cites if c in kb.paper and c != p.id)
    return graph


def related_work(graph: nx.DiGraph, paper: str) -> Neighbourhood:
    cites, cited_by = set(graph.successors(paper)), set(graph.predecessors(paper))
    coupled: dict[str, set[str]] = {}
    for reference in cites:  # Y coupled with X: Y cites one of X's references
        for other in graph.predecessors(reference):
            if other != paper:
                coupled.setdefault(other, set()).add(reference)
    cocited: dict[str, set[str]] = {}
    for citer in cited_by:  # Y co-cited with X: a paper citing X also cites Y
        for other in graph.successors(citer):
            if other != paper:
                cocited.setdefault(other, set()).add(citer)
    scored = [Related(other, len(coupled.get(other, ())) + len(cocited.get(other, ())),
                      tuple(sorted(coupled.get(other, ()))), tuple(sorted(cocited.get(other, ()))))
              for other in coupled.keys() | cocited.keys()]
    related = tuple(sorted(scored, key=lambda r: (-r.score, r.paper))[:RELATED])
    members = {r.paper for r in related}
    prior = Counter(ref for r in members for ref in graph.successors(r) if ref != paper and ref not in members)
    later = Counter(citer for r in members for citer in graph.predecessors(r) if citer != paper and citer not in members)
    top = lambda counts: tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:PRIOR_LATER])  # noqa: E731
    return Neighbourhood(related, top(prior), top(later))
