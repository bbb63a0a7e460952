"""Run many ``bsqaudio`` command lines in one process (each costs ~2 s as a subprocess).

    python tests/fuzz/cli_driver.py JOBS.json RESULTS.json

JOBS.json is a list of argument lists (without the leading ``bsqaudio``). Each is run in-process
by ``tests/cli_inprocess.py``, the helper the bad-input tests use; RESULTS.json gets, per job,
``{"args", "exit", "stdout", "stderr"}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_inprocess import run_in_process  # noqa: E402


def main() -> int:
    jobs_path, results_path = sys.argv[1:3]
    with open(jobs_path) as handle:
        jobs = json.load(handle)
    results = [dataclasses.asdict(run_in_process(*args)) for args in jobs]
    with open(results_path, "w") as handle:
        json.dump(results, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
