"""Charts of the knowledge base as SVG, written directly as SVG elements.

Papers per year by perspective (stacked bars), and the research-gap x perspective heat map. The
same SVG must read on Material's light and dark palettes (it is shown through ``<img>``, so it
cannot follow the page's CSS), so backgrounds are transparent and text, axes and colours are
mid-tones. Text is SVG text in the browser's sans-serif font, so it stays sharp at any zoom and
can be read by screen readers and search; every chart has a ``<title>``. Output depends only on
the counts, so a rebuild rewrites nothing when they are the same. Two charts of a few dozen
shapes do not need a plotting library: importing matplotlib alone took longer than the whole
knowledge base takes to validate.
"""

from __future__ import annotations

import math
from collections import Counter
from markupsafe import escape  # escapes quotes too, so a value is safe in an attribute

from moekb.markup import inert_html, reveal_hidden
from moekb.model import KnowledgeBase, Taxonomy

# Mid-tone colours that keep their contrast on white and on Material's slate background.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f")
BACKGROUND_COLOUR = "#9a9a9a"  # background perspectives (foundations) stay grey, behind the multimodal ones
INK = "#8c8c8c"  # text, axes and grid: readable on both palettes
HEAT_LOW, HEAT_HIGH = "#c5cae9", "#3949ab"  # indigo, the theme's primary colour, light to dark
FONT = 'font-family="sans-serif"'
CHAR_WIDTH = 0.6  # of the font size: a generous average for sans-serif, to leave room for labels

PAPERS_PER_YEAR = "papers-per-year.svg"
GAP_HEATMAP = "gaps-by-perspective.svg"


def perspective_colours(taxonomy: Taxonomy) -> dict[str, str]:
    """One colour per perspective, shared by the charts and the explorer."""
    colours, foreground = {}, iter(PALETTE * (1 + len(taxonomy.perspectives) // len(PALETTE)))
    for perspective in taxonomy.perspectives:
        colours[perspective.id] = BACKGROUND_COLOUR if perspective.background else next(foreground)
    return colours


def svg_document(width: float, height: float, title: str, body: list[str]) -> str:
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
        f"<title>{escape(title)}</title>", *body, "</svg>", ""])


def text(x: float, y: float, label: str, *, size: float = 11, anchor: str = "middle", colour: str = INK,
         baseline: str = "auto", rotate: float = 0) -> str:
    turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" {FONT} font-size="{size:g}" fill="{colour}" text-anchor="{anchor}" '
            f'dominant-baseline="{baseline}"{turn}>{escape(label)}</text>')


def text_width(label: str, size: float) -> float:
    return len(label) * size * CHAR_WIDTH


