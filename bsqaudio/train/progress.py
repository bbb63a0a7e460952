"""Training feedback: a live rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    """Shows step, loss terms, learning rate, tokens/s and ETA; a context manager."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.bar: Progress | None = None
        self.total, self.start = total, start

    def __enter__(self) -> TrainingProgress:
        if self.live:
            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.description}"), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total, completed=self.start)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, losses: dict[str, float], lr: float, tokens_per_s: float,
               eta_s: float) -> None:
        if not self.enabled:
            return
        terms = " ".join(f"{name} {value:.4f}" for name, value in losses.items())
        text = f"{terms} lr {lr:.2e} {tokens_per_s:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, description=text)
        else:
            print(f"step {step}/{self.total} {text} ETA {eta_s / 60:.0f} min", flush=True)

    def log(self, message: str) -> None:
        """A line above the bar (or a plain line)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(message, highlight=False, markup=False)
        else:
            print(message, flush=True)
