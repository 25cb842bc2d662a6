"""``moekb add``: a new ``papers/<id>.yaml`` from BibTeX (a file, stdin, several entries at once) or
from command-line flags.

Everything the BibTeX knows is filled in (LaTeX decoded, authors split, the arXiv id and DOI found in
``eprint``, ``doi``, ``url`` or a ``journal = {arXiv preprint arXiv:...}``); the fields only a person
can fill get a ``TODO`` placeholder that ``moekb validate`` rejects until it is replaced.

Nothing is ever overwritten and a failure writes nothing: every entry is read, checked against the
knowledge base (same unversioned arXiv id, DOI or normalised title; same file name) and validated
by the same rules as ``moekb validate`` before the first file is written, and a write that fails
removes the files this run wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import logging
import re
import sys
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bibtexparser.middlewares.names import InvalidNameError, parse_single_name_into_parts, split_multiple_persons_names
from bibtexparser.model import Entry
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from moekb import identifiers
from moekb.bib import parse_bibtex
from moekb.bibtex_syntax import check_bibtex_syntax
from moekb.build import papers_dir_from_env
from moekb.errors import MoekbError, Problem
from moekb.load import load_taxonomy, paper_files, project_root, relative
from moekb.model import Paper, Taxonomy
from moekb.output import write_atomic
from moekb.schema import MODELINE
from moekb.source import decode_utf8, parse_text, read_document
from moekb.validate import PLACEHOLDER, check_paper

COMMAND_LINE = "<command line>"
STDIN = "<stdin>"

# The fields only a person can fill; `moekb validate` rejects these until they are replaced.
PLACEHOLDERS: dict[str, Any] = {
    "perspective": "TODO: engine, learner, adapter or foundations (see the list above)",
    "subcategory": "TODO: one sub-category of that perspective (see the list above)",
    "domain": "TODO: the application domain (see the list above)",
    "modalities": ["TODO: the modalities the method handles (see the list above)"],
    "summary": "TODO: 2-4 sentences in your own words, never copied from the abstract: what the experts "
               "do and why it matters for multimodal learning",
    "verified_from": ["TODO: the page(s) where you checked title, authors, year, ids and venue "
                      "(the arXiv abstract page first)"],
}
OTHERS_PLACEHOLDER = "TODO: the BibTeX ends with 'and others': list every author, in order"
FIELD_ORDER = list(Paper.model_fields)

# Words that make a poor id: "mustafa2022multimodal" says more than "mustafa2022towards".
STOPWORDS = {"a", "an", "the", "on", "of", "for", "to", "toward", "towards", "in", "into", "with", "and",
             "via", "from", "by", "at", "is", "are", "do", "does", "what", "when", "how", "why", "can",
             "beyond", "not", "all", "you", "we", "one"}
CAMEL = re.compile(r"[A-Za-z][A-Z]")  # a coined name: LIMoE, VLMo, GShard (not Mixture-of-Experts)
GENERIC_NAMES = {"moe", "moes", "smoe", "llm", "llms", "mllm", "mllms", "vlm", "vlms", "lvlm", "lvlms", "ai", "ffn", "lora"}
ASCII_LETTERS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ß": "ss", "ł": "l", "đ": "d", "þ": "th",
                               "ı": "i", "ð": "d"})

ARXIV_ID = r"(\d{4}\.\d{4,5}(?:v\d+)?|[a-z]+(?:-[a-z]+)?(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?)"
ARXIV_URL = re.compile(r"^https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/" + ARXIV_ID + r"(?:\.pdf)?/?$", re.I)
ARXIV_IN_TEXT = re.compile(r"\barxiv\b[\s:]*(?:e-?prints?|preprint)?[\s:,]*(?:arxiv[\s:]*)?(?:abs/)?" + ARXIV_ID, re.I)
ARXIV_DOI = re.compile(r"^10\.48550/arxiv\." + ARXIV_ID + "$", re.I)
DOI_URL = re.compile(r"^https?://(?:dx\.)?doi\.org/(10\..+)$", re.I)
DOI_PREFIX = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", re.I)
PREPRINT_VENUE = re.compile(r"^(?:arxiv\b.*|corr|preprint|arxiv\.org|ssrn.*|biorxiv.*|medrxiv.*|openreview\.net)$", re.I)
DBLP_CORR_VOLUME = re.compile(r"^abs/" + ARXIV_ID + "$")  # DBLP: journal = {CoRR}, volume = {abs/2206.02770}
DBLP_HOMONYM = re.compile(r"\s+\d{4}$")  # DBLP tells apart people of the same name: "Wei Li 0001"


@dataclass
class NewEntry:
    """One paper to add: its fields so far, where it came from, and comments to write above fields."""

    path: str  # the BibTeX file (or <stdin>, <command line>) ...
    line: int  # ... and the line its entry starts on (0 for the command line)
    fields: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, list[str]] = field(default_factory=dict)
    key: str = ""  # the BibTeX citation key, to name the entry in messages

    def where(self, message: str) -> Problem:
        return Problem(self.path, self.line, message)

    def describe(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Planned:
    """An entry ready to write: its file, its text, and what is left for a person to fill in."""

    entry: NewEntry
    file: Path
    path: str  # as messages name it, relative to the project
    text: str
    to_fill: list[Problem]


# -- reading BibTeX ---------------------------------------------------------------------------
def read_input(source: str) -> tuple[bytes, str]:
    """The raw bytes of ``source`` (a path, or '-' for stdin) and how messages name it."""
    if source == "-":
        return sys.stdin.buffer.read(), STDIN
    try:
        return Path(source).read_bytes(), source
    except OSError as err:
        raise MoekbError(Problem(source, 0, f"cannot read the file: {err.strerror}")) from None


def entries_from_bibtex(raw: bytes, label: str, taxonomy: Taxonomy) -> list[NewEntry]:
    """Every entry of a BibTeX text, or :class:`MoekbError` naming each mistake and its line."""
    text = decode_utf8(raw, label)
    kinds = [kind.id for kind in taxonomy.vocabularies.entry_kinds]
    scan = check_bibtex_syntax(text, label, kinds)
    if scan.problems:
        raise MoekbError(scan.problems)
    with quiet_bibtexparser():
        library = parse_bibtex(text)
    problems = [Problem(label, block.start_line + 1, f"BibTeX that cannot be read: {failure(block)}")
                for block in library.failed_blocks]
    entries = []
    for entry in library.entries:
        try:
            entries.append(entry_from_bibtex(entry, label, taxonomy))
        except MoekbError as err:
            problems += err.problems
    if problems:
        raise MoekbError(problems)
    return entries


@contextlib.contextmanager
def quiet_bibtexparser():
    """bibtexparser logs each failed block; those are reported as problems with lines instead."""
    logger = logging.getLogger("bibtexparser")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def failure(block) -> str:
    error = getattr(block, "error", None)
    return getattr(error, "abort_reason", None) or str(error or "") or type(block).__name__


def entry_from_bibtex(entry: Entry, label: str, taxonomy: Taxonomy) -> NewEntry:
    values = {f.key.lower(): (" ".join(str(f.value).split()), f.start_line + 1) for f in entry.fields}
    new = NewEntry(label, entry.start_line + 1, key=entry.key)
    problems: list[Problem] = []

    def text(name: str) -> str | None:
        return values[name][0] or None if name in values else None

    def at(name: str, message: str) -> None:
        problems.append(Problem(label, values[name][1], message))

    new.fields["bibtex_type"] = entry.entry_type.lower()
    if text("title"):
        new.fields["title"] = text("title")
    if text("author"):
        try:
            authors, others = split_authors(text("author"))
        except InvalidNameError as err:
            at("author", f"author: cannot split the names: {err}")
        else:
            new.fields["authors"] = authors + ([OTHERS_PLACEHOLDER] if others else [])
    if text("year"):
        if re.fullmatch(r"\d{4}", text("year")):
            new.fields["year"] = int(text("year"))
        else:
            at("year", f"year: {text('year')!r} is not a year (expected four digits, e.g. 2022)")

    arxiv_sources = []  # (field, candidate id, explicit: the field exists only to hold an arXiv id)
    prefix = (text("archiveprefix") or text("eprinttype") or "arxiv").lower()
    if text("eprint") and prefix == "arxiv":
        arxiv_sources.append(("eprint", re.sub(r"^arxiv:\s*", "", text("eprint"), flags=re.I), True))
    if text("doi"):
        doi = DOI_PREFIX.sub("", text("doi"))
        arxiv_doi = ARXIV_DOI.match(doi)
        if arxiv_doi:  # arXiv's DataCite DOI names the preprint, which the arxiv field already does
            arxiv_sources.append(("doi", arxiv_doi[1], True))
        elif problem := identifiers.doi_problem(doi):
            at("doi", problem)
        else:
            new.fields["doi"] = doi
    if text("url"):
        url = text("url")
        arxiv_url, doi_url = ARXIV_URL.match(url), DOI_URL.match(url)
        if arxiv_url:
            arxiv_sources.append(("url", arxiv_url[1], True))
        elif doi_url and not identifiers.doi_problem(doi_url[1]):
            new.fields.setdefault("doi", doi_url[1])
        elif identifiers.url_problem("url", url) is None:
            new.fields["url"] = url
        else:
            new.comments.setdefault("url", []).append(
                f"the BibTeX url {url!r} is not an http(s) link, so it was left out")
    for name in ("journal", "booktitle", "howpublished", "note"):
        found = ARXIV_IN_TEXT.search(text(name) or "")
        if found:
            arxiv_sources.append((name, found[1], False))
    corr_volume = DBLP_CORR_VOLUME.match(text("volume") or "")
    if corr_volume and (text("journal") or "").casefold() == "corr":
        arxiv_sources.append(("volume", corr_volume[1], False))
    for name, candidate, explicit in arxiv_sources:
        problem = identifiers.arxiv_problem(identifiers.unversioned_arxiv(candidate))
        if problem is None:
            new.fields["arxiv"] = identifiers.unversioned_arxiv(candidate)
            break
        if explicit:
            at(name, f"{name}: {problem.removeprefix('arxiv: ')}")
            break

    for name in ("journal", "booktitle", "howpublished"):
        published_in = text(name)
        if not published_in or PREPRINT_VENUE.match(published_in) or ARXIV_IN_TEXT.search(published_in):
            continue
        venue = match_venue(published_in, taxonomy)
        if venue:
            new.fields["venue"] = venue
        else:
            new.comments.setdefault("venue", []).append(
                f"venue: the BibTeX says {published_in!r} ({name}), which is not in taxonomy/vocabularies.yaml: "
                "add it there in the same pull request and write its id here, or leave venue out")
        break
    if problems:
        raise MoekbError(problems)
    return new


def split_authors(value: str) -> tuple[list[str], bool]:
    """Full names in reading order ("Basil Mustafa"), and whether the list ended in 'and others'."""
    names, others = [], False
    for name in split_multiple_persons_names(value):
        if name.strip().casefold() == "others":
            others = True
            continue
        parts = parse_single_name_into_parts(DBLP_HOMONYM.sub("", name.strip()))
        full = " ".join(parts.first + parts.von + parts.last)
        full = full + (", " + " ".join(parts.jr) if parts.jr else "")
        full = " ".join(full.replace("{", "").replace("}", "").split())
        if full:
            names.append(full)
    return names, others


def venue_key(text: str) -> str:
    """A venue name with the parts that vary between BibTeX sources removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\b(?:19|20)\d{2}\b|\b\d+(?:st|nd|rd|th)\b|\bproceedings of( the)?\b|\bproceedings\b", " ", text)
    text = re.sub(r"^\s*(?:in\s+)?(?:the\s+)?", "", text)
    return " ".join(re.sub(r"[^0-9a-z/&+-]+", " ", text).split())


