"""Typed errors a user can act on.

Every error that reaches the command line is a ``HopscopeError``: the CLI prints its message on one
line and exits non-zero, without a traceback. Anything else is a bug and keeps its traceback.
"""


class HopscopeError(Exception):
    """Base of the errors the command line reports as one line."""

    exit_code = 1


class ConfigError(HopscopeError):
    """A setting or argument is invalid."""

    exit_code = 2


class UnavailableError(HopscopeError):
    """A service (Kafka broker, ClickHouse server) cannot be reached at the address named."""

    exit_code = 3


class CaptureError(HopscopeError):
    """A capture file or interface cannot be read (the message names the file and the offset)."""

    exit_code = 4


class DecodeError(HopscopeError):
    """A message or record batch cannot be decoded (unknown schema version, bad magic, truncated)."""

    exit_code = 5


def one_line(exc: Exception) -> str:
    """A parser's error as one line: a YAML error's problem and where it is (``mapping values are not
    allowed here (line 7, column 64)``) instead of its several lines quoting the text; otherwise the
    first line of the message."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
