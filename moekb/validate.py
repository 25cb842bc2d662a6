"""Every rule a paper entry and the taxonomy must satisfy, reported all at once as file:line.

Structure and types come from the pydantic models in :mod:`moekb.model`; the rules here are the
ones a schema cannot express: controlled vocabularies, identifier syntax, dates, and uniqueness
across entries. Each rule reports against the line of the value it is about.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections import defaultdict
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from moekb import identifiers
from moekb.errors import Problem
from moekb.fields import IDENTIFIERS
from moekb.model import Paper, Perspective, Gap, Taxonomy, Vocabularies
from moekb.source import Document

M = TypeVar("M")

FIRST_YEAR = 1990


def next_year() -> int:
    return dt.date.today().year + 1


def describe_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a mapping",
            type(None): "nothing (null)", str: "a string"}.get(type(value), type(value).__name__)


def structural_problems(doc: Document, exc: ValidationError, fields: list[str], prefix: tuple = ()) -> list[Problem]:
    """Translate pydantic's errors into sentences a contributor understands, with lines."""
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        name = ".".join(str(part) for part in err["loc"]) or "entry"
        kind, value = err["type"], err.get("input")
        if kind == "missing":
            parent = loc[:-1]
            problems.append(doc.problem(parent, f"missing required field '{loc[-1]}'"))
            continue
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(fields)})"
            hint = hint if len(err["loc"]) == 1 else ""
            problems.append(doc.problem(loc, f"unknown field '{loc[-1]}'{hint}"))
            continue
        if kind in {"string_too_short", "string_pattern_mismatch"}:
            message = f"{name}: must not be empty"
        elif kind == "too_short":
            message = f"{name}: must list at least one item"
        elif kind == "string_type" and isinstance(value, (int, float)) and name == "arxiv":
            message = (f"arxiv: must be a quoted string: unquoted, YAML reads it as the number {value!r} "
                       f"(and drops trailing zeros); write arxiv: \"...\" in quotes")
        elif kind == "string_type":
            message = f"{name}: expected a string, got {describe_type(value)}"
        elif kind in {"int_type", "int_parsing", "int_from_float"}:
            message = f"{name}: expected a whole number, got {describe_type(value)}"
        elif kind == "list_type":
            message = f"{name}: expected a list, got {describe_type(value)}"
        elif kind in {"bool_type", "bool_parsing"}:
            message = f"{name}: expected true or false, got {describe_type(value)}"
        elif kind.startswith("date") or kind.startswith("datetime"):
            message = f"{name}: expected a date written YYYY-MM-DD"
        elif kind in {"model_type", "dict_type"}:
            message = f"{name}: expected a mapping of fields, got {describe_type(value)}"
        else:
            message = f"{name}: {err['msg']}"
        problems.append(doc.problem(loc, message))
    return problems


def build(doc: Document, adapter: TypeAdapter, fields: list[str], prefix: tuple = ()) -> tuple[Any, list[Problem]]:
    value = doc.data
    for key in prefix:
        value = value[key]
    try:
        return adapter.validate_python(value), []
    except ValidationError as exc:
        return None, structural_problems(doc, exc, fields, prefix)


def build_taxonomy(perspectives: Document, gaps: Document, vocabularies: Document) -> tuple[Taxonomy | None, list[Problem]]:
    """The taxonomy from its three files, with every structural and uniqueness problem."""
    parsed = {}
    problems: list[Problem] = []
    for name, doc, adapter, model in (
        ("perspectives", perspectives, TypeAdapter(list[Perspective]), Perspective),
        ("gaps", gaps, TypeAdapter(list[Gap]), Gap),
        ("vocabularies", vocabularies, TypeAdapter(Vocabularies), Vocabularies),
    ):
        parsed[name], found = build(doc, adapter, list(model.model_fields))
        problems += found
    if problems:
        return None, problems
    taxonomy = Taxonomy(parsed["perspectives"], parsed["gaps"], parsed["vocabularies"])
    seen: dict[str, tuple] = {}
    for i, perspective in enumerate(taxonomy.perspectives):
        for kind, ident, loc in [("perspective", perspective.id, (i, "id"))] + [
            ("sub-category", sub.id, (i, "subcategories", j, "id")) for j, sub in enumerate(perspective.subcategories)
        ]:
            if not identifiers.SLUG.match(ident):
                problems.append(perspectives.problem(loc, f"{kind} id {ident!r} must be a lowercase slug"))
            if ident in seen:
                problems.append(perspectives.problem(loc, f"{kind} id '{ident}' is used twice (first at line {seen[ident]})"))
            seen.setdefault(ident, perspectives.line(loc))
    for doc, items, label in ((gaps, taxonomy.gaps, "gap"),):
        ids = [g.id for g in items]
        for i, ident in enumerate(ids):
            if ids.index(ident) != i:
                problems.append(doc.problem((i, "id"), f"{label} id '{ident}' is used twice"))
    for key in Vocabularies.model_fields:
        terms = getattr(taxonomy.vocabularies, key)
        spellings: dict[str, int] = {}
        for i, term in enumerate(terms):
            for spelling in [term.id, *term.aliases]:
                if spelling.casefold() in spellings:
                    problems.append(vocabularies.problem((key, i), f"{key}: '{spelling}' is listed twice"))
                spellings[spelling.casefold()] = i
    return (None if problems else taxonomy), problems