def match_venue(published_in: str, taxonomy: Taxonomy) -> str | None:
    """The venue id for a journal or booktitle, by id, alias or full name (or an acronym in parentheses)."""
    table = {}
    for venue in taxonomy.vocabularies.venues:
        for spelling in (venue.id, venue.name, *venue.aliases):
            table.setdefault(venue_key(spelling), venue.id)
    candidates = [published_in, *re.findall(r"\(([^()]+)\)", published_in), re.sub(r"\([^()]*\)", "", published_in)]
    for candidate in candidates:
        found = table.get(venue_key(candidate))
        if found:
            return found
    return None


# -- entries from flags ----------------------------------------------------------------------
PER_PAPER_FLAGS = {"id": "--id", "title": "--title", "authors": "--author", "year": "--year", "arxiv": "--arxiv",
                   "doi": "--doi", "url": "--url", "venue": "--venue", "code": "--code", "summary": "--summary",
                   "verified_from": "--verified-from", "notes": "--notes", "bibtex_type": "--bibtex-type"}
SHARED_FLAGS = {"perspective": "--perspective", "subcategory": "--subcategory", "domain": "--domain",
                "modalities": "--modality", "gaps": "--gap"}


def flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The Paper fields given as flags (only those given)."""
    given = {}
    for name in (*PER_PAPER_FLAGS, *SHARED_FLAGS):
        value = getattr(args, name, None)
        if value not in (None, []):
            given[name] = value
    if "arxiv" in given:
        given["arxiv"] = identifiers.unversioned_arxiv(given["arxiv"])
    if "doi" in given:
        given["doi"] = DOI_PREFIX.sub("", given["doi"])
    return given


def apply_flags(entries: list[NewEntry], flags: dict[str, Any]) -> None:
    """Flags override what the BibTeX says; with several entries only the shared ones are allowed."""
    if len(entries) > 1:
        per_paper = [PER_PAPER_FLAGS[name] for name in flags if name in PER_PAPER_FLAGS]
        if per_paper:
            raise MoekbError(Problem(COMMAND_LINE, 0, f"{', '.join(per_paper)}: only with a single entry; the BibTeX "
                                                      f"has {len(entries)} (add them one at a time)"))
    for entry in entries:
        for name, value in flags.items():
            entry.fields[name] = value
            entry.comments.pop(name, None)


# -- the new entry ---------------------------------------------------------------------------
def ascii_slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.casefold().translate(ASCII_LETTERS))
    return re.sub(r"[^a-z0-9]", "", "".join(ch for ch in text if not unicodedata.combining(ch)))


def family_name(full_name: str) -> str:
    try:
        parts = parse_single_name_into_parts(full_name)
    except InvalidNameError:
        return full_name.split()[-1] if full_name.split() else ""
    return " ".join(parts.last) or full_name


def title_word(title: str) -> str:
    """The telling word of a title: the method's name before a colon ("LIMoE: ..."), else a coined
    name anywhere in it ("... with LIMoE"), else its first word that is not a stopword."""
    head, colon, _ = title.partition(":")
    if colon and len(head.split()) <= 3:
        words = head.split()
    else:
        coined = [w for w in title.split() if CAMEL.search(w) and ascii_slug(w) not in GENERIC_NAMES]
        words = coined + title.split()
    for word in words:
        slug = ascii_slug(word)
        if slug and slug not in STOPWORDS:
            return slug
    return ""


def propose_id(entry: NewEntry) -> str:
    """<first author's family name><year><title word>, e.g. mustafa2022limoe."""
    first_author = next((a for a in entry.fields["authors"] if not PLACEHOLDER.match(a)), "")
    family, word = ascii_slug(family_name(first_author)), title_word(entry.fields["title"])
    if not family or not word:
        what = f"the first author {first_author!r}" if not family else f"the title {entry.fields['title']!r}"
        raise MoekbError(entry.where(f"cannot make an id from {what} (no a-z letters): give one with --id"))
    return f"{family}{entry.fields['year']}{word}"


