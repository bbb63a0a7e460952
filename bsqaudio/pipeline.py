"""Encoding many files at full speed: reader processes feed windows, the model sees full batches.

Reading, decoding and resampling a file and computing its mel windows is CPU work that does not
need the model; running the model wants full batches. So worker processes (a torch ``DataLoader``
over an ``IterableDataset``: bounded prefetch, clean shutdown, workers restarted per run) each take
every n-th file, stream it block by block and emit one message per window; the main process packs
windows from however many files it takes into batches of ``batch_size`` and hands each file's codes
on as soon as its last window is through the model. Clips of 1-5 s thus share batches instead of
each running a mostly empty one, and an hour-long file never sits in memory: only the windows in
flight do. The messages arrive in a fixed order (the loader takes workers in turn), so a run is
reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bsqaudio.codec import Codec
from bsqaudio.codes import Codes
from bsqaudio.dsp.mel import MelFrontend
from bsqaudio.dsp.windows import WindowCutter
from bsqaudio.errors import BsqAudioError
from bsqaudio.heap import release_freed_memory
from bsqaudio.io.audio_files import stream_mono


def default_workers() -> int:
    """One reader per core beyond the two the model's threads use, at most 8.

    On 2 cores a reader process only takes CPU from the model: 1,000 short clips encoded at 46
    audio-hours per hour reading in the main process against 39 with one reader (idle AMD EPYC,
    docs/batch_throughput.md)."""
    return max(0, min(8, (os.cpu_count() or 2) - 2))


def failure_reason(source: Path, err: BaseException) -> str:
    """A one-line reason naming the file."""
    if isinstance(err, BsqAudioError):
        text = str(err)
        return text if str(source) in text else f"{source}: {text}"
    return f"{source}: {type(err).__name__}: {err}"


class _WindowReader(IterableDataset):
    """Messages for the files of one worker: ('window', file, mel, gain) for each window, then
    ('end', file, samples, rate, channels, warning), or ('error', file, reason) where reading
    fails; the warning is None, or the message of a truncated file kept (``allow_truncated``)."""

    def __init__(self, sources: list[Path], frontend: MelFrontend, allow_truncated: bool = False) -> None:
        self.sources = sources
        self.frontend = frontend
        self.allow_truncated = allow_truncated

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(first, len(self.sources), step):
            yield from self._read(index)

    def _read(self, index: int) -> Iterator[tuple]:
        source = self.sources[index]
        notes: list[str] = []  # a worker's warnings would go to its own stderr: sent on instead
        try:
            chunks, rate, channels = stream_mono(source, self.frontend.config.sample_rate,
                                                 allow_truncated=self.allow_truncated,
                                                 on_truncated=notes.append)
            cutter = WindowCutter(self.frontend.config)
            for chunk in chunks:
                yield from self._windows(index, cutter.feed(chunk))
            yield from self._windows(index, cutter.finish())
        except Exception as err:  # reported by the main process; the next file goes on
            yield ("error", index, failure_reason(source, err))
            return
        yield ("end", index, cutter.total, rate, channels, "; ".join(notes) or None)

    def _windows(self, index: int, segments: list[torch.Tensor]) -> Iterator[tuple]:
        for segment in segments:
            # The gain travels as a float: every tensor a worker sends is a shared-memory segment
            # (a file descriptor) for as long as it lives, and gains live as long as their file.
            yield ("window", index, *self.frontend.analyze_segment(segment))
            release_freed_memory()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the cores are shared between readers and the model


@dataclass
class _Open:
    """A file whose windows are in flight: codes arrive batch by batch, in window order."""
    gains: list[float] = field(default_factory=list)  # one per window read
    indices: list[torch.Tensor] = field(default_factory=list)  # one (1, patches) row per window encoded
    end: tuple[int, int, int, str | None] | None = None  # (samples, rate, channels, warning) once read


def encode_sources(codec: Codec, sources: list[Path], workers: int = 0, allow_truncated: bool = False
                   ) -> Iterator[tuple[int, Codes | None, str | None]]:
    """Encode ``sources``; yield ``(index, codes, warning)`` for each file that encodes and
    ``(index, None, reason)`` for each that fails, in the order they finish.

    A truncated file (``bsqaudio.io.audio_files.TruncatedAudioError``) fails; with ``allow_truncated``
    its readable part is encoded and ``warning`` is the one-line message saying what is missing
    (None for every complete file), returned rather than issued with ``warnings`` since it is
    found in a reader process. ``workers`` reader processes (0: read in this process). Codes equal
    ``codec.encode_file``'s."""
    loader = DataLoader(_WindowReader(sources, codec.frontend, allow_truncated), batch_size=None, num_workers=workers,
                        worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=max(2, codec.batch_size // max(1, workers)) if workers else None)
    open_files: dict[int, _Open] = {}
    batch: list[tuple[int, torch.Tensor]] = []  # (file, mel)

    def finished(index: int) -> bool:
        state = open_files[index]
        return state.end is not None and len(state.indices) == len(state.gains)

    def complete(index: int) -> tuple[int, Codes, str | None]:
        state = open_files.pop(index)
        samples, rate, channels, warning = state.end
        return index, codec.make_codes(torch.cat(state.indices), torch.tensor(state.gains), samples,
                                       rate, channels), warning

    def run_batch() -> Iterator[tuple[int, Codes, str | None]]:
        codes = codec.encode_mel(torch.stack([mel for _, mel in batch]))
        owners = [index for index, _ in batch]
        batch.clear()
        for row, index in enumerate(owners):
            open_files[index].indices.append(codes[row: row + 1])
        for index in dict.fromkeys(owners):
            if finished(index):
                yield complete(index)

    for message in loader:
        kind, index = message[0], message[1]
        state = open_files.setdefault(index, _Open())
        if kind == "window":
            state.gains.append(message[3])
            batch.append((index, message[2]))
            if len(batch) == codec.batch_size:
                yield from run_batch()
        elif kind == "end":
            state.end = message[2:]
            if finished(index):
                yield complete(index)
        else:  # a file that fails part-way: its windows leave the batch, the others stay
            batch[:] = [(owner, mel) for owner, mel in batch if owner != index]
            open_files.pop(index)
            yield index, None, message[2]
    if batch:
        yield from run_batch()