PAPER_FIELDS = list(Paper.model_fields)
PAPER_ADAPTER = TypeAdapter(Paper)


def unknown(doc: Document, loc: tuple, kind: str, value: str, allowed: list[str]) -> Problem:
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    return doc.problem(loc, f"unknown {kind} '{value}' ({hint})")


# What `moekb add` writes into the fields only a person can fill (summary, perspective...).
PLACEHOLDER = re.compile(r"^\s*TODO\b")


def placeholder_problems(doc: Document) -> list[Problem]:
    """Every value (or list item) that still holds a TODO placeholder."""
    found = []
    for key, value in doc.data.items():
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, str) and PLACEHOLDER.match(item):
                loc = (key,) if i is None else (key, i)
                found.append(doc.problem(loc, f"{key}: replace the placeholder left by `moekb add`: {item.strip()}"))
    return found


def with_placeholders(problems: list[Problem], placeholders: list[Problem]) -> list[Problem]:
    """A placeholder's line reports the placeholder only, not also "unknown perspective 'TODO...'"."""
    lines = {p.line for p in placeholders}
    return [p for p in problems if p.line not in lines] + placeholders


GENERATION_SUFFIX = re.compile(r",\s*(?:Jr\.?|Sr\.?|II|III|IV)$")  # "Martin Luther King, Jr." keeps its comma