def complete(entry: NewEntry) -> list[Problem]:
    """Check the fields every entry needs, derive the year from the arXiv id, and fill the id."""
    problems = []
    fields = entry.fields
    what = f"entry '{entry.key}'" if entry.key else "the new paper"
    if not fields.get("title"):
        problems.append(entry.where(f"{what} has no title (add title = {{...}} or give --title)"))
    if not [a for a in fields.get("authors", []) if not PLACEHOLDER.match(a)]:
        problems.append(entry.where(f"{what} has no authors (add author = {{A and B}} or give --author, once per author)"))
    if not (fields.get("arxiv") or fields.get("doi") or fields.get("url")):
        problems.append(entry.where(f"{what} has no arXiv id, DOI or URL (add eprint, doi or url, or give --arxiv, "
                                    "--doi or --url)"))
    for name, problem in (("arxiv", fields.get("arxiv") and identifiers.arxiv_problem(fields["arxiv"])),
                          ("doi", fields.get("doi") and identifiers.doi_problem(fields["doi"])),
                          ("url", fields.get("url") and identifiers.url_problem("url", fields["url"]))):
        if problem:
            problems.append(entry.where(problem))
            fields.pop(name)
    if "year" not in fields and fields.get("arxiv"):
        fields["year"] = identifiers.arxiv_year(fields["arxiv"])
        entry.comments.setdefault("year", []).append(
            "year: taken from the arXiv id (the first version); if the paper was published, use the venue's year")
    if "year" not in fields:
        problems.append(entry.where(f"{what} has no year (add year = {{...}} or give --year)"))
    if problems:
        return problems
    if "id" not in fields:
        try:
            fields["id"] = propose_id(entry)
        except MoekbError as err:
            return err.problems
    if not identifiers.SLUG.match(str(fields["id"])):
        return [entry.where(f"id {fields['id']!r} must be a lowercase slug of a-z, 0-9 and '-' (e.g. mustafa2022limoe)")]
    return []


