"""Where a BibTeX text is malformed, said with the line a person must fix.

bibtexparser 2 never raises: a broken block becomes a ``ParsingFailedBlock`` that names only the
line where the block starts, and some mistakes are not failures at all to it (a missing comma
merges the next field into the previous value; ``@ article{`` turns the entry into a comment; an
extra ``}`` ends the entry early and the fields after it silently become a comment). So before
bibtexparser reads the text, this module walks the same grammar and reports each mistake at the
line where it is (unbalanced braces, a missing comma, an unknown entry type, a missing key or
``=``...), every one of them rather than the first.

The block start rule is bibtexparser's (``@type`` then optional blanks then ``{`` or ``(``, anywhere
outside a block), so both agree on where entries are.
"""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass, field

from moekb.errors import Problem

BLOCK_START = re.compile(r"@(\w*)[ \t]*([{(])")
LOOSE_AT = re.compile(r"^[ \t]*@[ \t]*(\w+)[ \t]*[{(]", re.MULTILINE)  # '@ article {': a typo, not a comment
LINE_START_BLOCK = re.compile(r"^[ \t]*@\w*[ \t]*[{(]", re.MULTILINE)
KEY = re.compile(r"[^\s,{}()=\"#%]+")
FIELD_NAME = re.compile(r"[A-Za-z_][\w\-:.+]*")
BARE_VALUE = re.compile(r"[\w\-:.+/]+")
LOOKS_LIKE_FIELD = re.compile(r"^[ \t]*([A-Za-z_][\w\-:.+]*)[ \t]*=", re.MULTILINE)
SPECIAL_BLOCKS = {"comment", "string", "preamble"}


class Resync(Exception):
    """A mistake after which the rest of the block cannot be read: go on at the next block."""

    def __init__(self, problem: Problem, resume: int):
        self.problem, self.resume = problem, resume


@dataclass
class SyntaxScan:
    """Every problem found, and the number of entries (not @string, @comment or @preamble)."""

    problems: list[Problem] = field(default_factory=list)
    entries: int = 0


