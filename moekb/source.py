"""Reading one YAML file into plain Python values while keeping every value's line number.

ruamel.yaml's round-trip loader records line and column for each key and list item and refuses
duplicate keys, which PyYAML silently accepts; both matter for error messages that name a line.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from moekb.errors import MoekbError, Problem


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: ``data`` is plain Python, ``tree`` the ruamel nodes that know lines."""

    path: str
    data: Any
    tree: Any

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


def parse_text(text: str, path: str) -> Document:
    """Parse YAML text; raise :class:`MoekbError` naming ``path`` and the line on any syntax error."""
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
    return Document(path=path, data=to_plain(tree), tree=tree)


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
