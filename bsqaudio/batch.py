"""Many files at once: encode or decode each, never lose work to a bad file or clobber an output.

Which files and where their outputs go is ``bsqaudio.io.inputs``' job (checked as a whole before
any work). Outputs are written through ``bsqaudio.io.atomic``, so a killed run leaves only complete
files and ``--skip-existing`` resumes it; a jsonl output resumes too, from the complete lines of
the previous output and of a killed run's temporary. A file that cannot be read is reported (path
and reason), recorded, and skipped; the rest go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bsqaudio.codec import Codec, resolve_rate
from bsqaudio.codes import Codes
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.atomic import atomic_path, stale_temporaries, write_bytes_atomic
from bsqaudio.io.inputs import Job, output_path
from bsqaudio.pipeline import encode_sources, failure_reason
from bsqaudio.token_files import file_bytes, jsonl_record, load_job


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds_of_audio: float = 0.0
    tokens: int = 0
    wall_s: float = 0.0
    errors: list[dict] = field(default_factory=list)


class _Tally:
    """Counts and error records of a batch run, shared by both directions."""

    def __init__(self, on_event: Callable[..., None] | None) -> None:
        self.summary = Summary()
        self.on_event = on_event
        self.start = time.time()

    def already_done(self, job: Job, target: Path | None, skip_existing: bool, recorded: set[str]) -> bool:
        """True (and counted as skipped) when --skip-existing finds the job's output written:
        ``target``, or its record among ``recorded`` (jsonl)."""
        if not skip_existing:
            return False
        if not (str(job.source) in recorded if target is None else target.exists()):
            return False
        self.summary.skipped += 1
        if self.on_event:
            self.on_event("skipped", job, str(target or ""))
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
            self.on_event("done", job, str(target or "jsonl"), seconds=codes.duration)

    def finish(self) -> Summary:
        self.summary.wall_s = time.time() - self.start
        return self.summary


class JsonlSink:
    """Where a jsonl run's records go. A record is written whole or not at all: a write that fails
    (a full disk) is cut back to the end of the previous line, so no cut line is ever counted."""

    def __init__(self, handle: BinaryIO, seekable: bool) -> None:
        self.handle = handle
        self.seekable = seekable

    def write(self, record: dict) -> None:
        line = memoryview((json.dumps(record) + "\n").encode())
        start = self.handle.tell() if self.seekable else None
        try:
            while line:
                line = line[self.handle.write(line):]
            self.handle.flush()
        except OSError:
            if start is not None:
                self.handle.truncate(start)
                self.handle.seek(start)
            raise


def complete_records(path: Path) -> Iterator[tuple[bytes, str]]:
    """(line, path) of each complete record in a jsonl output: a line cut short (no newline, or
    not a JSON object with a path) ends the readable part."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                return
            yield line, record["path"]


@contextmanager
def jsonl_output(path: Path | None, resume: bool) -> Iterator[tuple[JsonlSink, set[str]]]:
    """A sink for a jsonl run (stdout when ``path`` is None) and the paths already in it. With
    ``resume``, the new file starts with the complete records of ``path`` and of any temporary a
    killed run left beside it, each path once; the run then skips those paths."""
    if path is None:
        import sys

        yield JsonlSink(sys.stdout.buffer, seekable=False), set()
        return
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as raw:
        done: set[str] = set()
        if resume:
            for source in [path, *stale_temporaries(path)]:
                for line, record_path in complete_records(source):
                    if record_path not in done:
                        done.add(record_path)
                        raw.write(line)
        yield JsonlSink(raw, seekable=True), done  # a regular temporary, even for -o /dev/null


def encode_many(codec: Codec, jobs: list[Job], fmt: str, out_dir: Path | None,
                jsonl: tuple[JsonlSink, set[str]] | None = None, skip_existing: bool = False,
                on_event: Callable[..., None] | None = None, workers: int = 0,
                allow_truncated: bool = False, group: int | None = None) -> Summary:
    """Encode every job, to files under ``out_dir`` or as records into ``jsonl`` (a sink and the
    paths it already holds), token files in the sub-token view ``group`` (None: full codes).
    ``on_event(kind, job, detail, seconds=...)`` hears 'done' (with the
    audio's seconds), 'skipped', 'failed' and 'warning' (a truncated file kept with
    ``allow_truncated``; without it, a truncated file fails): see ``bsqaudio.batch_progress``.

    ``workers`` reader processes decode files while the model encodes windows packed from many
    files (see ``bsqaudio.pipeline``); outputs are written as each file completes."""
    tally = _Tally(on_event)
    sink, recorded = jsonl if jsonl is not None else (None, set())

    def target_of(job: Job) -> Path | None:
        return output_path(out_dir, job, fmt) if sink is None else None

    todo = [job for job in jobs if not tally.already_done(job, target_of(job), skip_existing, recorded)]
    for index, codes, reason in encode_sources(codec, [job.source for job in todo], workers, allow_truncated):
        job = todo[index]
        if codes is None:
            tally.failed(job, reason)
            continue
        if reason is not None and on_event:
            on_event("warning", job, reason)
        target = target_of(job)
        try:
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(target, file_bytes(fmt, job, codes, group))
            else:
                sink.write(jsonl_record(job, codes, group))
        except (OSError, BsqAudioError) as err:
            tally.failed(job, failure_reason(target or job.source, err))
            continue
        tally.done(job, codes, target)
    return tally.finish()


def decode_many(codec: Codec, jobs: list[Job], out_dir: Path, fmt: str, rate: str,
                skip_existing: bool = False,
                on_event: Callable[..., None] | None = None, group: int | None = None) -> Summary:
    """Decode .bsq or token-file jobs to audio files under ``out_dir`` with the same error handling."""
    from bsqaudio.io.audio_files import write_audio_stream

    tally = _Tally(on_event)
    for job in jobs:
        target = output_path(out_dir, job, fmt)
        if tally.already_done(job, target, skip_existing, set()):
            continue
        try:
            codes = load_job(job, codec, group)
            sample_rate = resolve_rate(codes, rate)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_audio_stream(target, codec.decode_stream(codes, sample_rate), sample_rate)
        except Exception as err:  # one bad file must not end a batch of 100k
            tally.failed(job, failure_reason(Path(job.label), err))
            continue
        tally.done(job, codes, target)
    return tally.finish()


def write_errors(path: Path, errors: list[dict]) -> None:
    payload = "".join(json.dumps(e) + "\n" for e in errors)
    write_bytes_atomic(path, payload.encode())


def gather_summaries(summary: Summary) -> list[Summary]:
    """Every rank's summary (without its error records), on every rank of a torchrun job: CPU
    collectives over gloo, started here if the command has no process group yet."""
    import datetime

    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))  # ranks finish apart
    try:
        counts = {name: getattr(summary, name) for name in
                  ("done", "skipped", "failed", "seconds_of_audio", "tokens", "wall_s")}
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, counts)
    finally:
        if started:
            dist.destroy_process_group()
    return [Summary(**c) for c in gathered]