def vocabulary_comments(taxonomy: Taxonomy) -> dict[str, list[str]]:
    """The choices for each placeholder field, written as comments above it."""
    def wrapped(text: str) -> list[str]:
        return textwrap.wrap(text, 96, subsequent_indent="    ")

    perspectives = [f"{p.id} ({p.name})" for p in taxonomy.perspectives]
    subcategories = [line for p in taxonomy.perspectives
                     for line in wrapped(f"{p.id}: {', '.join(s.id for s in p.subcategories)}")]
    return {
        "perspective": ["perspective, one of:", *[f"  {p}" for p in perspectives]],
        "subcategory": ["subcategory, by perspective:", *[f"  {line}" for line in subcategories]],
        "domain": wrapped("domain, one of: " + ", ".join(taxonomy.domain)),
        "modalities": wrapped("modalities, any of: " + ", ".join(taxonomy.modality)),
    }


def entry_values(entry: NewEntry, today: dt.date) -> dict[str, Any]:
    """Every field the new file holds: what is known, placeholders for the rest, today's date."""
    return {**PLACEHOLDERS, **entry.fields, "added": today}


def render_entry(entry: NewEntry, taxonomy: Taxonomy, origin: str, today: dt.date) -> str:
    """The YAML text of the new entry: the modeline, a header, then the fields in the usual order."""
    fields = entry_values(entry, today)
    comments = {name: list(lines) for name, lines in entry.comments.items()}
    for name, lines in vocabulary_comments(taxonomy).items():
        if PLACEHOLDER.match(str(fields[name][0] if isinstance(fields[name], list) else fields[name])):
            comments[name] = lines + comments.get(name, [])
    yaml = YAML(typ="rt")
    yaml.width = 100
    yaml.allow_unicode = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    todo = any(PLACEHOLDER.match(str(item)) for value in fields.values()
               for item in (value if isinstance(value, list) else [value]))
    out = [MODELINE,
           f"# Written by `moekb add` from {origin}. "
           + ("Replace every TODO, then run `moekb validate`;" if todo else "Check it, then run `moekb validate`;"),
           "# docs/add-a-paper.md explains each field. These comments may be deleted."]
    for name in FIELD_ORDER:
        out += [f"# {line}" for line in comments.get(name, [])]  # also where a field was left out
        if name not in fields:
            continue
        value = fields[name]
        if name in ("arxiv", "doi"):  # an unquoted arXiv id is a number to YAML
            value = DoubleQuotedScalarString(value)
        stream = io.StringIO()
        yaml.dump({name: value}, stream)
        out.append(stream.getvalue().rstrip("\n"))
    return "\n".join(out) + "\n"


