"""A batch run shows life: periodic one-line records without a terminal, a line per file with -v,
nothing but failures and the summary with -q."""

from __future__ import annotations

import io
from pathlib import Path

from cli_inprocess import run_in_process
from conftest import write_wav
from rich.console import Console

from bsqaudio.batch_progress import BatchProgress
from bsqaudio.io.inputs import Job


def test_records_without_a_terminal_count_files_audio_and_failures(tmp_path):
    files = [write_wav(tmp_path / f"c{i}.wav", 0.5, seed=i) for i in range(3)]
    out = io.StringIO()
    with BatchProgress(Console(file=out, width=200), files, every_s=0.0, prefix="[rank 1] ") as progress:
        progress("done", Job(files[0], Path("c0.wav")), "c0.bsq", seconds=0.5)
        progress("failed", Job(files[1], Path("c1.wav")), "c1.wav: not audio")
        progress("skipped", Job(files[2], Path("c2.wav")), "c2.bsq")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[rank 1] progress: 1/3 files, 0 s audio")
    assert "[rank 1] bsqaudio: failed c1.wav: not audio" in lines
    assert lines[-1].startswith("[rank 1] progress: 3/3 files") and "1 failed" in lines[-1]


def test_verbose_lists_each_file_and_quiet_only_the_summary(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_wav(folder / f"c{i}.wav", 0.5, seed=i)
    verbose = run_in_process("encode", folder, "--out-dir", tmp_path / "a", "-v", "--model", tiny_model_dir)
    assert verbose.exit == 0
    assert sum(line.startswith("done ") for line in verbose.stderr.splitlines()) == 2
    quiet = run_in_process("encode", folder, "--out-dir", tmp_path / "b", "-q", "--model", tiny_model_dir)
    assert quiet.exit == 0
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip().splitlines()[-1]]
    assert "2 done, 0 skipped, 0 failed" in quiet.stderr
