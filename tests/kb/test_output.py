"""StagedTree: only changed files are rewritten, and only on commit; stale files and emptied folders
go from the folders committed, nothing else; a discard or a failed commit leaves the tree as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moekb.output import StagedTree


def stage(root: Path, files: dict[str, str | bytes]) -> StagedTree:
    staged = StagedTree(root)
    for name, content in files.items():
        staged.add(name, content)
    return staged


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_changes_are_written_on_commit_and_stale_files_removed(tmp_path):
    target = tmp_path / "papers"
    staged = stage(target, {"a/index.md": "A", "b/index.md": "B", "b/graph.svg": b"<svg/>"})
    assert not (target / "a" / "index.md").exists()  # staged under a temporary name until the commit
    assert staged.commit() == (3, 0)
    assert tree(target) == {"a/index.md": b"A", "b/graph.svg": b"<svg/>", "b/index.md": b"B"}
    unchanged = target / "a" / "index.md"
    os.utime(unchanged, ns=(1, 1))  # an old mtime: rewriting the file would show

    assert stage(target, {"a/index.md": "A", "b/index.md": "B2", "c/index.md": "C"}).commit() == (2, 1)
    assert unchanged.stat().st_mtime_ns == 1
    assert tree(target) == {"a/index.md": b"A", "b/index.md": b"B2", "c/index.md": b"C"}

    (target / "stray.txt").write_text("left by hand")
    assert stage(target, {"a/index.md": "A"}).commit() == (0, 3)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["a", "a/index.md"]
    assert stage(target, {}).commit() == (0, 1)
    assert target.is_dir() and not any(target.iterdir())  # emptied, not removed


def test_only_the_folders_committed_are_swept(tmp_path):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "old.md").write_text("stale")
    (tmp_path / "handwritten.md").write_text("a person's page")
    assert stage(tmp_path, {"papers/new.md": "new"}).commit(["papers"]) == (1, 1)
    assert tree(tmp_path) == {"handwritten.md": b"a person's page", "papers/new.md": b"new"}


def test_discard_leaves_the_tree_as_it_was(tmp_path):
    (tmp_path / "papers" / "a").mkdir(parents=True)
    (tmp_path / "papers" / "a" / "index.md").write_text("before")
    before = tree(tmp_path)
    staged = stage(tmp_path, {"papers/a/index.md": "after", "papers/new/deep/index.md": "new"})
    assert len(staged.staged) == 2
    staged.discard()
    assert tree(tmp_path) == before
    assert not (tmp_path / "papers" / "new").exists()  # the folders made for staged files go too


def test_a_failed_commit_removes_what_it_did_not_rename(tmp_path, monkeypatch):
    staged = stage(tmp_path, {"one.md": "1", "two.md": "2", "three.md": "3"})
    real_replace, calls = os.replace, []

    def replace_failing_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_second)
    with pytest.raises(OSError, match="disk gone"):
        staged.commit()
    assert tree(tmp_path) == {"one.md": b"1"}  # the first went in; no temporary file is left behind


def test_a_name_generated_twice_is_refused(tmp_path):
    staged = stage(tmp_path, {"a/index.md": "first"})
    with pytest.raises(ValueError, match="generated twice"):
        staged.add("a/./index.md", "second")


def test_a_missing_root_is_created(tmp_path):
    assert stage(tmp_path / "new", {"x/y/z.md": "deep"}).commit() == (1, 0)
    assert (tmp_path / "new" / "x" / "y" / "z.md").read_text() == "deep"
