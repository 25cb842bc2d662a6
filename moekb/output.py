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
    """Make ``target`` hold exactly ``files``; return (files written, files removed).

    Plain ``os`` calls on string paths: at 2000 papers (4000 files in ``papers/``) pathlib's objects
    took half of the time of checking an unchanged tree."""
    written = removed = 0
    target_dir = os.fspath(target)
    wanted = set()
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        path = os.path.normpath(os.path.join(target_dir, name))
        wanted.add(path)
        try:
            with open(path, "rb") as handle:
                unchanged = handle.read() == data
        except (FileNotFoundError, NotADirectoryError):
            unchanged = False
        if not unchanged:
            write_atomic(Path(path), data)
            written += 1
    for folder, _, names in os.walk(target_dir, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if path not in wanted:
                os.unlink(path)
                removed += 1
        if folder != target_dir and not os.listdir(folder):
            os.rmdir(folder)
    return written, removed
