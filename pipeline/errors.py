"""The one error type a stage reports to its user (pipeline.cli turns it into one line), and the
helper that makes a library's exception fit on that line."""


class PipelineError(Exception):
    """Bad data, params or environment: the message is one line naming the file or key."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
