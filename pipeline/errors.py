"""The one error type a stage reports to its user (pipeline.cli turns it into one line), and the
helper that makes a library's exception fit on that line; and the interrupt a stage must not lose."""

import threading

# Set by the stage's Ctrl-C handler (pipeline.cli). Python drops an exception raised inside a
# garbage-collection callback ("Exception ignored in ..."), so a KeyboardInterrupt that lands in one
# (SQLAlchemy's, MLflow's) would be lost and the stage would run on: long loops check this too.
INTERRUPTED = threading.Event()


def raise_if_interrupted() -> None:
    """KeyboardInterrupt when Ctrl-C came and its exception was swallowed on the way."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


class PipelineError(Exception):
    """Bad data, params or environment: the message is one line naming the file or key."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
