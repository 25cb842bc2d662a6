"""Property tests: whatever YAML, BibTeX or bytes come in, the loader and `moekb add` either succeed
or raise MoekbError (never another exception), and a failure writes no file."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from moekb.add import add
from moekb.errors import MoekbError
from moekb.load import load_papers, load_taxonomy
from moekb.validate import check_corpus
from moekb.model import Paper
from moekb.validate import PLACEHOLDER

ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = load_taxonomy(ROOT)
KINDS = [k.id for k in TAXONOMY.vocabularies.entry_kinds]
# Modest example counts keep the file within a few seconds; CI runs it on every push.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------
any_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
syntax_heavy = st.text(st.sampled_from(list("{}\\\"@,=#%$^_~()[]:-' \n\tAaZz09é\u202e\u200b")), max_size=40)
plausible = st.sampled_from(["2022", "2206.02770", "arXiv preprint arXiv:2206.02770", "10.1162/neco.1991.3.1.79",
                             "https://arxiv.org/abs/2206.02770v2", "Mustafa, Basil and others", "Jörg Müller",
                             "M{\\\"u}ller, J{\\\"o}rg and van der Berg, Jan", "{LIMoE}: a $\\alpha$ \\& {\\'e}",
                             "Proceedings of the 39th International Conference on Machine Learning", "arXiv",
                             "CoRR", "abs/2206.02770", "https://doi.org/10.48550/arXiv.2206.02770", "1890", ""])
field_value = st.one_of(plausible, syntax_heavy, any_text)
field_names = st.sampled_from(["title", "author", "year", "journal", "booktitle", "eprint", "archiveprefix",
                               "doi", "url", "howpublished", "note", "volume", "month", "TITLE", "x-y", "%c", ""])


@st.composite
def bibtex_entry(draw) -> str:
    """Mostly well-formed entries (so that the deeper steps run), with every kind of slip mixed in."""
    kind = draw(st.sampled_from(KINDS * 4 + ["foo", "string", "comment", "preamble", "", "Article"]))
    key = draw(st.sampled_from(["key", "a1", "mustafa2022"] * 3 + ["", "k,"]) | syntax_heavy)
    parts = []
    for _ in range(draw(st.integers(0, 7))):
        name, value = draw(field_names), draw(field_value)
        wrap = draw(st.sampled_from(["{%s}"] * 6 + ['"%s"', "%s", "{%s", "%s}", "{{%s}}"]))
        parts.append(f"{name} = {wrap % value}" + draw(st.sampled_from([",\n  "] * 6 + ["", " ,\n", ",,"])))
    opener, closer = draw(st.sampled_from([("{", "}")] * 6 + [("(", ")"), ("{", ""), ("{", "}}"), ("(", "}")]))
    return f"@{kind}{opener}{key},\n  " + "".join(parts) + f"\n{closer}"


# Real-world shapes (arXiv, DBLP, Google Scholar, ACL Anthology), whole or with a slice replaced.
REALISTIC = [
    "@misc{mustafa2022multimodal,\n  title={Multimodal Contrastive Learning with LIMoE: the Language-Image "
    "Mixture of Experts},\n  author={Basil Mustafa and Carlos Riquelme and Joan Puigcerver and Rodolphe Jenatton "
    "and Neil Houlsby},\n  year={2022},\n  eprint={2206.02770},\n  archivePrefix={arXiv},\n  "
    "primaryClass={cs.CV}\n}\n",
    "@article{DBLP:journals/corr/abs-2101-03961,\n  author    = {William Fedus and\n               Barret Zoph and"
    "\n               Noam Shazeer},\n  title     = {Switch Transformers: Scaling to Trillion Parameter Models"
    "},\n  journal   = {CoRR},\n  volume    = {abs/2101.03961},\n  year      = {2021},\n  eprinttype = {arXiv},"
    "\n  eprint    = {2101.03961}\n}\n",
    "@inproceedings{lin2024moe,\n  title={Mo{E}-{LL}a{VA}: {M}ixture of {E}xperts for {L}arge "
    "{V}ision-{L}anguage {M}odels},\n  author={Lin, Bin and Tang, Zhenyu and Ye, Yang and others},\n  "
    "booktitle={Advances in Neural Information Processing Systems},\n  volume={36},\n  pages={1--20},\n  "
    "year={2024}\n}\n",
    "@inproceedings{chen-etal-2024-x,\n    title = \"{M}o{E} for {\\\"U}ber {T}asks\",\n    author = \"M{\\\"u}ller, "
    "J{\\\"o}rg  and\n      van der Berg, Jan\",\n    booktitle = \"Proceedings of the 62nd Annual Meeting of "
    "the Association for Computational Linguistics\",\n    year = \"2024\",\n    doi = \"10.18653/v1/2024.acl-long.70"
    "\",\n    url = \"https://aclanthology.org/2024.acl-long.70\",\n}\n",
]
realistic = st.sampled_from(REALISTIC)
mutated = st.tuples(realistic, st.integers(0, 600), st.integers(0, 8), syntax_heavy).map(
    lambda t: t[0][: t[1]] + t[3] + t[0][t[1] + t[2]:])
bibtex_text = st.one_of(
    st.lists(st.one_of(bibtex_entry(), realistic, mutated), min_size=1, max_size=3).map("\n".join),
    mutated, syntax_heavy, any_text)

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                         any_text, syntax_heavy, st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)),
                         st.sampled_from(["engine", "sparse-mllm", "image", "2206.02770", "https://x.org/",
                                          "TODO: x", "NeurIPS"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(list(Paper.model_fields)) | any_text, inner, max_size=4),
                           max_leaves=12)
paper_like = st.dictionaries(st.sampled_from(list(Paper.model_fields) + ["extra", "Title"]), yaml_values, max_size=12)


def dump_yaml(data) -> str:
    stream = io.StringIO()
    YAML(typ="rt").dump(data, stream)
    return stream.getvalue()


yaml_text = st.one_of(paper_like.map(dump_yaml), syntax_heavy, any_text,
                      st.tuples(paper_like.map(dump_yaml), syntax_heavy, st.integers(0, 400)).map(
                          lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:]))


# -- the project under test -------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("property-project")
    shutil.copytree(ROOT / "taxonomy", root / "taxonomy")
    (root / "papers").mkdir()
    shutil.copy(ROOT / "papers" / "bao2022vlmo.yaml", root / "papers")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def check_add(project: Path, raw: bytes) -> None:
    papers = project / "papers"
    before = snapshot(papers)
    try:
        planned = add(project, papers, bibtex=raw, label="fuzz.bib", taxonomy=TAXONOMY)
    except MoekbError as err:
        assert err.problems, "a MoekbError must carry at least one problem"
        assert snapshot(papers) == before, "a failed add changed papers/"
        return
    # It was valid BibTeX: every file written is new and fails validation only on its placeholders.
    after = snapshot(papers)
    assert set(after) - set(before) == {item.file.name for item in planned}
    assert all(after[name] == content for name, content in before.items())
    for item in planned:
        assert all("placeholder left by `moekb add`" in p.message for p in item.to_fill), item.to_fill
        item.file.unlink()


def check_loader(project: Path, name: str, raw: bytes) -> None:
    papers = project / "papers"
    target = papers / name
    target.write_bytes(raw)
    try:
        before = snapshot(papers)
        # What load_knowledge_base does after loading the taxonomy, which is loaded once here.
        try:
            papers_read, docs, problems = load_papers(TAXONOMY, papers, project)
            problems += check_corpus(papers_read, docs)
        except MoekbError as err:
            assert err.problems
        else:
            assert "bao2022vlmo" in {p.id for p in papers_read}
            assert all(not PLACEHOLDER.match(p.summary) for p in papers_read)
            if not problems:
                assert {p.id for p in papers_read} == {"bao2022vlmo", "lovelace2024test"}
        assert snapshot(papers) == before, "loading changed papers/"
    finally:
        target.unlink()


# -- the properties ---------------------------------------------------------------------------
@PROPERTY
@given(text=bibtex_text)
def test_add_with_random_bibtex_raises_only_moekb_error_and_writes_nothing_on_failure(project, text):
    check_add(project, text.encode("utf-8"))


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_add_with_random_bytes_raises_only_moekb_error_and_writes_nothing_on_failure(project, raw):
    check_add(project, raw)


@PROPERTY
@given(text=yaml_text)
def test_loader_with_random_yaml_raises_only_moekb_error(project, text):
    check_loader(project, "lovelace2024test.yaml", text.encode("utf-8"))


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_loader_with_random_bytes_raises_only_moekb_error(project, raw):
    check_loader(project, "lovelace2024test.yaml", raw)
