"""The JSON Schema of a paper entry, for editors (yaml-language-server) and check-jsonschema.

It is pydantic's schema of :class:`~moekb.model.Paper` with the taxonomy's vocabularies filled in
as enums and the identifier patterns added; ``moekb validate`` remains the authoritative check
(it also knows lines, cross-entry rules and which sub-category belongs to which perspective).
"""

from __future__ import annotations

import re

from moekb import identifiers
from moekb.fields import IDENTIFIERS
from moekb.model import Paper, Taxonomy

SCHEMA_PATH = "schema/paper.schema.json"
MODELINE = f"# yaml-language-server: $schema=../{SCHEMA_PATH}"


def ecma(pattern: re.Pattern) -> str:
    """A Python expression as JSON Schema writes it: named groups become plain groups (names may
    repeat across alternatives), and (JSON Schema has no flags) an IGNORECASE expression spells out
    its upper-case letters."""
    text = re.sub(r"\(\?P<\w+>", "(?:", pattern.pattern)
    if pattern.flags & re.IGNORECASE:
        text = text.replace("a-z", "a-zA-Z").replace("https?", "[hH][tT][tT][pP][sS]?")
    return text


def paper_schema(taxonomy: Taxonomy) -> dict:
    schema = Paper.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moekb paper entry"
    props = schema["properties"]

    def restrict(name: str, values: list[str], where: dict | None = None) -> None:
        target = (where or props)[name]
        if target.get("type") == "array":
            target["items"] = {"type": "string", "enum": values}
        elif "anyOf" in target:
            target["anyOf"] = [{"type": "string", "enum": values}, {"type": "null"}]
        else:
            target["enum"] = values
            target.pop("minLength", None)
            target.pop("pattern", None)

    restrict("perspective", [p.id for p in taxonomy.perspectives])
    restrict("subcategory", list(taxonomy.subcategory))
    restrict("modalities", list(taxonomy.modality))
    restrict("gaps", list(taxonomy.gap))
    restrict("venue", sorted({s for v in taxonomy.vocabularies.venues for s in [v.id, *v.aliases]}))
    restrict("bibtex_type", [k.id for k in taxonomy.vocabularies.entry_kinds])
    restrict("domain", list(taxonomy.domain))
    restrict("kind", list(taxonomy.paper_kind))
    method = schema["$defs"]["Method"]["properties"]
    restrict("routing", list(taxonomy.routing), method)
    restrict("placement", list(taxonomy.placement), method)
    # The identifier rules are moekb.identifiers' own expressions, in the JSON Schema (ECMA) dialect.
    props["id"]["pattern"] = ecma(identifiers.SLUG)
    props["arxiv"]["anyOf"][0]["pattern"] = f"(?:{ecma(identifiers.NEW_ARXIV)})|(?:{ecma(identifiers.OLD_ARXIV)})"
    props["doi"]["anyOf"][0]["pattern"] = ecma(identifiers.DOI)
    for name in ("url", "code"):
        props[name]["anyOf"][0]["pattern"] = ecma(identifiers.URL)
    props["references_from"]["anyOf"][0]["pattern"] = f"(?:{ecma(identifiers.URL)})|(?:{ecma(identifiers.STORE_COPY)})"
    props["verified_from"]["items"]["pattern"] = ecma(identifiers.URL)
    props["added"] = {"type": "string", "format": "date", "description": props["added"].get("description", "")}
    schema["allOf"] = [
        {"anyOf": [{"required": [name]} for name in IDENTIFIERS]},
        # a survey has no perspective; every other entry has one and a sub-category
        {"if": {"properties": {"kind": {"const": "survey"}}, "required": ["kind"]},
         "else": {"required": ["perspective", "subcategory"]}},
    ]
    return schema
