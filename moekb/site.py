"""The documentation generator: a pure function from a :class:`KnowledgeBase` to the files of the site.

``render_site(kb)`` returns ``{path under docs/: text or bytes}``: the paper, taxonomy, gap, survey,
graph, chart, download, notebook and source-code pages, and the snippets the hand-written pages
include. Nothing here touches the disk or a site engine. Any engine that renders a folder of Markdown
(mkdocs with Material, Zensical) builds the whole site from these files alone: links are written as
the final directory URLs (``papers/<id>/``), every page carries its own search text, and no page
relies on a build hook.

Pages are Markdown whose blocks are HTML written by Jinja2 templates with autoescaping on
(``moekb/templates/``); section headings are Markdown so that the engines build the table of contents
and search sections from them. Contributor text reaches a page only through the templates' ``text``
filter (escaped by markupsafe) or, in the few Markdown lines, through :func:`moekb.markup.md`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cached_property, lru_cache, partial
from pathlib import Path

import jinja2
from markupsafe import Markup

from moekb import markup
from moekb.bib import bibtex_entries, join_entries
from moekb.charts import GAP_HEATMAP, PAPERS_PER_YEAR, neighbourhood_svg, render_charts, year_series
from moekb.fields import (CSV_COLUMNS, METHOD_COLUMNS, NUMERIC_METHOD_COLUMNS, csv_row, field_table, method_rows,
                          published_paper)
from moekb.graph import LIST_SEPARATOR, citation_graph, explorer_data, graph_graphml, graph_json, summarise
from moekb.identifiers import source_kind
from moekb.model import KnowledgeBase, Paper, Perspective, Subcategory
from moekb.notebook_page import notebook_page, published_notebook
from moekb.related import RelatedWork
from moekb.workers import run_tasks

# Top-level folders of docs/ that the generator owns (and empties of what it no longer writes).
GENERATED_FOLDERS = ("papers", "surveys", "taxonomy", "gaps", "graph", "charts", "downloads", "notebooks", "code",
                     "recent", "start", "snippets")
HOME_SNIPPET = "snippets/home.md"
VOCABULARY_SNIPPET = "snippets/vocabularies.md"  # included by docs/add-a-paper.md
FIELDS_SNIPPET = "snippets/fields.md"  # the field table of docs/add-a-paper.md, from the model
ALL_PAPERS_PAGE = "papers/index.md"
SURVEYS_PAGE = "surveys/index.md"
GRAPH_PAGE = "graph/index.md"
CHARTS_PAGE = "charts/index.md"
DOWNLOADS_PAGE = "downloads/index.md"
RECENT_PAGE = "recent/index.md"
FEED = "recent/feed.xml"
START_PAGE = "start/index.md"
RECENT = 30  # entries on the "recently added" page and in the feed
START_PER_PERSPECTIVE = 5
MATH_ASSETS = ("assets/vendor/katex/katex.min.css", "assets/vendor/katex/katex.min.js", "assets/javascripts/math.js")
LATEST = 10
PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE = 10
NEIGHBOURS_IN_DIAGRAM = 8  # per side of a paper's neighbourhood diagram
PAPERS_PER_TASK = 100
CODE_PAGE_INTRO = "The reference implementation's source, as in the repository."
HUB = "https://huggingface.co/"
SURVEY_ID = "zheng2026tackling"  # the survey this knowledge base follows


# -- where pages live, and the links between them ---------------------------------------------
def paper_path(paper_id: str) -> str:
    return f"papers/{paper_id}/index.md"


def neighbourhood_path(paper_id: str) -> str:
    """The paper's citation neighbourhood diagram, a file of its own: an inline SVG made every paper
    page several times slower for both engines to parse, and an <object> keeps its links live."""
    return f"papers/{paper_id}/neighbourhood.svg"


def perspective_path(perspective_id: str) -> str:
    return f"taxonomy/{perspective_id}/index.md"


def subcategory_path(perspective_id: str, subcategory_id: str) -> str:
    return f"taxonomy/{perspective_id}/{subcategory_id}/index.md"


def gap_path(gap_id: str) -> str:
    return f"gaps/{gap_id}/index.md"


def code_path(module: str) -> str:
    return f"code/{posixpath.splitext(posixpath.basename(module))[0]}/index.md"


def guide_path(module: str) -> str:
    """The hand-written guide of a module, ``docs/impls/<stem>.md``."""
    return f"impls/{posixpath.splitext(posixpath.basename(module))[0]}.md"


def notebook_path(notebook: str) -> str:
    return f"notebooks/{posixpath.splitext(posixpath.basename(notebook))[0]}/index.md"


def notebook_download_path(notebook: str) -> str:
    return f"notebooks/{posixpath.basename(notebook)}"


def url_of(path: str) -> str:
    """The URL (relative to the site root) of a docs file, with directory URLs, as both engines serve
    them by default: ``papers/x/index.md`` -> ``papers/x/``, ``papers/index.md`` -> ``papers/``.

    Every generated page is an ``index.md`` in a folder of its own, so that its folder and its URL's
    folder are the same: a relative link in an HTML block then reads the same whether an engine takes
    it relative to the page's URL (mkdocs leaves HTML as written) or to the page's file (Zensical
    re-resolves it)."""
    if path == "index.md" or path.endswith("/index.md"):
        return path[: -len("index.md")]
    if path.endswith(".md"):
        return path[:-3] + "/"
    return path


def href(source: str, target: str) -> str:
    """The relative link from the page of docs file ``source`` to docs file ``target`` (``#x`` kept).

    A page's URL ends with ``/``, so the browser resolves its links against that folder."""
    target, _, fragment = target.partition("#")
    relative = _relative_url(url_of(source).rstrip("/"), url_of(target))
    return f"{relative}#{fragment}" if fragment else relative


@lru_cache(maxsize=1 << 16)
def _relative_url(here: str, there: str) -> str:
    # tens of thousands of links at scale, between a few hundred folders: posixpath.relpath is the cost
    folder, _, name = there.rstrip("/").rpartition("/")
    up = _relative_folder(folder, here)
    relative = name if up == "." else (f"{up}/{name}" if name else up)
    if there.endswith("/") or there == "":
        relative = "./" if relative in (".", "") else relative + "/"
    return relative


@lru_cache(maxsize=4096)
def _relative_folder(target_folder: str, source_folder: str) -> str:
    return posixpath.relpath(target_folder or ".", source_folder or ".")


def doc_link(source: str, target: str) -> str:
    """A Markdown link target: the docs file ``target`` relative to docs file ``source`` (``#x`` kept).
    Both engines resolve and check these, and turn them into the page URLs themselves."""
    target, _, fragment = target.partition("#")
    relative = posixpath.relpath(target, posixpath.dirname(source) or ".")
    return f"{relative}#{fragment}" if fragment else relative


# -- templates ----------------------------------------------------------------------------------
text_filter = markup.inert_html


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
def external(url: str) -> Markup:
    """An outside URL as a link when it is plain http(s) (``markup.safe_url``), else as text."""
    safe = markup.safe_url(url)
    return Markup('<a href="{}">{}</a>').format(safe, text_filter(url)) if safe else text_filter(url)


TEMPLATES.filters["text"] = text_filter
TEMPLATES.filters["title"] = markup.title_html
TEMPLATES.filters["external"] = external
TEMPLATES.globals.update(paper_path=paper_path, perspective_path=perspective_path, subcategory_path=subcategory_path,
                         gap_path=gap_path)


def first_sentence(text: str) -> str:
    """The summary's first sentence, for link previews (the page's meta description)."""
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end == -1 else text[: end + 1]


def link(url: str, label) -> Markup:
    return Markup('<a href="{}">{}</a>').format(url, text_filter(label))


def title_link(url: str, title: str) -> Markup:
    return Markup('<a href="{}">{}</a>').format(url, markup.title_html(title))


class SiteRenderer:
    """Renders one knowledge base; each page method returns one file's text."""

    def __init__(self, kb: KnowledgeBase, implementations: dict[str, str] | None = None,
                 guides: set[str] | frozenset = frozenset(), *, repository: str | None = None,
                 site_url: str | None = None):
        self.repository = repository if repository and markup.safe_url(repository) else None
        self.site_url = site_url
        self.kb = kb
        self.tax = kb.taxonomy
        self.implementations = implementations or {}
        self.guides = guides
        self.bibtex = bibtex_entries([*kb.papers, *kb.surveys], kb.taxonomy)

    @cached_property
    def graph(self):
        return citation_graph(self.kb)

    @cached_property
    def related_work(self) -> RelatedWork:
        return RelatedWork(self.graph)

    @cached_property
    def sibling_links(self) -> tuple[dict[str, Markup], dict[str, Markup]]:
        """Each paper's link by title and by short name, as written on a paper page. Paper pages are
        siblings (``papers/<id>/``), so a link reads the same from every one of them: rendered once
        here instead of once per page that shows it (tens of thousands of links at 2000 papers)."""
        here = paper_path("any-paper")
        by_title, by_name = {}, {}
        for paper in [*self.kb.papers, *self.kb.surveys]:
            url = href(here, paper_path(paper.id))
            by_title[paper.id] = title_link(url, paper.title)
            by_name[paper.id] = link(url, self.short_name(paper))
        return by_title, by_name

    @cached_property
    def implemented_by(self) -> dict[str, list[Perspective | Subcategory]]:
        """Paper id -> the taxonomy nodes whose reference implementation follows that paper."""
        index: dict[str, list] = {}
        for perspective in self.tax.perspectives:
            for owner in (perspective, *perspective.subcategories):
                for paper_id in owner.implements:
                    index.setdefault(paper_id, []).append(owner)
        return index

    # -- pieces ---------------------------------------------------------------------------
    def page(self, template: str, source: str, title: str, *, description: str | None = None, **context) -> str:
        body = TEMPLATES.get_template(template).render(h=partial(href, source), tax=self.tax, **context)
        return markup.front_matter(title, description) + "\n" + body

    def run_it(self, owner: Perspective | Subcategory) -> list[tuple[str, str, str]]:
        """(label, docs path, name) of the owner's reference implementation, guide and notebook."""
        items = []
        module = owner.reference_impl
        if module and module in self.implementations:
            items.append(("Reference implementation", code_path(module), module))
            if posixpath.basename(guide_path(module)) in self.guides:
                items.append(("Guide: how it maps to the paper, and what its tests check", guide_path(module), "guide"))
        if owner.notebook and posixpath.basename(owner.notebook) in self.kb.notebooks:
            items.append(("Notebook", notebook_path(owner.notebook), owner.notebook))
        return items

    def venue(self, paper: Paper) -> str:
        return f"{self.tax.venue[paper.venue].name} ({paper.venue})" if paper.venue else "preprint"

    def table_rows(self, source: str, papers: list[Paper], columns: list[str]) -> list[dict]:
        rows = []
        for paper in sorted(papers, key=lambda p: (-p.year, p.title.casefold())):
            method = paper.method
            cells = {
                "Paper": title_link(href(source, paper_path(paper.id)), paper.title),
                "Method": text_filter(method.name) if method else "",
                "Authors": text_filter(", ".join(paper.authors[:3]) + (" et al." if len(paper.authors) > 3 else ""))
                + Markup('<span class="moekb-hidden">{}</span>').format(" ".join(paper.authors[3:])),
                "Year": str(paper.year),
                "Venue": text_filter(paper.venue or "preprint"),
                "Sub-category": link(href(source, subcategory_path(paper.perspective, paper.subcategory)),
                                     self.tax.subcategory[paper.subcategory][1].name) if paper.subcategory else "",
                "Domain": text_filter(self.tax.domain[paper.domain].name),
                "Modalities": text_filter(", ".join(paper.modalities)),
                "arXiv": text_filter(paper.arxiv or ""),
                **{label: value for label, value in method_rows(method, self.tax, compact=True)},
                "Code": external(paper.code) if paper.code else "",
            }
            rows.append({"paper": paper, "method": method, "cells": [cells.get(c, "") for c in columns]})
        return rows

    def papers_table(self, source: str, papers: list[Paper], columns: list[str], *, filters: bool = False) -> str:
        used = lambda key: sorted({getattr(p, key) for p in papers if getattr(p, key)})  # noqa: E731
        options = []
        if filters:
            options = [
                ("perspective", "Perspective", [(p, self.tax.perspective[p].name) for p in used("perspective")]),
                ("subcategory", "Sub-category", [(s, self.tax.subcategory[s][1].name) for s in used("subcategory")]),
                ("modality", "Modality", [(m, self.tax.modality[m].name) for m in sorted({m for p in papers for m in p.modalities})]),
                ("domain", "Domain", [(d, self.tax.domain[d].name) for d in used("domain")]),
                ("routing", "Routing", [(r, self.tax.routing[r].name) for r in
                                        sorted({p.method.routing for p in papers if p.method and p.method.routing})]),
            ]
        years = (min((p.year for p in papers), default=0), max((p.year for p in papers), default=0))
        return TEMPLATES.get_template("papers_table.html").render(
            h=partial(href, source), rows=self.table_rows(source, papers, columns), columns=columns,
            numeric={"Year", *NUMERIC_METHOD_COLUMNS}, filters=options, years=years)

    def citations(self, paper: Paper) -> tuple[list[Paper], list[Paper]]:
        """(the papers it cites, the papers citing it), within the knowledge base (surveys stay out)."""
        return ([self.kb.paper[i] for i in paper.cites if i in self.kb.paper],
                [self.kb.paper[i] for i in self.kb.cited_by.get(paper.id, [])])

    def neighbourhood(self, paper: Paper) -> str | None:
        cites, cited_by = self.citations(paper)
        if not (cites or cited_by):
            return None
        # the SVG lies beside the paper's page, so its links are relative to papers/<id>/
        return neighbourhood_svg(paper, cited_by[:NEIGHBOURS_IN_DIAGRAM], cites[:NEIGHBOURS_IN_DIAGRAM],
                                 more=(len(cited_by) - NEIGHBOURS_IN_DIAGRAM, len(cites) - NEIGHBOURS_IN_DIAGRAM),
                                 href=lambda p: href(paper_path(paper.id), paper_path(p.id)))

    # -- pages ----------------------------------------------------------------------------
    def paper_page(self, paper: Paper) -> str:
        source = paper_path(paper.id)
        perspective, sub = self.tax.subcategory[paper.subcategory] if paper.subcategory else (None, None)
        links = [(f"arXiv {paper.arxiv}", paper.arxiv_url), ("PDF", paper.arxiv_pdf_url), ("DOI", paper.doi_url),
                 ("Web page", paper.url), ("Code", paper.code)]
        cites, cited_by = self.citations(paper)
        groups: dict[str, list[str]] = {"Primary sources": [], "Other sources": []}
        for url in paper.verified_from:
            groups["Primary sources" if source_kind(url) == "primary" else "Other sources"].append(url)
        run_it = [item for owner in self.implemented_by.get(paper.id, []) for item in self.run_it(owner)]
        neighbourhood = neighbourhood_path(paper.id) if cites or cited_by else ""
        neighbours = self.related_work.of(paper.id)
        return self.page(
            "paper.html", source, paper.title, description=first_sentence(paper.summary),
            paper=paper, perspective=perspective, sub=sub, venue=self.venue(paper),
            method=method_rows(paper.method, self.tax, hub=HUB) if paper.method else [],
            run_it=run_it, links=[(label, url) for label, url in links if url], cites=cites, cited_by=cited_by,
            neighbourhood=neighbourhood, cite=Markup(self.cite_block(paper)), repository=self.repository_links(paper),
            related=neighbours, by_title=self.sibling_links[0], by_name=self.sibling_links[1],
            sources=[(group, urls) for group, urls in groups.items() if urls])

    @staticmethod
    def short_name(paper: Paper) -> str:
        return paper.method.name if paper.method else f"{paper.authors[0].split()[-1]} {paper.year}"

    def reference(self, paper: Paper) -> str:
        """A plain-text reference in APA's shape: authors (Family, I.), year, title, venue, identifier."""
        def initials(name: str) -> str:
            parts = name.split()
            if len(parts) < 2:
                return name
            return f"{parts[-1]}, {' '.join(p[0] + '.' for p in parts[:-1])}"
        names = [initials(a) for a in paper.authors]
        authors = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", & " + names[-1]
        where = self.tax.venue[paper.venue].name if paper.venue else ("arXiv preprint" if paper.arxiv else "")
        ident = (f" https://doi.org/{paper.doi}" if paper.doi else
                 f" arXiv:{paper.arxiv}" if paper.arxiv else f" {paper.url}" if paper.url else "")
        return f"{authors} ({paper.year}). {paper.title}.{' ' + where + '.' if where else ''}{ident}"

    def cite_block(self, paper: Paper) -> str:
        """The Cite control: a collapsed block with the BibTeX entry and a plain-text reference, each a
        code block (highlighted by Pygments through pymdownx) with the theme's copy button."""
        indent = lambda text: "\n".join(("    " + line) if line else "" for line in text.splitlines())  # noqa: E731
        return "\n".join(['??? quote "Cite"', "", indent(markup.fence(self.bibtex[paper.id], "bibtex")), "",
                          indent(markup.fence(self.reference(paper), "text")), ""])

    def repository_links(self, paper: Paper) -> dict | None:
        if not self.repository:
            return None
        base = self.repository.rstrip("/")
        return {"edit": f"{base}/edit/main/papers/{paper.id}.yaml",
                "report": f"{base}/issues/new?template=report-wrong-fact.yml&title={paper.id}"}

    def all_papers(self) -> str:
        source = ALL_PAPERS_PAGE
        table = self.papers_table(source, self.kb.papers, ["Paper", "Method", "Authors", "Year", "Venue", "Sub-category",
                                                           "Domain", "Modalities", "arXiv"], filters=True)
        return "\n".join([
            markup.front_matter("All papers", searched=False), "# All papers", "",
            f"{len(self.kb.papers)} method papers; the [{len(self.kb.surveys)} surveys]({doc_link(source, SURVEYS_PAGE)}) "
            "are listed on their own page. Click a column header to sort. The filters are kept in the address, so a "
            "filtered view can be shared.", "", table])

    def surveys_page(self) -> str:
        source = SURVEYS_PAGE
        rows = []
        for survey in sorted(self.kb.surveys, key=lambda p: (-p.year, p.title.casefold())):
            covered = [self.kb.paper[i] for i in survey.cites if i in self.kb.paper]
            rows.append(Markup("<li>{} ({}, {}){}</li>").format(
                title_link(href(source, paper_path(survey.id)), survey.title), ", ".join(survey.authors[:3])
                + (" et al." if len(survey.authors) > 3 else ""), survey.year,
                Markup(": cites {} papers of this knowledge base").format(len(covered)) if covered else ""))
        return "\n".join([
            markup.front_matter("Surveys"), "# Surveys", "",
            "The survey this knowledge base follows and the related surveys it cites. Surveys have no perspective "
            "of their own and are not counted with the method papers.", "",
            "<ul>", *rows, "</ul>" if rows else "<p><em>No surveys yet.</em></p>", ""])

    def taxonomy_index(self) -> str:
        source = "taxonomy/index.md"
        out = [markup.front_matter("Taxonomy"), "# Taxonomy", "",
               "The survey (arXiv [2605.27431](https://arxiv.org/abs/2605.27431)) looks at multimodal MoE from three "
               "perspectives; a fourth section, *foundations*, holds the sparse-MoE papers they build on. "
               "Numbers are papers in this knowledge base.", ""]
        for perspective in self.tax.perspectives:
            out += [f"## [{markup.md(perspective.name)}]({doc_link(source, perspective_path(perspective.id))})", "",
                    f"> {markup.md(perspective.definition)}", ""]
            for sub in perspective.subcategories:
                n = len(self.kb.in_subcategory(sub.id))
                runnable = " · runnable code" if sub.reference_impl else ""
                out.append(f"- [{markup.md(sub.name)}]({doc_link(source, subcategory_path(perspective.id, sub.id))}): "
                           f"{n} papers{runnable}")
            out.append("")
        return "\n".join(out)

    def perspective_page(self, perspective: Perspective) -> str:
        source = perspective_path(perspective.id)
        quote = "Definition quoted from the survey's abstract" if not perspective.background else "Scope"
        out = [markup.front_matter(perspective.name), f"# {markup.md(perspective.name)}", "",
               f"> {markup.md(perspective.definition)}", ">", f"> <small>{quote}.</small>", "",
               markup.md(perspective.description), ""]
        for sub in perspective.subcategories:
            papers = self.kb.in_subcategory(sub.id)
            target = doc_link(source, subcategory_path(perspective.id, sub.id))
            shown = sorted(papers, key=lambda p: (-p.year, p.title.casefold()))[:PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE]
            out += [f"## [{markup.md(sub.name)}]({target})", "", markup.md(sub.description), ""]
            items = self.run_it(sub)
            if items:
                out += ["Run it: " + " · ".join(f"[{markup.md(name)}]({doc_link(source, path)})" for _, path, name in items), ""]
            out += [self.papers_table(source, shown, ["Paper", "Method", "Year", "Venue", "Modalities"]), ""]
            if len(shown) < len(papers):
                out += [f"The {len(shown)} most recent of {len(papers)} papers: [all {len(papers)}]({target}).", ""]
        return "\n".join(out)

    def subcategory_page(self, perspective: Perspective, sub: Subcategory) -> str:
        source = subcategory_path(perspective.id, sub.id)
        papers = self.kb.in_subcategory(sub.id)
        out = [markup.front_matter(sub.name), f"# {markup.md(sub.name)}", "",
               f"Part of [{markup.md(perspective.name)}]({doc_link(source, perspective_path(perspective.id))}).", "",
               markup.md(sub.description), ""]
        if sub.source:
            out += [f"<small>Source of this sub-category: {markup.md(sub.source)}</small>", ""]
        items = self.run_it(sub) or self.run_it(perspective)
        if items:
            out += ["## Run it", "", *[f"- {markup.md(label)}: [{markup.md(name)}]({doc_link(source, path)})"
                                       for label, path, name in items], ""]
        gaps = Counter(g for p in papers for g in p.gaps)
        if gaps:
            out += ["## Research gaps addressed here", "",
                    *[f"- [{markup.md(self.tax.gap[g].name)}]({doc_link(source, gap_path(g))}): {n}" for g, n in sorted(gaps.items())], ""]
        out += [f"## Methods compared ({len(papers)})", "",
                "The method facts each paper states; a blank cell means the paper does not state it (nothing is "
                "estimated). Click a column header to sort.", "",
                self.papers_table(source, papers, ["Paper", "Year", "Venue", *METHOD_COLUMNS, "Modalities", "Code"]), ""]
        return "\n".join(out)

    def gaps_index(self) -> str:
        source = "gaps/index.md"
        perspectives = self.tax.perspectives
        lines = [markup.front_matter("Research gaps"), "# Research gaps", "",
                 "The survey names these open problems. Each cell counts the papers of a perspective tagged with "
                 "the gap; a thin cell is where research is thin. Click a number for the papers.", "",
                 "| Research gap | " + " | ".join(markup.md(p.id) for p in perspectives) + " | Total |",
                 "|---|" + "---:|" * (len(perspectives) + 1)]
        for gap in self.tax.gaps:
            cells = []
            for p in perspectives:
                n = sum(1 for paper in self.kb.in_perspective(p.id) if gap.id in paper.gaps)
                cells.append(f"[{n}]({doc_link(source, gap_path(gap.id) + '#' + p.id)})" if n else "0")
            total = sum(1 for paper in self.kb.papers if gap.id in paper.gaps)
            lines.append(f"| [{markup.md(gap.name)}]({doc_link(source, gap_path(gap.id))}) | " + " | ".join(cells) + f" | {total} |")
        lines.append("")
        for gap in self.tax.gaps:
            lines += [f"## {markup.md(gap.name)}", "", markup.md(gap.description), ""]
        return "\n".join(lines)

    def gap_page(self, gap) -> str:
        source = gap_path(gap.id)
        out = [markup.front_matter(gap.name), f"# {markup.md(gap.name)}", "", markup.md(gap.description), ""]
        for perspective in self.tax.perspectives:
            papers = [p for p in self.kb.in_perspective(perspective.id) if gap.id in p.gaps]
            out += [f"## {markup.md(perspective.name)} {{#{perspective.id}}}", "",
                    self.papers_table(source, papers, ["Paper", "Method", "Year", "Sub-category"]), ""]
        return "\n".join(out)

    def downloads(self) -> str:
        return "\n".join([
            markup.front_matter("Downloads"), "# Downloads", "",
            "Open exports of the whole knowledge base, regenerated on every build. The data (entries, summaries, "
            "method facts and citations) is licensed under CC BY 4.0; the code under MIT.", "",
            f"- [papers.bib](papers.bib): BibTeX, one entry per paper and survey, keyed by id "
            f"({len(self.kb.papers) + len(self.kb.surveys)} entries).",
            "- [papers.csv](papers.csv): one row per paper: identifiers, taxonomy and method facts.",
            "- [papers.json](papers.json): every entry with all its fields (method facts included), plus the taxonomy.",
            "- [paper.schema.json](paper.schema.json): the JSON Schema of a paper entry, for editors.",
            "- [graph.json](graph.json): the citation graph as networkx node-link JSON "
            '(`nx.node_link_graph(data, edges="edges")` reads it).',
            f"- [graph.graphml](graph.graphml): the citation graph as GraphML (Gephi, Cytoscape, yEd); lists such as "
            f"authors are joined with `{LIST_SEPARATOR.strip()}`.", ""])

    def graph_page(self) -> str:
        source = GRAPH_PAGE
        graph = self.graph
        summary = summarise(graph)
        unchecked = sum(1 for p in self.kb.papers if not p.citations_checked)
        rows = [Markup("<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4f}</td></tr>").format(
            title_link(href(source, paper_path(i)), self.kb.paper[i].title), self.kb.paper[i].year, n, rank)
            for i, n, rank in summary.most_cited]
        items = [Markup('<li><a href="{}" data-moekb-paper="{}">{}</a> ({})</li>').format(
            href(source, paper_path(p.id)), p.id, markup.title_html(p.title), p.year) for p in self.kb.papers]
        out = [markup.front_matter("Citation graph", searched=False), "# Citation graph", "",
               "Every paper is a node, coloured by perspective and sized by how often it is cited within the knowledge "
               "base; an arrow points from a paper to each paper it cites. Each perspective is a row, each sub-category "
               "a disc with its most cited papers in the middle; switch to the year layout for a time axis. Hollow, "
               "dashed nodes are papers whose reference list has not been read (their citations are incomplete). Select "
               "a node for its facts and a link to its page; zoom in for labels.", "",
               f'<div id="moekb-explorer" class="moekb-explorer" data-papers="{summary.nodes}" '
               f'data-citations="{summary.edges}"><noscript>The explorer needs JavaScript; the list of papers below '
               "works without it.</noscript></div>", "",
               f'<script id="moekb-graph-data">window.moekbGraphData = {markup.json_for_script(explorer_data(self.kb, graph))};</script>',
               f'<link rel="stylesheet" href="{href(source, "assets/stylesheets/explorer.css")}">',
               f'<script src="{href(source, "assets/vendor/cytoscape/cytoscape.min.js")}"></script>',
               f'<script src="{href(source, "assets/javascripts/explorer.js")}"></script>', "",
               f"**{summary.nodes} papers, {summary.edges} citations, {summary.components} connected components** (the "
               f"largest holds {summary.largest_component} papers; {summary.isolated} papers neither cite nor are cited "
               f"within the knowledge base; {unchecked} papers have no reference list read yet). Download the graph as "
               f"[graph.json]({doc_link(source, 'downloads/graph.json')}) or "
               f"[graph.graphml]({doc_link(source, 'downloads/graph.graphml')}).", ""]
        if summary.cycles:
            out += ['!!! warning "Citation cycles"', "",
                    "    These papers cite each other in a loop; check that each `cites` entry is right:", "",
                    *[f"    - {' → '.join(markup.md(i) for i in cycle)}" for cycle in summary.cycles], ""]
        out += ["## Most cited within the knowledge base", ""]
        out += ['<div class="moekb-table">', "<table>",
                "<thead><tr><th>Paper</th><th>Year</th><th>Cited by</th><th>PageRank</th></tr></thead>",
                "<tbody>", *rows, "</tbody>", "</table>", "</div>", ""] if rows else ["*No citations recorded yet.*", ""]
        out += ["## Papers in the graph", "", '<details class="info">',
                f"<summary>All {summary.nodes} papers</summary>", "<ul>", *items, "</ul>", "</details>", ""]
        return "\n".join(out)

    def charts_page(self) -> str:
        years, series = year_series(self.kb)
        header = ["Year", *[markup.md(label) for label, _, _ in series], "All"]
        rows = [[str(year), *[str(counts[i]) for _, _, counts in series], str(sum(c[i] for _, _, c in series))]
                for i, year in enumerate(years)]
        return "\n".join([
            markup.front_matter("Charts"), "# Charts", "", "## Papers per year, by perspective", "",
            f"![Stacked bar chart of papers per year, coloured by perspective]({PAPERS_PER_YEAR})", "",
            '??? info "The numbers"', "", *["    " + line for line in markup.table(header, rows).splitlines()], "",
            "## Research gaps by perspective", "",
            "Each cell counts the papers of a perspective tagged with a research gap; an empty cell is where "
            f"research is thin. The [research gaps]({doc_link(CHARTS_PAGE, 'gaps/index.md')}) page lists the papers.", "",
            f"![Heat map of papers per research gap and perspective]({GAP_HEATMAP})", ""])

    def recently_added(self) -> list[Paper]:
        dated = [p for p in [*self.kb.papers, *self.kb.surveys] if p.added]
        return sorted(dated, key=lambda p: (p.added, p.id), reverse=True)[:RECENT]

    def recent_page(self) -> str:
        source = RECENT_PAGE
        rows, day = [], None
        for paper in self.recently_added():
            if paper.added != day:
                day = paper.added
                rows += ["", f"## {day.isoformat()}", ""]
            rows.append(f"- [{markup.md(paper.title)}]({doc_link(source, paper_path(paper.id))}) ({paper.year})")
        return "\n".join([markup.front_matter("Recently added"), "# Recently added", "",
                          f"The {RECENT} entries added most recently, newest first, by the date each landed. "
                          f"Subscribe with the [Atom feed](feed.xml).", *rows, ""])

    def feed(self) -> str:
        """Atom (RFC 4287) of the recent additions. Links are absolute when the site's address is known
        (MOEKB_SITE_URL), else relative to the feed's own folder."""
        base = self.site_url.rstrip("/") + "/" if self.site_url else ""
        papers = self.recently_added()
        links = {p.id: base + url_of(paper_path(p.id)) if base else href(RECENT_PAGE, paper_path(p.id)) for p in papers}
        updated = max((p.added for p in papers), default=dt.date(2026, 1, 1)).isoformat() + "T00:00:00Z"
        return TEMPLATES.get_template("feed.xml").render(
            papers=papers, links=links, updated=updated, base=base or None,
            alternate=(base + url_of(RECENT_PAGE)) if base else "./", self_link=(base + FEED) if base else "feed.xml")

    def start_page(self) -> str:
        """A reading path per perspective: the papers the survey names first, then the most central."""
        source = START_PAGE
        rank = {n: a.get("pagerank", 0.0) for n, a in self.graph.nodes.items()}
        cited = {n: a.get("in_kb_citations", 0) for n, a in self.graph.nodes.items()}
        named = {i for s in self.kb.surveys if s.id == SURVEY_ID for i in s.cites}
        out = [markup.front_matter("Start here"), "# Start here", "",
               "For each perspective, a few papers to read first, in order: those the survey itself names, then the "
               "most central in the citation graph (PageRank over the citations recorded here).", ""]
        for perspective in self.tax.perspectives:
            papers = self.kb.in_perspective(perspective.id)
            order = sorted(papers, key=lambda p: (p.id not in named, -rank.get(p.id, 0), p.id))[:START_PER_PERSPECTIVE]
            out += [f"## {markup.md(perspective.name)}", ""]
            for k, paper in enumerate(order, 1):
                why = "named by the survey" if paper.id in named else "central in the citation graph"
                what = f"{markup.md(self.short_name(paper))}, {paper.year}"
                out.append(f"{k}. [{markup.md(paper.title)}]({doc_link(source, paper_path(paper.id))}) ({what}): {why}; "
                           f"cited by {cited.get(paper.id, 0)} papers here.")
            out.append("")
        return "\n".join(out)

    def code_page(self, module: str, source_text: str) -> str:
        guide = guide_path(module)
        intro = CODE_PAGE_INTRO
        if posixpath.basename(guide) in self.guides:
            intro += f" The [guide]({doc_link(code_path(module), guide)}) explains it next to the paper."
        return "\n".join([markup.front_matter(module), f"# {markup.code(module)}", "", intro, "",
                          markup.fence(source_text, "python"), ""])

    def home_snippet(self) -> str:
        lines = ["| Perspective | Sub-categories | Papers |", "|---|---|---|"]
        for perspective in self.tax.perspectives:
            lines.append(f"| [{markup.md(perspective.name)}]({perspective_path(perspective.id)}) | "
                         f"{len(perspective.subcategories)} | {len(self.kb.in_perspective(perspective.id))} |")
        lines.append(f"| **All** | {len(self.tax.subcategory)} | **{len(self.kb.papers)}** |")
        lines += ["", f"Plus [{len(self.kb.surveys)} surveys]({SURVEYS_PAGE}).", "", "### Latest additions", ""]
        latest = sorted(self.kb.papers, key=lambda p: (p.added or dt.date(p.year, 1, 1), p.id), reverse=True)[:LATEST]
        for paper in latest:
            added = f" (added {paper.added.isoformat()})" if paper.added else ""
            lines.append(f"- [{markup.md(paper.title)}]({paper_path(paper.id)}), {paper.year}{added}")
        return "\n".join(lines) + "\n"

    def vocabulary_snippet(self) -> str:
        """Every value a contributor may write, from the taxonomy; included by docs/add-a-paper.md."""
        tax = self.tax
        out = ["#### Perspectives and sub-categories", "",
               "| `perspective` | `subcategory` | What belongs there |", "|---|---|---|"]
        for perspective in tax.perspectives:
            for sub in perspective.subcategories:
                out.append(f"| [{markup.code(perspective.id)}]({perspective_path(perspective.id)}) | "
                           f"[{markup.code(sub.id)}]({subcategory_path(perspective.id, sub.id)}) | "
                           f"**{markup.md(sub.name)}**: {markup.md(sub.description)} |")
        for title, key, terms in (("Domains", "domain", tax.vocabularies.domains),
                                  ("Modalities", "modalities", tax.vocabularies.modalities),
                                  ("Kinds of entry", "kind", tax.vocabularies.paper_kinds),
                                  ("Routing", "method.routing", tax.vocabularies.routings),
                                  ("Where the experts sit", "method.placement", tax.vocabularies.placements)):
            out += ["", f"#### {title} (`{key}`)", "", "| id | Meaning |", "|---|---|"]
            out += [f"| {markup.code(t.id)} | {markup.md(t.name)} |" for t in terms]
        out += ["", "#### Research gaps (`gaps`)", "", "| id | Tag a paper when it... |", "|---|---|"]
        out += [f"| [{markup.code(g.id)}]({gap_path(g.id)}) | **{markup.md(g.name)}**: {markup.md(g.description)} |"
                for g in tax.gaps]
        out += ["", "#### Venues (`venue`)", "", "| id | Venue | Also accepted |", "|---|---|---|"]
        out += [f"| {markup.code(v.id)} | {markup.md(v.name)} | {', '.join(markup.code(a) for a in v.aliases)} |"
                for v in tax.vocabularies.venues]
        out += ["", "#### BibTeX entry types (`bibtex_type`)", "", "| id | Meaning |", "|---|---|"]
        out += [f"| {markup.code(k.id)} | {markup.md(k.name)} |" for k in tax.vocabularies.entry_kinds]
        return "\n".join(out) + "\n"

    def papers_json(self) -> str:
        """``{"gaps": [...], "papers": [...], "perspectives": [...], "surveys": [...]}``, one entry per line."""
        dumps = partial(json.dumps, ensure_ascii=False, sort_keys=True)
        lines = lambda entries: ",\n".join(dumps(published_paper(p)) for p in entries)  # noqa: E731
        return "\n".join([
            "{" + f'"gaps": {dumps([g.model_dump(mode="json") for g in self.tax.gaps])},',
            '"papers": [', lines(self.kb.papers), "],",
            f'"perspectives": {dumps([p.model_dump(mode="json", exclude_none=True) for p in self.tax.perspectives])},',
            '"surveys": [', lines(self.kb.surveys), "]}"]) + "\n"

    def papers_csv(self) -> str:
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for paper in [*self.kb.papers, *self.kb.surveys]:
            writer.writerow(csv_row(paper))
        return stream.getvalue()

    # -- the whole site, as independent tasks ------------------------------------------------
    def prepare(self) -> None:
        """Compute what many tasks share (the citation graph, related work, paper-to-paper links) before
        they run, so that worker processes inherit it instead of each computing it again."""
        self.graph, self.related_work, self.sibling_links, self.implemented_by  # noqa: B018

    def tasks(self, schema: dict | None = None) -> list[Callable[[], dict[str, str | bytes]]]:
        """Each task returns some of the files; together they return every file, each once.
        Paper pages go in chunks of ``PAPERS_PER_TASK`` so that workers share them evenly."""
        overview = {
            HOME_SNIPPET: self.home_snippet, VOCABULARY_SNIPPET: self.vocabulary_snippet,
            FIELDS_SNIPPET: field_table, "taxonomy/index.md": self.taxonomy_index, ALL_PAPERS_PAGE: self.all_papers,
            SURVEYS_PAGE: self.surveys_page, "gaps/index.md": self.gaps_index, DOWNLOADS_PAGE: self.downloads,
            "downloads/papers.bib": lambda: join_entries(self.bibtex.values()), "downloads/papers.json": self.papers_json,
            "downloads/papers.csv": self.papers_csv, GRAPH_PAGE: self.graph_page,
            "downloads/graph.json": lambda: graph_json(self.graph), "downloads/graph.graphml": lambda: graph_graphml(self.graph),
            CHARTS_PAGE: self.charts_page, RECENT_PAGE: self.recent_page, FEED: self.feed, START_PAGE: self.start_page,
        }
        if schema is not None:
            overview["downloads/paper.schema.json"] = lambda: json.dumps(schema, indent=2) + "\n"
        for perspective in self.tax.perspectives:
            overview[perspective_path(perspective.id)] = partial(self.perspective_page, perspective)
            for sub in perspective.subcategories:
                overview[subcategory_path(perspective.id, sub.id)] = partial(self.subcategory_page, perspective, sub)
        for gap in self.tax.gaps:
            overview[gap_path(gap.id)] = partial(self.gap_page, gap)
        tasks = [(lambda name=name, render=render: {name: render()}) for name, render in overview.items()]
        entries = [*self.kb.papers, *self.kb.surveys]
        tasks += [partial(self.paper_pages, entries[i:i + PAPERS_PER_TASK]) for i in range(0, len(entries), PAPERS_PER_TASK)]
        tasks += [self.code_and_notebook_pages, lambda: {posixpath.join(posixpath.dirname(CHARTS_PAGE), name): svg
                                                         for name, svg in render_charts(self.kb).items()}]
        return tasks

    def paper_pages(self, papers: list[Paper]) -> dict[str, str]:
        files = {}
        for paper in papers:
            files[paper_path(paper.id)] = self.paper_page(paper)
            svg = self.neighbourhood(paper)
            if svg:
                files[neighbourhood_path(paper.id)] = svg
        return files

    def code_and_notebook_pages(self) -> dict[str, str | bytes]:
        files: dict[str, str | bytes] = {}
        for module, source_text in sorted(self.implementations.items()):
            files[code_path(module)] = self.code_page(module, source_text)
        for name, notebook_text in self.kb.notebooks.items():
            files[notebook_download_path(name)] = published_notebook(notebook_text, self.repository)
            page, figures = notebook_page(name, notebook_text, download=doc_link(notebook_path(name), notebook_download_path(name)),
                                          repository=self.repository)
            files[notebook_path(name)] = page
            folder = posixpath.dirname(notebook_path(name))
            files.update({f"{folder}/{figure}": data for figure, data in figures.items()})
        return files


def render_site(kb: KnowledgeBase, *, implementations: dict[str, str] | None = None,
                schema: dict | None = None, guides: set[str] | frozenset = frozenset(),
                repository: str | None = None, site_url: str | None = None, jobs: int = 1) -> dict[str, str | bytes]:
    """Every generated file, keyed by its path under ``docs/`` (the arguments are :func:`site_files`')."""
    return dict(site_files(kb, implementations=implementations, schema=schema, guides=guides, repository=repository,
                           site_url=site_url, jobs=jobs))


def site_files(kb: KnowledgeBase, *, implementations: dict[str, str] | None = None,
               schema: dict | None = None, guides: set[str] | frozenset = frozenset(),
               repository: str | None = None, site_url: str | None = None,
               jobs: int = 1) -> Iterator[tuple[str, str | bytes]]:
    """Every generated file as (path under ``docs/``, text or bytes), as soon as it is rendered.

    ``implementations`` maps a reference-implementation path (as named in the taxonomy) to its
    source text; ``schema`` is the paper JSON Schema to publish; ``guides`` are the file names of the
    hand-written pages in ``docs/impls/`` (``moe_llava.md`` explains ``reference_impls/moe_llava.py``);
    ``repository`` (its web address) adds "edit this entry" links, and ``site_url`` makes the feed's links absolute.
    ``jobs`` > 1 renders in that many worker processes (:mod:`moekb.workers`); the files are the same,
    in the same order.
    """
    site = SiteRenderer(kb, implementations, guides, repository=repository, site_url=site_url)
    site.prepare()  # what every task shares, computed once before any worker starts
    with contextlib.closing(run_tasks(site.tasks(schema), jobs)) as parts:  # closed early: the workers stop
        for part in parts:
            for name, content in part.items():
                yield name, with_math_assets(name, content)


def with_math_assets(name: str, content: str | bytes) -> str | bytes:
    """A page whose titles hold math, with KaTeX's stylesheet and scripts (only there)."""
    if name.endswith(".md") and isinstance(content, str) and f'class="{markup.MATH_CLASS}"' in content:
        css, *scripts = (href(name, asset) for asset in MATH_ASSETS)
        return content + f'\n<link rel="stylesheet" href="{css}">\n' + "".join(
            f'<script src="{src}"></script>\n' for src in scripts)
    return content
