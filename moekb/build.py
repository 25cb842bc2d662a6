"""From the project folder to the generated part of ``docs/``: load, validate, render, write.

``moekb build`` runs this as a step of its own; the mkdocs hook runs :func:`build_if_changed` before
each mkdocs build. Either way the engine then renders a plain folder of Markdown.

The generated pages are a function of the files under ``INPUTS`` (and the generator's own code and
the environment variables below), so a digest of those bytes tells whether the pages on disk are
current: the hook of a ``mkdocs build`` that follows ``moekb build`` (``make site``, CI) then skips
a second validation and rendering, while ``mkdocs serve`` still regenerates after every edit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


from moekb.load import load_knowledge_base, project_root
from moekb.model import KnowledgeBase
from moekb.output import StagedTree, write_atomic
from moekb.schema import paper_schema
from moekb.site import GENERATED_FOLDERS, site_files

DOCS = Path("docs")
PAPERS_ENV = "MOEKB_PAPERS"  # another papers folder (e.g. a synthetic corpus) to build from
REPOSITORY_ENV = "MOEKB_REPO_URL"  # the repository's web address: "edit this entry" links, notebook badges
SITE_URL_ENV = "MOEKB_SITE_URL"  # the deployed address (as mkdocs.yml's site_url): absolute feed links
# What the generated pages are made from, besides the papers folder and the generator's own code.
INPUTS = ("taxonomy", "notebooks", "reference_impls", "docs/impls")
STAMP = Path(".cache") / "moekb-build.json"  # the digest of the inputs of the pages on disk, and their names
LOCK = Path(".cache") / "moekb-build.lock"


def papers_dir_from_env(root: Path) -> Path | None:
    value = os.environ.get(PAPERS_ENV)
    return (root / value) if value else None


def implementation_sources(root: Path, kb: KnowledgeBase) -> dict[str, str]:
    """Source text of every reference implementation the taxonomy names and the repo has."""
    modules = {owner.reference_impl for p in kb.taxonomy.perspectives for owner in (p, *p.subcategories)
               if owner.reference_impl}
    return {m: (root / m).read_text(encoding="utf-8") for m in sorted(modules) if (root / m).is_file()}


def generated_files(root: Path | None = None, papers_dir: Path | None = None, *,
                    jobs: int = 1) -> tuple[KnowledgeBase, Iterator[tuple[str, str | bytes]]]:
    """Load and validate (raising MoekbError, so that nothing is written, if anything is invalid), then
    the generated files as they are rendered (in ``jobs`` processes)."""
    root = project_root(root)
    kb = load_knowledge_base(root, papers_dir or papers_dir_from_env(root))
    guides = {p.name for p in (root / DOCS / "impls").glob("*.md")}
    return kb, site_files(kb, implementations=implementation_sources(root, kb), schema=paper_schema(kb.taxonomy),
                          guides=guides, repository=os.environ.get(REPOSITORY_ENV),
                          site_url=os.environ.get(SITE_URL_ENV), jobs=jobs)


def generate(root: Path | None = None, papers_dir: Path | None = None, *,
             jobs: int = 1) -> tuple[KnowledgeBase, dict[str, str | bytes]]:
    """The knowledge base and every generated file, in memory."""
    kb, files = generated_files(root, papers_dir, jobs=jobs)
    return kb, dict(files)


def input_digest(root: Path, papers_dir: Path | None = None) -> str:
    """A digest of every byte the generated pages depend on."""
    papers_dir = papers_dir or papers_dir_from_env(root) or root / "papers"
    digest = hashlib.blake2b(digest_size=20)
    for name in (PAPERS_ENV, REPOSITORY_ENV, SITE_URL_ENV):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    package = Path(__file__).resolve().parent  # the generator's own code and templates
    folders = [(papers_dir, "papers"), (package, "moekb"), *((root / name, name) for name in INPUTS)]
    for folder, label in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."):
                digest.update(f"{label}/{path.relative_to(folder).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def build(root: Path | None = None, papers_dir: Path | None = None, *,
          digest: str | None = None, jobs: int = 1) -> tuple[KnowledgeBase, int, int]:
    """Validate, render, then make each generated folder of ``docs/`` hold exactly its files (hand-written
    pages live in other folders and are never touched). Files are staged beside their targets as they
    are rendered and renamed into place only once all rendered, so a failure leaves the previous pages.
    ``digest``: the inputs' digest when the caller has just computed it; ``jobs``: worker processes for
    rendering (:mod:`moekb.workers`)."""
    root = project_root(root)
    # taken before reading the inputs: an edit made while rendering makes the next check rebuild
    digest = digest or input_digest(root, papers_dir)
    with one_build_at_a_time(root):
        kb, files = generated_files(root, papers_dir, jobs=jobs)
        staged, names = StagedTree(root / DOCS), []
        try:
            for name, content in files:
                if name.partition("/")[0] in GENERATED_FOLDERS:
                    staged.add(name, content)
                    names.append(name)
        except BaseException:
            files.close()  # stops the workers now, not when the generator is collected
            staged.discard()
            raise
        written, removed = staged.commit(GENERATED_FOLDERS)
        write_atomic(root / STAMP, json.dumps({"digest": digest, "files": sorted(names)}).encode("utf-8"))
    return kb, written, removed


@contextlib.contextmanager
def one_build_at_a_time(root: Path) -> Iterator[None]:
    """Hold the project's build lock (``.cache/moekb-build.lock``): a second build, such as ``moekb build``
    while ``mkdocs serve`` regenerates, waits for the first instead of removing its staged files as stale.
    An advisory ``flock`` (POSIX); where there is none, builds are not serialised."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lock = root / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_if_changed(root: Path | None = None, papers_dir: Path | None = None) -> tuple[KnowledgeBase, int, int] | None:
    """:func:`build`, unless the generated pages on disk were made from exactly the current inputs
    (then None)."""
    root = project_root(root)
    try:
        stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    digest = input_digest(root, papers_dir)
    files = stamp.get("files") if isinstance(stamp, dict) else None
    if (isinstance(files, list) and stamp.get("digest") == digest
            and all(isinstance(name, str) and (root / DOCS / name).is_file() for name in files)):
        return None
    return build(root, papers_dir, digest=digest)
