"""`moekb add`: what a new entry holds, how it is refused, and that a refusal writes nothing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from moekb import add as add_module
from moekb.add import add, propose_id, NewEntry, title_word
from moekb.cli import main
from moekb.errors import MoekbError
from moekb.schema import MODELINE
from moekb.source import read_document

HERE = Path(__file__).parent
BAD = HERE / "bad_bibtex"
BAD_CASES = sorted(p.stem for p in BAD.glob("*.bib"))

LIMOE = """\
@misc{mustafa2022multimodal,
      title={Multimodal Contrastive Learning with LIMoE: the Language-Image Mixture of Experts},
      author={Basil Mustafa and Carlos Riquelme and Joan Puigcerver and Rodolphe Jenatton and Neil Houlsby},
      year={2022},
      eprint={2206.02770},
      archivePrefix={arXiv},
      primaryClass={cs.CV}
}
"""
DBLP = """\
@article{DBLP:journals/corr/abs-2101-03961,
  author    = {William Fedus and
               Barret Zoph and
               Noam Shazeer},
  title     = {Switch Transformers: Scaling to Trillion Parameter Models with Simple
               and Efficient Sparsity},
  journal   = {CoRR},
  volume    = {abs/2101.03961},
  year      = {2021},
  url       = {https://arxiv.org/abs/2101.03961},
  eprinttype = {arXiv},
  eprint    = {2101.03961}
}
"""
ACL = """\
@inproceedings{muller-etal-2024-uber,
    title = "{\\\"U}ber {M}o{E}: Experts for $\\alpha$-Tasks \\& More",
    author = "M{\\\"u}ller, J{\\\"o}rg  and
      van der Berg, Jan  and
      {\\O}stergaard, S{\\o}ren",
    booktitle = "Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)",
    year = "2024",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/2024.acl-long.999",
    doi = "10.18653/v1/2024.acl-long.999",
    pages = "1--12",
}
"""
SCHOLAR = """\
@inproceedings{lin2024moe,
  title={Mo{E}-{LL}a{VA}: Mixture of Experts for Large Vision-Language Models},
  author={Lin, Bin and Tang, Zhenyu and Ye, Yang and others},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}
"""
FILLED = {
    "'TODO: engine, learner, adapter or foundations (see the list above)'": "engine",
    "'TODO: one sub-category of that perspective (see the list above)'": "sparse-mllm",
    "'TODO: the modalities the method handles (see the list above)'": "image",
    "'TODO: the application domain (see the list above)'": "general",
}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def project(make_project):
    return make_project()


def add_text(project: Path, text: str, **kwargs):
    return add(project, project / "papers", bibtex=text.encode("utf-8"), label="paper.bib", **kwargs)


# -- malformed BibTeX ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", BAD_CASES)
def test_malformed_bibtex_is_refused_with_its_line_and_nothing_is_written(case, project, capsys, monkeypatch):
    monkeypatch.chdir(BAD)
    expected = (BAD / f"{case}.expected").read_text(encoding="utf-8").splitlines()
    before = files_of(project / "papers")

    code, out, err = run(["--root", str(project), "add", "--bibtex", f"{case}.bib"], capsys)

    assert code == 1
    assert err.splitlines() == expected
    assert expected[-1] == f"{len(expected) - 1} problem(s) found"
    assert all(line.startswith(f"{case}.bib:") for line in expected[:-1])
    assert out == ""
    assert files_of(project / "papers") == before


def test_every_malformed_case_of_the_issue_has_a_fixture():
    required = {"unbalanced-brace-not-closed", "unbalanced-brace-one-too-many", "missing-comma-between-fields",
                "unknown-entry-type", "empty", "binary-junk", "not-utf8-latin1"}
    assert required <= set(BAD_CASES)
    assert all((BAD / f"{case}.expected").is_file() for case in BAD_CASES)


def test_messages_name_the_line_of_the_mistake_not_of_the_entry(project):
    with pytest.raises(MoekbError) as info:
        add_text(project, (BAD / "several-problems.bib").read_text())
    assert [(p.line, p.message.split(":")[0]) for p in info.value.problems] == [
        (2, "unbalanced braces"), (6, "unknown entry type '@artcle' (did you mean @article? allowed"),
        (8, "missing comma after the value of 'author' (the next field 'year' starts on line 9)"),
        (17, "field 'eprint' is given twice in entry 'third' (first on line 16)")]


# -- what a new entry holds ---------------------------------------------------------------------
def test_arxiv_bibtex_becomes_an_entry_with_placeholders_and_a_report(project, capsys, monkeypatch, tmp_path):
    (tmp_path / "limoe.bib").write_text(LIMOE)
    monkeypatch.chdir(tmp_path)

    code, out, err = run(["--root", str(project), "add", "--bibtex", "limoe.bib"], capsys)

    assert (code, err) == (0, "")
    written = project / "papers" / "mustafa2022limoe.yaml"
    text = written.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE
    data = read_document(written, "papers/mustafa2022limoe.yaml").data
    assert data["id"] == "mustafa2022limoe"
    assert data["title"] == "Multimodal Contrastive Learning with LIMoE: the Language-Image Mixture of Experts"
    assert data["authors"] == ["Basil Mustafa", "Carlos Riquelme", "Joan Puigcerver", "Rodolphe Jenatton", "Neil Houlsby"]
    assert (data["year"], data["arxiv"], data["bibtex_type"]) == (2022, "2206.02770", "misc")
    assert 'arxiv: "2206.02770"' in text  # quoted, so YAML keeps it a string
    assert "venue" not in data and "doi" not in data and "url" not in data
    assert out.splitlines()[:8] == [
        "wrote papers/mustafa2022limoe.yaml (from limoe.bib:1)",
        "  6 value(s) for you to fill in before `moekb validate` passes:",
        "    papers/mustafa2022limoe.yaml:18: perspective: replace the placeholder left by `moekb add`: "
        "TODO: engine, learner, adapter or foundations (see the list above)",
        "    papers/mustafa2022limoe.yaml:25: subcategory: replace the placeholder left by `moekb add`: "
        "TODO: one sub-category of that perspective (see the list above)",
        "    papers/mustafa2022limoe.yaml:28: domain: replace the placeholder left by `moekb add`: "
        "TODO: the application domain (see the list above)",
        "    papers/mustafa2022limoe.yaml:32: modalities: replace the placeholder left by `moekb add`: "
        "TODO: the modalities the method handles (see the list above)",
        "    papers/mustafa2022limoe.yaml:33: summary: replace the placeholder left by `moekb add`: TODO: 2-4 "
        "sentences in your own words, never copied from the abstract: what the experts do and why it matters "
        "for multimodal learning",
        "    papers/mustafa2022limoe.yaml:36: verified_from: replace the placeholder left by `moekb add`: TODO: the "
        "page(s) where you checked title, authors, year, ids and venue (the arXiv abstract page first)",
    ]


def test_validate_rejects_the_placeholders_until_a_person_fills_them(project, capsys):
    add_text(project, LIMOE)
    code, _, err = run(["--root", str(project), "validate"], capsys)
    assert code == 1
    lines = err.splitlines()
    assert lines[-1] == "6 problem(s) found"
    assert [line.split(": replace the placeholder")[0] for line in lines[:-1]] == [
        "papers/mustafa2022limoe.yaml:18: perspective", "papers/mustafa2022limoe.yaml:25: subcategory",
        "papers/mustafa2022limoe.yaml:28: domain", "papers/mustafa2022limoe.yaml:32: modalities",
        "papers/mustafa2022limoe.yaml:33: summary", "papers/mustafa2022limoe.yaml:36: verified_from"]
    assert "unknown perspective" not in err  # the placeholder is reported once, in its own words

    file = project / "papers" / "mustafa2022limoe.yaml"
    text = file.read_text(encoding="utf-8")
    for placeholder, value in FILLED.items():
        text = text.replace(placeholder, value)
    text = text.replace("summary: 'TODO: 2-4 sentences in your own words, never copied from the abstract: what the "
                        "experts do and\n  why it matters for multimodal learning'", "summary: One tower, sparse experts.")
    text = text.replace("  - 'TODO: the page(s) where you checked title, authors, year, ids and venue (the arXiv "
                        "abstract page\n    first)'", "  - https://arxiv.org/abs/2206.02770")
    file.write_text(text, encoding="utf-8")
    code, out, err = run(["--root", str(project), "validate"], capsys)
    assert (code, err) == (0, ""), err
    assert out.startswith("ok: 1 papers")


@pytest.mark.parametrize("bibtex, expected", [
    (DBLP, {"id": "fedus2021switch", "arxiv": "2101.03961", "year": 2021, "bibtex_type": "article",
            "title": "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity",
            "authors": ["William Fedus", "Barret Zoph", "Noam Shazeer"]}),
    (ACL, {"id": "muller2024uber", "doi": "10.18653/v1/2024.acl-long.999", "venue": "ACL", "year": 2024,
           "url": "https://aclanthology.org/2024.acl-long.999", "bibtex_type": "inproceedings",
           "title": "Über MoE: Experts for $\\alpha$-Tasks & More",
           "authors": ["Jörg Müller", "Jan van der Berg", "Søren Østergaard"]}),
    (SCHOLAR, {"id": "lin2024moellava", "venue": "NeurIPS", "year": 2024,
               "title": "MoE-LLaVA: Mixture of Experts for Large Vision-Language Models",
               "authors": ["Bin Lin", "Zhenyu Tang", "Yang Ye",
                           "TODO: the BibTeX ends with 'and others': list every author, in order"]}),
])
def test_bibtex_from_dblp_acl_and_scholar_is_read_whole(project, bibtex, expected):
    if "arxiv" not in expected and "doi" not in expected:
        bibtex = bibtex.replace("year={2024}", "year={2024},\n  url={https://openreview.net/forum?id=x}")
    [planned] = add_text(project, bibtex)
    data = read_document(planned.file, planned.path).data
    assert {key: data.get(key) for key in expected} == expected


@pytest.mark.parametrize("fields, arxiv", [
    ("eprint={2206.02770v3}, archivePrefix={arXiv}", "2206.02770"),
    ("eprint={arXiv:2206.02770}", "2206.02770"),
    ("url={https://arxiv.org/abs/2206.02770v2}", "2206.02770"),
    ("url={http://arxiv.org/pdf/2206.02770.pdf}", "2206.02770"),
    ("journal={arXiv preprint arXiv:2206.02770}", "2206.02770"),
    ("journal={ArXiv}, volume={abs/2206.02770}", None),  # "abs/..." is an arXiv id only under CoRR
    ("journal={CoRR}, volume={abs/2206.02770}", "2206.02770"),
    ("doi={10.48550/arXiv.2206.02770}", "2206.02770"),
    ("note={arXiv:hep-th/9901001v2}", "hep-th/9901001"),
    ("eprint={2206.02770}, archivePrefix={SSRN}, url={https://example.org/p}", None),
])
def test_arxiv_id_is_found_in_eprint_url_journal_doi_or_note(project, fields, arxiv):
    text = f"@article{{k, title={{A Study}}, author={{Ann Lee}}, year={{2022}}, url={{https://example.org/p}}, {fields}}}"
    if "url=" in fields:
        text = text.replace("url={https://example.org/p}, ", "", 1)
    [planned] = add_text(project, text)
    data = read_document(planned.file, planned.path).data
    assert data.get("arxiv") == arxiv
    assert "doi" not in data  # arXiv's own DOI is not kept beside the arXiv id


@pytest.mark.parametrize("fields, doi", [
    ("doi={https://doi.org/10.1162/neco.1991.3.1.79}", "10.1162/neco.1991.3.1.79"),
    ("doi={doi:10.1162/NECO.1991.3.1.79}", "10.1162/NECO.1991.3.1.79"),
    ("url={https://dx.doi.org/10.1162/neco.1991.3.1.79}", "10.1162/neco.1991.3.1.79"),
])
def test_doi_is_found_in_doi_or_url_without_its_prefix(project, fields, doi):
    [planned] = add_text(project, f"@article{{k, title={{Adaptive Mixtures}}, author={{Jacobs, Robert}}, year={{1991}}, {fields}}}")
    data = read_document(planned.file, planned.path).data
    assert (data["doi"], data["id"]) == (doi, "jacobs1991adaptive")
    assert "url" not in data


def test_unknown_venue_is_left_out_with_a_comment_saying_why(project):
    [planned] = add_text(project, SCHOLAR.replace("Advances in Neural Information Processing Systems",
                                                  "Workshop on Obscure Things").replace("others", "Cy Lee")
                         .replace("year={2024}", "year={2024}, eprint={2401.01234}"))
    assert "venue:" not in planned.text.replace("# venue:", "")
    assert ("# venue: the BibTeX says 'Workshop on Obscure Things' (booktitle), which is not in "
            "taxonomy/vocabularies.yaml: add it there in the same pull request and write its id here, "
            "or leave venue out") in planned.text


def test_several_entries_at_once_from_stdin(project, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((LIMOE + "\n" + DBLP).encode("utf-8"))))
    code, out, err = run(["--root", str(project), "add", "--bibtex", "-"], capsys)
    assert (code, err) == (0, "")
    assert "wrote papers/mustafa2022limoe.yaml (from <stdin>:1)" in out
    assert "wrote papers/fedus2021switch.yaml (from <stdin>:10)" in out
    assert sorted(files_of(project / "papers")) == ["fedus2021switch.yaml", "mustafa2022limoe.yaml"]


# -- from flags ---------------------------------------------------------------------------------
FULL_FLAGS = ["--title", "Multimodal Contrastive Learning with LIMoE", "--author", "Basil Mustafa", "--author",
              "Carlos Riquelme", "--arxiv", "2206.02770v2", "--year", "2022", "--venue", "NIPS",
              "--perspective", "learner", "--subcategory", "cross-modal-alignment", "--domain", "general", "--modality", "image",
              "--modality", "text", "--summary", "One tower with sparse experts.", "--verified-from",
              "https://arxiv.org/abs/2206.02770", "--gap", "modality-integration"]


def test_an_entry_from_flags_alone_is_complete_and_valid(project, capsys):
    code, out, err = run(["--root", str(project), "add", *FULL_FLAGS], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == ["wrote papers/mustafa2022limoe.yaml (from <command line>)",
                                    "  valid: nothing left to fill in"]
    data = read_document(project / "papers" / "mustafa2022limoe.yaml", "x").data
    assert (data["arxiv"], data["venue"], data["modalities"]) == ("2206.02770", "NIPS", ["image", "text"])
    assert "TODO" not in (project / "papers" / "mustafa2022limoe.yaml").read_text()
    assert run(["--root", str(project), "validate"], capsys)[0] == 0


def test_id_flag_overrides_the_proposal_and_must_be_a_slug(project, capsys):
    assert run(["--root", str(project), "add", *FULL_FLAGS, "--id", "mustafa2022one-tower"], capsys)[0] == 0
    assert (project / "papers" / "mustafa2022one-tower.yaml").is_file()
    code, _, err = run(["--root", str(project), "add", "--title", "Other", "--author", "A B", "--year", "2022",
                        "--url", "https://example.org/", "--id", "Bad_Id"], capsys)
    assert code == 1
    assert err.splitlines()[0] == ("<command line>:0: id 'Bad_Id' must be a lowercase slug of a-z, 0-9 and '-' "
                                   "(e.g. mustafa2022limoe)")


def test_flags_override_bibtex_and_bad_flag_values_are_refused(project, capsys, tmp_path):
    (tmp_path / "a.bib").write_text(LIMOE)
    code, _, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / "a.bib"), "--perspective", "engin"], capsys)
    assert code == 1
    assert err.splitlines() == [f"{tmp_path / 'a.bib'}:1: the new entry would not be valid: unknown perspective "
                                "'engin' (did you mean 'engine'?)", "1 problem(s) found"]
    code, _, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / "a.bib"), "--year", "2023",
                        "--perspective", "learner"], capsys)
    assert (code, err) == (0, "")
    data = read_document(project / "papers" / "mustafa2023limoe.yaml", "x").data
    assert (data["year"], data["perspective"]) == (2023, "learner")


def test_per_paper_flags_are_refused_with_several_entries(project, capsys, tmp_path):
    (tmp_path / "two.bib").write_text(LIMOE + DBLP)
    code, _, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / "two.bib"), "--id", "x2022y"], capsys)
    assert code == 1
    assert err.splitlines()[0] == ("<command line>:0: --id: only with a single entry; the BibTeX has 2 "
                                   "(add them one at a time)")
    assert files_of(project / "papers") == {}


def test_flags_must_say_what_an_entry_needs(project, capsys):
    code, _, err = run(["--root", str(project), "add", "--title", "Experts", "--arxiv", "2301.1234"], capsys)
    assert code == 1
    assert err.splitlines() == [
        "<command line>:0: arxiv: '2301.1234': identifiers from 2015 (1501) on have a 5-digit number",
        "<command line>:0: the new paper has no authors (add author = {A and B} or give --author, once per author)",
        "<command line>:0: the new paper has no year (add year = {...} or give --year)",
        "3 problem(s) found"]
    code, _, err = run(["--root", str(project), "add", "--title", "Experts", "--author", "A B", "--year", "2022"], capsys)
    assert err.splitlines()[0] == ("<command line>:0: the new paper has no arXiv id, DOI or URL (add eprint, doi or "
                                   "url, or give --arxiv, --doi or --url)")


def test_year_defaults_to_the_arxiv_ids_year_with_a_comment(project):
    [planned] = add_text(project, LIMOE.replace("      year={2022},\n", ""))
    assert "year: 2022" in planned.text
    assert "# year: taken from the arXiv id (the first version); if the paper was published, use the venue's year" in planned.text


# -- the proposed id ----------------------------------------------------------------------------
@pytest.mark.parametrize("author, year, title, expected", [
    ("Hangbo Bao", 2022, "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts", "bao2022vlmo"),
    ("Basil Mustafa", 2022, "Multimodal Contrastive Learning with LIMoE: the Language-Image Mixture of Experts",
     "mustafa2022limoe"),
    ("William Fedus", 2022, "Switch Transformers: Scaling to Trillion Parameter Models", "fedus2022switch"),
    ("Robert A. Jacobs", 1991, "Adaptive Mixtures of Local Experts", "jacobs1991adaptive"),
    ("Jörg Müller", 2023, "Über MoE: Experts", "muller2023uber"),
    ("Søren Østergaard", 2024, "Towards a Theory of Routing", "ostergaard2024theory"),
    ("Jan van der Berg", 2024, "On the Experts", "berg2024experts"),
    ("Bin Lin", 2024, "MoE-LLaVA: Mixture of Experts", "lin2024moellava"),
    ("Yang Jiang", 2024, "M^4oE: A Foundation Model", "jiang2024m4oe"),
])
def test_proposed_id_is_family_name_year_and_a_title_word(author, year, title, expected):
    entry = NewEntry("x.bib", 1, {"authors": [author], "year": year, "title": title})
    assert propose_id(entry) == expected


def test_no_id_can_be_proposed_without_latin_letters_so_id_is_asked_for(project):
    with pytest.raises(MoekbError) as info:
        add_text(project, "@misc{k, title={混合专家}, author={张三}, year={2024}, eprint={2401.01234}}")
    assert [str(p) for p in info.value.problems] == [
        "paper.bib:1: cannot make an id from the first author '张三' (no a-z letters): give one with --id"]
    assert title_word("The Of And") == ""


# -- never overwrite, never half-write ------------------------------------------------------------
def test_a_paper_already_present_is_refused_with_its_path(make_project, capsys, tmp_path):
    existing = (HERE.parents[1] / "papers" / "bao2022vlmo.yaml").read_text(encoding="utf-8")
    project = make_project({"bao2022vlmo.yaml": existing})
    same = {
        "arxiv-version": "@misc{k, title={Another Title}, author={X Y}, year={2022}, eprint={2111.02358v3}}",
        "doi-case": "@misc{k, title={Another Title}, author={X Y}, year={2022}, doi={10.1000/ABC}}",
        "title": "@misc{k, title={{VLMO}: unified vision--language pre-training with mixture-of-modality-experts}, "
                 "author={X Y}, year={2022}, url={https://example.org/}}",
    }
    (project / "papers" / "bao2022vlmo.yaml").write_text(existing + 'doi: "10.1000/abc"\n', encoding="utf-8")
    before = files_of(project / "papers")
    messages = {}
    for name, text in same.items():
        (tmp_path / f"{name}.bib").write_text(text, encoding="utf-8")
        code, out, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / f"{name}.bib")], capsys)
        assert (code, out) == (1, "")
        messages[name] = err.splitlines()[0].split(": ", 1)[1]
    assert messages == {
        "arxiv-version": "this paper is already in the knowledge base: papers/bao2022vlmo.yaml (same arXiv id 2111.02358); edit that file instead",
        "doi-case": "this paper is already in the knowledge base: papers/bao2022vlmo.yaml (same DOI 10.1000/ABC); edit that file instead",
        "title": "this paper is already in the knowledge base: papers/bao2022vlmo.yaml (same title); edit that file instead",
    }
    assert files_of(project / "papers") == before


def test_an_existing_file_name_is_refused(make_project, capsys):
    project = make_project({"mustafa2022limoe.yaml": "id: mustafa2022limoe\n"})  # another paper, broken even
    before = files_of(project / "papers")
    with pytest.raises(MoekbError) as info:
        add_text(project, LIMOE.replace("2206.02770", "2206.09999"))
    assert [str(p) for p in info.value.problems] == [
        "paper.bib:1: papers/mustafa2022limoe.yaml already exists (another paper with the id 'mustafa2022limoe'): "
        "choose a different id with --id"]
    assert files_of(project / "papers") == before


def test_one_bad_entry_in_a_batch_writes_none_of_them(project):
    batch = LIMOE + DBLP + LIMOE.replace("mustafa2022multimodal", "again")  # the third repeats the first
    with pytest.raises(MoekbError) as info:
        add_text(project, batch)
    assert [str(p) for p in info.value.problems] == [
        "paper.bib:22: this paper is already in the knowledge base: paper.bib:1 (also being added) "
        "(same arXiv id 2206.02770); edit that file instead"]
    assert files_of(project / "papers") == {}


def test_a_failed_write_removes_what_this_run_wrote(project, capsys, tmp_path, monkeypatch):
    (tmp_path / "two.bib").write_text(LIMOE + DBLP)
    real_write = add_module.write_atomic
    calls = []

    def failing_write(path, data):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(add_module, "write_atomic", failing_write)
    code, out, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / "two.bib")], capsys)
    assert code == 1
    assert calls == ["mustafa2022limoe.yaml", "fedus2021switch.yaml"]
    assert err.splitlines()[0] == ("papers/fedus2021switch.yaml:0: cannot write the file: No space left on device; "
                                   "nothing was added")
    assert files_of(project / "papers") == {}


def test_dry_run_prints_the_file_and_writes_nothing(project, capsys, tmp_path):
    (tmp_path / "a.bib").write_text(LIMOE)
    code, out, err = run(["--root", str(project), "add", "--bibtex", str(tmp_path / "a.bib"), "--dry-run"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"--- papers/mustafa2022limoe.yaml (not written: --dry-run)\n{MODELINE}\n")
    assert files_of(project / "papers") == {}


def test_nothing_to_add_is_a_clear_error(project, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = run(["--root", str(project), "add"], capsys)
    assert (code, err.splitlines()[0]) == (1, "<stdin>:0: the BibTeX is empty: there is no entry to add")
    code, _, err = run(["--root", str(project), "add", "--bibtex", str(project / "missing.bib")], capsys)
    assert (code, err.splitlines()[0]) == (1, f"{project / 'missing.bib'}:0: cannot read the file: No such file or directory")
