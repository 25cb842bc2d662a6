"""The documentation generator: a pure function from a :class:`KnowledgeBase` to files.

``render_site(kb)`` returns ``{relative path: text}`` for everything under ``docs/generated/``
(bytes for the notebooks' figures);
nothing here touches the disk or mkdocs, so every page can be tested on its own. All contributor
text goes through :mod:`moekb.markup`. Per-paper pages stay out of the global navigation (index
pages list them), so building one page does not cost more as the corpus grows.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import posixpath
from collections import Counter

from markdown.extensions.toc import slugify

from moekb import markup
from moekb.bib import bibtex_entries, highlighted_entry, join_entries
from moekb.charts import GAP_HEATMAP, PAPERS_PER_YEAR, render_charts, year_series
from moekb.graph import LIST_SEPARATOR, citation_graph, explorer_data, graph_graphml, graph_json, summarise
from moekb.identifiers import unique
from moekb.markup import md
from moekb.notebook_page import notebook_page
from moekb.model import KnowledgeBase, Paper, Perspective, Subcategory

HOME_SNIPPET = "snippets/home.md"
VOCABULARY_SNIPPET = "snippets/vocabularies.md"  # included by docs/add-a-paper.md
LATEST = 10
DIAGRAM_PAPERS_PER_SUBCATEGORY = 8
PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE = 10
# moekb.js filters the page's first papers table by every word typed here
FILTER_BOX = ('<input type="search" class="moekb-filter md-input" placeholder="Filter papers by any word" '
              'aria-label="Filter papers">')
NEIGHBOURS_IN_DIAGRAM = 10  # per side of a paper's citation neighbourhood diagram
GRAPH_PAGE = "graph/index.md"
ALL_PAPERS_PAGE = "papers/index.md"
CODE_PAGE_INTRO = "The reference implementation's source, as in the repository."  # also its search entry
CHARTS_PAGE = "charts/index.md"


def paper_path(paper_id: str) -> str:
    return f"papers/{paper_id}.md"


def perspective_path(perspective_id: str) -> str:
    return f"taxonomy/{perspective_id}/index.md"


def subcategory_path(perspective_id: str, subcategory_id: str) -> str:
    return f"taxonomy/{perspective_id}/{subcategory_id}.md"


def gap_path(gap_id: str) -> str:
    return f"gaps/{gap_id}.md"


def code_path(module: str) -> str:
    return f"code/{posixpath.splitext(posixpath.basename(module))[0]}.md"


def guide_path(module: str) -> str:
    """The hand-written guide of a module, ``docs/impls/<stem>.md``, relative to docs/generated/."""
    return f"../impls/{posixpath.splitext(posixpath.basename(module))[0]}.md"


def notebook_path(notebook: str) -> str:
    """The page showing a notebook (``notebooks/x.ipynb`` -> ``notebooks/x.md``)."""
    return f"notebooks/{posixpath.splitext(posixpath.basename(notebook))[0]}.md"


def notebook_download_path(notebook: str) -> str:
    """The notebook file itself, published next to its page for download."""
    return f"notebooks/{posixpath.basename(notebook)}"


def rel(source: str, target: str) -> str:
    """The relative link from generated page ``source`` to generated file ``target``."""
    folder, _, name = target.rpartition("/")  # posixpath.split and dirname, for the paths named here
    up = relative_folder(folder, source.rpartition("/")[0])
    return name if up == "." else f"{up}/{name}"


@functools.lru_cache(maxsize=None)
def relative_folder(target_folder: str, source_folder: str) -> str:
    # Thousands of pages link between a handful of folders: relpath once per pair of folders.
    return posixpath.relpath(target_folder or ".", source_folder or ".")


@functools.lru_cache(maxsize=1 << 12)  # most headings ("Summary", "Links") repeat on every paper page
def heading_slug(heading: str) -> str:
    return slugify(" ".join(markup.reveal_hidden(heading).split()), "-") or "section"


class Anchors:
    """Heading ids as the ``toc`` extension makes them: slugified, and unique within the page."""

    def __init__(self):
        self.used: set[str] = set()

    def new(self, heading: str) -> str:
        return unique(heading_slug(heading), self.used, separator="_", first=1)


def paper_link(source: str, paper: Paper) -> str:
    """An HTML link from generated page ``source`` to a paper's page, its title as the label."""
    return markup.html_link(markup.html_text(paper.title), rel(source, paper_path(paper.id)))


