"""A notebook as a documentation page: its Markdown cells as they are, code and outputs as blocks.

The notebooks are the project's own (``notebooks/*.ipynb``, run by nbval in ``make test`` with
their outputs committed), so their Markdown cells are written into the page verbatim and the site
renders them like every other page: same code blocks with copy buttons, same headings in the table
of contents, same offline assets. Code cells become Python blocks, text outputs text blocks titled
"Output", images files beside the page (``notebooks/<name>/cell-4-1.png``), so that the page stays
small and the browser caches the figures. Nothing is executed and no converter is imported, so a
build costs a few milliseconds per notebook; converters that emit a whole HTML document bring their
own scripts and styles (and CDN URLs) with them, which this site must not have.
"""

from __future__ import annotations

import base64
import posixpath
import binascii
import json
import re

from moekb import markup

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour codes in tracebacks and progress bars
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}


SOURCE_LINE = "MOEKB_SOURCE = None"  # the notebooks' first cell; the published copy names the repository


def published_notebook(text: str, repository: str | None) -> str:
    """The notebook as the site offers it for download: its install cell names the repository, so that
    it runs outside a checkout (Colab, a laptop) by installing ``moekb[impls]`` from there."""
    if not repository or SOURCE_LINE not in text:
        return text
    notebook = json.loads(text)
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            lines = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(keepends=True)
            cell["source"] = [f"MOEKB_SOURCE = {json.dumps(repository)}\n" if line.strip() == SOURCE_LINE else line
                              for line in lines]
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def colab_url(repository: str | None, name: str) -> str | None:
    """Colab opens notebooks straight from a GitHub repository."""
    match = re.match(r"^https://github\.com/([\w.-]+)/([\w.-]+?)/?$", repository or "")
    return f"https://colab.research.google.com/github/{match[1]}/{match[2]}/blob/main/notebooks/{name}" if match else None


def notebook_page(name: str, text: str, *, download: str, repository: str | None = None) -> tuple[str, dict[str, bytes]]:
    """The Markdown page for notebook ``name`` (its JSON ``text``) and its figures: ``{file name
    in the folder named after the notebook: bytes}``. ``download`` links the .ipynb."""
    notebook = json.loads(text)
    cells = notebook.get("cells", [])
    colab = colab_url(repository, name)
    badge = f" · [Open in Colab]({colab})" if colab else ""
    note = (f'<small>Rendered from [`notebooks/{name}`]({download}) with the outputs it was committed with '
            f'(`make test` re-runs it with nbval) · [Download the notebook]({download}){badge} · run it with '
            f'`jupyter lab notebooks/{name}`</small>')
    out = [markup.front_matter(notebook_title(name, cells))]
    folder = ""  # the page is notebooks/<name>/index.md and its figures lie beside it
    figures: dict[str, bytes] = {}
    for number, cell in enumerate(cells, start=1):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            if note and source.startswith("# "):  # the note goes under the notebook's title
                title, _, source = source.partition("\n")
                out += [title, "", note, ""]
                note = ""
            out += [source, ""]
        elif cell.get("cell_type") == "code" and source.strip():
            out += [markup.fence(source, "python"), ""]
            for output in cell.get("outputs", []):
                block = output_block(output, number, folder, figures)
                out += [block, ""] if block else []
        if note and number == 1:
            out[1:1] = [note, ""]
            note = ""
    return "\n".join(out).rstrip() + "\n", figures


def notebook_title(name: str, cells: list[dict]) -> str:
    """The first level-1 heading of a Markdown cell, else the file name."""
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return name


def output_block(output: dict, cell_number: int, folder: str, figures: dict[str, bytes]) -> str:
    """One output of a code cell as Markdown, or "" when it shows nothing; an image is added to
    ``figures`` and linked from ``folder``."""
    kind = output.get("output_type")
    if kind == "stream":
        return titled_text("".join(output.get("text", "")), "Output" if output.get("name") != "stderr" else "Messages")
    if kind == "error":
        return titled_text("\n".join(output.get("traceback", [])), output.get("ename", "Error"))
    data = output.get("data", {})
    for image_type, extension in IMAGE_TYPES.items():
        if image_type in data:
            try:
                image = base64.b64decode("".join(data[image_type]), validate=False)
            except (binascii.Error, ValueError):
                return titled_text(f"[an {image_type} output that is not valid base64]", "Output")
            name = f"cell-{cell_number}-{sum(1 for f in figures if f.startswith(f'cell-{cell_number}-')) + 1}.{extension}"
            figures[name] = image
            return f"![Figure from code cell {cell_number}]({posixpath.join(folder, name)})"
    if "text/plain" in data:
        return titled_text("".join(data["text/plain"]), "Output")
    return ""


def titled_text(text: str, title: str) -> str:
    """Text as a code block titled ``title`` (pymdownx.highlight's ``title`` option), colours stripped."""
    text = ANSI_ESCAPE.sub("", text).rstrip()
    if not text:
        return ""
    block = markup.fence(text, "text")
    first_line, _, rest = block.partition("\n")
    return f'{first_line} title="{re.sub(r"[^A-Za-z0-9 ._-]", "", title)}"\n{rest}'
