"""The shortcuts taken for thousands of papers give exactly what the slow, general paths give:
libyaml reading (ruamel's round trip otherwise), BibTeX written in one pass with an ASCII
shortcut and highlighted without Pygments' lexer, relative links per folder pair, and the
per-perspective and per-sub-category indexes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pylatexenc.latexencode import UnicodeToLatexEncoder


from moekb.bib import PlainTextShortcutEncoder, bibtex, bibtex_entries
from moekb.errors import MoekbError
from moekb.load import load_knowledge_base
from moekb.source import OutsideFastSubset, fast_data, parse_text, round_trip_tree, to_plain

ROOT = Path(__file__).resolve().parents[2]
YAML_FILES = sorted([*(ROOT / "papers").glob("*.yaml"), *(ROOT / "taxonomy").glob("*.yaml"),
                     *(ROOT / "tests" / "kb" / "bad_entries").rglob("*.yaml")])


@pytest.mark.parametrize("file", YAML_FILES, ids=lambda f: f.relative_to(ROOT).as_posix())
def test_libyaml_reading_equals_the_round_trip_or_steps_aside(file):
    text = file.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    try:
        slow = to_plain(round_trip_tree(text, "x.yaml"))
    except MoekbError:
        with pytest.raises(OutsideFastSubset):  # ruamel's error message is the one reported
            fast_data(text)
        return
    try:
        fast = fast_data(text)
    except OutsideFastSubset:
        return
    assert repr(fast) == repr(slow)  # repr: 1 == True == 1.0 would hide a type difference


@pytest.mark.parametrize("text, why", [
    ("a: 1\na: 2\n", "repeated key"),
    ("x: 1e3\n", "a float with an exponent"),
    ("x: .inf\n", "an infinite float"),
    ("n: 0o17\n", "an octal integer"),
    ("n: 1_000\n", "an integer with underscores"),
    ("n: 010\n", "an integer with a leading zero"),
    ("when: 2024-01-02 10:00:00\n", "a timestamp with a time"),
    ("%YAML 1.1\n---\nflag: yes\n", "a version directive"),
    ("base: &b {x: 1}\nother:\n  <<: *b\n", "a merge key"),
    ("tagged: !custom x\n", "an unknown tag"),
    ("a: [1, 2\n", "a syntax error"),
])
def test_libyaml_steps_aside_for_what_only_ruamel_decides(text, why):
    with pytest.raises(OutsideFastSubset):
        fast_data(text)


def test_yaml_1_2_scalars_read_as_ruamel_reads_them():
    text = "a: yes\nb: no\nc: on\nd: true\ne: ~\nf: 10\ng: 2024-01-02\nh: '5'\ni: -3\nj:\nk: 12.5\nl: 2401.12340\n"
    assert fast_data(text) == {"a": "yes", "b": "no", "c": "on", "d": True, "e": None, "f": 10,
                               "g": dt.date(2024, 1, 2), "h": "5", "i": -3, "j": None, "k": 12.5, "l": 2401.1234}
    assert fast_data(text) == to_plain(round_trip_tree(text, "x.yaml"))


def test_lines_are_still_found_for_problems():
    doc = parse_text("id: x\ntitle: T\nauthors:\n  - A\n  - B\n", "x.yaml")
    assert doc.line(("authors", 1)) == 5 and doc.line(("title",)) == 2


def test_the_ascii_shortcut_encodes_as_pylatexenc_does():
    plain, shortcut = UnicodeToLatexEncoder(conversion_rules=["defaults"]), PlainTextShortcutEncoder()
    samples = [chr(c) for c in range(32, 127)] + [
        "Mixture-of-Experts: 50% faster & {stable}", "Gödel, Escher ~ Bach", "a_b#c\\d",
        "https://arxiv.org/abs/2401.12345", "https://example.org/~user/a_b", "plain words only", "",
    ]
    for text in samples:
        assert shortcut.unicode_to_latex(text) == plain.unicode_to_latex(text), text


def test_bibtex_in_one_pass_equals_one_entry_at_a_time():
    kb = load_knowledge_base(ROOT)
    entries = bibtex_entries(kb.papers, kb.taxonomy)
    assert list(entries) == [p.id for p in kb.papers]
    for paper in kb.papers[:10]:
        assert entries[paper.id] == bibtex([paper], kb.taxonomy)
    assert bibtex(kb.papers, kb.taxonomy) == "\n".join(entries.values())


def test_indexes_equal_a_scan():
    kb = load_knowledge_base(ROOT)
    for perspective in kb.taxonomy.perspectives:
        assert kb.in_perspective(perspective.id) == [p for p in kb.papers if p.perspective == perspective.id]
        for sub in perspective.subcategories:
            assert kb.in_subcategory(sub.id) == [p for p in kb.papers if p.subcategory == sub.id]
    kb.in_subcategory(kb.papers[0].subcategory).clear()  # a caller's list is its own
    assert kb.papers[0] in kb.in_subcategory(kb.papers[0].subcategory)
    assert kb.in_perspective("no-such-perspective") == []
