"""The contributor documentation, issue forms, pull-request template and pre-commit hook agree with
the model and the taxonomy, and the hook really runs the validator."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from moekb.load import load_knowledge_base, load_taxonomy
from moekb.model import Method, Paper
from moekb.site import FIELDS_SNIPPET, VOCABULARY_SNIPPET, render_site

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = load_taxonomy(ROOT)
GUIDE = (ROOT / "docs" / "add-a-paper.md").read_text(encoding="utf-8")
FORM_TYPES = {"markdown", "input", "textarea", "dropdown", "checkboxes"}


def load_yaml(path: Path):
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def test_the_guide_documents_every_field_of_an_entry_from_the_model():
    assert f'--8<-- "{FIELDS_SNIPPET}"' in GUIDE
    table = render_site(load_knowledge_base(ROOT))[FIELDS_SNIPPET]
    documented = re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.M)
    assert documented == [*Paper.model_fields, *[f"method.{name}" for name in Method.model_fields]]
    assert "| `domain` | yes |" in table and "| `perspective` | yes, except surveys |" in table


def test_the_guide_is_in_the_navigation_and_includes_the_generated_vocabularies():
    nav = re.search(r"^nav:\n((?:[ -].*\n?)+)", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)[1]
    assert "  - Contributing: add-a-paper.md" in nav.splitlines()
    assert f'--8<-- "{VOCABULARY_SNIPPET}"' in GUIDE


def test_the_vocabulary_snippet_lists_every_allowed_value():
    snippet = render_site(load_knowledge_base(ROOT))[VOCABULARY_SNIPPET]
    ids = set(re.findall(r"`([^`]+)`", snippet))
    expected = ({p.id for p in TAXONOMY.perspectives} | set(TAXONOMY.subcategory) | set(TAXONOMY.modality)
                | set(TAXONOMY.gap) | {s for v in TAXONOMY.vocabularies.venues for s in (v.id, *v.aliases)}
                | {k.id for k in TAXONOMY.vocabularies.entry_kinds} | set(TAXONOMY.domain) | set(TAXONOMY.routing)
                | set(TAXONOMY.placement) | set(TAXONOMY.paper_kind))
    assert expected <= ids
    assert "\\" not in "".join(re.findall(r"`[^`]+`", snippet))  # code spans are shown literally


def test_issue_forms_are_well_formed_and_match_the_taxonomy():
    forms = sorted((ROOT / ".github" / "ISSUE_TEMPLATE").glob("*.yml"))
    assert {f.name for f in forms} >= {"propose-paper.yml", "report-wrong-fact.yml"}
    for form in forms:
        if form.name == "config.yml":
            continue
        data = load_yaml(form)
        assert {"name", "description", "body"} <= set(data), form.name
        ids = [item["id"] for item in data["body"] if "id" in item]
        assert len(ids) == len(set(ids)), form.name
        for item in data["body"]:
            assert item["type"] in FORM_TYPES, (form.name, item)
            assert item["attributes"].get("label") or item["type"] == "markdown", (form.name, item)

    propose = {item.get("id"): item for item in load_yaml(ROOT / ".github/ISSUE_TEMPLATE/propose-paper.yml")["body"]}
    assert propose["perspective"]["attributes"]["options"] == [p.id for p in TAXONOMY.perspectives] + ["not sure"]
    assert [o["label"] for o in propose["modalities"]["attributes"]["options"]] == list(TAXONOMY.modality)
    report = {item.get("id"): item for item in load_yaml(ROOT / ".github/ISSUE_TEMPLATE/report-wrong-fact.yml")["body"]}
    named = {o for o in report["field"]["attributes"]["options"] if " " not in o}
    assert named <= set(Paper.model_fields)


def test_pull_request_checklist_covers_the_checks():
    template = (ROOT / ".github" / "pull_request_template.md").read_text(encoding="utf-8")
    boxes = re.findall(r"^- \[ \] (.+)$", template, flags=re.M)
    assert len(boxes) >= 8
    for must in ("moekb validate", "verified_from", "TODO", "own words", "make test", "moekb/markup.py"):
        assert any(must in box for box in boxes), must


def test_contributing_links_resolve():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#:]+)\)", text)
    assert "docs/add-a-paper.md" in targets
    for target in targets:
        assert (ROOT / target).exists(), target


def hook_command() -> list[str]:
    config = load_yaml(ROOT / ".pre-commit-config.yaml")
    [repo] = config["repos"]
    hooks = {hook["id"]: hook for hook in repo["hooks"]}
    assert set(hooks) == {"moekb-validate", "ruff"}
    hook = hooks["moekb-validate"]
    assert (repo["repo"], hook["language"], hook["pass_filenames"]) == ("local", "system", False)
    assert re.match(hook["files"], "papers/x.yaml") and re.match(hook["files"], "taxonomy/gaps.yaml")
    assert not re.match(hook["files"], "moekb/cli.py")
    return shlex.split(hook["entry"])


def test_pre_commit_hook_runs_the_validator(make_project):
    command = hook_command()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    good = (ROOT / "papers" / "bao2022vlmo.yaml").read_text(encoding="utf-8")
    project = make_project({"bao2022vlmo.yaml": good})
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.split(":")[0]) == (0, "ok"), result.stderr

    broken = good.replace("perspective: engine", "perspective: engin")
    line = broken.splitlines().index("perspective: engin") + 1
    (project / "papers" / "bao2022vlmo.yaml").write_text(broken, encoding="utf-8")
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"papers/bao2022vlmo.yaml:{line}: unknown perspective 'engin' (did you mean 'engine'?)", "1 problem(s) found"]
