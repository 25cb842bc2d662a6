"""BibTeX for the knowledge base, written and read with bibtexparser 2.

Each entry's key is the paper id. Titles are wrapped in an extra pair of braces so BibTeX styles
keep their capitalisation (MoE, LLaVA); Unicode is written as LaTeX by bibtexparser's encoding
middleware and decoded again on parsing, so a file written here parses back to the same fields.
"""

from __future__ import annotations

import re

import bibtexparser
from bibtexparser import middlewares as mw
from bibtexparser.library import Library
from bibtexparser.middlewares.middleware import BlockMiddleware
from pylatexenc.latex2text import LatexNodes2Text, MacroTextSpec, get_default_latex_context_db
from pylatexenc.latexencode import UnicodeToLatexEncoder
from bibtexparser.model import Entry, Field

from moekb.markup import MATH
from moekb.model import Paper, Taxonomy


def default_type(paper: Paper, taxonomy: Taxonomy) -> str:
    if paper.bibtex_type:
        return paper.bibtex_type
    if paper.venue is None:
        return "misc"
    return "article" if paper.venue in taxonomy.journals else "inproceedings"


def entry_fields(paper: Paper, taxonomy: Taxonomy) -> dict[str, str]:
    """The BibTeX fields of one paper, in the order they are written."""
    kind = default_type(paper, taxonomy)
    fields = {"title": paper.title, "author": " and ".join(paper.authors), "year": str(paper.year)}
    venue = taxonomy.venue[paper.venue].name if paper.venue else None
    if kind == "article":
        journal = venue or (f"arXiv preprint arXiv:{paper.arxiv}" if paper.arxiv else None)
        if journal:  # never an invented one: an article whose journal is not recorded has no journal field
            fields["journal"] = journal
    elif kind == "inproceedings" and venue:
        fields["booktitle"] = venue
    elif venue:
        fields["howpublished"] = venue
    if paper.arxiv:
        fields.update(eprint=paper.arxiv, archiveprefix="arXiv")
    if paper.doi:
        fields["doi"] = paper.doi
    url = paper.url or paper.arxiv_url or paper.doi_url
    if url:
        fields["url"] = url
    return fields


class ProtectTitleCase(BlockMiddleware):
    """Wrap each (already LaTeX-encoded) title in braces, so styles keep its capitals."""

    def __init__(self):
        super().__init__(allow_inplace_modification=True)

    def transform_entry(self, entry: Entry, library: Library) -> Entry:
        title = entry.fields_dict.get("title")
        if title is not None:
            title.value = "{" + title.value + "}"
        return entry


def paper_library(papers: list[Paper], taxonomy: Taxonomy) -> Library:
    library = Library()
    for paper in papers:
        fields = [Field(key, value) for key, value in entry_fields(paper, taxonomy).items()]
        library.add(Entry(default_type(paper, taxonomy), paper.id, fields))
    return library


class PlainTextShortcutEncoder(UnicodeToLatexEncoder):
    """pylatexenc's default encoder, except that text it would return unchanged (ASCII without a
    LaTeX special character: most names, titles and URLs) is returned at once. The encoder
    walks every character through its rule tables in Python, which made BibTeX the slowest part
    of rendering thousands of entries; which characters are plain is asked of the encoder itself."""

    def __init__(self):
        super().__init__(conversion_rules=["defaults"])
        printable = map(chr, range(32, 127))  # control characters take the full path (and its warning)
        plain = "".join(ch for ch in printable if UnicodeToLatexEncoder.unicode_to_latex(self, ch) == ch)
        self.needs_encoding = re.compile(f"[^{re.escape(plain)}]")
        self.encoded: dict[str, str] = {}

    def unicode_to_latex(self, s: str) -> str:
        if "$" in s and MATH.search(s):  # inline math ("M$^4$oE") is already LaTeX: kept as written
            return "".join(part if MATH.fullmatch(part) else self.unicode_to_latex(part) for part in MATH.split(s))
        if not self.needs_encoding.search(s):
            return s
        encoded = self.encoded.get(s)  # an author's name is encoded once, not once per paper
        if encoded is None:
            encoded = self.encoded[s] = super().unicode_to_latex(s)
        return encoded


def bibtex_format() -> bibtexparser.BibtexFormat:
    fmt = bibtexparser.BibtexFormat()
    fmt.indent = "  "
    fmt.block_separator = "\n"
    return fmt


def bibtex_entries(papers: list[Paper], taxonomy: Taxonomy) -> dict[str, str]:
    """Each paper's BibTeX entry, LaTeX-encoded, keyed by id, in the order of ``papers``.

    The middlewares run once over one library, in place (it is built here and owned by no one),
    instead of once per paper on deep copies; each entry is then written on its own."""
    library = paper_library(papers, taxonomy)
    stack = [mw.LatexEncodingMiddleware(encoder=PlainTextShortcutEncoder()), ProtectTitleCase(),
             *mw.default_unparse_stack(allow_inplace_modification=True)]
    for middleware in stack:
        library = middleware.transform(library=library)
    fmt = bibtex_format()
    return {paper.id: bibtexparser.write_string(Library([block]), unparse_stack=[], bibtex_format=fmt)
            for paper, block in zip(papers, library.blocks, strict=True)}


def bibtex(papers: list[Paper], taxonomy: Taxonomy) -> str:
    """A BibTeX file for ``papers``, LaTeX-encoded."""
    return join_entries(bibtex_entries(papers, taxonomy).values())


def join_entries(entries) -> str:
    """Entries written by :func:`bibtex_entries` as one file, separated as bibtexparser separates them."""
    return bibtex_format().block_separator.join(entries)


class MathKeepingDecoder(LatexNodes2Text):
    """pylatexenc's decoder that leaves inline math (``M$^4$oE``) as written, as the encoder does, and
    decodes ``\\textasciicircum`` to ``^`` rather than the modifier letter U+02C6."""

    def latex_to_text(self, latex: str, **kwargs) -> str:
        spans: list[str] = []

        def hold(match: re.Match) -> str:
            spans.append(match.group())
            return f"MOEKBMATHSPAN{len(spans) - 1}X"

        text = super().latex_to_text(MATH.sub(hold, latex), **kwargs)
        return re.sub(r"MOEKBMATHSPAN(\d+)X", lambda m: spans[int(m[1])], text)


def latex_decoder() -> LatexNodes2Text:
    context = get_default_latex_context_db().filter_context()
    context.add_context_category("moekb", prepend=True, macros=[MacroTextSpec("textasciicircum", simplify_repl="^")])
    return MathKeepingDecoder(latex_context=context)


def parse_bibtex(text: str) -> Library:
    """Parse BibTeX with LaTeX decoded and title braces removed; the caller must look at
    ``library.failed_blocks``."""
    library = bibtexparser.parse_string(text, append_middleware=[mw.LatexDecodingMiddleware(decoder=latex_decoder())])
    for entry in library.entries:
        title = entry.fields_dict.get("title")
        if title is not None and title.value.startswith("{") and title.value.endswith("}"):
            title.value = title.value[1:-1]
    return library