class Scanner:
    def __init__(self, text: str, path: str, entry_kinds: list[str]):
        self.text, self.path, self.kinds = text, path, entry_kinds
        self.newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        self.scan = SyntaxScan()
        self.keys: dict[str, int] = {}

    # -- positions ------------------------------------------------------------------------
    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def problem(self, pos: int, message: str) -> Problem:
        return Problem(self.path, self.line(pos), message)

    def skip_blanks(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos].isspace():
            pos += 1
        return pos

    def next_block_at_line_start(self, pos: int) -> int:
        """Where reading resumes after a broken block: the next line that starts a block."""
        match = LINE_START_BLOCK.search(self.text, pos)
        return match.start() if match else len(self.text)

    def block_start_here(self, pos: int) -> bool:
        """An ``@type{`` at the start of a line: bibtexparser's signal that a block was not closed."""
        line_start = self.text.rfind("\n", 0, pos) + 1
        return self.text[line_start:pos].strip() == "" and BLOCK_START.match(self.text, pos) is not None

    # -- the file -------------------------------------------------------------------------
    def run(self) -> SyntaxScan:
        pos = 0
        previous_entry: tuple[str, int] | None = None  # (key, position of its closing delimiter)
        while True:
            match = BLOCK_START.search(self.text, pos)
            self.check_outside(pos, match.start() if match else len(self.text), previous_entry)
            if match is None:
                break
            previous_entry = None
            try:
                pos, previous_entry = self.block(match)
            except Resync as stop:
                self.scan.problems.append(stop.problem)
                pos = max(stop.resume, match.end())
        if self.scan.entries == 0 and not self.scan.problems:
            if not self.text.strip():
                self.scan.problems.append(Problem(self.path, 0, "the BibTeX is empty: there is no entry to add"))
            else:
                self.scan.problems.append(Problem(
                    self.path, 0, "no BibTeX entry found: an entry looks like @article{key, title = {...}, ...}"))
        return self.scan

    def check_outside(self, start: int, end: int, previous_entry: tuple[str, int] | None) -> None:
        """Text between blocks is a comment to BibTeX, but some of it is a broken entry."""
        chunk = self.text[start:end]
        for loose in LOOSE_AT.finditer(chunk):
            self.scan.problems.append(self.problem(
                start + loose.start(), f"'@' must be followed directly by the entry type: write @{loose[1]}{{...}}"))
        field_like = LOOKS_LIKE_FIELD.search(chunk)
        if previous_entry is not None and field_like and chunk[: field_like.start()].strip(" \t\n,") == "":
            key, closing = previous_entry
            self.scan.problems.append(self.problem(
                closing, f"unbalanced braces: entry '{key}' is closed on this line, but its field "
                         f"'{field_like[1]}' follows on line {self.line(start + field_like.start(1))}: "
                         "is there one '}' too many?"))
            return
        depth = 0
        for offset, ch in enumerate(chunk):
            if ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    self.scan.problems.append(self.problem(
                        start + offset, "unbalanced braces: this '}' closes nothing (one '}' too many?)"))
                    return
                depth -= 1

    def block(self, match: re.Match) -> tuple[int, tuple[str, int] | None]:
        kind, opener = match[1].lower(), match[2]
        closer = "}" if opener == "{" else ")"
        start = match.start()
        if not kind:
            raise Resync(self.problem(start, "'@' must be followed by an entry type, e.g. @article{key, ...}"),
                         self.next_block_at_line_start(match.end()))
        if kind in SPECIAL_BLOCKS:
            return self.special_block(match, kind, closer), None
        self.scan.entries += 1
        if kind not in self.kinds:
            close = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f"did you mean @{close[0]}? " if close else ""
            self.scan.problems.append(self.problem(
                start, f"unknown entry type '@{match[1]}' ({hint}allowed: {', '.join('@' + k for k in self.kinds)})"))
        return self.entry(match, closer)

    def special_block(self, match: re.Match, kind: str, closer: str) -> int:
        """@comment holds anything with balanced braces; @string holds one ``name = value``;
        @preamble one value."""
        if kind == "comment":
            depth, pos = 0, match.end()
            while pos < len(self.text) and not (pos > match.end() and self.block_start_here(pos)):
                ch = self.text[pos]
                if ch == "{":
                    depth += 1
                elif ch == "}" and depth > 0:
                    depth -= 1
                elif ch == closer and depth == 0:
                    return pos + 1
                pos += 1
            raise Resync(self.problem(match.start(), f"unbalanced braces: this @comment block is never closed "
                                                     f"(expected '{closer}')"), pos)
        pos = self.skip_blanks(match.end())
        label = f"@{kind}"
        if kind == "string":
            name = FIELD_NAME.match(self.text, pos)
            if name is None:
                raise Resync(self.problem(pos, "expected a name after @string{, as in @string{nips = {NeurIPS}}"),
                             self.next_block_at_line_start(pos))
            pos = self.skip_blanks(name.end())
            if self.text[pos:pos + 1] != "=":
                raise Resync(self.problem(pos, f"expected '=' after the @string name '{name[0]}'"),
                             self.next_block_at_line_start(pos))
            pos, label = self.skip_blanks(pos + 1), name[0]
        pos = self.skip_blanks(self.value(pos, label, f"@{kind}", match.start(), closer))
        if self.text[pos:pos + 1] != closer:
            raise Resync(self.problem(pos, f"expected '{closer}' to close the @{kind} block"),
                         self.next_block_at_line_start(pos))
        return pos + 1

    # -- one entry ------------------------------------------------------------------------
    def entry(self, match: re.Match, closer: str) -> tuple[int, tuple[str, int]]:
        start, kind = match.start(), match[1]
        pos = self.skip_blanks(match.end())
        field_start = FIELD_NAME.match(self.text, pos)
        after = self.skip_blanks(field_start.end()) if field_start else pos
        if field_start and self.text[after:after + 1] == "=":
            raise Resync(self.problem(pos, f"the @{kind} entry has no citation key: write @{kind}{{key, "
                                           f"{field_start[0]} = ...}}"), self.next_block_at_line_start(pos))
        key_match = KEY.match(self.text, pos)
        if key_match is None:
            raise Resync(self.problem(pos, f"the @{kind} entry has no citation key: write @{kind}{{key, ...}}"),
                         self.next_block_at_line_start(pos))
        key = key_match[0]
        if key in self.keys:
            self.scan.problems.append(self.problem(pos, f"citation key '{key}' is used twice (first on line {self.keys[key]})"))
        self.keys.setdefault(key, self.line(pos))
        pos = self.skip_blanks(key_match.end())
        if pos < len(self.text) and self.text[pos] == closer:
            return pos + 1, (key, pos)
        if pos >= len(self.text) or self.text[pos] != ",":
            if pos < len(self.text) and FIELD_NAME.match(self.text, pos):
                self.scan.problems.append(self.problem(key_match.end(), f"missing comma after the citation key '{key}'"))
            else:
                raise Resync(self.problem(key_match.end(), f"expected ',' after the citation key '{key}'"),
                             self.next_block_at_line_start(pos))
        else:
            pos += 1
        return self.fields(pos, key, start, closer)

    def not_closed(self, key: str, start: int, pos: int, closer: str,
                   values: list[tuple[str, int, int]] = ()) -> Resync:
        """The entry ran to the end of the file or into the next entry. When one of its braced
        values swallowed the fields after it, its unclosed '{' is the mistake, so that is reported."""
        for name, opening, end in values:
            newline = self.text.find("\n", opening, end)
            if self.text[opening] == "{" and newline >= 0 and LOOKS_LIKE_FIELD.search(self.text, newline + 1, end):
                return Resync(self.unclosed(opening, end, name, "'{'"), self.next_block_at_line_start(pos))
        where = f"before the next entry on line {self.line(pos)}" if pos < len(self.text) else "at the end of the file"
        return Resync(self.problem(start, f"entry '{key}' is never closed: '{closer}' missing {where}"), pos)

    def fields(self, pos: int, key: str, start: int, closer: str) -> tuple[int, tuple[str, int]]:
        seen: dict[str, int] = {}
        values: list[tuple[str, int, int]] = []  # (field name, opening, end) of each value read
        while True:
            pos = self.skip_blanks(pos)
            if pos >= len(self.text) or self.block_start_here(pos):
                raise self.not_closed(key, start, pos, closer, values)
            ch = self.text[pos]
            if ch == closer:
                return pos + 1, (key, pos)
            if ch == "%":
                self.scan.problems.append(self.problem(
                    pos, "'%' does not start a comment inside a BibTeX entry: delete the line"))
                end = self.text.find("\n", pos)
                pos = len(self.text) if end < 0 else end + 1
                continue
            name_match = FIELD_NAME.match(self.text, pos)
            if name_match is None:
                raise Resync(self.problem(pos, f"expected a field name (such as title) in entry '{key}', found {ch!r}"),
                             self.next_block_at_line_start(pos))
            name = name_match[0]
            if name.lower() in seen:
                self.scan.problems.append(self.problem(
                    pos, f"field '{name}' is given twice in entry '{key}' (first on line {seen[name.lower()]})"))
            seen.setdefault(name.lower(), self.line(pos))
            pos = self.skip_blanks(name_match.end())
            if pos >= len(self.text) or self.text[pos] != "=":
                raise Resync(self.problem(name_match.end(), f"expected '=' after the field name '{name}'"),
                             self.next_block_at_line_start(pos))
            opening = self.skip_blanks(pos + 1)
            pos = self.value(opening, name, key, start, closer)
            values.append((name, opening, pos))
            pos = self.skip_blanks(pos)
            if pos < len(self.text) and self.text[pos] == "#":
                raise Resync(self.problem(pos, f"field '{name}': '#' (string concatenation) is not supported "
                                               "here: write the value in one piece"), self.next_block_at_line_start(pos))
            if pos < len(self.text) and self.text[pos] == ",":
                pos += 1
                continue
            if pos < len(self.text) and self.text[pos] == closer:
                continue
            if pos >= len(self.text) or self.block_start_here(pos):
                raise self.not_closed(key, start, pos, closer, values)
            newline = self.text.find("\n", opening, pos)
            if self.text[opening] == '"' and newline >= 0 and LOOKS_LIKE_FIELD.search(self.text, newline + 1, pos):
                # The quote was closed by the next field's opening quote: the first one is unclosed.
                raise Resync(self.unclosed(opening, pos, name, "'\"'"), self.next_block_at_line_start(pos))
            following = FIELD_NAME.match(self.text, pos)
            if following:
                self.scan.problems.append(self.problem(
                    self.last_text_before(pos),
                    f"missing comma after the value of '{name}' (the next field '{following[0]}' "
                    f"starts on line {self.line(pos)})"))
                continue
            raise Resync(self.problem(pos, f"expected ',' or '{closer}' after the value of '{name}', "
                                           f"found {self.text[pos]!r}"), self.next_block_at_line_start(pos))

    def last_text_before(self, pos: int) -> int:
        """The position of the last non-blank character before ``pos`` (where a comma belongs)."""
        pos -= 1
        while pos > 0 and self.text[pos].isspace():
            pos -= 1
        return pos

    def value(self, pos: int, name: str, key: str, start: int, closer: str) -> int:
        """The position after the value of field ``name`` that begins at ``pos``."""
        if pos >= len(self.text):
            raise self.not_closed(key, start, pos, closer)
        ch = self.text[pos]
        if ch == "{":
            return self.braced(pos, name)
        if ch == '"':
            return self.quoted(pos, name)
        bare = BARE_VALUE.match(self.text, pos)
        if bare:
            return bare.end()
        raise Resync(self.problem(pos, f"field '{name}' has no value (expected {{...}}, \"...\" or a number)"),
                     self.next_block_at_line_start(pos))

    def braced(self, opening: int, name: str) -> int:
        return self.delimited(opening, name, closer="}")

    def quoted(self, opening: int, name: str) -> int:
        return self.delimited(opening, name, closer='"')

    def delimited(self, opening: int, name: str, *, closer: str) -> int:
        """The end of a ``{...}`` (``closer="}"``) or ``"..."`` value opening at ``opening``: braces
        nest inside both, backslash escapes the next character, and an ``@`` that starts a new
        block, or (in quotes) a ``}`` closing the entry, means the value was never closed."""
        depth, pos = 0, opening + 1
        while pos < len(self.text):
            ch = self.text[pos]
            if ch == "\\":
                pos += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    if closer == "}":
                        return pos + 1
                    break  # the quote ran past the end of the entry
                depth -= 1
            elif ch == closer and depth == 0:
                return pos + 1
            elif ch == "@" and self.block_start_here(pos):
                break
            pos += 1
        raise Resync(self.unclosed(opening, pos, name, f"'{self.text[opening]}'"), self.next_block_at_line_start(pos))

    def unclosed(self, opening: int, stop: int, name: str, what: str) -> Problem:
        """A value whose delimiter never closes; name the line it ran into, when a field starts there."""
        kind = "unbalanced braces" if what == "'{'" else "unclosed quote"
        runs_into = LOOKS_LIKE_FIELD.search(self.text, self.text.find("\n", opening) + 1 or len(self.text), stop)
        if self.text.find("\n", opening) >= 0 and runs_into:
            hint = f"; it runs into the field '{runs_into[1]}' on line {self.line(runs_into.start(1))}"
        else:
            hint = ""
        return self.problem(opening, f"{kind}: the {what} opening the value of '{name}' is never closed{hint}")


def check_bibtex_syntax(text: str, path: str, entry_kinds: list[str]) -> SyntaxScan:
    """Every structural mistake in ``text``, each at its line; ``entry_kinds`` are the allowed types."""
    return Scanner(text, path, entry_kinds).run()
