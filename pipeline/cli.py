"""What every stage's command line shares: the parser's common options, and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def stage_parser(module: str, doc: str, params: bool = True) -> argparse.ArgumentParser:
    """`python -m pipeline.<module>` with --params (when the stage reads params.yaml) and --debug."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{module}", description=doc.strip().splitlines()[0])
    if params:
        parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a PipelineError becomes `error: <message>` and exit status 1.

    With `--debug` or PIPELINE_DEBUG=1 the traceback is shown instead.
    """
    # TensorFlow's C++ INFO/WARNING chatter hides the one line that matters; users can override.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        main(argv)
    except PipelineError as exc:
        if debug_enabled(argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
