"""Shared fixtures: a throwaway project that has the real taxonomy and a papers folder of our choosing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_project(tmp_path):
    """Return a function that creates ``tmp_path/project`` with the real taxonomy and the given papers.

    ``papers`` maps file names to text (str) or raw bytes."""

    def make(papers: dict[str, str | bytes] | None = None, *, notebooks: bool = False) -> Path:
        project = tmp_path / "project"
        shutil.copytree(ROOT / "taxonomy", project / "taxonomy")
        (project / "papers").mkdir(parents=True)
        for name, content in (papers or {}).items():
            target = project / "papers" / name
            target.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        if notebooks:
            shutil.copytree(ROOT / "notebooks", project / "notebooks")
        return project

    return make


SITE_FIXTURES = {"hostile_site", "built_site", "zensical_site"}


def pytest_collection_modifyitems(items):
    """Tests that build a whole site with an engine are marked ``site``: `make check` leaves them out."""
    for item in items:
        if SITE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.site)
