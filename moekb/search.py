"""Search entries for the paper and listing pages, made from the knowledge base instead of parsed from HTML.

Material's search plugin indexes a page by parsing its rendered HTML section by section. With
thousands of paper pages that was a fifth of the whole ``mkdocs build``, and it gave the browser an
index of 11 MB for 2000 papers, most of it BibTeX, Mermaid source, citation lists and source URLs.
Paper pages are therefore left out of the plugin (``search: exclude`` in their front matter, see
:func:`moekb.markup.front_matter`) and the mkdocs hook appends one entry per paper to the index the
plugin wrote: the title, and as text the authors, year, venue, identifiers, sub-category,
modalities and summary, all escaped here because the theme shows an entry's text as HTML.

The pages that list papers (all papers, each perspective, sub-category and gap, the citation
graph) grow with the corpus too, and their tables would fill the index with every title again;
they get one entry each: their title and the text that describes them. The source-code pages
get one entry each too, the module's path and its source, as the plugin would have read it from
the page, without parsing thousands of highlighted tokens back out of the HTML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from moekb.markup import html_text
from moekb.model import KnowledgeBase
from moekb.site import (ALL_PAPERS_PAGE, CODE_PAGE_INTRO, GRAPH_PAGE, code_path, gap_path, paper_path, perspective_path,
                        subcategory_path)

INDEX_PATH = Path("search") / "search_index.json"  # where the theme's search plugin writes its index


def entry(title: str, paragraphs: list[str]) -> dict[str, str]:
    return {"title": html_text(title), "text": " ".join(f"<p>{html_text(p)}</p>" for p in paragraphs if p)}


def search_entries(kb: KnowledgeBase, implementations: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """``{page path (as render_site names it): {"title": ..., "text": ...}}``, HTML-escaped, for
    every page the generator keeps out of the theme's search plugin (``searched=False``);
    ``implementations`` as given to :func:`moekb.site.render_site`."""
    tax = kb.taxonomy
    entries = {ALL_PAPERS_PAGE: entry("All papers", [f"{len(kb.papers)} papers in one table, sortable and filterable."])}
    for perspective in tax.perspectives:
        entries[perspective_path(perspective.id)] = entry(perspective.name, [perspective.definition, perspective.description])
        for sub in perspective.subcategories:
            entries[subcategory_path(perspective.id, sub.id)] = entry(
                sub.name, [f"{perspective.name}: {len(kb.in_subcategory(sub.id))} papers.", sub.description])
    for gap in tax.gaps:
        entries[gap_path(gap.id)] = entry(gap.name, ["Research gap.", gap.description])
    citations = sum(1 for paper in kb.papers for cited in paper.cites if cited in kb.paper)
    entries[GRAPH_PAGE] = entry("Citation graph", [f"{len(kb.papers)} papers and {citations} citations within the "
                                                   "knowledge base, to explore by perspective, sub-category, modality, "
                                                   "research gap and year."])
    for paper in kb.papers:
        _, sub = tax.subcategory[paper.subcategory]
        venue = tax.venue[paper.venue].name if paper.venue else "preprint"
        identifiers = [f"arXiv {paper.arxiv}" if paper.arxiv else "", f"DOI {paper.doi}" if paper.doi else ""]
        paragraphs = [
            ", ".join(paper.authors),
            " · ".join(part for part in [str(paper.year), venue, *identifiers] if part),
            " · ".join([sub.name, ", ".join(tax.modality[m].name for m in paper.modalities)]),
            paper.summary,
        ]
        entries[paper_path(paper.id)] = entry(paper.title, paragraphs)
    for module, source in (implementations or {}).items():
        entries[code_path(module)] = entry(module, [CODE_PAGE_INTRO, source])
    return entries


def add_to_search_index(site_dir: Path, entries: dict[str, dict[str, str]], url_of: Callable[[str], str]) -> int:
    """Append ``entries`` to the index in ``site_dir``; ``url_of`` gives a page path's site URL.

    Returns how many were added (0 when the site has no search index, e.g. search is disabled)."""
    index_file = site_dir / INDEX_PATH
    if not index_file.is_file():
        return 0
    index = json.loads(index_file.read_text(encoding="utf-8"))
    index["docs"] += [{"location": url_of(path), **entry} for path, entry in entries.items()]
    index_file.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return len(entries)
