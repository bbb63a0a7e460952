"""Run a ``bsqaudio`` command line inside this process, as the console script would run it.

A subprocess costs ~2 s of imports per command; the bad-input table and the CLI fuzz driver run
hundreds. File descriptors 1 and 2 are redirected to files, so everything the command prints is
caught, including what Python prints for an uncaught exception, and warnings are shown as a fresh
interpreter would show them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass


@dataclass
class Result:
    args: list[str]
    exit: int
    stdout: str
    stderr: str


def run_in_process(*args) -> Result:
    """``bsqaudio ARGS`` through ``bsqaudio.cli.run``, as the console script runs it."""
    from bsqaudio import cli

    args = [str(a) for a in args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds = os.dup(1), os.dup(2)
        saved_sys = sys.stdout, sys.stderr, sys.argv
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["bsqaudio", *args]
        cli.STATE["debug"] = False  # a previous --debug command must not leak into this one
        code = 0
        try:
            with warnings.catch_warnings(record=True) as caught:
                # The filters of a fresh interpreter: what a user would see on the terminal.
                warnings.simplefilter("default")
                for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                                 ResourceWarning):
                    warnings.filterwarnings("ignore", category=category)
                try:
                    cli.run()
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (exit_.code is not None)
                except BaseException:  # noqa: BLE001 - what the interpreter prints, then exit 1
                    traceback.print_exc()
                    code = 1
            for w in caught:
                sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr, sys.argv = saved_sys
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
        out.seek(0)
        err.seek(0)
        return Result(args, int(code), out.read().decode("utf-8", "replace"),
                      err.read().decode("utf-8", "replace"))
