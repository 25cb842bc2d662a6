"""What the outside world sees of an entry's fields, derived from the model alone.

The pydantic models in :mod:`moekb.model` declare each field once (type, title, description). From
them come: the contributor guide's field tables (:func:`field_table`), the method card and the
comparison-table cells (:func:`method_rows`), the JSON export (:func:`published_paper`) and the CSV
export (:data:`CSV_COLUMNS`, :func:`csv_row`). Adding an optional field to ``Paper`` or ``Method``
adds it to all of them.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from moekb import markup
from moekb.model import Method, Paper, Taxonomy

IDENTIFIERS = ("arxiv", "doi", "url")  # an entry needs at least one (moekb.validate)
LIST_JOIN = "; "


def _requirement(name: str, info) -> str:
    if name in IDENTIFIERS:
        return "one of " + ", ".join(f"`{i}`" for i in IDENTIFIERS)
    if name in ("perspective", "subcategory"):
        return "yes, except surveys"
    return "yes" if info.is_required() else "no"


def field_table() -> str:
    """The guide's tables of entry fields and method fields, in the model's order."""
    lines = ["| Field | Required | What to write |", "|---|---|---|"]
    lines += [f"| `{name}` | {_requirement(name, info)} | {info.description} |" for name, info in Paper.model_fields.items()]
    lines += ["", "#### The `method` block", "", "| Field | Shown as | What to write |", "|---|---|---|"]
    lines += [f"| `method.{name}` | {info.title} | {info.description} |" for name, info in Method.model_fields.items()]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:g}"


def method_rows(method: Method | None, taxonomy: Taxonomy, *, compact: bool = False,
                hub: str = "https://huggingface.co/") -> list[tuple[str, Markup]]:
    """``(title, HTML)`` for each stated fact of ``method``, titles from the model. ``compact`` gives the
    comparison table's cells (every field, blank where unstated; ids instead of names)."""
    if method is None:
        return [(info.title, Markup("")) for name, info in Method.model_fields.items() if name != "name"] if compact else []
    rows = []
    for name, info in Method.model_fields.items():
        value = getattr(method, name)
        if name == "name" and compact:
            continue
        if value is None or value == []:
            if compact:
                rows.append((info.title, Markup("")))
            continue
        if name == "routing":
            html = escape(value if compact else taxonomy.routing[value].name)
        elif name == "placement":
            html = escape(", ".join(value if compact else [taxonomy.placement[v].name for v in value]))
        elif name == "weights":
            links = [(w, markup.safe_url(w) if w.startswith(("http://", "https://")) else hub + w) for w in value]
            html = Markup(", ").join(Markup('<a href="{}">{}</a>').format(url, markup.inert_html(label)) if url
                                     else markup.inert_html(label) for label, url in links)
        elif isinstance(value, bool):
            html = escape("yes" if value else "no")
        elif isinstance(value, float):
            html = escape(_number(value))
        elif isinstance(value, list):
            html = markup.inert_html(", ".join(value))
        else:
            html = markup.inert_html(value)
        rows.append((info.title, html))
    return rows


def published_paper(paper: Paper) -> dict:
    """An entry as the JSON export carries it: every field that is set, method facts included."""
    return paper.model_dump(mode="json", exclude_none=True)


# The comparison tables' method columns, titled as the model titles them.
METHOD_COLUMNS = [info.title for info in Method.model_fields.values()]
NUMERIC_METHOD_COLUMNS = {info.title for name, info in Method.model_fields.items()
                          if name in ("experts", "top_k", "shared_experts", "params_total", "params_active")}

PAPER_COLUMNS = [name for name in Paper.model_fields if name not in ("method", "summary", "notes")]
CSV_COLUMNS = [*PAPER_COLUMNS, *[f"method.{name}" for name in Method.model_fields]]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return LIST_JOIN.join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_row(paper: Paper) -> list[str]:
    method = paper.method
    return [*[_cell(getattr(paper, name)) for name in PAPER_COLUMNS],
            *[_cell(getattr(method, name)) if method else "" for name in Method.model_fields]]


# What a node of the citation graph carries (explorer, JSON and GraphML exports): every field of the
# model but the long texts and the provenance lists, plus the method's name and whether the entry's
# reference list was read.
GRAPH_LEFT_OUT = ("id", "summary", "notes", "verified_from", "cites", "references_from", "method", "bibtex_type")
GRAPH_FIELDS = [name for name in Paper.model_fields if name not in GRAPH_LEFT_OUT]


def graph_attributes(paper: Paper) -> dict:
    attrs = {name: getattr(paper, name) for name in GRAPH_FIELDS}
    attrs = {k: (list(v) if isinstance(v, list) else v.isoformat() if hasattr(v, "isoformat") else v)
             for k, v in attrs.items() if v is not None}
    if paper.method is not None:
        attrs["method"] = paper.method.name
    attrs["citations_checked"] = paper.citations_checked
    attrs["path"] = paper.path
    return attrs