# -- the knowledge base as it is -------------------------------------------------------------
def existing_papers(papers_dir: Path, root: Path) -> dict[tuple[str, str], str]:
    """(kind, normal form) -> path for the arXiv id, DOI and title of every entry on disk.

    Files read leniently: a broken entry is `moekb validate`'s business, but its identifiers still
    count, so a paper cannot be added twice while another copy is being fixed."""
    index: dict[tuple[str, str], str] = {}
    if not papers_dir.is_dir():
        return index
    for file in paper_files(papers_dir):
        path = relative(file, root)
        try:
            data = read_document(file, path).data
        except MoekbError:
            continue
        if isinstance(data, dict):
            for key in identity_keys(data):
                index.setdefault(key, path)
    return index


def identity_keys(fields: dict) -> list[tuple[str, str]]:
    """What makes two entries the same paper: unversioned arXiv id, DOI, normalised title."""
    keys = []
    if isinstance(fields.get("arxiv"), str):
        keys.append(("arXiv id", identifiers.unversioned_arxiv(fields["arxiv"])))
    if isinstance(fields.get("doi"), str):
        keys.append(("DOI", fields["doi"].casefold()))
    if isinstance(fields.get("title"), str) and identifiers.normalized_title(fields["title"]):
        keys.append(("title", identifiers.normalized_title(fields["title"])))
    return keys


