"""sync_tree: only changed files are rewritten, stale files and emptied folders go, the folder stays."""

from __future__ import annotations

import os

from moekb.output import sync_tree


def test_sync_tree_writes_changes_keeps_the_rest_and_removes_stale_files(tmp_path):
    target = tmp_path / "papers"
    assert sync_tree({"a/index.md": "A", "b/index.md": "B", "b/graph.svg": b"<svg/>"}, target) == (3, 0)
    assert (target / "b" / "graph.svg").read_bytes() == b"<svg/>"
    unchanged = target / "a" / "index.md"
    os.utime(unchanged, ns=(1, 1))  # an old mtime: rewriting it would show

    assert sync_tree({"a/index.md": "A", "b/index.md": "B2", "c/index.md": "C"}, target) == (2, 1)
    assert unchanged.stat().st_mtime_ns == 1
    assert (target / "b" / "index.md").read_text() == "B2"
    assert not (target / "b" / "graph.svg").exists()

    (target / "stray.txt").write_text("left by hand")
    assert sync_tree({"a/index.md": "A"}, target) == (0, 3)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["a", "a/index.md"]

    assert sync_tree({}, target) == (0, 1)
    assert target.is_dir() and not any(target.iterdir())  # emptied, not removed


def test_sync_tree_creates_a_missing_target(tmp_path):
    assert sync_tree({"x/y/z.md": "deep"}, tmp_path / "new") == (1, 0)
    assert (tmp_path / "new" / "x" / "y" / "z.md").read_text() == "deep"
