"""--threads: the CPU threads the model and Griffin-Lim use, and nothing else about the output."""

from __future__ import annotations

import pytest
import torch
from cli_inprocess import run_in_process

from bsqaudio.cli.common import use_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_codes_do_not_depend_on_the_thread_count(tmp_path, wav_writer, tiny_model_dir, restore_threads):
    clip = wav_writer("in.wav", 3.0)
    written = {}
    for threads in (1, 2):
        target = tmp_path / f"t{threads}.bsq"
        result = run_in_process("encode", clip, "-o", target, "--model", tiny_model_dir,
                                "--device", "cpu", "--threads", threads, "-q")
        assert result.exit == 0, result.stderr
        assert torch.get_num_threads() == threads  # the option did reach torch
        written[threads] = target.read_bytes()
    assert written[1] == written[2]
    result = run_in_process("decode", tmp_path / "t1.bsq", "-o", tmp_path / "d.wav", "--model",
                            tiny_model_dir, "--device", "cpu", "--threads", "1", "-q")
    assert result.exit == 0 and (tmp_path / "d.wav").stat().st_size > 0, result.stderr


def test_default_leaves_a_core_to_each_reader(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(4)
    use_threads(None, workers=0)
    assert torch.get_num_threads() == 4
    use_threads(None, workers=3)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    use_threads(None, workers=5)
    assert torch.get_num_threads() == 1  # never zero
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting (torch took it) wins
    torch.set_num_threads(2)
    use_threads(None, workers=1)
    assert torch.get_num_threads() == 2


def test_zero_threads_is_refused():
    result = run_in_process("decode", "x.bsq", "-o", "y.wav", "--threads", "0")
    assert result.exit == 2 and "--threads" in result.stderr
