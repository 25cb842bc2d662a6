"""The one error type of the package: a list of problems, each tied to a file and a line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located as ``path:line``.

    ``line`` is 1-based; 0 means the problem concerns the file as a whole (it is unreadable, or
    the problem spans several files and this is the one reported).
    """

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class MoekbError(Exception):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = sorted([problems] if isinstance(problems, Problem) else problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):  # rebuilt from its problems when it comes back from a worker process
        return type(self), (self.problems,)
