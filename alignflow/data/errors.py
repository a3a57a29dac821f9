"""The one error a bad data record raises: where it is, which field, what was wrong, what was expected."""

from __future__ import annotations


class DataError(ValueError):
    """A bad record or source, told in one line people can act on.

    `str()` reads `{source}:{location}: {field}: {problem}; expected {expected}`. `location` is a line
    number (JSONL, CSV, a JSON syntax error) or `record N` (0-based index into a JSON array or Parquet
    table). Normalizers raise it without a source or location; the loader fills them in with `at()`.
    `reason` is a short, stable category ("empty text", "unknown role", ...) used to count skips.
    """

    def __init__(
        self,
        field: str,
        problem: str,
        expected: str,
        *,
        source: str | None = None,
        location: int | str | None = None,
        reason: str | None = None,
    ) -> None:
        self.field = field
        self.problem = problem
        self.expected = expected
        self.source = source
        self.location = location
        self.reason = reason or problem
        super().__init__(str(self))

    def at(self, source: str, location: int | str | None) -> DataError:
        """A copy of this error pinned to a file and a line (or record index)."""
        return DataError(
            self.field,
            self.problem,
            self.expected,
            source=source,
            location=location,
            reason=self.reason,
        )

    def __str__(self) -> str:
        where = "" if self.source is None else f"{self.source}:"
        if self.location is not None:
            where += f"{self.location}:"
        head = f"{where} " if where else ""
        return f"{head}{self.field}: {self.problem}; expected {self.expected}"
