"""The ``bsqaudio`` command, run as a user runs it: the installed entry point in a subprocess."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from conftest import HAS_EMBEDDED_MODEL, write_wav

from bsqaudio import read_bsq

BSQAUDIO = shutil.which("bsqaudio")
pytestmark = pytest.mark.skipif(BSQAUDIO is None, reason="bsqaudio entry point not installed")


def run_cli(*args, stdin: bytes | None = None, module: bool = False, cwd=None):
    """Run ``bsqaudio ARGS`` (or ``python -m bsqaudio ARGS``); bytes in, bytes out."""
    command = [sys.executable, "-m", "bsqaudio"] if module else [BSQAUDIO]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command + [str(a) for a in args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=120)


def assert_user_error(result, *fragments: str) -> str:
    """Exit code != 0, one line on stderr starting 'bsqaudio: error:', no traceback."""
    stderr = result.stderr.decode()
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bsqaudio: error:"), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    assert result.stdout == b""
    return lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    """A stereo 44.1 kHz wav and its .bsq, encoded once by the CLI."""
    folder = tmp_path_factory.mktemp("cli")
    wav = write_wav(folder / "stereo.wav", 1.3, rate=44100, channels=2, subtype="PCM_16")
    bsq = folder / "stereo.bsq"
    result = run_cli("encode", wav, "-o", bsq, "--model", tiny_model_dir)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    return {"wav": wav, "bsq": bsq, "folder": folder}


# -- help ---------------------------------------------------------------------------------------

def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for command in ("encode", "decode", "roundtrip", "info", "train"):
        assert command in text


def test_python_dash_m_is_the_same_command():
    result = run_cli("--version", module=True)
    assert result.returncode == 0, result.stderr.decode()
    import bsqaudio

    assert result.stdout.decode().startswith(f"bsqaudio {bsqaudio.__version__}; embedded model ")


# -- the happy paths ----------------------------------------------------------------------------

def test_encode_writes_a_valid_bsq(workdir, tiny_model_dir):
    codes = read_bsq(workdir["bsq"].read_bytes())
    assert codes.header["model"] == "bsqaudio-tiny"
    assert codes.header["source_sample_rate"] == 44100
    assert codes.header["source_channels"] == 2
    assert codes.header["code_bits"] == 18
    assert abs(codes.num_samples - 1.3 * 16000) <= 1
    assert not list(workdir["folder"].glob("*.part")) and not list(workdir["folder"].glob(".*"))


def test_outputs_get_normal_permissions(workdir):
    """Outputs are written to a temporary file and renamed; they must not keep mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    assert workdir["bsq"].stat().st_mode & 0o777 == 0o666 & ~umask


def test_info_json(workdir):
    result = run_cli("info", workdir["bsq"], "--json", module=True)
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)
    assert info["bitrate_bps"] == 900.0
    assert info["windows"] == 1
    assert info["code_bits"] == 18
    assert info["duration_s"] == pytest.approx(1.3, abs=1e-3)
    assert info["tokens"] == 9 * 8  # 130 frames -> 9 rows of 8 patches
    assert info["model"] == "bsqaudio-tiny" and len(info["model_hash"]) == 16
    assert info["source_sample_rate"] == 44100 and info["source_channels"] == 2


def test_info_text(workdir):
    result = run_cli("info", workdir["bsq"])
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert "bitrate_bps" in text and "900.0" in text and "bsqaudio-tiny" in text


