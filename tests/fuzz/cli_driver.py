"""Run many ``bsqaudio`` command lines in one process (each costs ~2 s as a subprocess).

    python tests/fuzz/cli_driver.py JOBS.json RESULTS.json

JOBS.json is a list of argument lists (without the leading ``bsqaudio``). Each is run through the
console-script entry point ``bsqaudio.cli.run`` with file descriptors 1 and 2 redirected to files,
so everything the command prints is caught, including what Python prints for an uncaught exception.
RESULTS.json gets, per job, ``{"args", "exit", "stdout", "stderr"}``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run_one(args: list[str]) -> dict:
    from bsqaudio import cli

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        code = 0
        try:
            sys.argv = ["bsqaudio", *args]
            cli.STATE["debug"] = False
            cli.run()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"args": args, "exit": code, "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace")}


def main() -> int:
    jobs_path, results_path = sys.argv[1:3]
    with open(jobs_path) as handle:
        jobs = json.load(handle)
    results = [run_one(args) for args in jobs]
    with open(results_path, "w") as handle:
        json.dump(results, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
