"""What a batch run tells its user while it works.

In a terminal: a live bar of files (done, skipped and failed), audio seconds, rate and ETA. Out of
one (SLURM logs, CI, ``2> log``): a one-line record every ``every_s`` seconds, so a long job shows
life without flooding its log. ``quiet`` shows neither; ``verbose`` adds a line per file. Under
torchrun every line starts with the rank. Failures and warnings are always printed, one line each.
The ETA counts input bytes, known up front from the file system, so it is honest from the start
for a mix of long and short files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class BatchProgress:
    """Callable as a batch's ``on_event(kind, job, detail)``; a context manager around the run."""

    def __init__(self, console: Console, sources: list[Path], quiet: bool = False, verbose: bool = False,
                 prefix: str = "", every_s: float = 30.0) -> None:
        self.console = console
        self.sizes = {str(p): _size(p) for p in sources}
        self.total_bytes = sum(self.sizes.values())
        self.files = len(sources)
        self.quiet, self.verbose, self.prefix, self.every_s = quiet, verbose, prefix, every_s
        self.done = self.skipped = self.failed = 0
        self.bytes_done = 0
        self.audio_s = 0.0
        self.start = self.last_line = time.monotonic()
        self.bar: Progress | None = None
        self.task = None

    def __enter__(self) -> BatchProgress:
        if not self.quiet and self.console.is_terminal:
            self.bar = Progress(TextColumn(f"{self.prefix}{{task.description}}"), BarColumn(),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("files", total=max(1, self.total_bytes), status=self.status())
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def status(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        finished = self.done + self.skipped + self.failed
        text = f"{finished}/{self.files} files, {self.audio_s:.0f} s audio, {self.audio_s / elapsed:.1f} audio-s/s"
        return text + (f", {self.failed} failed" if self.failed else "")

    def eta_s(self) -> float | None:
        elapsed = time.monotonic() - self.start
        if not self.bytes_done or not self.total_bytes:
            return None
        return elapsed * (self.total_bytes - self.bytes_done) / self.bytes_done

    def line(self, text: str) -> None:
        print_line = self.bar.console.print if self.bar is not None else self.console.print
        print_line(f"{self.prefix}{text}", highlight=False, markup=False, soft_wrap=True)

    def __call__(self, kind: str, job, detail: str = "", seconds: float = 0.0) -> None:
        if kind == "failed":
            self.failed += 1
            self.line(f"bsqaudio: failed {detail}")
        elif kind == "warning":
            self.line(f"bsqaudio: warning: {detail}")
            return
        elif kind == "skipped":
            self.skipped += 1
        elif kind == "done":
            self.done += 1
            self.audio_s += seconds
            if self.verbose and not self.quiet:
                self.line(f"done {job.source} ({seconds:.1f} s) -> {detail}")
        self.bytes_done += self.sizes.get(str(job.source), 0)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=self.bytes_done, status=self.status())
        elif time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            eta = self.eta_s()
            self.line(f"progress: {self.status()}" + (f", ETA {eta / 60:.1f} min" if eta is not None else ""))
