"""The command line every stage shares (pipeline/cli.py): how a finished stage's process ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.commands import REPO


def test_a_finished_stage_process_still_waits_for_threads_and_runs_exit_handlers(tmp_path):
    """end_process skips only the module teardown: a thread still at work is waited for and the exit
    handlers run (their files exist), the buffered console lines arrive, the status is 0."""
    script = textwrap.dedent(
        f"""
        import atexit, pathlib, threading, time
        from pipeline.cli import end_process

        out = pathlib.Path({str(tmp_path)!r})
        def late_writer():
            time.sleep(0.3)
            (out / "thread").write_text("done")
        threading.Thread(target=late_writer).start()
        atexit.register(lambda: (out / "atexit").write_text("done"))
        print("the stage's line", end="")
        end_process()
        print("never printed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the stage's line"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "done"
