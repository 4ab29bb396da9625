"""Source spans and the one error type every layer raises for a bad spec.

Every diagnostic prints as ``file:line:col: error: message``, then the source line and carets
under the offending span, the way compilers do. Layers after ``dsl`` reuse these spans, so an
error found during lowering or pass analysis still points at what the user wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Source:
    """A spec text and the name it is reported under (a path, or ``<string>``)."""

    name: str
    text: str
    quote: bool = True  # False: diagnostics say file:line:col but never show the text (not known to be a spec)

    def line(self, lineno: int) -> str:
        # Lines end at "\n" only, as the lexer counts them (str.splitlines would also split
        # at \r, \f and other separators and so disagree with reported line numbers).
        lines = self.text.split("\n")
        return lines[lineno - 1].rstrip("\r") if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """1-based line/column of the first character and the line/column just past the last."""

    source: Source = field(compare=False, repr=False)
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)


class SpecError(Exception):
    """A spec that cannot be parsed, checked, lowered or compiled.

    ``message`` says what the user wrote and why it is wrong; ``span`` (when known) points at it.
    ``str(err)`` is the full compiler-style diagnostic.
    """

    def __init__(self, message: str, span: Span | None = None, notes: tuple[str, ...] = ()):
        self.message = message
        self.span = span
        self.notes = tuple(notes)
        super().__init__(self.render())

    @property
    def file(self) -> str | None:
        return self.span.source.name if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def render(self) -> str:
        if self.span is None:
            head = f"error: {self.message}"
            return "\n".join([head, *(f"note: {n}" for n in self.notes)])
        sp = self.span
        if not sp.source.quote:
            return "\n".join([f"{sp}: error: {self.message}", *(f"note: {n}" for n in self.notes)])
        text = sp.source.line(sp.line).expandtabs(1)
        end = sp.end_col if sp.end_line == sp.line else len(text) + 1
        width = max(1, min(end, len(text) + 1) - sp.col)
        lines = [
            f"{sp}: error: {self.message}",
            f"    {text}",
            "    " + " " * (sp.col - 1) + "^" * width,
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def suggest(name: str, candidates) -> str:
    """`` (did you mean `x`?)`` for the closest candidate, or the empty string."""
    import difflib

    pool = sorted(set(c for c in candidates if c != name))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in pool}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f" (did you mean `{close[0]}`?)" if close else ""