def nice_step(top: int, ticks: int = 5) -> int:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` grid lines up to ``top``."""
    raw = max(top, 1) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return max(1, int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw)))


def papers_per_year_svg(years: tuple[int, ...], series: tuple[tuple[str, str, tuple[int, ...]], ...]) -> str:
    """Stacked bars: one bar per year that has papers, one segment per (label, colour, counts)."""
    totals = [sum(counts[i] for _, _, counts in series) for i in range(len(years))]
    top = max(totals, default=0)
    step = nice_step(top)
    y_max = step * math.ceil((top * 1.1 + 1) / step)
    left, right, rotate = 48.0, 16.0, len(years) > 12
    slot = max(34.0, (640.0 - left - right) / max(len(years), 1))  # bars spread over at least 640 px
    bar = min(slot * 0.75, 44.0)
    width = left + right + slot * len(years)
    legend, x, row = [], left, 0  # (x, row) of each legend entry, in rows along the top
    for label, _, _ in series:
        entry = 14 + text_width(label, 11)
        if x > left and x + entry > width - right:
            x, row = left, row + 1
        legend.append((x, row))
        x += entry + 18
    plot_top, plot_height = 18.0 * (row + 1) + 16, 220.0
    height = plot_top + plot_height + (44.0 if rotate else 26.0)

    def y_of(value: float) -> float:
        return plot_top + plot_height * (1 - value / y_max)

    body = []
    for tick in range(0, y_max + 1, step):  # grid and y labels
        y = y_of(tick)
        body.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{width - right:.1f}" y2="{y:.1f}" stroke="{INK}" '
                    f'stroke-opacity="{0.6 if tick == 0 else 0.3}" stroke-width="1"/>')
        body.append(text(left - 6, y, str(tick), anchor="end", baseline="middle"))
    body.append(text(14, plot_top + plot_height / 2, "papers", rotate=-90, baseline="middle"))
    for i, year in enumerate(years):
        x, stacked = left + slot * i + (slot - bar) / 2, 0
        for label, colour, counts in series:
            if counts[i]:
                y0, y1 = y_of(stacked), y_of(stacked + counts[i])
                body.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{bar:.1f}" height="{y0 - y1:.1f}" '
                            f'fill="{colour}"><title>{escape(f"{year}, {label}: {counts[i]}")}</title></rect>')
                stacked += counts[i]
        centre = x + bar / 2
        body.append(text(centre, y_of(stacked) - 4, str(totals[i]), size=9))
        label_y = plot_top + plot_height + 16
        body.append(text(centre, label_y, str(year), size=10, anchor="end" if rotate else "middle",
                         rotate=-45 if rotate else 0))
    for (x, row), (label, colour, _) in zip(legend, series):
        y = 8 + 18 * row
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="10" height="10" fill="{colour}"/>')
        body.append(text(x + 14, y + 5, label, anchor="start", baseline="middle"))
    return svg_document(width, height, "Papers per year, by perspective", body)


def heat_colour(fraction: float) -> str:
    """From HEAT_LOW (fraction 0) to HEAT_HIGH (fraction 1), interpolated in RGB."""
    low, high = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (HEAT_LOW, HEAT_HIGH))
    return "#" + "".join(f"{round(a + (b - a) * fraction):02x}" for a, b in zip(low, high))


def heatmap_svg(rows: tuple[str, ...], columns: tuple[str, ...], counts: tuple[tuple[int, ...], ...]) -> str:
    """A count per (row, column) cell; empty cells are left unfilled so thin research stands out."""
    cell_width, cell_height = max(80.0, max((text_width(c, 11) + 16 for c in columns), default=0)), 32.0
    left = 12 + max((text_width(r, 11) for r in rows), default=0)
    top = 28.0
    width, height = left + cell_width * len(columns) + 8, top + cell_height * len(rows) + 8
    peak = max((n for row in counts for n in row), default=0)
    body = [text(left + cell_width * (j + 0.5), top - 10, column) for j, column in enumerate(columns)]
    for i, row in enumerate(rows):
        y = top + cell_height * i
        body.append(text(left - 8, y + cell_height / 2, row, anchor="end", baseline="middle"))
        for j, n in enumerate(counts[i]):
            x = left + cell_width * j
            fraction = (n - 1) / max(peak - 1, 1) if n else 0.0
            fill = f'fill="{heat_colour(fraction)}"' if n else 'fill="none"'
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_width:.1f}" height="{cell_height:.1f}" {fill} '
                        f'stroke="{INK}" stroke-opacity="0.4"><title>{escape(f"{row}, {columns[j]}: {n}")}</title></rect>')
            colour = "white" if n and fraction > 0.45 else ("#1a1a1a" if n else INK)
            body.append(text(x + cell_width / 2, y + cell_height / 2, str(n), colour=colour, baseline="middle"))
    return svg_document(width, height, "Papers per research gap and perspective", body)


def year_series(kb: KnowledgeBase) -> tuple[tuple[int, ...], tuple[tuple[str, str, tuple[int, ...]], ...]]:
    years = tuple(sorted({p.year for p in kb.papers}))
    colours = perspective_colours(kb.taxonomy)
    series = []
    for perspective in kb.taxonomy.perspectives:
        per_year = Counter(p.year for p in kb.in_perspective(perspective.id))
        series.append((perspective.id, colours[perspective.id], tuple(per_year[y] for y in years)))
    return years, tuple(series)


def gap_counts(kb: KnowledgeBase) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Rows are gaps, columns perspectives: how many papers of the perspective address the gap."""
    perspectives = kb.taxonomy.perspectives
    counts = tuple(tuple(sum(1 for p in kb.in_perspective(q.id) if gap.id in p.gaps) for q in perspectives)
                   for gap in kb.taxonomy.gaps)
    return tuple(g.name for g in kb.taxonomy.gaps), tuple(q.id for q in perspectives), counts


def render_charts(kb: KnowledgeBase) -> dict[str, str]:
    """File name -> SVG text for every chart."""
    return {PAPERS_PER_YEAR: papers_per_year_svg(*year_series(kb)), GAP_HEATMAP: heatmap_svg(*gap_counts(kb))}


def neighbourhood_svg(paper, cited_by: list, cites: list, *, more: tuple[int, int], href) -> str:
    """A paper's citation neighbourhood, drawn at build time: papers citing it in a column on the left,
    papers it cites on the right, arrows towards the cited paper. Labels are method names (or ids);
    every node is a link (``href(paper)``). Inline SVG, so it follows the page's colours."""
    label = lambda p: " ".join(reveal_hidden(p.method.name if p.method else p.id).split())  # noqa: E731
    row, width, box = 26.0, 720.0, 200.0
    rows = max(len(cited_by) + (more[0] > 0), len(cites) + (more[1] > 0), 1)
    height = rows * row + 16
    centre_y = height / 2
    body = []

    def node(x: float, y: float, p, *, bold: bool = False) -> str:
        name = label(p)
        short = name if len(name) <= 26 else name[:25] + "…"
        weight = ' font-weight="bold"' if bold else ""
        return (f'<a href="{escape(href(p))}" target="_top"><title>{inert_html(p.title)} ({p.year})</title>'
                f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="{box:.0f}" height="20" rx="4" fill="none" '
                f'stroke="currentColor" stroke-opacity="0.45"/>'
                f'<text x="{x + box / 2:.1f}" y="{y + 4:.1f}" {FONT} font-size="12" fill="currentColor" '
                f'text-anchor="middle"{weight}>{escape(short)} · {p.year}</text></a>')

    def column(papers: list, x: float, extra: int, left: bool) -> None:
        top = centre_y - (len(papers) + (extra > 0)) * row / 2 + row / 2
        for k, p in enumerate(papers):
            y = top + k * row
            x1, x2 = (x + box, width / 2 - box / 2) if left else (width / 2 + box / 2, x)
            body.append(f'<line x1="{x1:.1f}" y1="{y if left else centre_y:.1f}" x2="{x2:.1f}" '
                        f'y2="{centre_y if left else y:.1f}" stroke="currentColor" stroke-opacity="0.35" '
                        f'marker-end="url(#moekb-arrow)"/>')
            body.append(node(x, y, p))
        if extra > 0:
            y = top + len(papers) * row
            body.append(text(x + box / 2, y + 4, f"and {extra} more", size=11, colour="currentColor"))

    column(cited_by, 8, more[0], left=True)
    column(cites, width - box - 8, more[1], left=False)
    body.append(node(width / 2 - box / 2, centre_y, paper, bold=True))
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" color="{INK}">',
        f"<title>Citation neighbourhood of {inert_html(paper.title)}</title>",
        '<defs><marker id="moekb-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="currentColor" fill-opacity="0.5"/></marker></defs>',
        *body, "</svg>", ""])
