"""The ``bsqaudio`` command line: a thin layer over ``bsqaudio.codec`` and ``bsqaudio.train``.

Errors a user can cause are BsqAudioError: printed as one line on stderr, exit code 1, no
traceback (``--debug`` shows it). Outputs are written to a temporary file and renamed. SIGINT and
SIGTERM unwind like an exception, so temporary files are removed, then exit 130 / 143.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bsqaudio.errors import BsqAudioError
from bsqaudio.io.inputs import Job

app = typer.Typer(
    name="bsqaudio",
    help="Audio tokenizer and codec after BSQ-ViT: audio -> L-bit tokens (50 a second) -> audio.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain Click help: rich markup ate "[windows, 512]" and "[default: ...]" in option help, and its
    # panels truncated option names at 80 columns.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True)
STATE = {"debug": False}

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model folder, .safetensors file or Hub repo id (default: embedded).")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision (tag, branch or commit).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
AllowTruncatedOpt = Annotated[bool, typer.Option(
    "--allow-truncated", help="Encode the readable part of a truncated file (with a warning) instead of failing.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress (failures and the summary still show).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="A line per file in batch mode.")]
BatchOpt = Annotated[int, typer.Option(help="Windows per model batch.", min=1)]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    help="CPU threads for the model and Griffin-Lim (1 is fastest on a busy machine; codes and audio "
    "do not depend on it) [default: one per core, less one per --workers reader].",
    min=1, show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
    help="Reader processes for many files (0: read in the main process) [default: CPU cores - 2, at least 0].",
    min=0, show_default=False)]


def fail(message: str) -> None:
    raise BsqAudioError(message)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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


FormatOpt = Annotated[str, typer.Option(
    "--format", help="bsq (default), npy (int64 [windows, 512]), jsonl or npz (codes, gains and header).")]
TokensOpt = Annotated[str, typer.Option(
    "--tokens", help="Token view of npy/jsonl: index (one L-bit integer a code), groups:G (L/G sub-tokens "
    "of G bits, e.g. groups:9 -> 4 of vocabulary 512) or bits.")]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="Read input paths, one a line, from a file or -.")]
OutDirOpt = Annotated[Optional[Path], typer.Option("--out-dir", help="Output folder; mirrors the input tree.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")]
GlobOpt = Annotated[Optional[str], typer.Option("--glob", help="File-name pattern inside folders, e.g. '*.flac'.")]
SkipOpt = Annotated[bool, typer.Option("--skip-existing", help="Leave outputs that already exist (resume a run).")]
ErrorsOpt = Annotated[Optional[Path], typer.Option("--errors", help="Write failures as JSON lines here.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="K/N: take a deterministic 1/N of the inputs "
                                                 "(default under torchrun: RANK/WORLD_SIZE).")]


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
    from bsqaudio.audio import TruncatedAudioWarning

    if issubclass(category, TruncatedAudioWarning):
        err_console.print(f"bsqaudio: warning: {message}", highlight=False, markup=False, soft_wrap=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


@app.command(epilog="Examples:\n\n  bsqaudio encode song.wav -o song.bsq\n\n"
                    "  cat a.wav | bsqaudio encode - -o - > a.bsq\n\n"
                    "  bsqaudio encode corpus/ --out-dir tokens/ --format npy --skip-existing\n\n"
                    "  find corpus -name '*.flac' | bsqaudio encode --from - --out-dir tokens/\n\n"
                    "  bsqaudio encode corpus/ --format jsonl -o tokens.jsonl --shard 0/4")
def encode(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help="Audio files (wav, flac, ogg, mp3...), folders, or - for stdin.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Output file (one input), or - for stdout; the jsonl file in batch mode.")] = None,
    out_dir: OutDirOpt = None, from_: FromOpt = None, fmt: FormatOpt = "bsq", view: TokensOpt = "index",
    recursive: RecursiveOpt = True, glob: GlobOpt = None, skip_existing: SkipOpt = False,
    errors: ErrorsOpt = None, shard: ShardOpt = None,
    model: ModelOpt = None, revision: RevisionOpt = None, device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8, workers: WorkersOpt = None, threads: ThreadsOpt = None, force: ForceOpt = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, allow_truncated: AllowTruncatedOpt = False,
) -> None:
    """Tokenize audio: one file into a .bsq file, or many (folders, --from lists) into a folder."""
    from bsqaudio import batch, token_files
    from bsqaudio.pipeline import default_workers

    sources = sources or []
    if fmt not in token_files.FORMATS:
        fail(f"--format must be one of {', '.join(token_files.FORMATS)}")
    check_view(view, fmt)
    single = len(sources) == 1 and from_ is None and out_dir is None and not Path(sources[0]).is_dir()
    if single:
        if output is None:
            fail("give an output file with -o (or - for stdout), or --out-dir for many files")
        check_token_output(output, fmt)
        check_output(output, force)
        codec = load_codec(model, revision, rank_device(device), batch_size, threads)
        group = token_files.parse_view(view, codec.config.code_bits)
        with progress_bar(not quiet, "encoding") as progress:
            codes = codec.encode_file(sources[0], progress=progress, allow_truncated=allow_truncated)
        job = Job(Path(sources[0]), Path(sources[0]))
        write_output(output, token_files.file_bytes(fmt, job, codes, group))
        return
    if not sources and from_ is None:
        fail("no inputs: give files or folders, or --from LIST")
    if fmt != "jsonl" and out_dir is None:
        if len(sources) == 1 and from_ is None:
            fail(f"{sources[0]}: is a folder; give --out-dir to encode the audio files in it")
        fail(f"many inputs need --out-dir for --format {fmt}")
    if fmt == "jsonl" and out_dir is not None:
        fail("--format jsonl writes one file of records: give -o FILE (or nothing for stdout), not --out-dir")
    jsonl_path = rank_file(Path(output)) if fmt == "jsonl" and output not in (None, "-") else None
    if jsonl_path is not None and not skip_existing:
        check_output(str(jsonl_path), force)
    errors = rank_file(errors) if errors is not None else None
    if errors is not None:
        check_output(str(errors), force=True)
    if out_dir is not None:
        prepare_out_dir(out_dir)
    jobs, targets = batch_jobs(sources, from_, recursive, glob, shard, out_dir, fmt)
    if targets is not None:
        check_targets(targets, force, skip_existing)
    workers = default_workers() if workers is None else workers
    codec = load_codec(model, revision, rank_device(device), batch_size, threads, workers)
    group = token_files.parse_view(view, codec.config.code_bits)
    if workers:
        # Reader processes pass windows through shared-memory files, not file descriptors: the
        # descriptor server thread of a reader prints a traceback when an interrupted main process
        # drops its connection half-way.
        import torch.multiprocessing

        torch.multiprocessing.set_sharing_strategy("file_system")
    with batch_progress(jobs, quiet, verbose) as progress:
        if fmt == "jsonl":
            with batch.jsonl_output(jsonl_path, resume=skip_existing) as jsonl:
                summary = batch.encode_many(codec, jobs, fmt, None, jsonl, skip_existing, progress, workers,
                                            allow_truncated, group)
        else:
            summary = batch.encode_many(codec, jobs, fmt, out_dir, None, skip_existing, progress, workers,
                                        allow_truncated, group)
    finish_batch(summary, errors)


@app.command(epilog="Examples:\n\n  bsqaudio tokens song.bsq\n\n  bsqaudio tokens song.bsq --format npy -o song.npy\n\n"
                    "  bsqaudio tokens song.bsq --tokens groups:9")
def tokens(
    source: Annotated[str, typer.Argument(help=".bsq file, or - for stdin.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (default), npy or npz.")] = "jsonl",
    view: TokensOpt = "index",
    output: Annotated[str, typer.Option("--output", "-o", help="Output file, or - for stdout.")] = "-",
    force: ForceOpt = False,
) -> None:
    """Print a .bsq file's tokens (the same forms as `encode --format`)."""
    from bsqaudio import token_files
    from bsqaudio.bitstream import load_bsq_arrays

    if fmt not in ("jsonl", "npy", "npz"):
        fail("--format must be jsonl, npy or npz")
    check_view(view, fmt)
    check_token_output(output, fmt)
    check_output(output, force)
    codes = load_bsq_arrays(source)
    group = token_files.parse_view(view, codes.code_bits)
    write_output(output, token_files.file_bytes(fmt, Job(Path(source), Path(source)), codes, group))


