"""The Typer app, the options the commands share, and the one-line error helper."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bsqaudio.errors import BsqAudioError

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


def fail(message: str) -> None:
    raise BsqAudioError(message)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
