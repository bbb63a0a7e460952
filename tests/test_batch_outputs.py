"""Batch runs lose nothing: no two inputs to one output, each input once, no overwrite without
--force, resumable jsonl that never counts a cut line, one output file per torchrun rank."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from cli_inprocess import run_in_process
from conftest import make_signal, write_wav

from bsqaudio.batch import JsonlSink, complete_records
from bsqaudio.io.atomic import temporary_path


def encode(*args, model):
    return run_in_process("encode", *args, "--model", model, "--workers", "0")


def test_two_inputs_that_would_share_an_output_are_refused_before_work(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    write_wav(folder / "song.wav", 1.0)
    sf.write(folder / "song.flac", make_signal(1.0), 16000)
    result = encode(folder, "--out-dir", tmp_path / "out", model=tiny_model_dir)
    assert result.exit == 1
    assert "song.flac and" in result.stderr and "song.wav" in result.stderr and "out/song.bsq" in result.stderr
    assert not (tmp_path / "out" / "song.bsq").exists()


def test_listed_absolute_paths_mirror_their_tree_and_duplicates_run_once(tmp_path, tiny_model_dir):
    for part in ("p1", "p2"):
        (tmp_path / part).mkdir()
        write_wav(tmp_path / part / "x.wav", 1.0, seed=len(part))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'p1/x.wav'}\n{tmp_path / 'p2/x.wav'}\n{tmp_path / 'p1/x.wav'}\n")
    result = encode("--from", listing, "--out-dir", tmp_path / "out", model=tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert "p1/x.wav: listed 2 times; done once" in result.stderr
    assert "2 done, 0 skipped, 0 failed" in result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.bsq")) == [
        "p1/x.bsq", "p2/x.bsq"]


def test_batch_rerun_needs_force_or_skip_existing(tmp_path, tiny_model_dir):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(2):
        write_wav(folder / f"c{i}.wav", 1.0, seed=i)
    assert encode(folder, "--out-dir", out, model=tiny_model_dir).exit == 0
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    result = encode(folder, "--out-dir", out, model=tiny_model_dir)
    assert result.exit == 1
    assert f"{out / 'c0.bsq'}: already exists (use --force to overwrite, or --skip-existing" in result.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "0 done, 2 skipped" in encode(folder, "--out-dir", out, "--skip-existing", model=tiny_model_dir).stderr
    assert "2 done" in encode(folder, "--out-dir", out, "--force", model=tiny_model_dir).stderr
    decoded = run_in_process("decode", out, "--out-dir", tmp_path / "wav", "--model", tiny_model_dir)
    assert decoded.exit == 0
    again = run_in_process("decode", out, "--out-dir", tmp_path / "wav", "--model", tiny_model_dir)
    assert again.exit == 1 and "already exists" in again.stderr


def test_jsonl_resumes_from_the_output_and_a_killed_runs_temporary(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [write_wav(folder / f"c{i}.wav", 1.0, seed=i) for i in range(4)]
    full = tmp_path / "full.jsonl"
    assert encode(folder, "--format", "jsonl", "-o", full, model=tiny_model_dir).exit == 0
    lines = full.read_text().splitlines(keepends=True)
    by_path = {json.loads(line)["path"]: line for line in lines}
    out = tmp_path / "tokens.jsonl"
    out.write_text(by_path[str(paths[0])] + by_path[str(paths[1])][:40])  # a line cut by a crash
    temporary_path(out).write_text(by_path[str(paths[2])])  # what a SIGKILLed run had written
    result = encode(folder, "--format", "jsonl", "-o", out, "--skip-existing", model=tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert "2 done, 2 skipped, 0 failed" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(map(str, paths))
    assert {r["path"]: r["tokens"] for r in records} == {p: json.loads(line)["tokens"] for p, line in by_path.items()}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


class FullDisk(io.BytesIO):
    """Accepts ``room`` bytes, then writes part of a buffer and fails, as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        if self.tell() + len(data) <= self.room:
            return super().write(data)
        super().write(bytes(data[: max(0, self.room - self.tell())]))
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_record_cut_by_a_full_disk_is_removed_and_not_counted():
    handle = FullDisk(room=60)
    sink = JsonlSink(handle, seekable=True)
    sink.write({"path": "a", "tokens": [1, 2, 3]})
    with pytest.raises(OSError):
        sink.write({"path": "b", "tokens": list(range(50))})
    assert handle.getvalue() == b'{"path": "a", "tokens": [1, 2, 3]}\n'


def test_complete_records_stop_at_a_cut_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"path": "a"}\n{"path": "b"}\n{"path": "c"')
    assert [p for _, p in complete_records(path)] == ["a", "b"]


def test_torchrun_ranks_write_their_own_jsonl_and_errors(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [write_wav(folder / f"c{i}.wav", 1.0, seed=i) for i in range(5)]
    (folder / "bad.wav").write_bytes(b"RIFF not audio at all")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "bsqaudio", "encode", str(folder), "--format", "jsonl", "-o", str(tmp_path / "all.jsonl"),
               "--errors", str(tmp_path / "errs.jsonl"), "--model", str(tiny_model_dir), "--device", "cpu",
               "--workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "ChildFailedError" not in result.stderr
    assert "all 2 ranks: 5 done, 0 skipped, 1 failed" in result.stderr
    records = [json.loads(line) for rank in (0, 1)
               for line in (tmp_path / f"all.rank{rank}.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(map(str, paths))
    errors = [json.loads(line) for rank in (0, 1)
              for line in (tmp_path / f"errs.rank{rank}.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["bad.wav"]
    assert not (tmp_path / "all.jsonl").exists()
