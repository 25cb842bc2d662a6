"""Every entry in papers/ round-trips: YAML -> BibTeX -> parse -> the same fields, and `moekb add`
reading that BibTeX back gets the entry's own metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from moekb.add import entries_from_bibtex
from moekb.bib import bibtex, default_type, entry_fields, parse_bibtex
from moekb.load import load_knowledge_base

ROOT = Path(__file__).resolve().parents[2]
KB = load_knowledge_base(ROOT)


@pytest.mark.parametrize("paper", [*KB.papers, *KB.surveys], ids=lambda p: p.id)
def test_entry_goes_to_bibtex_and_back_with_the_same_fields(paper):
    text = bibtex([paper], KB.taxonomy)
    library = parse_bibtex(text)
    assert library.failed_blocks == []
    [entry] = library.entries
    assert (entry.key, entry.entry_type) == (paper.id, default_type(paper, KB.taxonomy))
    assert {field.key: field.value for field in entry.fields} == entry_fields(paper, KB.taxonomy)


@pytest.mark.parametrize("paper", [*KB.papers, *KB.surveys], ids=lambda p: p.id)
def test_add_reads_the_exported_bibtex_back_into_the_entrys_metadata(paper):
    [new] = entries_from_bibtex(bibtex([paper], KB.taxonomy).encode("utf-8"), "papers.bib", KB.taxonomy)
    expected = {"title": paper.title, "authors": paper.authors, "year": paper.year, "arxiv": paper.arxiv,
                "doi": paper.doi, "url": paper.url, "venue": paper.venue, "bibtex_type": default_type(paper, KB.taxonomy)}
    assert {key: new.fields.get(key) for key in expected} == expected
    assert new.comments == {}  # nothing was left out or guessed


def test_the_corpus_is_not_trivially_small():
    assert len(KB.papers) >= 50
    assert sum(1 for p in KB.papers if p.doi) >= 5 and sum(1 for p in KB.papers if p.venue) >= 30
