"""Outputs are never replaced when they must not be: devices and FIFOs are written through, other
special files refused, concurrent writers keep each other's temporaries, long names work or are
refused before any work. Device files are made here with mknod; the machine's /dev is never used."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
import soundfile as sf
from cli_inprocess import run_in_process
from conftest import write_wav

from bsqaudio.io.atomic import _claim, name_limit, temporary_path, write_bytes_atomic


def null_device(folder: Path) -> Path:
    """A character device with /dev/null's numbers (1, 3), made in ``folder``."""
    path = folder / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    return path


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_wav(tmp_path / "clip.wav", 1.5)


@pytest.mark.parametrize("force", [False, True])
def test_encode_and_decode_write_through_a_character_device(tmp_path, clip, tiny_model_dir, force):
    device = null_device(tmp_path)
    extra = ["--force"] if force else []
    result = run_in_process("encode", clip, "-o", device, "--model", tiny_model_dir, *extra)
    assert result.exit == 0, result.stderr
    run_in_process("encode", clip, "-o", tmp_path / "clip.bsq", "--model", tiny_model_dir)
    result = run_in_process("decode", tmp_path / "clip.bsq", "-o", device, "--model", tiny_model_dir, *extra)
    assert result.exit == 0, result.stderr
    assert stat.S_ISCHR(os.stat(device).st_mode)  # still the device, not a regular file renamed over it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.bsq", "clip.wav", "null"]


def test_decode_streams_into_a_fifo(tmp_path, clip, tiny_model_dir):
    run_in_process("encode", clip, "-o", tmp_path / "clip.bsq", "--model", tiny_model_dir)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run_in_process("decode", tmp_path / "clip.bsq", "-o", fifo, "--model", tiny_model_dir)
    reader.join(timeout=60)
    assert result.exit == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    wave, rate = sf.read(__import__("io").BytesIO(received[0]))
    assert rate == 16000 and abs(len(wave) - 1.5 * rate) < 200


def test_a_socket_is_refused_with_one_line(tmp_path, clip, tiny_model_dir):
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        result = run_in_process("encode", clip, "-o", path, "--model", tiny_model_dir, "--force")
    finally:
        server.close()
    assert result.exit == 1
    assert result.stderr.strip().endswith("is a socket, not a regular file; refusing to write to it")
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_a_live_writers_temporary_survives_another_write(tmp_path):
    """Two runs writing the same name: the second's clean-up must not delete the first's work in
    progress; once its writer is gone (lock released, as at SIGKILL), a later write removes it."""
    target = tmp_path / "x.bsq"
    live, fd = _claim(target, [])
    write_bytes_atomic(target, b"second")
    assert live.exists() and target.read_bytes() == b"second"
    os.close(fd)  # the first writer dies without cleaning up
    write_bytes_atomic(target, b"third")
    assert not live.exists()


def test_long_output_names_work_and_impossible_ones_are_refused(tmp_path, clip, tiny_model_dir):
    limit = name_limit(tmp_path)
    longest = tmp_path / ("n" * (limit - 4) + ".bsq")
    assert len(temporary_path(longest).name.encode()) <= limit
    result = run_in_process("encode", clip, "-o", longest, "--model", tiny_model_dir)
    assert result.exit == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    too_long = tmp_path / ("n" * limit + ".bsq")
    result = run_in_process("encode", clip, "-o", too_long, "--model", tiny_model_dir)
    assert result.exit == 1 and "file name too long" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_signal_while_the_temporary_is_made_leaves_nothing_behind(tmp_path, monkeypatch):
    """A SIGTERM landing right after the temporary's creation, before the writer's try block, left
    an orphan .part (seen once in an interrupted batch); the name is now known before the file."""
    import os
    import signal

    from bsqaudio.io import atomic

    class Stop(BaseException):
        pass

    def raise_stop(signum, frame):
        raise Stop

    real_claim = atomic._claim

    def claim_then_signal(path, names):
        claimed = real_claim(path, names)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the caller holds the name
        return claimed

    previous = signal.signal(signal.SIGTERM, raise_stop)
    monkeypatch.setattr(atomic, "_claim", claim_then_signal)
    try:
        with pytest.raises(Stop):
            with atomic.atomic_path(tmp_path / "out.wav") as tmp:
                tmp.write_bytes(b"never finished")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []
