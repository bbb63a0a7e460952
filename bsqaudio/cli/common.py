"""What the commands share: output checks and writing, codec loading and threads, batch jobs
(shards, torchrun ranks, collisions), progress and the batch summary."""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bsqaudio.cli.app import STATE, err_console, fail


def check_output(path: str, force: bool) -> None:
    """Refuse an output that cannot or must not be written, before any work is done. A character
    device or FIFO (``-o /dev/null``) is written through, so it needs no ``--force``."""
    from bsqaudio.io.atomic import check_target

    if path == "-":
        return
    out = Path(path)
    special = check_target(out)
    if out.exists() and special is None and not force:
        fail(f"{out}: already exists (use --force to overwrite)")
    check_folder(out.parent, "output folder")


AUDIO_OUTPUTS = ("wav", "flac", "ogg", "mp3")


def check_token_output(path: str, fmt: str) -> None:
    """Tokens go where their name says: not into ``x.wav`` (that is roundtrip's job), not into a
    file named for another token format, and not as binary onto a terminal."""
    from bsqaudio.token_files import FORMATS

    if path == "-":
        if fmt != "jsonl" and sys.stdout.isatty():
            fail(f"refusing to write binary {fmt} data to a terminal; redirect it (> out.{fmt}) or give -o FILE")
        return
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in AUDIO_OUTPUTS:
        fail(f"{path}: encode writes tokens, not audio; name it .{fmt} (roundtrip writes audio)")
    if suffix in FORMATS and suffix != fmt:
        fail(f"{path}: the name says .{suffix} but --format is {fmt}")


def check_audio_output(path: str) -> None:
    if path == "-" and sys.stdout.isatty():
        fail("refusing to write WAV data to a terminal; redirect it (> out.wav), pipe it, or give -o FILE")


def check_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        fail(f"{folder}: {what} does not exist")
    if not folder.is_dir():
        fail(f"{folder}: {what} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"{folder}: {what} is not writable (permission denied)")


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``--out-dir`` (and its parents) or say why not, before the first file is read."""
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir}: --out-dir is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{out_dir}: cannot create the output folder ({err.strerror})")
    check_folder(out_dir, "output folder")


@contextmanager
def progress_bar(enabled: bool, label: str):
    """Yield a (done, total) callback that drives a rich bar on stderr, shown for long inputs."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    with Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total} windows"),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def load_codec(model: str | None, revision: str | None, device: str, batch_size: int = 8,
               threads: int | None = None, workers: int = 0):
    from bsqaudio.codec import Codec

    use_threads(threads, workers)
    return Codec.from_pretrained(model, device=device, revision=revision, batch_size=batch_size)


def use_threads(threads: int | None, workers: int) -> None:
    """The model's and Griffin-Lim's CPU threads: ``threads`` if given; otherwise torch's own
    choice (one per core, or ``OMP_NUM_THREADS``) less one per reader process, so readers and
    the model do not fight over cores. Codes and audio do not depend on it (tests/test_threads.py)."""
    import torch

    if threads is None:
        if workers == 0 or "OMP_NUM_THREADS" in os.environ:
            return
        threads = max(1, torch.get_num_threads() - workers)
    torch.set_num_threads(threads)


def write_output(path: str, payload: bytes) -> None:
    from bsqaudio.io.atomic import write_bytes_atomic

    if path == "-":
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    else:
        write_bytes_atomic(Path(path), payload)


def output_rate(codes, rate: str) -> int:
    from bsqaudio.codec import resolve_rate

    return resolve_rate(codes, rate)


def batch_jobs(sources: list[str], from_: str | None, recursive: bool, glob: str | None, shard: str | None,
               out_dir: Path | None, fmt: str, suffixes=None, expand=None) -> tuple[list, list[Path] | None]:
    """This run's jobs and their output files (None for a jsonl stream), checked as a whole
    before any work: every input once, no two inputs to one output (across all shards)."""
    from bsqaudio.io import inputs

    items = list(sources) + (inputs.read_path_list(from_) if from_ else [])
    jobs = inputs.gather(items, recursive, glob, **({"suffixes": suffixes} if suffixes else {}))
    if not jobs:
        kind = "matching" if glob else ".bsq" if suffixes else "audio"
        fail(f"no {kind} files found in {', '.join(items) or from_}")
    jobs, notices = inputs.drop_duplicates(jobs)
    for notice in notices:
        err_console.print(f"bsqaudio: {notice}", highlight=False, markup=False, soft_wrap=True)
    if expand is not None:  # a file of many records: a job each (decode of jsonl)
        jobs = expand(jobs)
    targets = None
    if out_dir is not None:
        targets = [inputs.output_path(out_dir, job, fmt) for job in jobs]
        inputs.check_collisions(jobs, targets)
    position = shard_position(shard)
    if position is not None:
        target_of = dict(zip(jobs, targets, strict=True)) if targets is not None else None
        jobs = inputs.take_shard(jobs, *position)
        if target_of is not None:
            targets = [target_of[job] for job in jobs]
    return jobs, targets


