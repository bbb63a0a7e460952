"""eval: round-trip reference files and score other codecs' outputs beside them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bsqaudio.cli.app import DeviceOpt, ModelOpt, RevisionOpt, ThreadsOpt, app, err_console, fail
from bsqaudio.cli.common import load_codec


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
