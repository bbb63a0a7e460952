"""Which files a command works on, and where each one's output goes.

Used by batch encode/decode, ``eval`` and training alike, so that every command finds the same
files in the same folders. Output naming is checked as a whole before any work: two inputs never
map to one output, an input listed twice is done once, and folders and path lists mirror their
tree under the output folder the same way.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bsqaudio.errors import BsqAudioError

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf",
                            ".w64", ".rf64"})
LIST_SUFFIXES = (".txt", ".lst", ".list")
MAX_LIST_BYTES = 1 << 30  # a path list of ~10M paths; anything larger is not a list


@dataclass(frozen=True)
class Job:
    source: Path
    relative: Path  # where the output goes under the output folder (suffix replaced)
    record: int | None = None  # a line of a many-record token file (jsonl), counted from 0

    @property
    def label(self) -> str:
        """The input as messages name it."""
        return str(self.source) if self.record is None else f"{self.source} (record {self.record + 1})"


def read_path_list(source: str) -> list[str]:
    """One path a line from a file or ``-`` (stdin); blank lines and ``#`` comments ignored."""
    try:
        if source == "-":
            text = sys.stdin.read(MAX_LIST_BYTES + 1)
        else:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read(MAX_LIST_BYTES + 1)
    except OSError as err:
        raise BsqAudioError(f"{source}: cannot read the path list ({err.strerror})") from None
    if len(text) > MAX_LIST_BYTES:
        raise BsqAudioError(f"{source}: path list larger than {MAX_LIST_BYTES >> 20} MiB")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def mirrored(paths: list[Path]) -> list[Path]:
    """Where listed files go under an output folder: a plain relative path stays as it is; absolute
    paths and paths through ``..`` are placed by their path below the deepest folder they all share,
    as a folder input mirrors its tree (``/p1/x.wav`` and ``/p2/x.wav`` -> ``p1/x.wav``, ``p2/x.wav``)."""
    outside = [p for p in paths if p.is_absolute() or ".." in p.parts]
    if not outside:
        return paths
    absolute = {p: Path(os.path.abspath(p)) for p in outside}
    root = Path(os.path.commonpath([a.parent for a in absolute.values()]))
    return [absolute[p].relative_to(root) if p in absolute else p for p in paths]


def gather(items: Iterable[str], recursive: bool = True, pattern: str | None = None,
           suffixes: Iterable[str] = AUDIO_SUFFIXES) -> list[Job]:
    """Files and folders -> jobs. A folder contributes its audio files (``pattern`` filters by
    name), each placed under the output folder by its path relative to that folder; listed files
    are placed as ``mirrored`` says. Files that do not exist are kept as jobs, so that they are
    reported as failures rather than silently dropped."""
    wanted = {s.lower() for s in suffixes}
    jobs: list[Job] = []
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.glob("*")
            # Folders named like audio files (x.flac/) are kept: they fail and are reported.
            found = sorted(p for p in walker
                           if (fnmatch.fnmatch(p.name, pattern) if pattern else p.suffix.lower() in wanted))
            jobs.extend(Job(p, p.relative_to(path)) for p in found)
        else:
            files.append(path)
    jobs.extend(Job(p, r) for p, r in zip(files, mirrored(files), strict=True))
    return jobs


def list_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Folders (recursive), audio files and text files listing paths -> sorted audio paths, for
    commands that read a set of files (training, ``eval``) rather than map each to an output."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.suffix.lower() in LIST_SUFFIXES:
            found.update(Path(line) for line in read_path_list(str(path)))
        elif path.exists():
            found.add(path)
        else:
            raise BsqAudioError(f"{path}: no such file or folder")
    return sorted(found)


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
    return out_dir / job.relative.with_suffix(f".{fmt}")


def drop_duplicates(jobs: list[Job]) -> tuple[list[Job], list[str]]:
    """Jobs with each source file once (the first listing wins), and a notice per repeated file."""
    seen: dict[str, int] = {}
    kept = []
    for job in jobs:
        key = os.path.realpath(job.source)
        if key not in seen:
            seen[key] = 0
            kept.append(job)
        seen[key] += 1
    notices = [f"{path}: listed {count} times; done once" for path, count in seen.items() if count > 1]
    return kept, notices


def check_collisions(jobs: list[Job], targets: list[Path]) -> None:
    """Refuse, before any work, two inputs that would write one output (``song.wav`` and
    ``song.flac`` both become ``song.bsq``), naming both."""
    first: dict[Path, Job] = {}
    for job, target in zip(jobs, targets, strict=True):
        other = first.setdefault(target, job)
        if other is not job:
            raise BsqAudioError(f"{other.label} and {job.label} would both be written to {target}; "
                                "leave one out (--glob, or a path list) or encode them separately")