def html_page_start(title: str, anchors: Anchors) -> list[str]:
    """Front matter and H1 of a page written as HTML (moekb.prerendered). Such pages list papers or
    are one, so the theme's search plugin skips them and moekb.search writes their entries."""
    return [markup.front_matter(title, searched=False), markup.html_heading(1, markup.html_text(title), anchors.new(title))]


def is_html_page(path: str) -> bool:
    """Whether the generator writes page ``path`` (as render_site names it) as HTML: the paper
    pages, the pages whose tables list up to every paper (all papers, sub-categories, gaps), and
    the citation graph, which inlines the whole graph."""
    folder, name = posixpath.split(path)
    return name.endswith(".md") and (folder == "papers" or path == GRAPH_PAGE or (name != "index.md" and (
        folder == "gaps" or (folder.startswith("taxonomy/") and folder.count("/") == 1))))


class SiteRenderer:
    """Renders one knowledge base; methods return the text of one page each: Markdown, except the
    pages :func:`is_html_page` names, which are HTML under front matter (moekb.prerendered)."""

    def __init__(self, kb: KnowledgeBase, implementations: dict[str, str] | None = None,
                 guides: set[str] | frozenset = frozenset()):
        self.kb = kb
        self.tax = kb.taxonomy
        self.implementations = implementations or {}
        self.guides = guides
        # written once for all papers: the paper pages and papers.bib show the same entries
        self.bibtex = bibtex_entries(kb.papers, kb.taxonomy)
        self._sibling_items: dict[str, str] = {}

    # -- small pieces ---------------------------------------------------------------------
    def papers_table(self, source: str, papers: list[Paper], *, columns=("year", "venue", "modalities")) -> str:
        """The papers as a sortable table, newest first, in raw HTML: tables list up to every paper
        of the knowledge base, and Python-Markdown's inline patterns over thousands of Markdown
        rows would cost more than the rest of the page. Its ``.md`` links are resolved by the hook."""
        if not papers:
            return "<p><em>No papers yet.</em></p>"
        text, link = markup.html_text, markup.html_link
        header = ["Paper", *[c.capitalize() for c in columns]]
        rows = []
        for paper in sorted(papers, key=lambda p: (-p.year, p.title.casefold())):
            perspective, sub = self.tax.subcategory[paper.subcategory]
            cells = {
                "year": str(paper.year),
                "venue": text(paper.venue) if paper.venue else "preprint",
                "modalities": ", ".join(text(m) for m in paper.modalities),
                "perspective": text(perspective.id),
                "sub-category": link(text(sub.name), rel(source, subcategory_path(perspective.id, sub.id))),
            }
            rows.append([paper_link(source, paper), *[cells[c] for c in columns]])
        return markup.html_table(header, rows, attrs='class="moekb-table"')

    def implementation_links(self, source: str, owner: Perspective | Subcategory) -> list[str]:
        """List items (HTML) linking the owner's reference implementation, its guide and notebook."""
        items, link, code = [], markup.html_link, markup.html_code
        module = getattr(owner, "reference_impl", None)
        if module and module in self.implementations:
            items.append(f"Reference implementation: {link(code(module), rel(source, code_path(module)))}")
            guide = guide_path(module)
            if posixpath.basename(guide) in self.guides:
                items.append(f"How it maps to the paper, and what its tests check: {link('guide', rel(source, guide))}")
        notebook = getattr(owner, "notebook", None)
        if notebook and posixpath.basename(notebook) in self.kb.notebooks:
            items.append(f"Notebook: {link(code(notebook), rel(source, notebook_path(notebook)))}")
        return items

    # -- pages ----------------------------------------------------------------------------
    def vocabulary_snippet(self) -> str:
        """Every value a contributor may write, from the taxonomy, so the guide never goes stale."""
        prefix = "generated/"  # included into docs/add-a-paper.md, so links resolve from there
        tax = self.tax
        out = ["#### Perspectives and sub-categories", "",
               "| `perspective` | `subcategory` | What belongs there |", "|---|---|---|"]
        for perspective in tax.perspectives:
            for sub in perspective.subcategories:
                out.append(f"| [{markup.code(perspective.id)}]({prefix}{perspective_path(perspective.id)}) | "
                           f"[{markup.code(sub.id)}]({prefix}{subcategory_path(perspective.id, sub.id)}) | "
                           f"**{md(sub.name)}**: {md(sub.description)} |")
        out += ["", "#### Modalities (`modalities`)", "", "| id | Meaning |", "|---|---|"]
        out += [f"| {markup.code(m.id)} | {md(m.name)} |" for m in tax.vocabularies.modalities]
        out += ["", "#### Research gaps (`gaps`)", "", "| id | Tag a paper when it... |", "|---|---|"]
        out += [f"| [{markup.code(g.id)}]({prefix}{gap_path(g.id)}) | **{md(g.name)}**: {md(g.description)} |" for g in tax.gaps]
        out += ["", "#### Venues (`venue`)", "", "| id | Venue | Also accepted |", "|---|---|---|"]
        out += [f"| {markup.code(v.id)} | {md(v.name)} | {', '.join(markup.code(a) for a in v.aliases)} |"
                for v in tax.vocabularies.venues]
        out += ["", "#### BibTeX entry types (`bibtex_type`)", "", "| id | Meaning |", "|---|---|"]
        out += [f"| {markup.code(k.id)} | {md(k.name)} |" for k in tax.vocabularies.entry_kinds]
        return "\n".join(out) + "\n"

    def home_snippet(self) -> str:
        prefix = "generated/"  # the snippet is included into docs/index.md, so links resolve from there
        lines = ["| Perspective | Sub-categories | Papers |", "|---|---|---|"]
        for perspective in self.tax.perspectives:
            count = len(self.kb.in_perspective(perspective.id))
            lines.append(f"| [{md(perspective.name)}]({prefix}{perspective_path(perspective.id)}) | "
                         f"{len(perspective.subcategories)} | {count} |")
        lines.append(f"| **All** | {len(self.tax.subcategory)} | **{len(self.kb.papers)}** |")
        latest = sorted(self.kb.papers, key=lambda p: (p.added or dt.date(p.year, 1, 1), p.id), reverse=True)[:LATEST]
        lines += ["", "### Latest additions", ""]
        for paper in latest:
            added = f" (added {paper.added.isoformat()})" if paper.added else ""
            lines.append(f"- [{md(paper.title)}]({prefix}{paper_path(paper.id)}), {paper.year}{added}")
        return "\n".join(lines) + "\n"

    def taxonomy_index(self) -> str:
        source = "taxonomy/index.md"
        diagram = ["flowchart LR", '  root["Multimodal MoE"]']
        for i, perspective in enumerate(self.tax.perspectives):
            count = len(self.kb.in_perspective(perspective.id))
            diagram.append(f'  root --> P{i}["{markup.mermaid_label(perspective.name)} {count}"]')
            for j, sub in enumerate(perspective.subcategories):
                n = len(self.kb.in_subcategory(sub.id))
                diagram.append(f'  P{i} --> P{i}S{j}["{markup.mermaid_label(sub.name)} {n}"]')
        out = ["# Taxonomy", "",
               "The survey (arXiv [2605.27431](https://arxiv.org/abs/2605.27431)) looks at multimodal MoE from three "
               "perspectives; a fourth section, *foundations*, holds the sparse-MoE papers they build on. "
               "Numbers are papers in this knowledge base.", "",
               markup.fence("\n".join(diagram), "mermaid"), ""]
        for perspective in self.tax.perspectives:
            out += [f"## [{md(perspective.name)}]({rel(source, perspective_path(perspective.id))})", "",
                    f"> {md(perspective.definition)}", ""]
            for sub in perspective.subcategories:
                n = len(self.kb.in_subcategory(sub.id))
                out.append(f"- [{md(sub.name)}]({rel(source, subcategory_path(perspective.id, sub.id))}): {n} papers")
            out.append("")
        return "\n".join(out)

    def perspective_page(self, perspective: Perspective) -> str:
        source = perspective_path(perspective.id)
        quote = "Definition quoted from the survey's abstract" if not perspective.background else "Scope"
        out = [markup.title_heading(perspective.name, searched=False), "", f"> {md(perspective.definition)}", ">",
               f"> <small>{quote}.</small>", "", md(perspective.description), ""]
        links = self.implementation_links(source, perspective)
        if links:
            out += ["## Run it", "", markup.html_list(links), ""]
        diagram = ["flowchart LR", f'  P["{markup.mermaid_label(perspective.name)}"]']
        for j, sub in enumerate(perspective.subcategories):
            diagram.append(f'  P --> S{j}["{markup.mermaid_label(sub.name)}"]')
            papers = sorted(self.kb.in_subcategory(sub.id), key=lambda p: (-p.year, p.id))
            for k, paper in enumerate(papers[:DIAGRAM_PAPERS_PER_SUBCATEGORY]):
                diagram.append(f'  S{j} --> S{j}P{k}["{markup.mermaid_label(paper.id)}"]')
            if len(papers) > DIAGRAM_PAPERS_PER_SUBCATEGORY:
                diagram.append(f'  S{j} --> S{j}more["{len(papers) - DIAGRAM_PAPERS_PER_SUBCATEGORY} more"]')
        out += [markup.fence("\n".join(diagram), "mermaid"), ""]
        for sub in perspective.subcategories:
            papers = self.kb.in_subcategory(sub.id)
            target = rel(source, subcategory_path(perspective.id, sub.id))
            # A sub-category's own page lists all its papers; here the most recent keep the page short
            # however large the corpus grows (papers_table sorts the same way, newest first).
            shown = sorted(papers, key=lambda p: (-p.year, p.title.casefold()))[:PAPERS_PER_SUBCATEGORY_ON_PERSPECTIVE]
            out += [f"## [{md(sub.name)}]({target})", "", md(sub.description), "", self.papers_table(source, shown), ""]
            if len(shown) < len(papers):
                out += [f"The {len(shown)} most recent of {len(papers)} papers: [all {len(papers)} papers]({target}).", ""]
        return "\n".join(out)

    def subcategory_page(self, perspective: Perspective, sub: Subcategory) -> str:
        """All papers of a sub-category: HTML, like the paper pages (the table grows with the corpus)."""
        source = subcategory_path(perspective.id, sub.id)
        papers = self.kb.in_subcategory(sub.id)
        text, link, anchors = markup.html_text, markup.html_link, Anchors()
        out = [*html_page_start(sub.name, anchors),
               f"<p>Part of {link(text(perspective.name), rel(source, perspective_path(perspective.id)))}.</p>",
               f"<p>{text(sub.description)}</p>"]
        if sub.source:
            out.append(f"<p><small>Source of this sub-category: {text(sub.source)}</small></p>")
        links = self.implementation_links(source, sub) or self.implementation_links(source, perspective)
        if links:
            out += [markup.html_heading(2, "Run it", anchors.new("Run it")), markup.html_list(links)]
        gaps = Counter(g for p in papers for g in p.gaps)
        if gaps:
            title = "Research gaps addressed here"
            out += [markup.html_heading(2, title, anchors.new(title)), markup.html_list(
                [f"{link(text(self.tax.gap[g].name), rel(source, gap_path(g)))}: {n}" for g, n in sorted(gaps.items())])]
        title = f"Papers ({len(papers)})"
        out += [markup.html_heading(2, title, anchors.new(title)), *([f"<p>{FILTER_BOX}</p>"] if papers else []),
                self.papers_table(source, papers)]
        return "\n".join(out) + "\n"

    def paper_page(self, paper: Paper) -> str:
        """One paper, written as HTML under front matter: see :mod:`moekb.prerendered` for why and
        how mkdocs renders it. Links name the generated ``.md`` pages, as in every other page."""
        source = paper_path(paper.id)
        perspective, sub = self.tax.subcategory[paper.subcategory]
        text, link = markup.html_text, markup.html_link
        anchors = Anchors()
        venue = f"{text(self.tax.venue[paper.venue].name)} ({text(paper.venue)})" if paper.venue else "preprint"
        facts = [("Perspective", link(text(perspective.name), rel(source, perspective_path(perspective.id)))),
                 ("Sub-category", link(text(sub.name), rel(source, subcategory_path(perspective.id, sub.id)))),
                 ("Modalities", ", ".join(text(self.tax.modality[m].name) for m in paper.modalities))]
        if paper.gaps:
            facts.append(("Research gaps", ", ".join(link(text(self.tax.gap[g].name), rel(source, gap_path(g)))
                                                     for g in paper.gaps)))
        out = [*html_page_start(paper.title, anchors),
               f"<p><strong>{', '.join(text(a) for a in paper.authors)}</strong></p>",
               f"<p>{paper.year} · {venue}</p>",
               "<table>\n<tbody>", *[f"<tr>\n<td>{name}</td>\n<td>{value}</td>\n</tr>" for name, value in facts],
               "</tbody>\n</table>"]

        def section(level: int, title: str) -> str:
            return markup.html_heading(level, text(title), anchors.new(title))

        links = []
        if paper.arxiv:
            links.append(f"arXiv {text(paper.arxiv)}: {markup.external_html_link('abstract', paper.arxiv_url)} · "
                         f"{markup.external_html_link('PDF', paper.arxiv_pdf_url)}")
        if paper.doi:
            links.append(f"DOI: {markup.external_html_link(paper.doi, paper.doi_url)}")
        if paper.url:
            links.append(f"Web page: {markup.external_html_link(paper.url, paper.url)}")
        if paper.code:
            links.append(f"Code: {markup.external_html_link(paper.code, paper.code)}")
        out += [section(2, "Summary"), f"<p>{text(paper.summary)}</p>", section(2, "Links"),
                markup.html_list(links) if links else "<p><em>None recorded.</em></p>"]
        cites = [self.kb.paper[i] for i in paper.cites if i in self.kb.paper]
        cited_by = [self.kb.paper[i] for i in self.kb.cited_by[paper.id]]

        def listing(papers: list[Paper], empty: str) -> str:
            if not papers:
                return f"<p><em>{empty}</em></p>"
            return markup.html_list([self.sibling_item(p) for p in papers])

        out += [section(2, "Citations within the knowledge base"),
                section(3, f"Cites ({len(cites)})"), listing(cites, "None recorded."),
                section(3, f"Cited by ({len(cited_by)})"), listing(cited_by, "None in the knowledge base.")]
        if cites or cited_by:
            out += [section(3, "Neighbourhood"),
                    markup.html_code_block(self.neighbourhood_diagram(paper, cites, cited_by), "mermaid")]
        out += [section(2, "BibTeX"), markup.html_code_block(self.bibtex[paper.id], "bibtex", fast_highlight=highlighted_entry),
                section(2, "Sources"), "<p>Metadata checked against:</p>",
                markup.html_list([markup.external_html_link(u, u) for u in paper.verified_from])]
        if paper.notes:
            out.append(markup.html_note("Notes", text(paper.notes)))
        if paper.added:
            out.append(f"<p><small>Added {paper.added.isoformat()}.</small></p>")
        return "\n".join(out) + "\n"

    def sibling_item(self, paper: Paper) -> str:
        """A paper as listed on another paper's page (a paper is listed on the page of every paper
        that cites it or that it cites: made once)."""
        item = self._sibling_items.get(paper.id)
        if item is None:
            # the same from any page in papers/, the folder of the page listing all papers
            item = self._sibling_items[paper.id] = f"{paper_link(ALL_PAPERS_PAGE, paper)} ({paper.year})"
        return item

    def neighbourhood_diagram(self, paper: Paper, cites: list[Paper], cited_by: list[Paper]) -> str:
        """Papers citing this one on the left, papers it cites on the right (arrows point to the cited)."""
        label = lambda p: markup.mermaid_label(f"{p.id} {p.year}")  # noqa: E731
        lines = ["flowchart LR", f'  P["{label(paper)}"]', "  style P stroke-width:3px"]
        for side, papers in (("C", cited_by), ("R", cites)):
            shown = papers[:NEIGHBOURS_IN_DIAGRAM]
            nodes = [f'{side}{k}["{label(p)}"]' for k, p in enumerate(shown)]
            if len(papers) > len(shown):
                nodes.append(f'{side}more["{len(papers) - len(shown)} more"]')
            lines += [f"  {node} --> P" if side == "C" else f"  P --> {node}" for node in nodes]
        return "\n".join(lines)

    def all_papers(self) -> str:
        """Every paper in one table: HTML, like the paper pages beside it (moekb.prerendered)."""
        source = ALL_PAPERS_PAGE
        return "\n".join([
            *html_page_start("All papers", Anchors()),
            f"<p>{len(self.kb.papers)} papers. Click a column header to sort; type to filter.</p>",
            f"<p>{FILTER_BOX}</p>",
            self.papers_table(source, self.kb.papers, columns=("year", "venue", "perspective", "sub-category", "modalities")),
            "",
        ])

    def gaps_index(self) -> str:
        source = "gaps/index.md"
        perspectives = self.tax.perspectives
        header = "| Research gap | " + " | ".join(md(p.id) for p in perspectives) + " | Total |"
        lines = ["# Research gaps", "",
                 "The survey names these open problems. Each cell counts the papers of a perspective tagged with "
                 "the gap; a thin cell is where research is thin. Click a number for the papers.", "",
                 header, "|---|" + "---:|" * (len(perspectives) + 1)]
        for gap in self.tax.gaps:
            cells = []
            for p in perspectives:
                n = sum(1 for paper in self.kb.in_perspective(p.id) if gap.id in paper.gaps)
                cells.append(f"[{n}]({rel(source, gap_path(gap.id))}#{p.id})" if n else "0")
            total = sum(1 for paper in self.kb.papers if gap.id in paper.gaps)
            lines.append(f"| [{md(gap.name)}]({rel(source, gap_path(gap.id))}) | " + " | ".join(cells) + f" | {total} |")
        lines.append("")
        for gap in self.tax.gaps:
            lines += [f"## {md(gap.name)}", "", md(gap.description), ""]
        return "\n".join(lines)

    def gap_page(self, gap) -> str:
        """The papers tagged with a gap, per perspective (``#<perspective id>``): HTML, like the paper pages."""
        source = gap_path(gap.id)
        anchors = Anchors()
        out = [*html_page_start(gap.name, anchors), f"<p>{markup.html_text(gap.description)}</p>"]
        for perspective in self.tax.perspectives:
            papers = [p for p in self.kb.in_perspective(perspective.id) if gap.id in p.gaps]
            anchors.used.add(perspective.id)
            out += [markup.html_heading(2, markup.html_text(perspective.name), perspective.id),
                    self.papers_table(source, papers)]
        return "\n".join(out) + "\n"

    def downloads(self) -> str:
        return "\n".join([
            "# Downloads", "",
            "Open exports of the whole knowledge base, regenerated on every build.", "",
            f"- [papers.bib](papers.bib): BibTeX, one entry per paper, keyed by id ({len(self.kb.papers)} entries).",
            "- [papers.json](papers.json): every entry with all its fields, plus the taxonomy.",
            "- [paper.schema.json](paper.schema.json): the JSON Schema of a paper entry, for editors.",
            "- [graph.json](graph.json): the citation graph as networkx node-link JSON "
            '(`nx.node_link_graph(data, edges="edges")` reads it).',
            f"- [graph.graphml](graph.graphml): the citation graph as GraphML (Gephi, Cytoscape, yEd); "
            f"lists such as authors are joined with `{LIST_SEPARATOR.strip()}`.",
            "",
        ])

    def graph_page(self, graph) -> str:
        """The explorer: a container the script fills, the graph inlined as JSON, and the numbers.
        HTML, like the paper pages (moekb.prerendered): the inlined graph is megabytes at scale,
        which Python-Markdown would scan line by line."""
        source = GRAPH_PAGE
        summary = summarise(graph)
        text, link = markup.html_text, markup.html_link
        anchors = Anchors()
        out = [*html_page_start("Citation graph", anchors),
               "<p>Every paper is a node, coloured by perspective and sized by how often it is cited within the "
               "knowledge base; an arrow points from a paper to each paper it cites. Each perspective is a row, each "
               "sub-category a disc with its most cited papers in the middle. Hover over a node for its title and "
               "year, click it to open the paper; scroll to zoom, drag to pan.</p>",
               f'<div id="moekb-explorer" class="moekb-explorer" data-papers="{summary.nodes}" '
               f'data-citations="{summary.edges}"><noscript>The explorer needs JavaScript; the list of papers '
               "below works without it.</noscript></div>",
               # Executable, not type="application/json": Material's instant navigation re-runs the inline
               # scripts of the new page as JavaScript (and drops their attributes) before the explorer starts.
               f'<script id="moekb-graph-data">window.moekbGraphData = {markup.json_for_script(explorer_data(self.kb, graph))};</script>',
               f"<p><strong>{summary.nodes} papers, {summary.edges} citations, {summary.components} connected "
               f"components</strong> (the largest holds {summary.largest_component} papers; {summary.isolated} papers "
               f"neither cite nor are cited within the knowledge base). Download the graph as "
               f"{link('graph.json', rel(source, 'downloads/graph.json'))} or "
               f"{link('graph.graphml', rel(source, 'downloads/graph.graphml'))}.</p>"]
        if summary.cycles:
            cycles = [" → ".join(text(i) for i in cycle) for cycle in summary.cycles]
            out.append('<div class="admonition warning">\n<p class="admonition-title">Citation cycles</p>\n'
                       "<p>These papers cite each other in a loop; check that each <code>cites</code> entry is right:</p>\n"
                       f"{markup.html_list(cycles)}\n</div>")
        title = "Most cited within the knowledge base"
        out.append(markup.html_heading(2, text(title), anchors.new(title)))
        rows = [[paper_link(source, self.kb.paper[i]), str(self.kb.paper[i].year), str(n), f"{rank:.4f}"]
                for i, n, rank in summary.most_cited]
        out.append(markup.html_table(["Paper", "Year", "Cited by", "PageRank"], rows, attrs='class="moekb-table"')
                   if rows else "<p><em>No citations recorded yet.</em></p>")
        # The explorer opens a paper through these links, so mkdocs, not the script, decides the URLs.
        # As pymdownx.details would write "??? info": the list holds every paper.
        items = [f'<a href="{rel(source, paper_path(paper.id))}" data-moekb-paper="{text(paper.id)}">'
                 f"{text(paper.title)}</a> ({paper.year})" for paper in self.kb.papers]
        title = "Papers in the graph"
        out += [markup.html_heading(2, text(title), anchors.new(title)),
                f'<details class="info">\n<summary>All {summary.nodes} papers</summary>\n{markup.html_list(items)}\n</details>']
        return "\n".join(out) + "\n"

    def charts_page(self) -> str:
        years, series = year_series(self.kb)
        header = ["Year", *[md(label) for label, _, _ in series], "All"]
        rows = [[str(year), *[str(counts[i]) for _, _, counts in series], str(sum(c[i] for _, _, c in series))]
                for i, year in enumerate(years)]
        return "\n".join([
            "# Charts", "",
            "## Papers per year, by perspective", "",
            f"![Stacked bar chart of papers per year, coloured by perspective]({PAPERS_PER_YEAR})", "",
            '??? info "The numbers"', "", *["    " + line for line in markup.table(header, rows).splitlines()], "",
            "## Research gaps by perspective", "",
            "Each cell counts the papers of a perspective tagged with a research gap; an empty cell is where "
            f"research is thin. The [research gaps]({rel(CHARTS_PAGE, 'gaps/index.md')}) page lists the papers.", "",
            f"![Heat map of papers per research gap and perspective]({GAP_HEATMAP})", "",
            f"The [citation graph]({rel(CHARTS_PAGE, GRAPH_PAGE)}) shows how the papers build on each other.", "",
        ])

    def code_page(self, module: str, text: str) -> str:
        guide = guide_path(module)
        intro = CODE_PAGE_INTRO
        if posixpath.basename(guide) in self.guides:
            intro += f" The [guide]({rel(code_path(module), guide)}) explains it next to the paper."
        # Out of the theme's search plugin, which would parse every highlighted token of the
        # source back out of the HTML; moekb.search indexes the source text itself.
        return "\n".join([markup.front_matter(module, searched=False), f"# {markup.code(module)}", "", intro, "",
                          markup.fence(text, "python"), ""])

    def papers_json(self) -> str:
        """``{"gaps": [...], "papers": [...], "perspectives": [...]}``, one paper per line: readable
        and diffable, and written by json's C encoder (``indent`` takes the pure-Python one, a
        fifth of a second at 2000 papers)."""

        def dumps(value) -> str:
            return json.dumps(value, ensure_ascii=False, sort_keys=True)

        papers = ",\n".join(dumps(p.model_dump(mode="json", exclude_none=True)) for p in self.kb.papers)
        return "\n".join([
            "{" + f'"gaps": {dumps([g.model_dump(mode="json") for g in self.tax.gaps])},',
            '"papers": [', papers, "],",
            f'"perspectives": {dumps([p.model_dump(mode="json", exclude_none=True) for p in self.tax.perspectives])}' + "}",
        ]) + "\n"