def plan(entries: list[NewEntry], root: Path, papers_dir: Path, taxonomy: Taxonomy,
         today: dt.date | None = None) -> list[Planned]:
    """Check every entry and render its file; raise with every problem found, writing nothing."""
    today = today or dt.date.today()
    known = existing_papers(papers_dir, root)
    taken: dict[str, str] = {}  # file name -> who takes it in this run
    planned, problems = [], []
    for entry in entries:
        found = complete(entry)
        if found:
            problems += found
            continue
        duplicate = next(((kind, value) for kind, value in identity_keys(entry.fields) if (kind, value) in known), None)
        if duplicate:
            kind, value = duplicate
            same = {"arXiv id": f"same arXiv id {value}", "DOI": f"same DOI {entry.fields.get('doi')}"}.get(kind, "same title")
            problems.append(entry.where(f"this paper is already in the knowledge base: {known[duplicate]} ({same}); "
                                        "edit that file instead"))
            continue
        file = papers_dir / f"{entry.fields['id']}.yaml"
        path = relative(file, root)
        if file.exists() or path in taken:
            by = "already exists" if file.exists() else f"is also the file of {taken[path]}"
            problems.append(entry.where(f"{path} {by} (another paper with the id '{entry.fields['id']}'): "
                                        "choose a different id with --id"))
            continue
        text = render_entry(entry, taxonomy, entry.describe(), today)
        doc = parse_text(text, path)
        if doc.data != entry_values(entry, today):
            problems.append(entry.where("cannot write this entry as YAML that reads back the same "
                                        "(unusual characters in a field?)"))
            continue
        _, report = check_paper(doc, taxonomy, file.stem)
        invalid = [p for p in report if "placeholder left by `moekb add`" not in p.message]
        if invalid:
            problems += [entry.where(f"the new entry would not be valid: {p.message}") for p in invalid]
            continue
        taken[path] = entry.describe()
        for key in identity_keys(entry.fields):
            known.setdefault(key, f"{entry.describe()} (also being added)")
        planned.append(Planned(entry, file, path, text, report))
    if problems:
        raise MoekbError(problems)
    return planned


def write(planned: list[Planned]) -> None:
    """Write every planned file, or none: a failed write removes what this run wrote."""
    written: list[Path] = []
    try:
        for item in planned:
            if item.file.exists():  # appeared since plan(): still never overwrite
                raise MoekbError(Problem(item.path, 0, "the file appeared while adding; nothing was written"))
            write_atomic(item.file, item.text.encode("utf-8"))
            written.append(item.file)
    except OSError as err:
        for file in written:
            file.unlink(missing_ok=True)
        raise MoekbError(Problem(item.path, 0, f"cannot write the file: {err.strerror}; nothing was added")) from None
    except MoekbError:
        for file in written:
            file.unlink(missing_ok=True)
        raise


