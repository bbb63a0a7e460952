"""encode, tokens, decode, roundtrip, info: audio and tokens both ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bsqaudio.cli.app import (
    AllowTruncatedOpt,
    BatchOpt,
    DeviceOpt,
    ErrorsOpt,
    ForceOpt,
    FormatOpt,
    FromOpt,
    GlobOpt,
    ModelOpt,
    OutDirOpt,
    QuietOpt,
    RecursiveOpt,
    RevisionOpt,
    ShardOpt,
    SkipOpt,
    ThreadsOpt,
    TokensOpt,
    VerboseOpt,
    WorkersOpt,
    app,
    err_console,
    fail,
    plural,
)
from bsqaudio.cli.common import (
    AUDIO_OUTPUTS,
    batch_jobs,
    batch_progress,
    check_audio_output,
    check_output,
    check_targets,
    check_token_output,
    check_view,
    finish_batch,
    load_codec,
    output_rate,
    prepare_out_dir,
    progress_bar,
    rank_device,
    rank_file,
    write_output,
)
from bsqaudio.io.inputs import Job


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


@app.command(epilog="Examples:\n\n  bsqaudio decode song.bsq -o out.wav\n\n"
                    "  bsqaudio decode song.bsq -o out.flac --rate source\n\n"
                    "  bsqaudio decode tokens/ --out-dir audio/ --audio-format flac\n\n"
                    "  bsqaudio decode generated.npy --tokens groups:9 -o generated.wav")
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
    from bsqaudio.io.audio_files import write_audio_stream

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
    from bsqaudio.dsp.resample import resample_stream
    from bsqaudio.io.audio_files import load_mono, write_audio_stream

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