def check_paper(doc: Document, taxonomy: Taxonomy, file_stem: str) -> tuple[Paper | None, list[Problem]]:
    """One entry on its own: structure, vocabularies, identifiers, years. Returns the paper with
    its venue spelled canonically, or None when the entry has problems."""
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else describe_type(doc.data)
        return None, [Problem(doc.path, 1, f"a paper entry must be a mapping of fields, but the file is {what}")]
    placeholders = placeholder_problems(doc)
    paper, problems = build(doc, PAPER_ADAPTER, PAPER_FIELDS)
    if paper is None:
        return None, with_placeholders(problems, placeholders)

    if not identifiers.SLUG.match(paper.id):
        problems.append(doc.problem(("id",), f"id {paper.id!r} must be a lowercase slug of a-z, 0-9 and '-' (e.g. mustafa2022limoe)"))
    if paper.id != file_stem:
        problems.append(doc.problem(("id",), f"id '{paper.id}' differs from the file name '{file_stem}.yaml': they must be equal"))

    for i, author in enumerate(paper.authors):
        if "," in GENERATION_SUFFIX.sub("", author):  # "Lovelace, Ada": also family, given to BibTeX
            problems.append(doc.problem(("authors", i), f"authors: write {author!r} as the full name in reading order, "
                                        "without a comma (e.g. \"Ada Lovelace\"; a team as \"Kimi Team\")"))
    if paper.kind is not None and paper.kind not in taxonomy.paper_kind:
        problems.append(unknown(doc, ("kind",), "kind", paper.kind, list(taxonomy.paper_kind)))
    if paper.is_survey:
        for key in ("perspective", "subcategory", "method"):
            if getattr(paper, key) is not None:
                problems.append(doc.problem((key,), f"{key}: a survey has none (surveys are listed on their own page)"))
    else:
        for key in ("perspective", "subcategory"):
            if getattr(paper, key) is None:
                problems.append(doc.problem(("id",), f"missing required field '{key}' (only a survey has none)"))
    if paper.domain not in taxonomy.domain:
        problems.append(unknown(doc, ("domain",), "domain", paper.domain, list(taxonomy.domain)))
    if paper.method is not None:
        problems += method_problems(doc, paper.method, taxonomy)
    if paper.perspective is not None and paper.perspective not in taxonomy.perspective:
        problems.append(unknown(doc, ("perspective",), "perspective", paper.perspective, list(taxonomy.perspective)))
    if paper.subcategory is not None and paper.subcategory not in taxonomy.subcategory:
        problems.append(unknown(doc, ("subcategory",), "sub-category", paper.subcategory, list(taxonomy.subcategory)))
    elif paper.subcategory is not None and paper.perspective in taxonomy.perspective and taxonomy.subcategory[paper.subcategory][0].id != paper.perspective:
        owner = taxonomy.subcategory[paper.subcategory][0].id
        allowed = ", ".join(s.id for s in taxonomy.perspective[paper.perspective].subcategories)
        problems.append(doc.problem(("subcategory",), f"sub-category '{paper.subcategory}' belongs to perspective "
                                    f"'{owner}', not '{paper.perspective}' (its sub-categories: {allowed})"))
    for key, vocabulary, kind in (("modalities", taxonomy.modality, "modality"), ("gaps", taxonomy.gap, "research gap")):
        values = getattr(paper, key)
        for i, value in enumerate(values):
            if value not in vocabulary:
                problems.append(unknown(doc, (key, i), kind, value, list(vocabulary)))
            elif values.index(value) != i:
                problems.append(doc.problem((key, i), f"{key}: '{value}' is listed twice"))
    canonical_venue = None
    if paper.venue is not None:
        canonical_venue = taxonomy.vocabularies.venue_ids.get(paper.venue.casefold())
        if canonical_venue is None:
            problems.append(unknown(doc, ("venue",), "venue", paper.venue, list(taxonomy.venue)))
    kinds = [k.id for k in taxonomy.vocabularies.entry_kinds]
    if paper.bibtex_type is not None and paper.bibtex_type not in kinds:
        problems.append(unknown(doc, ("bibtex_type",), "bibtex_type", paper.bibtex_type, kinds))

    if not any(getattr(paper, name) for name in IDENTIFIERS):
        problems.append(doc.problem(("id",), "an entry needs at least one identifier: " + ", ".join(IDENTIFIERS[:-1])
                                    + " or " + IDENTIFIERS[-1]))
    checks = [("arxiv", paper.arxiv and identifiers.arxiv_problem(paper.arxiv)),
              ("doi", paper.doi and identifiers.doi_problem(paper.doi)),
              ("url", paper.url and identifiers.url_problem("url", paper.url)),
              ("code", paper.code and identifiers.url_problem("code", paper.code))]
    checks += [(("verified_from", i), identifiers.url_problem("verified_from", u)) for i, u in enumerate(paper.verified_from)]
    checks += [("references_from", paper.references_from and identifiers.references_problem(paper.references_from))]
    problems += source_problems(doc, paper)
    for key, message in checks:
        if message:
            problems.append(doc.problem(key if isinstance(key, tuple) else (key,), message))

    if not FIRST_YEAR <= paper.year <= next_year():
        problems.append(doc.problem(("year",), f"year {paper.year} is outside {FIRST_YEAR}..{next_year()}"))
    elif paper.arxiv and not identifiers.arxiv_problem(paper.arxiv):
        first = identifiers.arxiv_year(paper.arxiv)
        if paper.year < first:
            problems.append(doc.problem(("year",), f"year {paper.year} is earlier than {first}, the year of "
                                        f"its arXiv identifier {paper.arxiv}"))
    for i, target in enumerate(paper.cites):
        if target == paper.id:
            problems.append(doc.problem(("cites", i), f"cites: an entry cannot cite itself ('{target}')"))
        elif paper.cites.index(target) != i:
            problems.append(doc.problem(("cites", i), f"cites: '{target}' is listed twice"))
    problems = with_placeholders(problems, placeholders)
    if problems:
        return None, problems
    if canonical_venue != paper.venue:
        paper = paper.model_copy(update={"venue": canonical_venue})
    paper._path = doc.path
    return paper, []


