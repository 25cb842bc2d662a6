"""What a researcher does on the site, in a real browser: cite a paper, read a math title, compare a
sub-category's methods, share a filtered list of papers, follow related work, and take screenshots
of the pages the README shows. Expected values come from the same build's exports."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "assets" / "screenshots"


@pytest.fixture(scope="module")
def papers(site) -> list[dict]:
    return site.json("downloads/papers.json")["papers"]


def test_copy_bibtex_from_the_cite_control(site, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block",
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(site.url("papers/mustafa2022limoe/"), wait_until="networkidle")
    page.get_by_text("Cite", exact=True).click()
    block = page.locator("details.quote .highlight").nth(0)  # the BibTeX entry, then the reference
    block.hover()
    block.locator("button[data-md-type=copy]").click()  # the theme's copy button
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("@inproceedings{mustafa2022limoe,") and "Basil Mustafa and Carlos Riquelme" in copied
    reference = page.locator("details.quote .highlight").nth(1).inner_text()
    assert "Mustafa, B., Riquelme, C." in reference and "(2022)" in reference
    context.close()


def test_a_math_title_renders_as_math(site, tab):
    tab.page.goto(site.url("papers/jiang2024m4oe/"), wait_until="networkidle")
    heading = tab.page.locator("article h1").first
    heading.locator(".katex").first.wait_for()
    assert "$" not in heading.inner_text()
    assert heading.locator(".katex sup, .katex .msupsub").count() >= 1  # the ^4 is a superscript
    tab.assert_clean()


def test_a_comparison_table_sorts_by_experts(site, tab, artifacts):
    page = tab.page
    page.goto(site.url("taxonomy/engine/multimodal-generation/"), wait_until="networkidle")
    table = page.locator(".moekb-table table").first
    header = table.locator("th", has_text=re.compile(r"^Experts$"))
    column = [t.strip() for t in table.locator("th").all_inner_texts()].index("Experts")

    def experts() -> list[int]:
        cells = table.locator(f"tbody tr td:nth-child({column + 1})").all_inner_texts()
        return [int(c) for c in cells if c.strip()]

    header.click()
    first = experts()
    header.click()
    second = experts()
    assert len(first) >= 5
    assert first in (sorted(first), sorted(first, reverse=True)) and second == list(reversed(first))
    page.screenshot(path=str(SCREENSHOTS / "subcategory.png"), full_page=False)
    tab.assert_clean()


def test_a_filtered_list_of_papers_survives_a_reload(site, tab, papers):
    page = tab.page
    page.goto(site.url("papers/"), wait_until="networkidle")
    page.locator('select[data-filter="perspective"]').select_option("adapter")
    page.locator('input[data-filter="from"]').fill("2025")
    page.locator('input[data-filter="from"]').dispatch_event("input")
    assert "perspective=adapter" in page.url and "from=2025" in page.url
    shown = sorted(page.locator(".moekb-table tbody tr:not([hidden])").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    expected = sorted(p["id"] for p in papers if p["perspective"] == "adapter" and p["year"] >= 2025)
    assert shown == expected and shown
    page.reload(wait_until="networkidle")
    again = sorted(page.locator(".moekb-table tbody tr:not([hidden])").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    assert again == expected
    assert page.locator('select[data-filter="perspective"]').input_value() == "adapter"
    tab.assert_clean()


def test_bibtex_of_the_rows_shown_downloads(site, tab, papers):
    page = tab.page
    page.goto(site.url("papers/?domain=medical"), wait_until="networkidle")
    with page.expect_download() as download:
        page.locator("[data-moekb-bibtex]").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    keys = sorted(re.findall(r"^@\w+\{([^,]+),", text, re.M))
    assert keys == sorted(p["id"] for p in papers if p["domain"] == "medical")


def test_related_work_names_the_shared_references(site, tab, papers):
    by_id = {p["id"]: p for p in papers}
    # a paper with a related paper that shares one of its references, read from the exports
    for paper in papers:
        for other in papers:
            shared = set(paper.get("cites", [])) & set(other.get("cites", [])) - {paper["id"], other["id"]}
            if other is not paper and shared:
                break
        else:
            continue
        break
    page = tab.page
    page.goto(site.url(f"papers/{paper['id']}/"), wait_until="networkidle")
    related = page.locator("ul.moekb-related")
    assert related.count() == 1
    text = related.inner_text()
    assert "both cite" in text
    assert any((by_id[s].get("method") or {}).get("name", "") in text or by_id[s]["authors"][0].split()[-1] in text
               for s in shared)
    page.screenshot(path=str(SCREENSHOTS / "paper.png"), full_page=False)
    tab.assert_clean()


def test_the_csv_export_matches_the_json(site, papers):
    rows = list(csv.DictReader(io.StringIO((site.folder / "downloads" / "papers.csv").read_text(encoding="utf-8"))))
    assert {r["id"] for r in rows} >= {p["id"] for p in papers}