def add(root: Path, papers_dir: Path, *, bibtex: bytes | None = None, label: str = STDIN,
        flags: dict[str, Any] | None = None, dry_run: bool = False, today: dt.date | None = None,
        taxonomy: Taxonomy | None = None) -> list[Planned]:
    """The whole command as a function: read, check, write (unless ``dry_run``). ``taxonomy`` is
    loaded from ``root`` unless given (callers adding many times load it once)."""
    taxonomy = taxonomy or load_taxonomy(root)
    flags = flags or {}
    if bibtex is not None:
        entries = entries_from_bibtex(bibtex, label, taxonomy)
    elif flags.get("title"):
        entries = [NewEntry(COMMAND_LINE, 0)]
    else:
        raise MoekbError(Problem(COMMAND_LINE, 0, "nothing to add: give --bibtex FILE (or - for stdin), "
                                                  "or at least --title, --author and --arxiv/--doi/--url"))
    apply_flags(entries, flags)
    planned = plan(entries, root, papers_dir, taxonomy, today)
    if not dry_run:
        write(planned)
    return planned


# -- the command line ------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--bibtex", metavar="FILE", help="BibTeX file with one or more entries; '-' reads stdin")
    parser.add_argument("--papers", type=Path, default=None, help="papers folder (default: <root>/papers)")
    parser.add_argument("--dry-run", action="store_true", help="print the new file(s) instead of writing them")
    parser.add_argument("--id", help="the id (and file name) instead of the proposed one")
    parser.add_argument("--title")
    parser.add_argument("--author", dest="authors", action="append", default=[], help="once per author, in order")
    parser.add_argument("--year", type=int)
    parser.add_argument("--arxiv", help="arXiv id, e.g. 2206.02770")
    parser.add_argument("--doi")
    parser.add_argument("--url")
    parser.add_argument("--venue", help="venue id or alias from taxonomy/vocabularies.yaml")
    parser.add_argument("--code", help="official code repository (http/https)")
    parser.add_argument("--perspective", help="engine, learner, adapter or foundations")
    parser.add_argument("--subcategory", help="a sub-category of the perspective")
    parser.add_argument("--domain", help="application domain id (taxonomy/vocabularies.yaml domains)")
    parser.add_argument("--modality", dest="modalities", action="append", default=[], help="repeatable")
    parser.add_argument("--gap", dest="gaps", action="append", default=[], help="research-gap id; repeatable")
    parser.add_argument("--summary", help="2-4 sentences in your own words")
    parser.add_argument("--verified-from", dest="verified_from", action="append", default=[],
                        help="a page where you checked the facts; repeatable")
    parser.add_argument("--bibtex-type", dest="bibtex_type", help="article, inproceedings, misc, ...")
    parser.add_argument("--notes")
    return parser


def cmd_add(args: argparse.Namespace) -> int:
    root = project_root(args.root)
    papers_dir = args.papers or papers_dir_from_env(root) or root / "papers"
    bibtex = label = None
    if args.bibtex:
        bibtex, label = read_input(args.bibtex)
    elif not args.title and sys.stdin is not None and not sys.stdin.isatty():
        bibtex, label = read_input("-")
    planned = add(root, papers_dir, bibtex=bibtex, label=label or STDIN, flags=flag_fields(args), dry_run=args.dry_run)
    for item in planned:
        if args.dry_run:
            print(f"--- {item.path} (not written: --dry-run)\n{item.text}", end="")
        else:
            print(f"wrote {item.path} (from {item.entry.describe()})")
        if item.to_fill:
            print(f"  {len(item.to_fill)} value(s) for you to fill in before `moekb validate` passes:")
            for problem in item.to_fill:
                print(f"    {problem}")
        else:
            print("  valid: nothing left to fill in")
    print("Next: replace each TODO (docs/add-a-paper.md explains every field), then run `moekb validate`.")
    return 0