def method_problems(doc: Document, method, taxonomy: Taxonomy) -> list[Problem]:
    """Vocabularies and the relations between a method's numbers."""
    problems = []
    if method.routing is not None and method.routing not in taxonomy.routing:
        problems.append(unknown(doc, ("method", "routing"), "routing", method.routing, list(taxonomy.routing)))
    for i, value in enumerate(method.placement):
        if value not in taxonomy.placement:
            problems.append(unknown(doc, ("method", "placement", i), "placement", value, list(taxonomy.placement)))
        elif method.placement.index(value) != i:
            problems.append(doc.problem(("method", "placement", i), f"method.placement: '{value}' is listed twice"))
    if method.top_k is not None and method.experts is not None and method.top_k > method.experts:
        problems.append(doc.problem(("method", "top_k"), f"method.top_k: {method.top_k} is more than the "
                                    f"{method.experts} experts"))
    if (method.params_active is not None and method.params_total is not None
            and method.params_active > method.params_total):
        problems.append(doc.problem(("method", "params_active"), f"method.params_active: {method.params_active}B is "
                                    f"more than params_total {method.params_total}B"))
    for i, value in enumerate(method.weights):
        if identifiers.weights_problem(value):
            problems.append(doc.problem(("method", "weights", i), identifiers.weights_problem(value)))
    return problems


def source_problems(doc: Document, paper: Paper) -> list[Problem]:
    """Look-alike domains anywhere; a retired site never the only source."""
    problems = []
    kinds = [identifiers.source_kind(url) for url in paper.verified_from]
    for i, (url, kind) in enumerate(zip(paper.verified_from, kinds)):
        if kind.startswith("look-alike"):
            problems.append(doc.problem(("verified_from", i), f"verified_from: {url!r} is on a {kind}: "
                                        "copy the address exactly from the page you read"))
    if kinds and all(kind == "retired" for kind in kinds):
        problems.append(doc.problem(("verified_from",), "verified_from: a retired site (Papers with Code) cannot be "
                                    "the only source: add the arXiv page, the publisher's or the official repository"))
    return problems


def implementation_problems(doc: Document, taxonomy: Taxonomy, known: set[str], root) -> list[Problem]:
    """Each taxonomy node's ``reference_impl`` and ``notebook`` exist, and ``implements`` names entries."""
    problems = []
    for i, perspective in enumerate(taxonomy.perspectives):
        owners = [((i,), perspective)] + [((i, "subcategories", j), sub) for j, sub in enumerate(perspective.subcategories)]
        for loc, owner in owners:
            for key in ("reference_impl", "notebook"):
                path = getattr(owner, key)
                if path and not (root / path).is_file():
                    problems.append(doc.problem((*loc, key), f"{key}: no file {path} in the project"))
            for k, paper_id in enumerate(owner.implements):
                if paper_id not in known:
                    problems.append(doc.problem((*loc, "implements", k), f"implements: no entry has the id '{paper_id}'"))
    return problems


def check_corpus(papers: list[Paper], docs: dict[str, Document], also_known: set[str] = frozenset()) -> list[Problem]:
    """Rules across entries: unique ids, identifiers and titles; citations that resolve.

    ``docs`` maps each paper's path to its document, for line numbers; ``also_known`` are ids of
    entries that exist but failed their own checks (citing them is not a further error)."""
    problems = []
    groups: dict[tuple[str, str], list[Paper]] = defaultdict(list)
    for paper in papers:
        groups[("id", paper.id)].append(paper)
        groups[("title", identifiers.normalized_title(paper.title))].append(paper)
        if paper.arxiv:
            groups[("arxiv", identifiers.unversioned_arxiv(paper.arxiv))].append(paper)
        if paper.doi:
            groups[("doi", paper.doi.casefold())].append(paper)
    for (kind, value), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        for paper in members[1:]:
            first = members[0]
            field = {"title": "title", "id": "id", "arxiv": "arxiv", "doi": "doi"}[kind]
            what = {"title": "the same title as", "id": "the same id as", "arxiv": f"arXiv id {value} is also on",
                    "doi": f"DOI {value} is also on"}[kind]
            problems.append(docs[paper.path].problem((field,), f"{what} {first.path}:{docs[first.path].line((field,))}"
                                                     + (f" ('{first.title}')" if kind == "title" else "")))
    known = {p.id for p in papers} | set(also_known)
    for paper in papers:
        for i, target in enumerate(paper.cites):
            if target not in known:
                close = difflib.get_close_matches(target, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(docs[paper.path].problem(("cites", i), f"cites: no entry has the id '{target}'{hint}"))
    return problems
