"""From the project folder to the generated part of ``docs/``: load, validate, render, write.

``moekb build`` runs this as a step of its own; the mkdocs hook runs the same function before each
mkdocs build. Either way the engine then renders a plain folder of Markdown.
"""

from __future__ import annotations

import os
from pathlib import Path

from moekb.load import load_knowledge_base, project_root
from moekb.model import KnowledgeBase
from moekb.output import sync_tree
from moekb.schema import paper_schema
from moekb.site import GENERATED_FOLDERS, render_site

DOCS = Path("docs")
PAPERS_ENV = "MOEKB_PAPERS"  # another papers folder (e.g. a synthetic corpus) to build from
REPOSITORY_ENV = "MOEKB_REPO_URL"  # the repository's web address: "edit this entry" links, notebook badges
SITE_URL_ENV = "MOEKB_SITE_URL"  # the deployed address (as mkdocs.yml's site_url): absolute feed links


def papers_dir_from_env(root: Path) -> Path | None:
    value = os.environ.get(PAPERS_ENV)
    return (root / value) if value else None


def implementation_sources(root: Path, kb: KnowledgeBase) -> dict[str, str]:
    """Source text of every reference implementation the taxonomy names and the repo has."""
    modules = {owner.reference_impl for p in kb.taxonomy.perspectives for owner in (p, *p.subcategories)
               if owner.reference_impl}
    return {m: (root / m).read_text(encoding="utf-8") for m in sorted(modules) if (root / m).is_file()}


def generate(root: Path | None = None, papers_dir: Path | None = None) -> tuple[KnowledgeBase, dict[str, str | bytes]]:
    """Load and render; raises MoekbError (and so writes nothing) if anything is invalid."""
    root = project_root(root)
    kb = load_knowledge_base(root, papers_dir or papers_dir_from_env(root))
    guides = {p.name for p in (root / DOCS / "impls").glob("*.md")}
    files = render_site(kb, implementations=implementation_sources(root, kb), schema=paper_schema(kb.taxonomy),
                        guides=guides, repository=os.environ.get(REPOSITORY_ENV), site_url=os.environ.get(SITE_URL_ENV))
    return kb, files


def build(root: Path | None = None, papers_dir: Path | None = None) -> tuple[KnowledgeBase, int, int]:
    """Render everything in memory, then make each generated folder of ``docs/`` hold exactly its files
    (hand-written pages live in other folders and are never touched)."""
    root = project_root(root)
    kb, files = generate(root, papers_dir)
    written = removed = 0
    for folder in GENERATED_FOLDERS:
        prefix = folder + "/"
        mine = {name[len(prefix):]: content for name, content in files.items() if name.startswith(prefix)}
        w, r = sync_tree(mine, root / DOCS / folder)
        written, removed = written + w, removed + r
    return kb, written, removed
