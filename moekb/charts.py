"""Charts of the knowledge base as SVG, drawn at build time with matplotlib.

Papers per year by perspective, and the research-gap x perspective heat map. The same SVG must
read on Material's light and dark palettes, so backgrounds are transparent and text, axes and
colours are mid-tones. Text is drawn as paths (matplotlib's default for SVG, from its bundled
DejaVu font), so a chart needs no font and downloads nothing. Output is byte-for-byte
reproducible (no date, fixed id salt), so a rebuild rewrites nothing when the counts are the same;
the drawing functions take plain tuples and are cached, since the same counts give the same file.
"""

from __future__ import annotations

import io
from collections import Counter
from functools import lru_cache

from moekb.model import KnowledgeBase, Taxonomy

# Mid-tone colours that keep their contrast on white and on Material's slate background.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f")
BACKGROUND_COLOUR = "#9a9a9a"  # background perspectives (foundations) stay grey, behind the multimodal ones
INK = "#8c8c8c"  # text, axes and grid: readable on both palettes
HEAT_LOW, HEAT_HIGH = "#c5cae9", "#3949ab"  # indigo, the theme's primary colour, light to dark
RC = {"svg.hashsalt": "moekb", "svg.fonttype": "path", "font.family": "DejaVu Sans", "font.size": 10,
      "text.color": INK, "axes.edgecolor": INK, "axes.labelcolor": INK, "xtick.color": INK, "ytick.color": INK}

PAPERS_PER_YEAR = "papers-per-year.svg"
GAP_HEATMAP = "gaps-by-perspective.svg"


def perspective_colours(taxonomy: Taxonomy) -> dict[str, str]:
    """One colour per perspective, shared by the charts and the explorer."""
    colours, foreground = {}, iter(PALETTE * (1 + len(taxonomy.perspectives) // len(PALETTE)))
    for perspective in taxonomy.perspectives:
        colours[perspective.id] = BACKGROUND_COLOUR if perspective.background else next(foreground)
    return colours


# Both helpers run inside ``matplotlib.rc_context(RC)``: artists read the colours when created and
# the SVG writer reads its settings when saving.
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # without pyplot: no global state, no GUI backend

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", transparent=True, bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


@lru_cache(maxsize=8)
def papers_per_year_svg(years: tuple[int, ...], series: tuple[tuple[str, str, tuple[int, ...]], ...]) -> str:
    """Stacked bars: one bar per year that has papers, one segment per (label, colour, counts)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        figure, axes = _figure(max(5.0, 0.45 * len(years) + 2.5), 3.6)
        positions = range(len(years))
        bottom = [0] * len(years)
        for label, colour, counts in series:
            axes.bar(positions, counts, bottom=bottom, color=colour, label=label, width=0.75)
            bottom = [b + c for b, c in zip(bottom, counts)]
        for x, total in zip(positions, bottom):
            axes.text(x, total, str(total), ha="center", va="bottom", fontsize=8)
        axes.set_xticks(list(positions), [str(y) for y in years], rotation=45 if len(years) > 12 else 0)
        axes.set_ylabel("papers")
        axes.set_ylim(0, max(bottom, default=0) * 1.15 + 1)
        axes.yaxis.grid(True, color=INK, alpha=0.3)
        axes.set_axisbelow(True)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        axes.legend(frameon=False, loc="upper left")
        return _svg(figure)


@lru_cache(maxsize=8)
def heatmap_svg(rows: tuple[str, ...], columns: tuple[str, ...], counts: tuple[tuple[int, ...], ...]) -> str:
    """A count per (row, column) cell; empty cells are left unfilled so thin research stands out."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    with matplotlib.rc_context(RC):
        figure, axes = _figure(1.0 * len(columns) + 2.4, 0.45 * len(rows) + 0.8)
        values = np.array(counts, dtype=float).reshape(len(rows), len(columns))
        colormap = LinearSegmentedColormap.from_list("moekb-heat", [HEAT_LOW, HEAT_HIGH]).with_extremes(bad=(0, 0, 0, 0))
        top = max(values.max(initial=0), 1)
        axes.imshow(np.ma.masked_equal(values, 0), cmap=colormap, vmin=1, vmax=top, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(columns)):
                n = int(values[i, j])
                dark_cell = n and (n - 1) / max(top - 1, 1) > 0.45
                axes.text(j, i, str(n), ha="center", va="center", fontsize=9,
                          color="white" if dark_cell else ("#1a1a1a" if n else INK))
        axes.set_xticks(range(len(columns)), columns)
        axes.set_yticks(range(len(rows)), rows)
        axes.xaxis.tick_top()
        axes.tick_params(length=0)
        axes.set_xticks([x - 0.5 for x in range(1, len(columns))], minor=True)
        axes.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
        axes.grid(which="minor", color=INK, alpha=0.4)
        for spine in axes.spines.values():
            spine.set_visible(False)
        return _svg(figure)


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
