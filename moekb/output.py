"""Writing generated files to disk without ever leaving a half-written site.

Everything is rendered in memory first (so a validation error writes nothing). Then only files
whose bytes changed are replaced, each through a temporary file and a rename, and files that are no
longer generated are removed. Rewriting only what changed also keeps ``mkdocs serve`` from
seeing its own output as an edit and rebuilding in a loop.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync_tree(files: dict[str, str | bytes], target: Path) -> tuple[int, int]:
    """Make ``target`` hold exactly ``files``; return (files written, files removed)."""
    written = removed = 0
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        path = target / name
        if not path.is_file() or path.read_bytes() != data:
            write_atomic(path, data)
            written += 1
    if target.is_dir():
        wanted = {Path(name).as_posix() for name in files}
        for path in sorted(target.rglob("*"), reverse=True):
            if path.is_file() and path.relative_to(target).as_posix() not in wanted:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return written, removed
