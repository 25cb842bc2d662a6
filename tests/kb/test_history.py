"""``added`` is the date an entry first landed: the repository's history says so for every committed entry."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from moekb.load import load_knowledge_base

ROOT = Path(__file__).resolve().parents[2]


def first_commit_dates() -> dict[str, str]:
    """``{papers/<id>.yaml: YYYY-MM-DD}`` of the commit that added each file, from one ``git log``."""
    out = subprocess.run(["git", "log", "--diff-filter=A", "--name-only", "--format=%x00%as", "--", "papers/"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dates: dict[str, str] = {}
    for block in out.split("\x00")[1:]:
        date, *files = block.strip().splitlines()
        for name in files:
            if name.strip():
                dates[name.strip()] = date  # newest first: the oldest addition is written last
    return dates


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git history")
def test_added_is_the_date_each_entry_first_landed():
    dates = first_commit_dates()
    kb = load_knowledge_base(ROOT)
    committed = [p for p in [*kb.papers, *kb.surveys] if p.path in dates]
    assert len(committed) >= 0.8 * len(kb.papers)
    wrong = [(p.id, p.added, dates[p.path]) for p in committed if str(p.added) != dates[p.path]]
    assert wrong == []
