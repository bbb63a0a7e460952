"""Many files at once: gather inputs, take a shard, encode each, never lose work to a bad file.

Outputs mirror the input tree under the output folder and are written to a temporary name then
renamed, so a killed run leaves only complete files and ``--skip-existing`` resumes it. A file
that cannot be read is reported (path and reason), recorded, and skipped; the rest go on.
"""

from __future__ import annotations

import fnmatch
import io
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bsqaudio.bitstream import Codes, load_bsq, write_bsq
from bsqaudio.codec import Codec, resolve_rate
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import write_bytes_atomic
from bsqaudio.pipeline import encode_sources, failure_reason
from bsqaudio.train.data import AUDIO_SUFFIXES

FORMATS = ("bsq", "npy", "jsonl")


@dataclass(frozen=True)
class Job:
    source: Path
    relative: Path  # where the output goes under the output folder (suffix replaced)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds_of_audio: float = 0.0
    tokens: int = 0
    wall_s: float = 0.0
    errors: list[dict] = field(default_factory=list)


def read_path_list(source: str) -> list[str]:
    """One path a line from a file or ``-`` (stdin); blank lines and ``#`` comments ignored."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as err:
        raise BsqAudioError(f"{source}: cannot read the path list ({err.strerror})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def gather(items: Iterable[str], recursive: bool = True, pattern: str | None = None,
           suffixes: Iterable[str] = AUDIO_SUFFIXES) -> list[Job]:
    """Files and folders -> jobs. A folder contributes its audio files (``pattern`` filters by
    name), each placed under the output folder by its path relative to that folder; a file
    contributes itself under its own name. Files that do not exist are kept as jobs, so that
    they are reported as failures rather than silently dropped."""
    wanted = {s.lower() for s in suffixes}
    jobs: list[Job] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.glob("*")
            # Folders named like audio files (x.flac/) are kept: they fail and are reported.
            found = sorted(p for p in walker
                           if (fnmatch.fnmatch(p.name, pattern) if pattern else p.suffix.lower() in wanted))
            jobs.extend(Job(p, p.relative_to(path)) for p in found)
        else:
            jobs.append(Job(path, Path(path.name) if path.is_absolute() else path))
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise BsqAudioError(f"--shard must look like K/N (e.g. 0/4), not {text!r}") from None
    if not 0 <= index < count:
        raise BsqAudioError(f"--shard {text}: K must be between 0 and N-1")
    return index, count


def take_shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Every count-th job starting at index, over the list sorted by source path: the shards of
    one input list are disjoint and cover it exactly, whatever order the list came in."""
    ordered = sorted(jobs, key=lambda job: str(job.source))
    return ordered[index::count]


def output_path(out_dir: Path, job: Job, fmt: str) -> Path:
    relative = job.relative
    if relative.is_absolute() or ".." in relative.parts:
        relative = Path(*[p for p in relative.parts if p not in ("/", "..")])
    return out_dir / relative.with_suffix(f".{fmt}")


def npy_bytes(codes: Codes) -> bytes:
    """(windows, 512) int64 token indices, time-major per window; -1 past the end of audio."""
    buffer = io.BytesIO()
    np.save(buffer, codes.window_indices().numpy())
    return buffer.getvalue()


def jsonl_record(job: Job, codes: Codes) -> dict:
    return {
        "path": str(job.source),
        "duration_s": round(codes.duration, 6),
        "sample_rate": codes.header["source_sample_rate"],
        "bitrate_bps": codes.bitrate,
        "code_bits": codes.code_bits,
        "tokens": codes.indices.reshape(-1).tolist(),
    }


class _Tally:
    """Counts, error records and events of a batch run, shared by both directions."""

    def __init__(self, on_event: Callable[[str, Job, str], None] | None) -> None:
        self.summary = Summary()
        self.on_event = on_event
        self.start = time.time()

    def already_done(self, job: Job, target: Path | None, skip_existing: bool) -> bool:
        """True (and counted as skipped) when --skip-existing finds ``target`` already written."""
        if target is None or not skip_existing or not target.exists():
            return False
        self.summary.skipped += 1
        if self.on_event:
            self.on_event("skipped", job, str(target))
        return True

    def failed(self, job: Job, reason: str) -> None:
        self.summary.failed += 1
        self.summary.errors.append({"path": str(job.source), "error": reason})
        if self.on_event:
            self.on_event("failed", job, reason)

    def done(self, job: Job, codes: Codes, target: Path | None) -> None:
        self.summary.done += 1
        self.summary.seconds_of_audio += codes.duration
        self.summary.tokens += codes.indices.numel()
        if self.on_event:
            self.on_event("done", job, str(target) if target else "")

    def finish(self) -> Summary:
        self.summary.wall_s = time.time() - self.start
        return self.summary


def encode_many(codec: Codec, jobs: list[Job], fmt: str, out_dir: Path | None,
                jsonl_out: io.TextIOBase | None = None, skip_existing: bool = False,
                on_event: Callable[[str, Job, str], None] | None = None, workers: int = 0) -> Summary:
    """Encode every job; ``on_event(kind, job, detail)`` hears 'done', 'skipped' and 'failed'.

    ``workers`` reader processes decode files while the model encodes windows packed from many
    files (see ``bsqaudio.pipeline``); outputs are written as each file completes."""
    tally = _Tally(on_event)

    def target_of(job: Job) -> Path | None:
        return output_path(out_dir, job, fmt) if out_dir is not None and fmt != "jsonl" else None

    todo = [job for job in jobs if not tally.already_done(job, target_of(job), skip_existing)]
    for index, codes, reason in encode_sources(codec, [job.source for job in todo], workers):
        job = todo[index]
        if codes is None:
            tally.failed(job, reason)
            continue
        target = target_of(job)
        try:
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(target, write_bsq(codes) if fmt == "bsq" else npy_bytes(codes))
            else:
                jsonl_out.write(json.dumps(jsonl_record(job, codes)) + "\n")
                jsonl_out.flush()
        except (OSError, BsqAudioError) as err:
            tally.failed(job, failure_reason(target or job.source, err))
            continue
        tally.done(job, codes, target)
    return tally.finish()


def decode_many(codec: Codec, jobs: list[Job], out_dir: Path, fmt: str, rate: str,
                skip_existing: bool = False,
                on_event: Callable[[str, Job, str], None] | None = None) -> Summary:
    """Decode .bsq jobs to audio files under ``out_dir`` with the same error handling."""
    from bsqaudio.audio import write_audio_stream

    tally = _Tally(on_event)
    for job in jobs:
        target = output_path(out_dir, job, fmt)
        if tally.already_done(job, target, skip_existing):
            continue
        try:
            codes = load_bsq(job.source)
            sample_rate = resolve_rate(codes, rate)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_audio_stream(target, codec.decode_stream(codes, sample_rate), sample_rate)
        except Exception as err:  # one bad file must not end a batch of 100k
            tally.failed(job, failure_reason(job.source, err))
            continue
        tally.done(job, codes, target)
    return tally.finish()


def write_errors(path: Path, errors: list[dict]) -> None:
    payload = "".join(json.dumps(e) + "\n" for e in errors)
    write_bytes_atomic(path, payload.encode())
