"""Load the knowledge base from disk: taxonomy, papers and notebooks, validated as a whole."""

from __future__ import annotations

from pathlib import Path

from moekb.errors import MoekbError, Problem
from moekb.model import KnowledgeBase, Paper, Taxonomy
from moekb.source import Document, read_document
from moekb.validate import build_taxonomy, check_corpus, check_paper, implementation_problems

TAXONOMY_FILES = ("perspectives.yaml", "gaps.yaml", "vocabularies.yaml")


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) with a taxonomy."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "taxonomy" / "perspectives.yaml").is_file():
            return folder
    raise MoekbError(Problem(str(here), 0, "not inside a moekb project (no taxonomy/perspectives.yaml above it)"))


def relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def load_taxonomy(root: Path) -> Taxonomy:
    return read_taxonomy(root)[0]


def read_taxonomy(root: Path) -> tuple[Taxonomy, dict[str, Document]]:
    """The taxonomy and the documents it was read from (by file name), for later line numbers."""
    problems: list[Problem] = []
    docs = {}
    for name in TAXONOMY_FILES:
        try:
            docs[name] = read_document(root / "taxonomy" / name, f"taxonomy/{name}")
        except MoekbError as err:
            problems += err.problems
    if problems:
        raise MoekbError(problems)
    taxonomy, problems = build_taxonomy(*docs.values())
    if problems:
        raise MoekbError(problems)
    return taxonomy, docs


def paper_files(papers_dir: Path) -> list[Path]:
    """Every ``*.yaml`` in the folder; a ``.yml`` or other stray file is reported, not ignored."""
    return sorted(p for p in papers_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def load_papers(taxonomy: Taxonomy, papers_dir: Path, root: Path) -> tuple[list[Paper], dict[str, Document], list[Problem]]:
    papers, docs, problems = [], {}, []
    folder = relative(papers_dir, root)  # once: resolving each file's path took a tenth of a second per 2000
    if not papers_dir.is_dir():
        return [], {}, [Problem(folder, 0, "the papers folder does not exist")]
    for file in paper_files(papers_dir):
        path = f"{folder}/{file.name}"
        if file.suffix != ".yaml":
            problems.append(Problem(path, 0, "papers/ holds only <id>.yaml files (rename it to .yaml or move it)"))
            continue
        try:
            doc = read_document(file, path)
        except MoekbError as err:
            problems += err.problems
            continue
        try:
            paper, found = check_paper(doc, taxonomy, file.stem)
        except MoekbError as err:  # the line tree is parsed lazily and may itself refuse the file
            problems += err.problems
            continue
        problems += found
        if paper is not None:
            papers.append(paper)
            docs[path] = doc
    return papers, docs, problems


def load_knowledge_base(root: Path | None = None, papers_dir: Path | None = None) -> KnowledgeBase:
    """Load and validate everything, raising :class:`MoekbError` with every problem found.

    ``papers_dir`` defaults to ``<root>/papers``; pass another folder to build a synthetic corpus.
    """
    root = project_root(root)
    taxonomy, taxonomy_docs = read_taxonomy(root)
    papers_dir = papers_dir or root / "papers"
    papers, docs, problems = load_papers(taxonomy, papers_dir, root)
    # Ids of entries that failed their own checks still count as known, so one broken file does
    # not also turn every citation of it into an error.
    known = {f.stem for f in paper_files(papers_dir)} if papers_dir.is_dir() else set()
    problems += check_corpus(papers, docs, also_known=known)
    # The taxonomy's links to code are checked in a project that has reference implementations, built
    # from its own papers (a synthetic corpus holds none of the papers the implementations follow).
    if papers_dir == root / "papers" and (root / "reference_impls").is_dir():
        problems += implementation_problems(taxonomy_docs["perspectives.yaml"], taxonomy, known, root)
    if problems:
        raise MoekbError(problems)
    notebooks = {
        file.name: file.read_text(encoding="utf-8") for file in sorted((root / "notebooks").glob("*.ipynb"))
    }
    ordered = sorted(papers, key=lambda p: p.id)
    return KnowledgeBase(taxonomy=taxonomy, papers=[p for p in ordered if not p.is_survey],
                         surveys=[p for p in ordered if p.is_survey], notebooks=notebooks)
