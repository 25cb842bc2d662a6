"""Reading one YAML file into plain Python values while keeping every value's line number.

ruamel.yaml's round-trip loader records line and column for each key and list item and refuses
duplicate keys, which PyYAML silently accepts; both matter for error messages that name a line.
It is also pure Python and takes milliseconds per entry, which thousands of entries cannot afford.
So a file is first read by libyaml's C parser (through PyYAML) with ruamel's YAML 1.2 tag rules,
in a strict subset (strings, decimal integers, booleans, nulls, YYYY-MM-DD dates, lists, mappings
without repeated keys); anything outside it, and any error, goes through ruamel, which then gives
the data and the message. The round-trip tree, needed only for the line of a problem, is parsed
when first asked for.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.resolver import implicit_resolvers
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from moekb.errors import MoekbError, Problem


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: ``data`` is plain Python, ``tree`` the ruamel nodes that know lines."""

    path: str
    data: Any
    text: str

    @cached_property
    def tree(self) -> Any:
        return round_trip_tree(self.text, self.path)

    def line(self, loc: tuple = ()) -> int:
        """1-based line of the value at ``loc`` (keys and list indices), or of its nearest parent."""
        node, line = self.tree, 1
        for key in loc:
            try:
                if isinstance(node, CommentedMap):
                    line = node.lc.key(key)[0] + 1
                elif isinstance(node, CommentedSeq):
                    line = node.lc.item(key)[0] + 1
                else:
                    break
                node = node[key]
            except (KeyError, IndexError, TypeError):
                break
        return line

    def problem(self, loc: tuple, message: str) -> Problem:
        return Problem(self.path, self.line(loc), message)


class Yaml12Resolver(pyyaml.resolver.BaseResolver):
    """PyYAML resolving plain scalars by ruamel's YAML 1.2 rules (so ``no`` stays a string)."""


for _versions, _tag, _regexp, _first in implicit_resolvers:
    if (1, 2) in _versions:
        Yaml12Resolver.add_implicit_resolver(_tag, _regexp, _first)

try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml: every file goes through ruamel
    LibyamlLoader = None
else:
    class LibyamlLoader(CParser, Yaml12Resolver):
        def __init__(self, text: str):
            CParser.__init__(self, text)
            Yaml12Resolver.__init__(self)


class OutsideFastSubset(Exception):
    """The file uses YAML that only the round-trip loader is trusted to read (or has an error)."""


TAG = "tag:yaml.org,2002:"
PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
PLAIN_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)")  # the decimals entries hold (params_total: 12.5)


def fast_value(node: Any) -> Any:
    """A composed libyaml node as the value ``to_plain`` gives for ruamel's reading of it."""
    tag = node.tag
    if isinstance(node, pyyaml.ScalarNode):
        value = node.value
        if tag == TAG + "str":
            return value
        if tag == TAG + "null":
            return None
        if tag == TAG + "bool":
            return value in ("true", "True", "TRUE")
        if tag == TAG + "int" and PLAIN_INT.fullmatch(value):
            return int(value)
        if tag == TAG + "float" and PLAIN_FLOAT.fullmatch(value):
            return float(value)
        if tag == TAG + "timestamp" and (match := PLAIN_DATE.fullmatch(value)):
            return dt.date(*map(int, match.groups()))
        raise OutsideFastSubset(tag)
    if isinstance(node, pyyaml.SequenceNode) and tag == TAG + "seq":
        return [fast_value(item) for item in node.value]
    if isinstance(node, pyyaml.MappingNode) and tag == TAG + "map":
        mapping = {}
        for key_node, value_node in node.value:
            key = fast_value(key_node)
            if not isinstance(key, (str, int)) or key in mapping:
                raise OutsideFastSubset("key")
            mapping[key] = fast_value(value_node)
        return mapping
    raise OutsideFastSubset(tag)


def fast_data(text: str) -> Any:
    """The plain data of ``text`` read by libyaml; :class:`OutsideFastSubset` when it cannot be
    sure to give what the round-trip loader gives."""
    if LibyamlLoader is None or "%" in text[:1] or "\n%" in text:  # a %YAML directive changes the rules
        raise OutsideFastSubset("directive")
    loader = LibyamlLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else fast_value(node)
    except OutsideFastSubset:
        raise
    except Exception as err:  # noqa: BLE001 - any libyaml error: ruamel reports it in its words
        raise OutsideFastSubset(type(err).__name__) from None
    finally:
        loader.dispose()


def parse_text(text: str, path: str) -> Document:
    """Parse YAML text; raise :class:`MoekbError` naming ``path`` and the line on any syntax error."""
    try:
        return Document(path=path, data=fast_data(text), text=text)
    except OutsideFastSubset:
        tree = round_trip_tree(text, path)
        document = Document(path=path, data=to_plain(tree), text=text)
        document.__dict__["tree"] = tree  # cached_property's slot: no second parse for the lines
        return document


def round_trip_tree(text: str, path: str) -> Any:
    """ruamel's round-trip nodes, which know the line of every key and item."""
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(text)
    except DuplicateKeyError as err:
        key = str(err.problem).split('"')[1] if '"' in str(err.problem) else "?"
        line = err.problem_mark.line + 1
        first = next(
            (n for n, text in enumerate(text.splitlines()[: line - 1], 1) if re.match(rf"\s*-?\s*{re.escape(key)}\s*:", text)),
            None,
        )
        where = f" (first given at line {first})" if first else ""
        raise MoekbError(Problem(path, line, f"duplicate key '{key}'{where}")) from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(str(part) for part in (err.context, err.problem) if part)
        raise MoekbError(Problem(path, mark.line + 1 if mark else 0, f"YAML syntax error: {what}")) from None
    except YAMLError as err:  # errors without a position, e.g. from the reader
        raise MoekbError(Problem(path, 0, f"YAML error: {str(err).splitlines()[0]}")) from None
    return tree


def read_document(file: Path, path: str) -> Document:
    """Read and parse ``file``; ``path`` is how messages name it (relative to the project)."""
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise MoekbError(Problem(path, 0, f"cannot read the file: {err.strerror}")) from None
    return parse_text(decode_utf8(raw, path), path)


def decode_utf8(raw: bytes, path: str) -> str:
    """Decode UTF-8 strictly, naming the line of the first undecodable byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise MoekbError(
            Problem(path, line, f"the file is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})")
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise MoekbError(Problem(path, line, "the file contains a NUL byte: is it a binary file?"))
    return text.removeprefix("\ufeff")


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types (CommentedMap, ScalarFloat, TimeStamp...) as built-in types."""
    if isinstance(node, dict):
        return {to_plain(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, dt.datetime):
        return node.date() if (node.hour, node.minute, node.second) == (0, 0, 0) and "T" not in str(node) else node
    return node
