"""The generated pages make a whole site on their own: Zensical (which runs no mkdocs hooks or
plugins) builds them, indexes every paper page in its search, and every link resolves; the Pages
workflow runs the README's build with the core package alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from built_pages import unresolved

from moekb.load import load_knowledge_base
from moekb.site import GENERATED_FOLDERS

ROOT = Path(__file__).resolve().parents[2]
ZENSICAL = Path(sys.executable).with_name("zensical")


@pytest.fixture(scope="module")
def zensical_site(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("zensical")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns(*GENERATED_FOLDERS))
    for name in ("taxonomy", "papers", "notebooks", "reference_impls", "moekb"):
        (project / name).symlink_to(ROOT / name)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    generate = subprocess.run([sys.executable, "-m", "moekb.cli", "build"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
    assert generate.returncode == 0, generate.stderr
    build = subprocess.run([str(ZENSICAL), "build", "--strict", "-f", "mkdocs.yml"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return project / "site"


def test_zensical_indexes_every_paper_page(zensical_site):
    kb = load_knowledge_base(ROOT)
    items = json.loads((zensical_site / "search.json").read_text(encoding="utf-8"))["items"]
    pages = {item["location"].split("#")[0] for item in items}
    assert {f"papers/{p.id}/" for p in [*kb.papers, *kb.surveys]} <= pages
    limoe = " ".join(i["title"] + " " + i["text"] for i in items if i["location"].startswith("papers/mustafa2022limoe/"))
    for word in ("Basil Mustafa", "Neil Houlsby", "2206.02770", "LIMoE"):
        assert word in limoe, word


def test_every_link_resolves_in_the_zensical_site(zensical_site):
    pages = sorted(zensical_site.rglob("index.html"))
    assert len(pages) > 200
    for page in pages:
        assert unresolved(page) == [], page


def test_the_pages_workflow_runs_the_readme_build_with_the_core_package():
    workflow = YAML(typ="safe").load((ROOT / ".github" / "workflows" / "pages.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["build"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    site_target = re.search(r"^site:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    for line in site_target.strip().splitlines():  # `make site`: the README's build
        assert line.strip().replace("$(BIN)/", "") in commands
    assert "pip install -c constraints.txt -e ." in commands
    assert not re.search(r"-e \.\[", commands), "the site needs the core package only"
    build = next(step for step in steps if "moekb build" in step.get("run", ""))
    assert "MOEKB_SITE_URL" in build["env"]  # canonical URLs and the sitemap from the deployed address
    assert any("upload-pages-artifact" in step.get("uses", "") for step in steps)
    assert workflow["permissions"]["pages"] == "write"
