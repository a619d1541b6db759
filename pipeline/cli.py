"""What every stage's command line shares: the parser's common options, one-line errors, and a
quiet console (TensorFlow's and MLflow's start-up chatter hidden unless asked for)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from pipeline.errors import INTERRUPTED, PipelineError


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")


# Lines of native (C++) logging that say nothing to a user of the stage: absl's INFO/WARNING/ERROR
# lines (`I0000 00:00:... file.cc:12] ...`, printed before absl's log initialisation, whatever
# TF_CPP_MIN_LOG_LEVEL says: abseil-cpp#1718), TensorFlow's own INFO/WARNING lines, absl's notice
# about them, the MLflow store's schema migrations, MLflow's registry messages (the stage says
# which version it registered), Python logging's default-format INFO/WARNING lines, which
# Apache Beam's workers print (prepare.runner: beam) whatever the driver's logging says, and the
# TensorFlow Lite converter's and LiteRT runtime's notices (the quantizer's settings, XNNPACK in use).
CONSOLE_NOISE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO  \[alembic\."
    r"|Successfully registered model '|Created version '\d+' of model '"
    r"|Registered model '.*' already exists\. Creating a new version of this model"
    r"|(?:INFO|WARNING):[\w.]+:"
    r"|fully_quantize: \d+, inference_type: |INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)"
)


def _copy_filtered(source: int, sink: int) -> None:
    with os.fdopen(source, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line for line in lines if not CONSOLE_NOISE.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(sink, b"".join(line + b"\n" for line in kept))
        if pending and not CONSOLE_NOISE.match(pending.decode("utf-8", "replace")):
            os.write(sink, pending)


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Route this process's file descriptor 2 through a filter that drops CONSOLE_NOISE lines:
    C++ libraries write there directly, so no Python logging setting reaches them."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    copier = threading.Thread(target=_copy_filtered, args=(read_end, original), daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the copier drains it and stops
        copier.join(timeout=5)
        os.close(original)


def quiet_requested(argv: list[str] | None = None) -> bool:
    """Quiet unless --debug, PIPELINE_DEBUG, or a log level the user set (TF_CPP_MIN_LOG_LEVEL)."""
    return not debug_enabled(argv) and "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a PipelineError becomes `error: <message>` and exit status 1.

    With `--debug` or PIPELINE_DEBUG=1 the traceback is shown instead, and nothing is filtered.
    """
    # MLflow's tqdm bar for each registry download (promote, verify): a redrawn line per file, which
    # a stage's log keeps as noise whatever the log level (set the variable to "true" to see it).
    # The variables are the stage's own: a caller that runs several stages in one process (a test, a
    # notebook) gets its environment back, so the next stage decides quietness afresh.
    quiet = quiet_requested(argv)
    settings = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if quiet:
        settings["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's own INFO/WARNING after absl's start-up
        settings["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        # MLflow's SQL store logs a database error with its traceback, then raises it: the stage's
        # one line says what it was.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    with stage_environment(settings), quiet_native_logs() if quiet else contextlib.nullcontext():
        _run(main, argv)


@contextlib.contextmanager
def stage_environment(settings: dict[str, str]) -> Iterator[None]:
    """`settings` in os.environ where the user has not set them, for the stage's run only."""
    with environment_kept(*settings):
        for key, value in settings.items():
            os.environ.setdefault(key, value)
        yield


@contextlib.contextmanager
def environment_kept(*names: str) -> Iterator[None]:
    """os.environ's `names` as they were before the block, whatever the block (or a library in it) set."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _interrupt(signum, frame) -> None:
    INTERRUPTED.set()  # remembered: the exception may land where Python drops it (errors.INTERRUPTED)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_remembered(quiet: bool) -> Iterator[None]:
    """For the stage's run only: Ctrl-C sets errors.INTERRUPTED as well as raising, and (`quiet`)
    Python's report of a Ctrl-C it dropped is kept quiet (the stage ends at its next check of
    INTERRUPTED, with one line); the previous handler, hook and flag come back afterwards, so a
    process that runs several stages (the tests) starts each one as the first."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    hook = sys.unraisablehook

    def report(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = report if quiet else hook
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook
        INTERRUPTED.clear()


def _run(main: Callable[[list[str] | None], None], argv: list[str] | None) -> None:
    try:
        with interrupts_remembered(quiet=not debug_enabled(argv)):
            main(argv)
    except PipelineError as exc:
        if debug_enabled(argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def end_process() -> None:
    """End a stage's process once its work is done and its outputs are in place, skipping Python's
    teardown of the modules it loaded: for TensorFlow's and MLflow's that took 1.4-2 s of every stage
    that imports them (garbage and native destructors) and decides nothing. What a normal exit does
    first still happens: other threads are waited for (with their exit hooks), then the exit handlers
    run (logging's flush among them)."""
    threading._shutdown()  # the interpreter's own first step at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
