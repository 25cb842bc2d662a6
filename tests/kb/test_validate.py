"""Validation: every error kind is reported with its file, line and exact message, exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moekb.cli import main
from moekb.errors import MoekbError
from moekb.load import load_knowledge_base, load_taxonomy

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CASES = sorted(p.name for p in (HERE / "bad_entries").iterdir() if p.is_dir())
VALID = (HERE / "bad_entries" / "cites-self" / "lovelace2024test.yaml").read_text().replace(
    "cites: [lovelace2024test]", "cites: []")


def case_files(case: str) -> dict[str, bytes]:
    folder = HERE / "bad_entries" / case
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "expected.txt"}


@pytest.mark.parametrize("case", CASES)
def test_bad_entry_is_reported_with_file_line_and_message(case, make_project, capsys):
    project = make_project(case_files(case))
    expected = (HERE / "bad_entries" / case / "expected.txt").read_text().splitlines()
    assert expected, f"{case}: expected.txt is empty"

    code = main(["--root", str(project), "validate"])

    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[:-1] == expected
    assert err[-1] == f"{len(expected)} problem(s) found"
    assert "Traceback" not in "\n".join(err)


def test_every_case_folder_has_expected_output():
    assert len(CASES) >= 30
    for case in CASES:
        assert (HERE / "bad_entries" / case / "expected.txt").is_file(), case


def test_the_valid_template_passes(make_project, capsys):
    project = make_project({"lovelace2024test.yaml": VALID})
    assert main(["--root", str(project), "validate"]) == 0
    assert "ok: 1 papers" in capsys.readouterr().out


def test_all_problems_are_collected_not_just_the_first(make_project):
    broken = VALID.replace("perspective: engine", "perspective: enigne").replace(
        "modalities: [image, text]", "modalities: [smell]").replace("year: 2024", "year: 1800")
    project = make_project({"lovelace2024test.yaml": broken, "other.yml": "x: 1\n",
                            "turing2024x.yaml": "id: [\n"})
    with pytest.raises(MoekbError) as info:
        load_knowledge_base(project)
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 5
    assert any(":7: unknown perspective 'enigne'" in line for line in lines)
    assert any(":9: unknown modality 'smell'" in line for line in lines)
    assert any(":6: year 1800 is outside" in line for line in lines)
    assert any(line.startswith("papers/other.yml:0:") for line in lines)
    assert any(line.startswith("papers/turing2024x.yaml:2: YAML syntax error") for line in lines)


def test_venue_alias_is_stored_under_its_canonical_id(make_project):
    project = make_project({"lovelace2024test.yaml": VALID.replace("venue: NeurIPS", "venue: NIPS")})
    kb = load_knowledge_base(project)
    assert kb.papers[0].venue == "NeurIPS"


def test_arxiv_version_suffix_is_accepted_and_deduplicated(make_project):
    second = VALID.replace("lovelace2024test", "turing2024other").replace("A Test Entry", "Another").replace(
        'arxiv: "2401.12345"', 'arxiv: "2401.12345v3"')
    project = make_project({"lovelace2024test.yaml": VALID, "turing2024other.yaml": second})
    with pytest.raises(MoekbError, match="arXiv id 2401.12345 is also on papers/lovelace2024test.yaml:12"):
        load_knowledge_base(project)


def test_old_style_arxiv_ids_are_valid(make_project):
    old = VALID.replace('arxiv: "2401.12345"', 'arxiv: "hep-th/9901001"').replace("year: 2024", "year: 1999")
    project = make_project({"lovelace2024test.yaml": old})
    assert load_knowledge_base(project).papers[0].arxiv == "hep-th/9901001"


def test_taxonomy_errors_name_the_taxonomy_file(make_project):
    project = make_project({"lovelace2024test.yaml": VALID})
    gaps = project / "taxonomy" / "gaps.yaml"
    gaps.write_text(gaps.read_text() + "- id: sustainability\n  name: Again\n  description: Twice.\n")
    with pytest.raises(MoekbError, match=r"taxonomy/gaps.yaml:\d+: gap id 'sustainability' is used twice"):
        load_knowledge_base(project)


def test_the_real_corpus_is_valid():
    kb = load_knowledge_base(ROOT)
    assert len(kb.papers) >= 12
    for perspective in ("engine", "learner", "adapter"):
        assert len(kb.in_perspective(perspective)) >= 3
    assert all(p.verified_from for p in kb.papers)


def test_cli_never_prints_a_traceback(make_project):
    project = make_project({"lovelace2024test.yaml": b"\xff\xfe\x00garbage"})
    run = subprocess.run([sys.executable, "-m", "moekb.cli", "--root", str(project), "validate"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("papers/lovelace2024test.yaml:1: the file is not valid UTF-8")


def test_committed_json_schema_is_up_to_date(capsys):
    assert main(["--root", str(ROOT), "schema", "-"]) == 0
    assert capsys.readouterr().out == (ROOT / "schema" / "paper.schema.json").read_text()


def test_a_broken_entry_does_not_also_break_the_entries_that_cite_it(make_project):
    citing = VALID.replace("lovelace2024test", "turing2024other").replace("A Test Entry", "Another").replace(
        "2401.12345", "2402.12345").replace("cites: []", "cites: [lovelace2024test]")
    project = make_project({"lovelace2024test.yaml": VALID.replace("year: 2024", "year: soon"),
                            "turing2024other.yaml": citing})
    with pytest.raises(MoekbError) as info:
        load_knowledge_base(project)
    assert [str(p) for p in info.value.problems] == [
        "papers/lovelace2024test.yaml:6: year: expected a whole number, got a string"]


def test_a_file_only_the_line_parser_refuses_does_not_hide_other_problems(make_project):
    project = make_project({"a.yaml": "0:\t\n", "b.yaml": "id: [\n"})
    with pytest.raises(MoekbError) as info:
        load_knowledge_base(project)
    assert [p.path for p in info.value.problems] == ["papers/a.yaml", "papers/b.yaml"]


def test_every_sub_category_names_a_runnable_implementation_and_its_papers():
    """Each branch of the taxonomy links to code that runs (foundations may point at the core)."""
    taxonomy = load_taxonomy(ROOT)
    for perspective in taxonomy.perspectives:
        for sub in perspective.subcategories:
            assert sub.reference_impl and (ROOT / sub.reference_impl).is_file(), sub.id
            if not perspective.background:
                assert sub.notebook and (ROOT / sub.notebook).is_file(), sub.id


def test_the_taxonomy_names_missing_files_and_unknown_papers(make_project, tmp_path):
    project = make_project({"lovelace2024test.yaml": VALID})
    (project / "reference_impls").mkdir()  # a project with implementations gets its links checked
    text = (project / "taxonomy" / "perspectives.yaml").read_text()
    (project / "taxonomy" / "perspectives.yaml").write_text(
        text.replace("implements: [lin2024moellava]", "implements: [nobody2024x]"))
    with pytest.raises(MoekbError) as info:
        load_knowledge_base(project)
    messages = [str(p) for p in info.value.problems]
    assert any("implements: no entry has the id 'nobody2024x'" in m for m in messages)
    assert any("reference_impl: no file reference_impls/moe_llava.py in the project" in m for m in messages)


@pytest.mark.parametrize("url, kind", [
    ("https://arxiv.org/abs/2206.02770", "primary"), ("https://arcxiv.org/abs/2206.02770", "look-alike of arxiv.org"),
    ("https://opernreview.net/forum?id=x", "look-alike of openreview.net"), ("https://eccv2024.ecva.net/x", "primary"),
    ("https://huggingface.co/papers/2206.02770", "other"), ("https://huggingface.co/org/model", "primary"),
    ("https://paperswithcode.com/paper/x", "retired"), ("https://mlanthology.org/x", "other"),
    ("https://arxiv.org.evil.example/x", "other"), ("https://someone.github.io/project", "primary"),
])
def test_sources_are_told_apart(url, kind):
    from moekb.identifiers import source_kind

    assert source_kind(url) == kind


def test_every_entry_satisfies_the_json_schema_whose_patterns_come_from_the_identifier_rules():
    import json

    import jsonschema
    import yaml

    from moekb import identifiers

    schema = json.loads((ROOT / "schema" / "paper.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "papers").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "added" in data:
            data["added"] = str(data["added"])
        assert list(validator.iter_errors(data)) == [], path.name
    arxiv = jsonschema.Draft202012Validator(schema["properties"]["arxiv"])
    for value in ("2206.02770", "2206.02770v2", "hep-th/9901001", "0704.0001"):
        assert arxiv.is_valid(value) and not identifiers.arxiv_problem(value), value
    for value in ("22O6.02770", "2206-02770", "https://arxiv.org/abs/2206.02770"):
        assert not arxiv.is_valid(value) and identifiers.arxiv_problem(value), value
    # what a pattern cannot say is left to moekb validate: 5 digits from 2015 on
    assert arxiv.is_valid("2206.0277") and identifiers.arxiv_problem("2206.0277")
