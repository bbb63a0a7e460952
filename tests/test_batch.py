"""Dataset-scale tokenization: many inputs, bad files, resume, shards, token exports."""

import json
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

from bsqaudio import load_bsq
from bsqaudio.io import inputs

RATE = 16000


def bsqaudio(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "bsqaudio", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """95 good short clips in nested folders and 5 bad files of the kinds users meet."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(95):
        folder = root / f"part{i % 4}" / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        seconds = 0.2 + 0.1 * (i % 5)
        t = np.arange(int(RATE * seconds)) / RATE
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        sf.write(folder / f"clip{i:03d}.flac", clip.astype(np.float32), RATE)
    good = (root / "part0" / "clip004.flac").read_bytes()
    (root / "part1" / "truncated.wav").write_bytes(b"RIFF" + good[4:40])
    (root / "part1" / "text.wav").write_text("this is not audio\n")
    (root / "part2" / "empty.wav").write_bytes(b"")
    (root / "part2" / "folder.flac").mkdir()
    nan = np.zeros(RATE // 2, dtype=np.float32)
    nan[10] = np.nan
    sf.write(root / "part3" / "nan.wav", nan, RATE, subtype="FLOAT")
    return root


def test_bad_files_are_reported_and_skipped(corpus, tmp_path, tiny_model_dir):
    out, errors = tmp_path / "tokens", tmp_path / "errors.jsonl"
    result = bsqaudio("encode", corpus, "--out-dir", out, "--errors", errors, "--model", tiny_model_dir)
    assert result.returncode == 1
    outputs = sorted(out.rglob("*.bsq"))
    assert len(outputs) == 95
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == [
        "empty.wav", "folder.flac", "nan.wav", "text.wav", "truncated.wav"]
    assert "Traceback" not in result.stderr
    assert "95 done, 0 skipped, 5 failed" in result.stderr
    # Outputs mirror the input tree.
    assert (out / "part0" / "deep" / "clip000.bsq").exists()
    assert not list(out.rglob("*.part"))


def test_npy_tokens_equal_bsq_tokens(corpus, tmp_path, tiny_model_dir):
    subset = tmp_path / "list.txt"
    files = sorted(corpus.rglob("clip00*.flac"))
    subset.write_text("\n".join(map(str, files)) + "\n")
    bsq_dir, npy_dir = tmp_path / "bsq", tmp_path / "npy"
    for fmt, out in (("bsq", bsq_dir), ("npy", npy_dir)):
        result = bsqaudio("encode", "--from", subset, "--out-dir", out, "--format", fmt,
                          "--model", tiny_model_dir)
        assert result.returncode == 0, result.stderr
    npys = sorted(npy_dir.rglob("*.npy"))
    assert len(npys) == len(files)
    for path in npys:
        tokens = np.load(path, allow_pickle=False)
        codes = load_bsq(bsq_dir / path.relative_to(npy_dir).with_suffix(".bsq"))
        assert tokens.dtype == np.int64 and tokens.shape == (codes.gains_db.shape[0], 512)
        np.testing.assert_array_equal(tokens, codes.window_indices().numpy())
        # bsqaudio tokens prints the same indices
        printed = json.loads(bsqaudio("tokens", bsq_dir / path.relative_to(npy_dir).with_suffix(".bsq")).stdout)
        assert printed["tokens"] == codes.indices.reshape(-1).tolist()


def test_jsonl_from_stdin(corpus, tiny_model_dir):
    files = sorted(corpus.rglob("clip01*.flac"))
    result = bsqaudio("encode", "--from", "-", "--format", "jsonl", "--model", tiny_model_dir,
                      input="\n".join(map(str, files)) + "\n")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(f) for f in files]
    assert all(line["bitrate_bps"] == 900 and line["sample_rate"] == RATE for line in lines)


def test_shards_cover_the_inputs_exactly_once(corpus):
    jobs = inputs.gather([str(corpus)])
    shards = [inputs.take_shard(list(reversed(jobs)), k, 3) for k in range(3)]
    sources = [job.source for shard in shards for job in shard]
    assert sorted(sources) == sorted(job.source for job in jobs)
    assert len(set(sources)) == len(sources)
    with pytest.raises(Exception, match="K/N"):
        inputs.parse_shard("3")
    with pytest.raises(Exception, match="between 0 and N-1"):
        inputs.parse_shard("3/3")


def test_killed_run_resumes_with_skip_existing(corpus, tmp_path, tiny_model_dir):
    out = tmp_path / "tokens"
    args = [sys.executable, "-m", "bsqaudio", "encode", str(corpus), "--out-dir", str(out),
            "--model", str(tiny_model_dir)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.rglob("*.bsq"))) < 30:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.bsq")}
    assert 0 < len(first) < 95
    result = subprocess.run(args + ["--skip-existing"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 1  # the 5 bad files still fail
    assert f"{95 - len(first)} done, {len(first)} skipped, 5 failed" in result.stderr
    outputs = list(out.rglob("*.bsq"))
    assert len(outputs) == 95
    for path in outputs:
        load_bsq(path)  # every file complete: its CRC checks
    assert all(first[p] == p.stat().st_mtime_ns for p in first)  # nothing encoded twice
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_decode_many_with_errors(corpus, tmp_path, tiny_model_dir):
    tokens = tmp_path / "tokens"
    files = sorted(corpus.rglob("clip02*.flac"))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    assert bsqaudio("encode", "--from", listing, "--out-dir", tokens, "--model", tiny_model_dir).returncode == 0
    (tokens / "broken.bsq").write_bytes(b"BSQA nonsense")
    audio = tmp_path / "audio"
    result = bsqaudio("decode", tokens, "--out-dir", audio, "--audio-format", "flac", "--model", tiny_model_dir)
    assert result.returncode == 1
    assert "broken.bsq" in result.stderr and "Traceback" not in result.stderr
    decoded = sorted(audio.rglob("*.flac"))
    assert len(decoded) == len(files)
    for path in decoded:
        info = sf.info(path)
        assert info.samplerate == RATE and info.frames > 0


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory):
    """Short clips, a 25 s file (three windows), a bad file and a file that breaks part-way."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    paths = []
    for i, seconds in enumerate((1.0, 25.0, 0.3, 2.5, 0.05)):
        path = root / f"clip{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(int(RATE * seconds))).astype(np.float32), RATE)
        paths.append(path)
    (root / "text.wav").write_text("not audio")
    late_nan = (0.2 * rng.standard_normal(RATE * 30)).astype(np.float32)
    late_nan[RATE * 25] = np.nan  # after the first 20 s block: two windows are already read
    sf.write(root / "late_nan.wav", late_nan, RATE, subtype="FLOAT")
    return [paths[0], root / "text.wav", paths[1], root / "late_nan.wav", *paths[2:]]


@pytest.mark.parametrize("workers", [0, 2])
def test_packed_batches_give_each_file_its_own_codes(mixed_sources, tiny_codec, workers):
    """Windows of several files share model batches; every file still gets exactly the codes a
    one-file encode gives it, and bad files (one failing after some of its windows were batched)
    are reported without disturbing the others."""
    from bsqaudio.pipeline import encode_sources

    results = {index: (codes, reason) for index, codes, reason
               in encode_sources(tiny_codec, mixed_sources, workers=workers)}
    assert sorted(results) == list(range(len(mixed_sources)))
    for index, source in enumerate(mixed_sources):
        codes, reason = results[index]
        if source.stem in ("text", "late_nan"):
            assert codes is None and str(source) in reason
            continue
        assert reason is None
        expected = tiny_codec.encode_file(source)
        assert torch.equal(codes.indices, expected.indices), source.name
        assert torch.equal(codes.gains_db, expected.gains_db)
        assert codes.header == expected.header


def test_cli_workers_match_in_process_reading(corpus, tmp_path, tiny_model_dir):
    files = sorted(corpus.rglob("clip01*.flac"))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)) + "\n")
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.jsonl"
        result = bsqaudio("encode", "--from", listing, "--format", "jsonl", "-o", out, "--workers", workers,
                          "--batch-size", 4, "--model", tiny_model_dir)
        assert result.returncode == 0, result.stderr
    rows = [{r["path"]: r["tokens"] for r in map(json.loads, (tmp_path / f"w{w}.jsonl").read_text().splitlines())}
            for w in (0, 2)]
    assert len(rows[0]) == len(files) and rows[0] == rows[1]


def test_rewriting_an_output_removes_temporaries_of_a_killed_run(tmp_path):
    """SIGKILL cannot be handled, so a killed run may leave `.NAME.<random>.part`; the next
    successful write of NAME removes it (and leaves other files' temporaries alone)."""
    from bsqaudio.io.atomic import temporary_path, write_bytes_atomic

    target, other = tmp_path / "clip.bsq", tmp_path / "clip2.bsq"
    stale, unrelated = temporary_path(target), temporary_path(other)
    stale.write_bytes(b"half")
    unrelated.write_bytes(b"half")
    write_bytes_atomic(target, b"done")
    assert target.read_bytes() == b"done"
    assert not stale.exists() and unrelated.exists()


def test_default_workers_leave_two_cores_to_the_model(monkeypatch):
    from bsqaudio import pipeline

    for cores, expected in ((1, 0), (2, 0), (4, 2), (64, 8)):
        monkeypatch.setattr(pipeline.os, "cpu_count", lambda cores=cores: cores)
        assert pipeline.default_workers() == expected