def render_site(kb: KnowledgeBase, *, implementations: dict[str, str] | None = None,
                schema: dict | None = None, guides: set[str] | frozenset = frozenset()) -> dict[str, str | bytes]:
    """Every generated file, keyed by its path under ``docs/generated/``.

    ``implementations`` maps a reference-implementation path (as named in the taxonomy) to its
    source text; ``schema`` is the paper JSON Schema to publish; ``guides`` are the file names of the
    hand-written pages in ``docs/impls/`` (``moe_llava.md`` explains ``reference_impls/moe_llava.py``).
    """
    site = SiteRenderer(kb, implementations, guides)
    files = {
        HOME_SNIPPET: site.home_snippet(),
        VOCABULARY_SNIPPET: site.vocabulary_snippet(),
        "taxonomy/index.md": site.taxonomy_index(),
        ALL_PAPERS_PAGE: site.all_papers(),
        "gaps/index.md": site.gaps_index(),
        "downloads/index.md": site.downloads(),
        "downloads/papers.bib": join_entries(site.bibtex.values()),
        "downloads/papers.json": site.papers_json(),
    }
    if schema is not None:
        files["downloads/paper.schema.json"] = json.dumps(schema, indent=2) + "\n"
    for perspective in kb.taxonomy.perspectives:
        files[perspective_path(perspective.id)] = site.perspective_page(perspective)
        for sub in perspective.subcategories:
            files[subcategory_path(perspective.id, sub.id)] = site.subcategory_page(perspective, sub)
    for gap in kb.taxonomy.gaps:
        files[gap_path(gap.id)] = site.gap_page(gap)
    for paper in kb.papers:
        files[paper_path(paper.id)] = site.paper_page(paper)
    for module, text in sorted(site.implementations.items()):
        files[code_path(module)] = site.code_page(module, text)
    for name, text in kb.notebooks.items():
        files[notebook_download_path(name)] = text
        page, figures = notebook_page(name, text, download=posixpath.basename(notebook_download_path(name)))
        files[notebook_path(name)] = page
        folder = posixpath.splitext(notebook_path(name))[0]
        files.update({f"{folder}/{figure}": data for figure, data in figures.items()})
    graph = citation_graph(kb)
    files[GRAPH_PAGE] = site.graph_page(graph)
    files["downloads/graph.json"] = graph_json(graph)
    files["downloads/graph.graphml"] = graph_graphml(graph)
    files[CHARTS_PAGE] = site.charts_page()
    for name, svg in render_charts(kb).items():
        files[posixpath.join(posixpath.dirname(CHARTS_PAGE), name)] = svg
    return files
