"""The citation-graph explorer's views: the side panel a tap opens on a phone, the state kept in the
URL, the year layout, labels once zoomed in, and the style of papers whose citations were not checked.

Expected values come from the same build's downloads/graph.json (the graph, with each paper's method
and whether its reference list was read), so they do not depend on the code under test. The tests
also write the screenshots the documentation shows (docs/assets/screenshots/explorer*.png).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import recording_tab
from test_site import GRAPH, HIDE_HEADER, node_on_screen, open_explorer

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "assets" / "screenshots"
EXPLORER = "#moekb-explorer"
PANEL = ".moekb-explorer__panel"


@pytest.fixture(scope="module")
def graph(site) -> dict:
    return site.json("downloads/graph.json")


@pytest.fixture
def phone(browser):
    """A phone-sized tab with touch, recording requests and console errors like the ``tab`` fixture."""
    context, record = recording_tab(browser, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
                                    device_scale_factor=2)
    yield record
    context.close()


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def loneliest_node(page) -> str:
    """The drawn node farthest from any other (a finger hits it and nothing else)."""
    return page.evaluate("""(() => {
        const nodes = moekbExplorer.nodes(':visible'), w = moekbExplorer.width(), h = moekbExplorer.height();
        let best = null, room = -1;
        nodes.forEach(a => {
          const p = a.renderedPosition();
          if (p.x < 40 || p.y < 40 || p.x > w - 40 || p.y > h * 0.4) return;  // clear of the panel's sheet
          let near = Infinity;
          nodes.forEach(b => {
            if (a === b) return;
            const q = b.renderedPosition();
            near = Math.min(near, Math.hypot(p.x - q.x, p.y - q.y) - b.renderedOuterWidth() / 2);
          });
          if (near > room) { room = near; best = a.id(); }
        });
        return best;
    })()""")


def panel_title(page) -> str:
    return page.locator(f"{PANEL} .moekb-explorer__title").inner_text()


def tap_background(page) -> None:
    """A tap on the canvas's top left corner, which the fitted graph's padding keeps empty."""
    page.evaluate("window.scrollTo(0, document.querySelector('.moekb-explorer__canvas').getBoundingClientRect().top "
                  "+ window.scrollY - 120)")
    page.wait_for_timeout(300)
    box = page.locator(".moekb-explorer__canvas").bounding_box()
    page.touchscreen.tap(box["x"] + 6, box["y"] + 6)


def test_a_tap_on_a_phone_selects_a_paper_and_the_url_keeps_it(site, phone, graph):
    by_id = {n["id"]: n for n in graph["nodes"]}
    page = phone.page
    open_explorer(phone, site)
    help_text = page.locator(".moekb-explorer__help").inner_text()
    assert "tap" in help_text.lower() and "hover" not in help_text.lower()
    paper = loneliest_node(page)
    assert paper, "no node to tap"
    x, y = node_on_screen(phone, paper)
    page.touchscreen.tap(x, y)
    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    # The first tap selects: no navigation, the panel shows the paper, the URL names it.
    assert urlsplit(page.url).path.endswith("/" + GRAPH)
    assert panel.get_attribute("data-paper") == paper
    node = by_id[paper]
    assert panel_title(page) == node["title"]
    text = panel.inner_text()
    assert str(node["year"]) in text and node["authors"][0] in text
    assert (node["method"] or "") in text and f"{node['in_kb_citations']} paper" in text
    assert ("not checked yet" in text) == (not node["citations_checked"])
    link = panel.get_by_role("link", name="Open the paper")
    assert re.search(rf"/papers/{re.escape(paper)}/$", link.get_attribute("href"))
    assert query(page).get("paper") == [paper]
    assert page.locator(".moekb-explorer__tip").is_hidden()
    page.wait_for_timeout(300)  # the panel's pan, if any, has settled
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "explorer-mobile.png"))

    page.reload(wait_until="networkidle")
    page.wait_for_selector(f"{EXPLORER}[data-ready=true]")
    panel.wait_for(state="visible")
    assert panel_title(page) == node["title"]
    assert page.locator(EXPLORER).get_attribute("data-selected") == paper
    assert page.evaluate(f"moekbExplorer.getElementById({paper!r}).hasClass('chosen')")

    tap_background(page)
    panel.wait_for(state="hidden")
    assert "paper" not in query(page)

    # A second tap on the selected paper opens it.
    x, y = node_on_screen(phone, paper)
    page.touchscreen.tap(x, y)
    panel.wait_for(state="visible")
    x, y = node_on_screen(phone, paper)
    page.touchscreen.tap(x, y)
    page.wait_for_url(re.compile(rf"/papers/{re.escape(paper)}/$"))
    phone.assert_clean()


def test_filters_layout_and_selection_live_in_the_url_and_survive_a_reload(site, tab, graph):
    nodes = graph["nodes"]
    perspective = sorted({n["perspective"] for n in nodes})[0]
    years = sorted({n["year"] for n in nodes})
    start = years[len(years) // 2]
    expected = {n["id"] for n in nodes if n["perspective"] == perspective and n["year"] >= start}
    assert expected
    chosen = sorted(expected)[0]
    page = tab.page
    open_explorer(tab, site)
    for box in page.locator("input[name=perspective]").all():
        if box.get_attribute("value") != perspective:
            box.uncheck()
    page.locator("input[name=from]").fill(str(start))
    page.get_by_label("by year").check()
    page.wait_for_selector(f"{EXPLORER}[data-layout=year]")
    state = query(page)
    assert state["perspective"] == [perspective] and state["year_from"] == [str(start)] and state["layout"] == ["year"]

    # Straight from a URL, as a reader would share it; then a reload keeps it all.
    page.goto(site.url(GRAPH) + f"?perspective={perspective}&year_from={start}&layout=year&paper={chosen}",
              wait_until="networkidle")
    for attempt in range(2):
        page.wait_for_selector(f"{EXPLORER}[data-ready=true]")
        assert set(page.evaluate("moekbExplorer.nodes(':visible').map(n => n.id())")) == expected
        assert page.locator("input[name=from]").input_value() == str(start)
        assert page.locator(f"input[name=perspective][value={perspective}]").is_checked()
        assert page.get_by_label("by year").is_checked()
        assert page.locator(EXPLORER).get_attribute("data-layout") == "year"
        assert page.locator(PANEL).get_attribute("data-paper") == chosen
        assert query(page)["paper"] == [chosen]
        if attempt == 0:
            page.reload(wait_until="networkidle")

    # Reset clears the filters but leaves the layout; the URL follows.
    page.get_by_role("button", name="Reset").click()
    page.wait_for_function(f"moekbExplorer.nodes(':visible').length === {len(nodes)}")
    page.wait_for_function("!location.search.includes('perspective=')")
    assert query(page).get("layout") == ["year"]
    tab.assert_clean()


def test_year_layout_puts_older_papers_left_of_newer_ones(site, tab, graph):
    nodes = graph["nodes"]
    page = tab.page
    open_explorer(tab, site)
    page.get_by_label("by year").check()
    page.wait_for_selector(f"{EXPLORER}[data-layout=year]")
    x = page.evaluate("Object.fromEntries(moekbExplorer.nodes().map(n => [n.id(), n.position('x')]))")
    oldest = min(nodes, key=lambda n: (n["year"], n["id"]))
    newest = max(nodes, key=lambda n: (n["year"], n["id"]))
    assert oldest["year"] < newest["year"]
    assert x[oldest["id"]] < x[newest["id"]]
    # Every year's papers lie left of every later year's.
    by_year: dict[int, list[float]] = {}
    for n in nodes:
        by_year.setdefault(n["year"], []).append(x[n["id"]])
    years = sorted(by_year)
    assert all(max(by_year[a]) < min(by_year[b]) for a, b in zip(years, years[1:]))
    # The axis names the years (those with room to be drawn).
    ticks = [t for t in page.locator(".moekb-explorer__tick").all() if t.is_visible()]
    assert ticks and {t.inner_text() for t in ticks} & {str(y) for y in years}
    # Back to the taxonomy: the positions the page gave.
    page.get_by_label("by taxonomy").check()
    page.wait_for_selector(f"{EXPLORER}[data-layout=taxonomy]")
    given = page.evaluate("Object.fromEntries(moekbGraphData.nodes.map(n => [n.id, [n.x, n.y]]))")
    now = page.evaluate("Object.fromEntries(moekbExplorer.nodes().map(n => [n.id(), [n.position('x'), n.position('y')]]))")
    assert all(abs(now[i][0] - given[i][0]) < 0.01 and abs(now[i][1] - given[i][1]) < 0.01 for i in given)
    assert page.locator(".moekb-explorer__axis").is_hidden()
    tab.assert_clean()


def test_labels_appear_once_zoomed_in(site, tab, graph, artifacts):
    nodes = graph["nodes"]
    with_method = next(n for n in nodes if n.get("method"))
    without = next((n for n in nodes if not n.get("method")), None)
    page = tab.page
    open_explorer(tab, site)
    label = "(id) => moekbExplorer.getElementById(id).style('label')"
    assert page.locator(EXPLORER).get_attribute("data-labels") == "hidden"
    assert page.evaluate(label, with_method["id"]) == ""
    page.evaluate("window.scrollTo(0, document.querySelector('.moekb-explorer__canvas').getBoundingClientRect().top "
                  "+ window.scrollY - 80)")
    page.wait_for_timeout(400)  # Cytoscape ignores the wheel while the page scrolls
    box = page.locator(".moekb-explorer__canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    before = page.evaluate("moekbExplorer.zoom()")
    for _ in range(80):
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(40)
        if page.locator(EXPLORER).get_attribute("data-labels") == "shown":
            break
    assert page.locator(EXPLORER).get_attribute("data-labels") == "shown"
    assert page.evaluate("moekbExplorer.zoom()") > before
    assert page.evaluate(label, with_method["id"]) == with_method["method"]
    if without:
        assert page.evaluate(label, without["id"]) == without["id"]
    page.screenshot(path=str(artifacts / "explorer-labels.png"))
    # Zoomed out again, the labels go.
    page.evaluate("moekbExplorer.fit(undefined, 24)")
    page.wait_for_function(f"document.querySelector({EXPLORER!r}).dataset.labels === 'hidden'")
    assert page.evaluate(label, with_method["id"]) == ""
    tab.assert_clean()


def test_papers_with_unchecked_citations_are_hollow_and_dashed(site, tab, graph):
    nodes = graph["nodes"]
    unchecked = [n["id"] for n in nodes if not n["citations_checked"]]
    checked = [n["id"] for n in nodes if n["citations_checked"]]
    page = tab.page
    open_explorer(tab, site)
    looks = page.evaluate("""(ids) => ids.map(id => {
        const n = moekbExplorer.getElementById(id);
        return [n.style('border-style'), Number(n.style('background-opacity')), parseFloat(n.style('border-width'))];
    })""", unchecked + checked)
    for paper, (border, fill, width) in zip(unchecked + checked, looks):
        if paper in unchecked:
            assert border == "dashed" and fill < 0.5 and width > 0, paper
        else:
            assert border == "solid" and fill == 1, paper
    legend = page.locator(".moekb-explorer__legend")
    assert legend.is_visible()
    assert "not read" in legend.inner_text()
    help_text = page.locator(".moekb-explorer__help").inner_text().lower()
    assert "hover" in help_text  # a desktop pointer hovers
    tab.assert_clean()


def test_desktop_screenshot_with_a_selected_paper(site, tab, graph):
    node = max(graph["nodes"], key=lambda n: (n["in_kb_citations"], n["id"]))
    page = tab.page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(site.url(GRAPH) + f"?paper={node['id']}", wait_until="networkidle")
    page.wait_for_selector(f"{EXPLORER}[data-ready=true]")
    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    assert panel_title(page) == node["title"]
    page.wait_for_timeout(200)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(EXPLORER).screenshot(path=str(SCREENSHOTS / "explorer.png"), style=HIDE_HEADER)
    # The panel's close button clears the selection, and the URL with it.
    panel.get_by_role("button", name="Clear the selection").click()
    panel.wait_for(state="hidden")
    assert "paper" not in query(page)
    tab.assert_clean()
