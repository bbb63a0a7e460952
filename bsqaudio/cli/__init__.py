"""The ``bsqaudio`` command line: a thin layer over ``bsqaudio.codec`` and ``bsqaudio.train``.

Errors a user can cause are BsqAudioError: printed as one line on stderr, exit code 1, no
traceback (``--debug`` shows it). Outputs are written to a temporary file and renamed. SIGINT and
SIGTERM unwind like an exception, so temporary files are removed, then exit 130 / 143.
``main``, the console script, runs ``run`` and then skips the interpreter's teardown.

A package: ``app`` (the Typer app and shared options), ``common`` (output checks, batch plumbing,
progress), and a module per group of commands, registered on import in the order ``--help`` lists
them; ``run`` runs one command line (the tests call it in-process).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from typing import Annotated

import typer

from bsqaudio.cli import (  # each registers its commands on the app
    codec_commands,  # noqa: F401  encode, tokens, decode, roundtrip, info
    eval_command,  # noqa: F401  eval
    train_command,  # noqa: F401  train, export
)
from bsqaudio.cli.app import STATE, app, err_console
from bsqaudio.cli.common import _show_warning, show_warning
from bsqaudio.errors import BsqAudioError


def _print_version(value: bool) -> None:
    if value:
        from bsqaudio import __version__
        from bsqaudio.code_space import embedded_release

        release = embedded_release()
        model = (f"embedded model {release['version']} ({release['model_hash']}), code space {release['code_space']}"
                 if release else "no embedded model")
        typer.echo(f"bsqaudio {__version__}; {model}")
        raise typer.Exit()


@app.callback()
def global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug


class Interrupted(BaseException):
    """SIGINT or SIGTERM in the main process. Not an Exception, so no ``except Exception`` (a batch's
    per-file error handling) swallows it; it unwinds through every ``finally`` and ``except
    BaseException`` that removes a temporary file."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_MAIN_PID = {"pid": None}


def _on_signal(signum: int, frame) -> None:
    if os.getpid() != _MAIN_PID["pid"]:
        # A forked reader process (torch DataLoader worker): its loop ends quietly on
        # KeyboardInterrupt and the main process, which got the signal too or shuts it down,
        # reports.
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def run() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 1; SIGINT
    and SIGTERM remove unfinished outputs and exit 128 + the signal number (130, 143)."""
    STATE["debug"] = False
    STATE["started"] = time.monotonic()
    if "--debug" in sys.argv[2:]:  # accepted after the command too: bsqaudio encode ... --debug
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    _MAIN_PID["pid"] = os.getpid()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    warnings.showwarning = show_warning
    try:
        app(prog_name="bsqaudio")  # also under python -m bsqaudio: usage and completion say bsqaudio
    except BsqAudioError as err:
        if STATE["debug"]:
            raise
        err_console.print(f"bsqaudio: error: {err}", style="red", highlight=False, markup=False,
                          soft_wrap=True)
        sys.exit(1)
    except Interrupted as err:
        if STATE["debug"]:
            raise
        err_console.print(f"bsqaudio: interrupted by {signal.Signals(err.signum).name}; finished "
                          "outputs are complete, unfinished ones were removed", highlight=False,
                          markup=False, soft_wrap=True)
        sys.exit(128 + err.signum)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    finally:
        warnings.showwarning = _show_warning
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """Console-script entry point: ``run``, then leave without the interpreter's teardown once
    torch is loaded. Tearing down torch's modules takes 0.6-0.9 s on 2 cores, a seventh of a
    263 s decode, and nothing the command wrote depends on it: every output is closed and
    renamed into place before its command returns, so only stdout and stderr are flushed here."""
    try:
        run()
        code = 0
    except SystemExit as stop:
        if stop.code is not None and not isinstance(stop.code, int):
            raise
        code = stop.code or 0
    if "torch" not in sys.modules:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or 1
    sys.stderr.flush()
    os._exit(code)