def check_view(view: str, fmt: str) -> None:
    """``--tokens`` goes with the formats it applies to; its G is checked once the model is loaded."""
    if view != "index" and fmt in ("bsq", "npz"):
        fail(f"--format {fmt} keeps the full codes; --tokens applies to npy and jsonl")
    if view not in ("index", "bits") and not view.startswith("groups:"):
        fail(f"--tokens must be index, groups:G or bits, not {view!r}")


@app.command(epilog="Examples:\n\n  bsqaudio decode song.bsq -o out.wav\n\n"
                    "  bsqaudio decode song.bsq -o out.flac --rate source\n\n"
                    "  bsqaudio decode tokens/ --out-dir audio/ --audio-format flac")
def decode(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help=".bsq or token files (.npz, .npy, .jsonl), folders, or - for a .bsq on stdin.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Audio file (.wav, .flac, .ogg, .mp3) or - (WAV on stdout).")] = None,
    rate: Annotated[str, typer.Option(
        help="Output rate: 'model' (16 kHz), 'source' (the original's) or Hz.")] = "model",
    out_dir: OutDirOpt = None, from_: FromOpt = None, view: Annotated[Optional[str], typer.Option(
        "--tokens", help="The view .npy/.jsonl tokens are in: index, groups:G or bits [default: index; "
        "jsonl records name theirs].", show_default=False)] = None,
    audio_format: Annotated[str, typer.Option(help="wav, flac, ogg or mp3, for --out-dir.")] = "wav",
    recursive: RecursiveOpt = True, skip_existing: SkipOpt = False, errors: ErrorsOpt = None,
    shard: ShardOpt = None,
    model: ModelOpt = None, revision: RevisionOpt = None, device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8, threads: ThreadsOpt = None, force: ForceOpt = False, quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Turn .bsq files or tokens back into audio: one into a file, or many into a folder. Tokens
    without gains (a language model's output) decode at a typical speech loudness."""
    from bsqaudio import batch, token_files
    from bsqaudio.audio import write_audio_stream

    sources = sources or []
    single = len(sources) == 1 and from_ is None and out_dir is None and not Path(sources[0]).is_dir()
    if single:
        if output is None:
            fail("give an output file with -o (or - for stdout), or --out-dir for many files")
        check_audio_output(output)
        check_output(output, force)
        if rate not in ("model", "source"):
            output_rate(None, rate)  # validates a number before the model loads
        codec = load_codec(model, revision, rank_device(device), batch_size, threads)
        group = token_files.parse_view(view, codec.config.code_bits) if view else None
        codes = token_files.load_codes(sources[0], codec, group)
        sample_rate = output_rate(codes, rate)
        with progress_bar(not quiet, "decoding") as progress:
            write_audio_stream(output, codec.decode_stream(codes, sample_rate, progress=progress), sample_rate)
        return
    if out_dir is None:
        if len(sources) == 1 and from_ is None:
            fail(f"{sources[0]}: is a folder; give --out-dir to decode the .bsq and token files in it")
        fail("many inputs need --out-dir")
    if audio_format not in AUDIO_OUTPUTS:
        fail(f"--audio-format must be one of {', '.join(AUDIO_OUTPUTS)}")
    if rate not in ("model", "source"):
        output_rate(None, rate)  # validates a number
    errors = rank_file(errors) if errors is not None else None
    if errors is not None:
        check_output(str(errors), force=True)
    prepare_out_dir(out_dir)
    jobs, targets = batch_jobs(sources, from_, recursive, None, shard, out_dir, audio_format,
                               suffixes=(".bsq", *token_files.TOKEN_SUFFIXES), expand=token_files.expand_records)
    check_targets(targets, force, skip_existing)
    codec = load_codec(model, revision, rank_device(device), batch_size, threads)
    group = token_files.parse_view(view, codec.config.code_bits) if view else None
    with batch_progress(jobs, quiet, verbose) as progress:
        summary = batch.decode_many(codec, jobs, out_dir, audio_format, rate, skip_existing, progress, group)
    finish_batch(summary, errors)


@app.command(epilog="Example:\n\n  bsqaudio roundtrip speech.wav -o out.wav --plot compare.png")
def roundtrip(
    source: Annotated[str, typer.Argument(help="Audio file, or - for stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Audio file, or - (WAV on stdout).")],
    rate: Annotated[str, typer.Option(help="Output rate: 'model', 'source' or Hz.")] = "model",
    plot: Annotated[Optional[Path], typer.Option(
        help="PNG of the input's and the written audio's spectrograms and their difference.")] = None,
    model: ModelOpt = None, revision: RevisionOpt = None, device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8, threads: ThreadsOpt = None, force: ForceOpt = False, quiet: QuietOpt = False,
    allow_truncated: AllowTruncatedOpt = False,
) -> None:
    """Encode then decode, to hear (and see) what the codec keeps."""
    from bsqaudio.audio import load_mono, resample_stream, write_audio_stream

    check_audio_output(output)
    check_output(output, force)
    if plot is not None:
        check_output(str(plot), force)
    codec = load_codec(model, revision, device, batch_size, threads)
    wave = None
    with progress_bar(not quiet, "encoding") as progress:
        if plot is None:  # streamed: memory does not grow with the input's length
            codes = codec.encode_file(source, progress=progress, allow_truncated=allow_truncated)
        else:  # the plot needs the input signal itself
            wave, source_rate, channels = load_mono(source, codec.config.sample_rate, allow_truncated)
            codes = codec.encode_stream([wave], source_rate, channels, progress, wave.shape[0])
    sample_rate = output_rate(codes, rate)
    with progress_bar(not quiet, "decoding") as progress:
        if plot is None:
            write_audio_stream(output, codec.decode_stream(codes, sample_rate, progress=progress), sample_rate)
        else:  # decoded once, at the model's rate: what the plot shows is what was written
            decoded = codec.decode(codes, progress=progress)
            write_audio_stream(output, resample_stream([decoded], codec.config.sample_rate, sample_rate),
                               sample_rate)
    if plot is not None:
        from bsqaudio import plots

        plots.plot_roundtrip(codec.frontend, wave, decoded, plot,
                             f"{Path(source).name}: {codes.bitrate:.0f} bit/s of codes ({codec.config.name})")
    if not quiet:
        err_console.print(f"{codes.duration:.2f} s at {codes.bitrate:.0f} bit/s "
                          f"({codes.code_bits}-bit codes, {plural(codes.header['num_windows'], 'window')})")


@app.command()
def info(
    source: Annotated[str, typer.Argument(help=".bsq file, or - for stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a .bsq file: model, code space, duration, bitrate, windows, code bits."""
    from bsqaudio.bitstream import load_bsq_arrays
    from bsqaudio.code_space import release_of

    codes = load_bsq_arrays(source)
    h = codes.header
    release = release_of(h["model_hash"]) or {}
    summary = {
        "model": h["model"],
        "model_hash": h["model_hash"],
        "model_version": release.get("version", "unreleased"),
        "code_space": h.get("code_space") or release.get("code_space", "unknown (not a released model)"),
        "format_version": 2 if "code_space" in h else 1,
        "duration_s": round(codes.duration, 4),
        "bitrate_bps": codes.bitrate,
        "code_bits": h["code_bits"],
        "windows": h["num_windows"],
        "tokens": codes.num_tokens,
        "sample_rate": h["sample_rate"],
        "source_sample_rate": h["source_sample_rate"],
        "source_channels": h["source_channels"],
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        typer.echo(f"{key:<{width}}  {value}")


# `train --help` in sections, by option name (plain Click help has no rich panels).
TRAIN_OPTION_GROUPS = {
    "Run": ["--out", "--resume", "--force", "--steps", "--max-minutes", "--checkpoint-every", "--seed",
            "--device", "--compile", "--grad-checkpointing", "--plot", "--export-dtype"],
    "Model": ["--preset", "--set", "--init-from", "--freeze-encoder"],
    "Data": ["--val-dir", "--val-fraction", "--val-every", "--val-windows", "--cache", "--batch-per-input",
             "--spec-augment", "--time-masks", "--time-mask-width", "--freq-masks", "--freq-mask-width"],
    "Optimisation": ["--batch-size", "--grad-accum", "--lr", "--lr-per-sample", "--warmup", "--loss",
                     "--ema-decay"],
    "Quantizer": ["--quantizer-weight", "--codebook-weight", "--codebook-group", "--window-balance-weight"],
    "Adversarial decoder (GAN)": ["--discriminator", "--disc-start", "--disc-weight", "--disc-lr",
                                  "--feature-match-weight"],
}


class GroupedOptions(typer.core.TyperCommand):
    """Options listed under TRAIN_OPTION_GROUPS' headings (any not named there under "Other")."""

    def format_options(self, ctx, formatter) -> None:
        rows = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name == "option":
                rows[param.opts[0]] = record
        placed = set()
        for heading, names in TRAIN_OPTION_GROUPS.items():
            records = [rows[name] for name in names if name in rows]
            placed.update(names)
            with formatter.section(f"{heading} options"):
                formatter.write_dl(records)
        rest = [record for name, record in rows.items() if name not in placed]
        with formatter.section("Other options"):
            formatter.write_dl(rest)


@app.command(cls=GroupedOptions, epilog="Examples:\n\n  bsqaudio train corpus/ --out runs/small\n\n"
                    "  bsqaudio train corpus/ --out runs/small --resume\n\n"
                    "  torchrun --nproc-per-node 8 -m bsqaudio train corpus/ --out runs/base "
                    "--preset base --batch-size 32 --lr-per-sample 4e-7")
def train(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Folders (recursive), audio files or .txt lists.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: cache, checkpoints, metrics, export.")],
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small or base.")] = "small",
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config field, e.g. --set code_bits=18.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in all (the schedule's length).")] = 20000,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per step per rank.")] = 8,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches summed into each step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 4e-4,
    lr_per_sample: Annotated[Optional[float], typer.Option(
        help="Peak lr per sample of global batch (BSQ-ViT: 4e-7); overrides --lr.")] = None,
    warmup: Annotated[int, typer.Option(help="Steps of linear learning-rate warmup.")] = 500,
    loss: Annotated[str, typer.Option(help="mse or l1, on dB/40.")] = "mse",
    quantizer_weight: Annotated[float, typer.Option(help="Weight of the quantizer loss (commit + entropy).")] = 0.1,
    codebook_weight: Annotated[float, typer.Option(
        help="Weight of the bit-balance (codebook entropy) term within the quantizer loss.")] = 1.0,
    codebook_group: Annotated[int, typer.Option(
        help="Bits per group in that term (divides L): above 1 it also penalizes bits that copy "
             "each other (BSQ-ViT's grouped entropy).")] = 1,
    window_balance_weight: Annotated[float, typer.Option(
        help="Weight of the per-bit balance within each window, so each recording (not only the "
             "batch's mix) uses both values of every bit.")] = 0.0,
    spec_augment: Annotated[bool, typer.Option(
        "--spec-augment/--no-spec-augment", help="Mask time and mel bands of the encoder input.")] = True,
    time_masks: Annotated[int, typer.Option(help="SpecAugment time masks per window.")] = 2,
    time_mask_width: Annotated[int, typer.Option(help="Widest time mask, in frames.")] = 40,
    freq_masks: Annotated[int, typer.Option(help="SpecAugment mel-band masks per window.")] = 2,
    freq_mask_width: Annotated[int, typer.Option(help="Widest mel-band mask, in mels.")] = 12,
    discriminator: Annotated[bool, typer.Option(
        "--discriminator/--no-discriminator", help="PatchGAN on the mel (off by default on CPU).")] = False,
    disc_start: Annotated[int, typer.Option(help="Step at which the discriminator starts.")] = 5000,
    disc_weight: Annotated[float, typer.Option(
        help="GAN terms' weight, relative to the reconstruction's gradient at the last layer.")] = 0.1,
    disc_lr: Annotated[float, typer.Option(help="Discriminator learning rate.")] = 1e-4,
    feature_match_weight: Annotated[float, typer.Option(
        help="Feature matching beside the hinge loss, within --disc-weight.")] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="Decay of the weights' moving average (what is exported).")] = 0.999,
    val_fraction: Annotated[float, typer.Option(
        help="Share of files held out for validation (by a hash of the file name).")] = 0.05,
    val_dir: Annotated[Optional[list[str]], typer.Option(help="Validation folders (instead of a split).")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every this many steps.")] = 500,
    val_windows: Annotated[int, typer.Option(help="Validation windows (the first of each file).")] = 32,
    checkpoint_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every this many steps.")] = 200,
    max_minutes: Annotated[Optional[float], typer.Option(
        help="Stop with a checkpoint after this many minutes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights, crops and masks.")] = 0,
    grad_checkpointing: Annotated[bool, typer.Option(
        help="Recompute activations in backward: less memory, more time.")] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = False,
    device: DeviceOpt = "auto",
    cache: Annotated[Optional[str], typer.Option(help="Audio cache folder (default RUN/cache).")] = None,
    plot: Annotated[bool, typer.Option(help="Write loss and spectrogram PNGs at each validation.")] = False,
    export_dtype: Annotated[str, typer.Option(help="float32 or float16 for the exported weights.")] = "float32",
    resume: Annotated[bool, typer.Option(
        help="Continue from RUN/checkpoint with its settings; options given again override them.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Start over in a run folder that holds a run (its checkpoint, export and "
        "metrics are removed).")] = False,
    init_from: Annotated[Optional[str], typer.Option(
        help="Start from these weights (a model folder or file, e.g. a previous export).")] = None,
    freeze_encoder: Annotated[bool, typer.Option(
        help="Train only the decoder: the codes stay as --init-from's encoder writes them "
             "(after scripts/calibrate_bits.py).")] = False,
    batch_per_input: Annotated[bool, typer.Option(
        help="Draw each batch from one of the inputs (e.g. speech/ or music/, in proportion to their "
             "hours), so the bit-balance term balances each input, not only their mix.")] = False,
) -> None:
    """Train a tokenizer; resumable, DDP under torchrun; exports RUN/export at the end."""
    from bsqaudio.train.loop import TrainSettings
    from bsqaudio.train.loop import train as run_training

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set needs key=value, not {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if export_dtype not in ("float32", "float16", "bfloat16"):
        fail("--export-dtype must be float32, float16 or bfloat16")
    settings = TrainSettings(
        inputs=inputs, out=str(out), preset=preset, config_overrides=overrides, steps=steps,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, lr_per_sample=lr_per_sample,
        warmup=warmup, loss=loss, quantizer_weight=quantizer_weight, codebook_weight=codebook_weight,
        window_balance_weight=window_balance_weight,
        codebook_group=codebook_group,
        spec_augment=spec_augment,
        time_masks=time_masks, time_mask_width=time_mask_width, freq_masks=freq_masks,
        freq_mask_width=freq_mask_width, discriminator=discriminator, disc_start=disc_start,
        disc_weight=disc_weight, disc_lr=disc_lr, feature_match_weight=feature_match_weight,
        ema_decay=ema_decay, val_fraction=val_fraction,
        val_dirs=val_dir or [], val_every=val_every, val_windows=val_windows,
        checkpoint_every=checkpoint_every, seed=seed, grad_checkpointing=grad_checkpointing,
        compile=compile, device=device, cache=cache, plot=plot, export_dtype=export_dtype,
        max_minutes=max_minutes, init_from=init_from, freeze_encoder=freeze_encoder,
        batch_per_input=batch_per_input,
    )
    if loss not in ("mse", "l1"):
        fail("--loss must be mse or l1")
    if resume:
        settings = _resumed(ctx, settings)
    run_training(settings, resume=resume, force=force)


def _resumed(ctx: typer.Context, settings):
    """``settings`` with every option not given on this command line taken from the run's checkpoint."""
    from bsqaudio.train.checkpoint import read_meta
    from bsqaudio.train.loop import resumed_settings

    field_of = {"set_": "config_overrides", "val_dir": "val_dirs"}
    # By the source's name: typer may bring its own copy of click's ParameterSource enum.
    explicit = {field_of.get(name, name) for name in ctx.params
                if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    stored = read_meta(Path(settings.out) / "checkpoint").get("settings", {})
    settings, changes = resumed_settings(settings, stored, explicit)
    if changes:
        print("resuming with changed settings: " + "; ".join(changes))
    return settings


@app.command(name="eval", epilog="Examples:\n\n  bsqaudio eval speech/ music.flac --json > report.json\n\n"
                                 "  bsqaudio eval refs/ --decoded encodec-out/ --decoded opus-out/ --mos")
def eval_(
    inputs: Annotated[list[str], typer.Argument(help="Reference audio files, folders or .txt lists.")],
    decoded: Annotated[Optional[list[Path]], typer.Option(
        "--decoded", help="A folder of another codec's outputs to score beside bsqaudio, matched to the "
        "references by relative path (any audio suffix); repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    per_file: Annotated[bool, typer.Option("--per-file", help="Also a table row per file and system.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="PNG bar chart of the mean metrics.")] = None,
    oracle: Annotated[bool, typer.Option("--oracle/--no-oracle", help="Also score oracle Griffin-Lim.")] = True,
    mos: Annotated[bool, typer.Option(
        "--mos", help="Also predict naturalness (DistillMOS, DNSMOS P.835 overall; install bsqaudio[mos]). "
        "Speech only: the predictors were trained on speech.")] = False,
    model: ModelOpt = None, revision: RevisionOpt = None, device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Round-trip reference files (and score other codecs' outputs of them): mel error, MR-STFT,
    STOI, PESQ, naturalness, bitrate and token usage."""
    from bsqaudio.evaluate import Reference, evaluate
    from bsqaudio.io.inputs import LIST_SUFFIXES, gather, read_path_list
    from bsqaudio.metrics import mos_available

    if mos and not mos_available():
        fail("--mos needs the MOS predictors: pip install 'bsqaudio[mos]' (distillmos, speechmos, onnxruntime)")
    folders = named_folders(decoded or [])
    items = []
    for item in inputs:
        if Path(item).suffix.lower() in LIST_SUFFIXES and not Path(item).is_dir():
            items.extend(read_path_list(item))
        elif not Path(item).exists():
            fail(f"{item}: no such file or folder")
        else:
            items.append(item)
    references = list({job.source: Reference(job.source, job.relative) for job in gather(items)}.values())
    if not references:
        fail("no audio files among the inputs")
    codec = load_codec(model, revision, device, threads=threads)

    counter = itertools.count(1)

    def progress(row: dict) -> None:
        err_console.print(f"[{next(counter)}/{len(references)}] {row['path']}", highlight=False, markup=False,
                          soft_wrap=True)

    report = evaluate(codec, references, oracle=oracle, mos=mos, decoded=folders, on_row=progress)
    for error in report["errors"]:
        err_console.print(f"bsqaudio: skipped {error['error']}", highlight=False, markup=False,
                          soft_wrap=True)
    missing = [(name, row["decoded"][name]["error"]) for row in report["files"]
               for name in row.get("decoded", {}) if "error" in row["decoded"][name]]
    for name, message in missing:
        err_console.print(f"bsqaudio: {name}: {message}", highlight=False, markup=False, soft_wrap=True)
    if not report["files"]:
        fail("none of the inputs could be evaluated")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(eval_table(report, per_file))
    if plot is not None:
        from bsqaudio.plots import plot_eval

        plot_eval(report, plot)
    if report["errors"] or missing:
        raise typer.Exit(1)


def named_folders(folders: list[Path]) -> dict[str, Path]:
    """``--decoded`` folders by the name their column shows: the folder's own name, or its whole
    path where two share a name."""
    for folder in folders:
        if not folder.is_dir():
            fail(f"--decoded {folder}: no such folder")
    names = [f.name or str(f) for f in folders]
    named = {(name if names.count(name) == 1 else str(folder)): folder
             for name, folder in zip(names, folders, strict=True)}
    if len(named) != len(folders):
        fail("--decoded: the same folder is given twice")
    if set(named) & {"bsqaudio", "oracle", "reference"}:
        fail("--decoded: name the folder something other than bsqaudio, oracle or reference")
    return named


EVAL_COLUMNS = (("mel dB", "mel_mae_db", 2), ("MR-STFT", "mrstft", 2), ("STOI", "stoi", 3),
                ("PESQ", "pesq_wb", 2), ("DistillMOS", "distillmos", 2), ("DNSMOS", "dnsmos_ovrl", 2))


def eval_table(report: dict, per_file: bool = False) -> str:
    """The report as plain text within 80 columns: a row per system (means over the files), and
    with ``per_file`` a row per file and system; then what the columns mean."""
    mean = report["mean"]
    with_mos = "distillmos" in mean.get("codec", {})
    columns = [c for c in EVAL_COLUMNS if with_mos or c[1] not in ("distillmos", "dnsmos_ovrl")]

    def systems(r: dict) -> list[tuple[str, dict, str]]:
        rows = [("bsqaudio", r["codec"], f"{r['bitrate_bps']:.0f}")]
        if "oracle" in r:
            rows.append(("oracle", r["oracle"], "-"))
        rows += [(name, m, "-") for name, m in r.get("decoded", {}).items()]
        if "reference" in r:
            rows.append(("reference", r["reference"], "-"))
        return rows

    def line(label: str, files: str, bits: str, m: dict) -> str:
        cells = [f"{label[:16]:<16}", f"{files:>5}", f"{bits:>6}"]
        for title, key, digits in columns:
            value = m.get(key)
            cells.append(f"{'-' if value is None else f'{value:.{digits}f}':>{max(len(title), 6)}}")
        return " ".join(cells)

    header = " ".join([f"{'system':<16}", f"{'files':>5}", f"{'bit/s':>6}"]
                      + [f"{title:>{max(len(title), 6)}}" for title, _, _ in columns])
    out = [f"bsqaudio eval: {len(report['files'])} files, {sum(r['duration_s'] for r in report['files']):.1f} s, "
           f"model {report['model']['name']} ({report['model']['hash']})", header, "-" * len(header)]
    for label, m, bits in systems(mean):
        files = str(m.get("files", "")) if label != "reference" else ""
        out.append(line(label, files, bits, m))
    if per_file:
        for r in report["files"]:
            out += ["", r["name"][-78:]]
            for label, m, bits in systems(r):
                out.append(line("  " + label, "", bits, m) if "error" not in m else f"  {label}: missing")
    out.append("")
    out.append("mel dB: log-mel error, MR-STFT: multi-resolution STFT distance (lower: better).")
    out.append("STOI (0-1), PESQ (1-4.6): against the reference; bit/s: code bits only.")
    if with_mos:
        out.append("DistillMOS, DNSMOS (1-5): predicted naturalness, no reference; speech only.")
    if "oracle" in mean:
        out.append("oracle: the reference's own unquantized mel through the same Griffin-Lim.")
    codes = mean["codes"]
    out.append(f"tokens: {codes['distinct_per_window']:.1%} distinct per window; per-bit balance "
               f"{codes['bit_balance_min']:.2f}-{codes['bit_balance_max']:.2f}")
    out.append(f"({codes['bits_outside_0.4_0.6']} bits outside 0.4-0.6); {codes['copied_bits']} bits nearly "
               "copy another (|r| > 0.9)")
    return "\n".join(out)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A `bsqaudio train` run folder.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model folder (default RUN/export).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Export the EMA weights of a run's latest checkpoint as model.safetensors + config.json."""
    import torch

    from bsqaudio.train.checkpoint import export_checkpoint

    if dtype not in ("float32", "float16", "bfloat16"):
        fail("--dtype must be float32, float16 or bfloat16")
    folder = export_checkpoint(run_dir, output or run_dir / "export", getattr(torch, dtype))
    typer.echo(str(folder))


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
def main(
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
