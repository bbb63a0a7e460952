"""Interruptions (issue 7, section 3): SIGINT and SIGTERM during ``encode`` and ``decode``.

A run that is stopped exits 130 (SIGINT) or 143 (SIGTERM) with one line on stderr and no traceback;
every output it finished is complete and valid, nothing half-written or temporary is left, and the
same command with ``--skip-existing`` does the rest. The signal goes either to the process alone
(``kill PID``) or to its whole process group, reader processes included, as Ctrl-C in a terminal
or a scheduler stopping a job sends it. Training stopped by a signal is tested in test_train.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_signal
from test_bad_audio import REPO, run_in_process

from bsqaudio import load_bsq, write_bsq

RATE = 16000
FILES = 10
SECONDS = 1.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(FILES):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        sf.write(folder / f"clip{i:02d}.wav", make_signal(SECONDS, seed=i), RATE, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def tokens(corpus, tiny_codec, tmp_path_factory) -> Path:
    """The corpus encoded in this process: what the CLI must produce, and what decode reads."""
    root = tmp_path_factory.mktemp("tokens")
    for wav in corpus.rglob("*.wav"):
        target = root / wav.relative_to(corpus).with_suffix(".bsq")
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(write_bsq(tiny_codec.encode_file(wav)))
    return root


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "bsqaudio", *map(str, args)]


def interrupt_when(args: list[str], ready, sig: int, group: bool) -> tuple[int, str]:
    """Start ``args``; once ``ready()`` is true, send ``sig`` (to the process group if ``group``);
    -> (exit code, stderr)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=cli_env(), start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ready() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, f"finished before the signal: {process.stderr.read().decode()}"
        (os.killpg if group else os.kill)(process.pid, sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, stderr.decode()


def assert_interrupted(code: int, stderr: str, sig: int) -> None:
    assert code == 128 + sig, (code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"bsqaudio: interrupted by {signal.Signals(sig).name}; finished outputs are "
                     "complete, unfinished ones were removed"], stderr


def leftovers(folder: Path) -> list[Path]:
    """Temporary or hidden files: what an interrupted write would leave."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]


@pytest.mark.parametrize("direction, sig, group", [
    ("encode", signal.SIGINT, True),
    ("encode", signal.SIGTERM, False),
    ("decode", signal.SIGTERM, True),
    ("decode", signal.SIGINT, False),
], ids=["encode-SIGINT-group", "encode-SIGTERM", "decode-SIGTERM-group", "decode-SIGINT"])
def test_interrupted_batch_keeps_finished_outputs_and_resumes(direction, sig, group, corpus, tokens,
                                                               tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    suffix = ".bsq" if direction == "encode" else ".wav"
    source = corpus if direction == "encode" else tokens
    args = command(direction, source, "--out-dir", out, "--model", tiny_model_dir, "--device", "cpu",
                   "--batch-size", "1")
    code, stderr = interrupt_when(args, lambda: any(out.rglob(f"*{suffix}")), sig, group)
    assert_interrupted(code, stderr, sig)
    assert not leftovers(out)
    finished = {p: p.stat().st_mtime_ns for p in out.rglob(f"*{suffix}")}
    assert 0 < len(finished) < FILES

    # What was finished is complete and right.
    for path in finished:
        relative = path.relative_to(out)
        if direction == "encode":
            expected = load_bsq(tokens / relative)
            codes = load_bsq(path)  # its CRC checks
            assert torch.equal(codes.indices, expected.indices) and codes.header == expected.header
        else:
            info = sf.info(path)
            assert info.samplerate == RATE and info.frames == int(SECONDS * RATE)
    if direction == "encode":
        first = next(iter(finished))
        result = run_in_process("info", first, "--json")
        assert result.exit == 0 and '"windows": 1' in result.stdout, result

    # The same command with --skip-existing does the rest, and only the rest.
    rerun = subprocess.run(args + ["--skip-existing"], capture_output=True, text=True, env=cli_env(),
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{FILES - len(finished)} done, {len(finished)} skipped, 0 failed" in rerun.stderr
    assert len(list(out.rglob(f"*{suffix}"))) == FILES
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())
    assert not leftovers(out)


def test_interrupted_decode_removes_the_file_being_written(tiny_codec, tiny_model_dir, tmp_path):
    """A long decode streams into a temporary file; SIGTERM half-way removes it."""
    bsq = tmp_path / "long.bsq"
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 120 * RATE).astype(np.float32))
    bsq.write_bytes(write_bsq(tiny_codec.encode(noise, RATE)))
    out = tmp_path / "out"
    out.mkdir()
    args = command("decode", bsq, "-o", out / "long.wav", "--model", tiny_model_dir, "--device", "cpu")
    code, stderr = interrupt_when(args, lambda: any(out.glob(".long.wav.*.part")), signal.SIGTERM,
                                  group=False)
    assert_interrupted(code, stderr, signal.SIGTERM)
    assert list(out.iterdir()) == []


def test_jsonl_output_is_written_whole_or_not_at_all(corpus, tiny_model_dir, tmp_path, monkeypatch):
    """``encode --format jsonl -o FILE`` writes under a temporary name: an interrupt after some
    lines leaves no file (in this process: the interrupt is raised at the fourth line)."""
    from bsqaudio import batch, cli

    out = tmp_path / "tokens.jsonl"
    args = ["encode", corpus / "a", "--format", "jsonl", "-o", out, "--model", tiny_model_dir,
            "--device", "cpu", "--workers", "0"]
    real = batch.encode_many

    class Interrupting:
        """The run's jsonl sink, interrupted as it writes its fourth record."""

        def __init__(self, sink):
            self.sink, self.lines = sink, 0

        def write(self, record):
            self.lines += 1
            if self.lines == 4:
                raise cli.Interrupted(signal.SIGINT)
            self.sink.write(record)

    def encode_many(codec, jobs, fmt, out_dir, jsonl, *rest):
        sink, recorded = jsonl
        return real(codec, jobs, fmt, out_dir, (Interrupting(sink), recorded), *rest)

    with monkeypatch.context() as patch:
        patch.setattr(batch, "encode_many", encode_many)
        result = run_in_process(*args)
    assert result.exit == 130 and "interrupted by SIGINT" in result.stderr, result
    assert list(tmp_path.iterdir()) == []

    result = run_in_process(*args)
    assert result.exit == 0, result
    assert len(out.read_text().splitlines()) == FILES // 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.jsonl"]
    refused = run_in_process(*args)  # an existing output needs --force, as for one file
    assert refused.exit == 1 and "already exists" in refused.stderr