def test_decode_to_wav(workdir, tiny_model_dir, tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("decode", workdir["bsq"], "-o", out, "--model", tiny_model_dir)
    assert result.returncode == 0, result.stderr.decode()
    data, rate = sf.read(out)
    assert rate == 16000
    assert data.ndim == 1 and abs(len(data) - 1.3 * 16000) <= 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_encode_stdin_to_stdout_matches_file(workdir, tiny_model_dir):
    result = run_cli("encode", "-", "-o", "-", "--model", tiny_model_dir,
                     stdin=workdir["wav"].read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout[:4] == b"BSQA"
    assert result.stdout == workdir["bsq"].read_bytes()


def test_decode_stdin_to_stdout_wav_at_source_rate(workdir, tiny_model_dir):
    result = run_cli("decode", "-", "-o", "-", "--rate", "source", "--model", tiny_model_dir,
                     stdin=workdir["bsq"].read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout[:4] == b"RIFF"
    data, rate = sf.read(io.BytesIO(result.stdout))
    assert rate == 44100
    assert abs(len(data) - 1.3 * 44100) <= 441


def test_roundtrip_with_plot(tmp_path, tiny_model_dir):
    wav = write_wav(tmp_path / "in.wav", 1.0)
    out, plot = tmp_path / "out.wav", tmp_path / "compare.png"
    result = run_cli("roundtrip", wav, "-o", out, "--plot", plot, "--model", tiny_model_dir)
    assert result.returncode == 0, result.stderr.decode()
    data, rate = sf.read(out)
    assert rate == 16000 and len(data) == 16000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "900 bit/s" in result.stderr.decode()
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


# -- refusing to overwrite ----------------------------------------------------------------------

def test_refuses_to_overwrite_without_force(workdir, tiny_model_dir, tmp_path):
    out = tmp_path / "existing.bsq"
    out.write_bytes(b"precious")
    result = run_cli("encode", workdir["wav"], "-o", out, "--model", tiny_model_dir)
    assert result.returncode == 1
    assert_user_error(result, "already exists", "--force")
    assert out.read_bytes() == b"precious"

    result = run_cli("encode", workdir["wav"], "-o", out, "--model", tiny_model_dir, "--force")
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == workdir["bsq"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.bsq"]


# -- user errors --------------------------------------------------------------------------------

def _error_case(name, tmp_path, workdir, tiny_model_dir, other_model_dir):
    """-> (args, expected fragments of the message, output path that must not appear)."""
    out = tmp_path / "out"
    out.mkdir()
    model = ["--model", tiny_model_dir]
    cases = {
        "wav as .bsq": (["decode", workdir["wav"], "-o", out / "x.wav", *model],
                        ["not a .bsq file"], out / "x.wav"),
        "info of a wav": (["info", workdir["wav"]], ["not a .bsq file"], None),
        "output folder missing": (["encode", workdir["wav"], "-o", out / "nope" / "x.bsq", *model],
                                  ["output folder does not exist"], out / "nope"),
        "other model": (["decode", workdir["bsq"], "-o", out / "x.wav", "--model",
                         other_model_dir], ["model", "--model"], out / "x.wav"),
        "bad rate": (["decode", workdir["bsq"], "-o", out / "x.wav", "--rate", "fast", *model],
                     ["--rate"], out / "x.wav"),
        "model not found offline": (["encode", workdir["wav"], "-o", out / "x.bsq", "--model",
                                     "nobody/nothing"], ["nobody/nothing", "cache"],
                                    out / "x.bsq"),
        "no default model": (["encode", workdir["wav"], "-o", out / "x.bsq"], ["--model"],
                             out / "x.bsq"),
    }
    return (*cases[name], out)


# Bad audio inputs and outputs that cannot be written (missing, empty, not audio, NaN, a folder,
# no permission, a full disk...) are the table in test_bad_audio.py.
@pytest.mark.parametrize("case", [
    "wav as .bsq", "info of a wav", "output folder missing",
    "other model", "bad rate", "model not found offline",
    pytest.param("no default model", marks=pytest.mark.skipif(
        HAS_EMBEDDED_MODEL, reason="an embedded default model is installed")),
])
def test_user_errors(case, tmp_path, workdir, tiny_model_dir, other_model_dir):
    args, fragments, output, out_folder = _error_case(case, tmp_path, workdir, tiny_model_dir,
                                                      other_model_dir)
    result = run_cli(*args)
    assert_user_error(result, *fragments)
    assert result.returncode == 1
    if output is not None:
        assert not output.exists()
    assert list(out_folder.iterdir()) == []  # no output and no leftover .part file


# -- the plot's input panel (in-process, to see what is plotted) ---------------------------------

def test_roundtrip_plot_shows_the_input_and_the_audio_written(tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    import bsqaudio.plots
    from bsqaudio.cli import app
    from bsqaudio.io.audio_files import load_mono

    seen = {}

    def fake_plot(frontend, source, decoded, path, title):
        seen.update(source=source, decoded=decoded, title=title)

    monkeypatch.setattr(bsqaudio.plots, "plot_roundtrip", fake_plot)
    wav = write_wav(tmp_path / "in.wav", 1.0, seed=4)
    result = CliRunner().invoke(app, ["roundtrip", str(wav), "-o", str(tmp_path / "out.wav"),
                                      "--plot", str(tmp_path / "p.png"), "--model",
                                      str(tiny_model_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    expected, _, _ = load_mono(wav, 16000)
    torch.testing.assert_close(seen["source"], expected)
    written, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    torch.testing.assert_close(seen["decoded"], torch.from_numpy(written), atol=1 / 32768, rtol=0)
    assert "in.wav" in seen["title"] and "bit/s" in seen["title"]