def shard_position(shard: str | None) -> tuple[int, int] | None:
    """(K, N) from --shard, else from torchrun's RANK/WORLD_SIZE, else None."""
    from bsqaudio.io.inputs import parse_shard

    if shard is not None:
        return parse_shard(shard)
    if torchrun_world() > 1:
        return int(os.environ.get("RANK", "0")), torchrun_world()
    return None


def torchrun_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank_file(path: Path) -> Path:
    """Under torchrun each rank writes its own copy of a single-file output: ``all.jsonl`` ->
    ``all.rank0.jsonl``, ``all.rank1.jsonl``, ... (one shared file would keep one rank's records)."""
    if torchrun_world() <= 1:
        return path
    return path.with_name(f"{path.stem}.rank{os.environ.get('RANK', '0')}{path.suffix}")


def check_targets(targets: list[Path], force: bool, skip_existing: bool) -> None:
    """Refuse, before any work, outputs that cannot be written, and existing ones unless --force
    (overwrite) or --skip-existing (keep them, resume) says what to do with them."""
    from bsqaudio.io.atomic import check_target

    for target in targets:
        special = check_target(target)
        if special is None and not (force or skip_existing) and target.exists():
            fail(f"{target}: already exists (use --force to overwrite, or --skip-existing to keep "
                 "existing outputs and resume)")


def rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK) when the device is auto."""
    import torch

    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def summary_line(summary) -> str:
    speed = summary.seconds_of_audio / summary.wall_s if summary.wall_s else 0.0
    return (f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed; "
            f"{summary.seconds_of_audio / 3600:.3f} h of audio, {summary.tokens:,} tokens, "
            f"{summary.wall_s:.1f} s wall, {speed:.1f} audio-s/s")


def finish_batch(summary, errors: Path | None) -> None:
    """Write the failures, print the summary; exit 1 if anything failed. Under torchrun each rank
    prints its own line and rank 0 the total, and ranks exit 0: a bad input is a reported
    failure (in the summary and --errors), not a crashed rank for torchrun to tear the job down."""
    from bsqaudio import batch

    if errors is not None:
        batch.write_errors(errors, summary.errors)
    summary.wall_s = time.monotonic() - STATE.get("started", time.monotonic())  # the whole command
    world = torchrun_world()
    if world <= 1:
        err_console.print(summary_line(summary), highlight=False, soft_wrap=True)
        if summary.failed:
            raise typer.Exit(1)
        return
    rank = int(os.environ.get("RANK", "0"))
    err_console.print(f"rank {rank}/{world}: {summary_line(summary)}", highlight=False, soft_wrap=True)
    every = batch.gather_summaries(summary)
    if rank == 0:
        total = batch.Summary(**{name: sum(getattr(s, name) for s in every)
                                 for name in ("done", "skipped", "failed", "seconds_of_audio", "tokens")},
                              wall_s=max(s.wall_s for s in every))
        err_console.print(f"all {world} ranks: {summary_line(total)}", highlight=False, soft_wrap=True)


def batch_progress(jobs: list, quiet: bool, verbose: bool):
    from bsqaudio.batch_progress import BatchProgress

    prefix = f"[rank {os.environ.get('RANK', '0')}] " if torchrun_world() > 1 else ""
    return BatchProgress(err_console, [job.source for job in jobs], quiet, verbose, prefix)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (a truncated file kept) as one line, like errors; others as Python shows them."""
    from bsqaudio.io.audio_files import TruncatedAudioWarning

    if issubclass(category, TruncatedAudioWarning):
        err_console.print(f"bsqaudio: warning: {message}", highlight=False, markup=False, soft_wrap=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def check_view(view: str, fmt: str) -> None:
    """``--tokens`` goes with the formats it applies to; its G is checked once the model is loaded."""
    if view != "index" and fmt in ("bsq", "npz"):
        fail(f"--format {fmt} keeps the full codes; --tokens applies to npy and jsonl")
    if view not in ("index", "bits") and not view.startswith("groups:"):
        fail(f"--tokens must be index, groups:G or bits, not {view!r}")
