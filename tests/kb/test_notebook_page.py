"""Notebooks rendered as documentation pages by the generator (moekb.notebook_page)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import markdown

from moekb.notebook_page import notebook_page, notebook_title

ROOT = Path(__file__).resolve().parents[2]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def notebook(*cells: dict) -> str:
    return json.dumps({"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def md_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}


def code_cell(text: str, *outputs: dict) -> dict:
    return {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": text, "outputs": list(outputs)}


def test_cells_become_markdown_code_blocks_and_titled_outputs():
    page, figures = notebook_page("demo.ipynb", notebook(
        md_cell("# A demo\n\nSome *prose*.\n\n## Part one"),
        code_cell("x = 1\nprint(x)",
                  {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
                  {"output_type": "stream", "name": "stderr", "text": "careful ```\n"}),
        code_cell(""),  # an empty cell shows nothing
        code_cell("plot()", {"output_type": "display_data", "metadata": {},
                             "data": {"image/png": PNG + "\n", "text/plain": ["<Figure>"]}}),
        code_cell("1 / 0", {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                            "traceback": ["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"]}),
        code_cell("y", {"output_type": "execute_result", "metadata": {}, "execution_count": 3,
                        "data": {"text/plain": "42"}}),
    ), download="demo.ipynb")
    assert page.startswith('---\ntitle: "A demo"\n---\n\n# A demo\n\n<small>Rendered from')
    assert "[Download the notebook](demo.ipynb)" in page
    assert "Some *prose*.\n\n## Part one" in page  # Markdown cells are kept as written
    assert '```python\nx = 1\nprint(x)\n```' in page
    assert '```text title="Output"\n1\n```' in page
    assert '````text title="Messages"\ncareful ```\n````' in page  # a fence no output can close
    assert page.count("```python") == 4
    assert "![Figure from code cell 4](cell-4-1.png)" in page  # the page and its figures share a folder
    assert figures == {"cell-4-1.png": base64.b64decode(PNG)}
    assert "<Figure>" not in page  # the image stands for the figure, not its text form
    assert '```text title="ZeroDivisionError"\nZeroDivisionError: division by zero\n```' in page  # colours stripped
    assert '```text title="Output"\n42\n```' in page


def test_the_page_renders_with_the_site_markdown():
    page, _ = notebook_page("demo.ipynb", notebook(md_cell("# Demo"), code_cell(
        "print(1)", {"output_type": "stream", "name": "stdout", "text": "1\n"})), download="demo.ipynb")
    body = page.split("---\n", 2)[2]
    html = markdown.markdown(body, extensions=["pymdownx.highlight", "pymdownx.superfences", "md_in_html"])
    assert '<span class="filename">Output</span>' in html and "<h1" in html


def test_title_falls_back_to_the_file_name():
    assert notebook_title("x.ipynb", [{"cell_type": "markdown", "source": "## not a title"}]) == "x.ipynb"
    page, _ = notebook_page("x.ipynb", notebook(code_cell("1")), download="x.ipynb")
    assert page.startswith('---\ntitle: "x.ipynb"\n---\n\n<small>Rendered from')


def test_the_project_notebooks_show_every_code_cell_and_figure_and_no_script():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        cells = json.loads(text)["cells"]
        page, figures = notebook_page(path.name, text, download=path.name)
        for cell in cells:
            source = "".join(cell["source"]).strip()
            if cell["cell_type"] == "code" and source:
                assert source.splitlines()[0] in page, (path.name, source[:40])
        count = sum(1 for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        assert page.count("![Figure from code cell") == len(figures) == count > 0, path.name
        assert all(data.startswith(b"\x89PNG") for data in figures.values())
        assert "<script" not in page and "://" not in page.replace("https://arxiv.org/", ""), path.name
