"""Bad audio (issue 7, section 2): every kind of input a user can hand ``bsqaudio`` has a defined
outcome, in one table. A row either expects a one-line ``bsqaudio: error:`` naming the file and
the reason, a non-zero exit and nothing left in the output folder, or a correct result, checked
for what matters (duration, rates, channels, tokens, the decoded length).

Rows run the console-script entry point ``bsqaudio.cli.run`` in this process (a subprocess costs
~2 s of start-up each on two cores) with file descriptors 1 and 2 caught and warnings shown as a
fresh interpreter shows them, so a traceback or a stray warning line fails the row just as it
would show in a terminal. Rows that need a process of their own (a file-size limit standing in for
a full disk) run ``python -m bsqaudio`` in a subprocess.

Elsewhere: bad files inside a batch (reported, recorded with --errors and skipped) are in
test_batch.py::test_bad_files_are_reported_and_skipped; very short audio through the Python API in
test_streaming.py::test_very_short_audio_round_trips; bad .bsq files in test_fuzz_bsq.py.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_inprocess import Result, run_in_process
from conftest import make_signal

import bsqaudio
from bsqaudio import AudioBSQ, ModelConfig, load_bsq
from bsqaudio.io import audio_files

RATE = 16000
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPO = Path(bsqaudio.__file__).resolve().parents[1]
not_as_root = pytest.mark.skipif(ROOT, reason="root ignores file permissions")


# -- running the command ----------------------------------------------------------------------------

def file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as on a full disk (SIGXFSZ, which
    would kill the process instead, ignored as a shell's ``trap '' XFSZ; ulimit -f`` does)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def run_subprocess(*args, limit: int | None = None) -> Result:
    args = [str(a) for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "bsqaudio", *args], capture_output=True, env=env,
                          timeout=300, preexec_fn=file_size_limit(limit) if limit else None)
    return Result(args, done.returncode, done.stdout.decode(), done.stderr.decode())


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsqaudio: error: "), result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == "", result
    return lines[0]


def assert_ok(result: Result) -> None:
    assert result.exit == 0, result
    assert result.stderr == "" and result.stdout == "", result


# -- models -----------------------------------------------------------------------------------------

# A model far smaller than ``tiny``, with a 2 kHz front-end: a 2-hour file goes through the real
# reader, window cutter, model and writer in a few seconds. Windows are still 10.24 s.
MICRO = ModelConfig(sample_rate=2000, n_fft=64, win_length=50, hop_length=20, n_mels=16,
                    width=8, heads=1, encoder_layers=1, decoder_layers=1, mlp_ratio=1.0, conv=False,
                    refine_channels=0, code_bits=8, name="bsqaudio-micro")


@pytest.fixture(scope="module")
def micro_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("micro_model")
    torch.manual_seed(0)
    bsqaudio.save_pretrained(AudioBSQ(MICRO), folder)
    return folder


# -- the table --------------------------------------------------------------------------------------

@dataclass
class Ctx:
    """What a row's functions get: its folders, the models, and the commands."""
    inputs: Path
    out: Path
    model: Path
    micro: Path
    codec: bsqaudio.Codec  # the tiny model in this process, for reference codes
    monkeypatch: pytest.MonkeyPatch

    def encode(self, source: Path, output: Path | None = None, *extra) -> Result:
        return run_in_process("encode", source, "-o", output or self.out / "out.bsq", "--model",
                              self.model, "--device", "cpu", *extra)

    def decode(self, source: Path, output: Path, *extra) -> Result:
        return run_in_process("decode", source, "-o", output, "--model", self.model, "--device",
                              "cpu", *extra)


def wav(path: Path, data: np.ndarray, rate: int = RATE, subtype: str = "FLOAT", **kwargs) -> Path:
    sf.write(path, data, rate, subtype=subtype, **kwargs)
    return path


def signal_2s(rate: int = RATE, channels: int = 1) -> np.ndarray:
    return make_signal(2.0, rate, channels)


def decoded(ctx: Ctx, bsq: Path, *extra) -> tuple[np.ndarray, int]:
    """Decode through the CLI; -> (samples, rate) of the written file."""
    target = ctx.out / "decoded.wav"
    assert_ok(ctx.decode(bsq, target, *extra))
    data, rate = sf.read(target, dtype="float32")
    target.unlink()
    return data, rate


@dataclass
class Case:
    make: Callable[[Ctx], Path]  # writes the input, returns its path
    error: tuple[str, ...] = ()  # a user error: fragments of the one line, besides the file's name
    check: Callable[[Ctx, Path], None] | None = None  # a success: checks on out/out.bsq
    run: Callable[[Ctx, Path], Result] | None = None  # default: encode INPUT -o out/out.bsq
    names: Callable[[Ctx, Path], str] | None = None  # what the error must name (default: input)
    outputs: tuple[str, ...] = ("out.bsq",)  # what a success leaves in the output folder
    setup: tuple[str, ...] = ()  # what the row itself put there (kept after an error)
    marks: tuple = ()


# Failures ----------------------------------------------------------------------------------------

def make_empty(ctx):
    path = ctx.inputs / "empty.wav"
    path.write_bytes(b"")
    return path


def make_zero_frames(ctx):
    return wav(ctx.inputs / "zero.wav", np.zeros((0, 1), np.float32))


def make_with(value: float):
    def make(ctx):
        data = signal_2s()
        data[RATE // 3] = value
        return wav(ctx.inputs / f"{value}.wav", data)
    return make


def make_text(ctx):
    path = ctx.inputs / "notes.wav"
    path.write_text("this is not audio\n")
    return path


def make_random(ctx):
    path = ctx.inputs / "noise.flac"
    path.write_bytes(np.random.default_rng(0).bytes(20000))
    return path


def make_folder(ctx):
    path = ctx.inputs / "takes.wav"  # a folder named like an audio file
    path.mkdir()
    wav(path / "a.wav", signal_2s())
    return path


def make_missing(ctx):
    return ctx.inputs / "missing.wav"


def make_unreadable(ctx):
    path = wav(ctx.inputs / "locked.wav", signal_2s())
    path.chmod(0)
    return path


def encode_into_locked_folder(ctx, source):
    ctx.out.chmod(0o555)
    return ctx.encode(source)


def encode_under_a_file(ctx, source):
    (ctx.out / "notes.txt").write_text("a file, not a folder\n")
    return ctx.encode(source, ctx.out / "notes.txt" / "out.bsq")


def encode_to_full_disk(ctx, source):
    return run_subprocess("encode", source, "-o", ctx.out / "out.bsq", "--model", ctx.model,
                          "--device", "cpu", limit=300)


def decode_to_full_disk(ctx, source):
    bsq = ctx.inputs / "in.bsq"
    bsq.write_bytes(bsqaudio.write_bsq(ctx.codec.encode_file(source)))
    return run_subprocess("decode", bsq, "-o", ctx.out / "out.wav", "--model", ctx.model,
                          "--device", "cpu", limit=4000)


def batch_encode_under_a_file(ctx, source):
    (ctx.out / "tokens").write_text("a file, not a folder\n")
    return run_in_process("encode", source, ctx.inputs, "--out-dir", ctx.out / "tokens" / "sub",
                          "--model", ctx.model, "--device", "cpu", "--workers", "0")


def make_good(ctx):
    return wav(ctx.inputs / "speech.wav", signal_2s())


def make_fifo(ctx):
    path = ctx.inputs / "stream.wav"
    os.mkfifo(path)
    return path


def make_char_device(ctx):
    """A node like /dev/zero (1, 5), made in the test's folder (never the machine's /dev)."""
    path = ctx.inputs / "zero.wav"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except (OSError, AttributeError) as err:
        pytest.skip(f"cannot create a device node here ({err})")
    return path


def make_float64_huge(ctx):
    data = signal_2s().astype(np.float64)
    data[RATE // 3] = 1e300  # finite, but infinite once in float32
    return wav(ctx.inputs / "huge64.wav", data, subtype="DOUBLE")


def make_half_of(suffix: str, fmt: str, subtype: str):
    def make(ctx):
        path = wav(ctx.inputs / f"cut.{suffix}", make_signal(4.0, RATE), format=fmt, subtype=subtype)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return make


def make_wav_claiming_twice(ctx):
    path = wav(ctx.inputs / "long.wav", signal_2s(), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at: at + 4] = (8 * RATE).to_bytes(4, "little")  # 4 s of 16-bit mono; 2 s are there
    path.write_bytes(bytes(data))
    return path


def encode_stdin(data: bytes):
    def run(ctx, source):
        ctx.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        return ctx.encode("-")
    return run


def encode_stdin_past_limit(ctx, source):
    ctx.monkeypatch.setattr(audio_files, "STDIN_LIMIT_BYTES", 1000)
    return encode_stdin(source.read_bytes())(ctx, source)


# Successes -----------------------------------------------------------------------------------------

def make_single_sample(ctx):
    return wav(ctx.inputs / "one.wav", np.array([0.5], np.float32))


def check_single_sample(ctx, source):
    codes = load_bsq(ctx.out / "out.bsq")
    assert codes.num_samples == 1 and codes.header["num_windows"] == 1
    assert tuple(codes.indices.shape) == (1, 8)  # one row of 8 patches covers the one sample
    data, rate = decoded(ctx, ctx.out / "out.bsq")
    assert rate == RATE and data.shape == (1,)
    # and the one-step round trip gives the same
    result = run_in_process("roundtrip", source, "-o", ctx.out / "rt.wav", "--model", ctx.model,
                            "--device", "cpu", "--quiet")
    assert_ok(result)
    assert sf.info(ctx.out / "rt.wav").frames == 1
    (ctx.out / "rt.wav").unlink()


def make_silence(ctx):
    return wav(ctx.inputs / "silence.wav", np.zeros(2 * RATE, np.float32), subtype="PCM_16")


def check_silence(ctx, source):
    codes = load_bsq(ctx.out / "out.bsq")
    assert codes.num_samples == 2 * RATE
    data, rate = decoded(ctx, ctx.out / "out.bsq")
    assert data.shape == (2 * RATE,)
    # Silence is coded as silence (the gain floor), not as noise raised to full scale.
    assert np.abs(data).max() < 1e-3


def make_clipped(ctx):
    t = np.arange(2 * RATE) / RATE
    return wav(ctx.inputs / "clipped.wav", np.sign(np.sin(2 * np.pi * 220 * t)).astype(np.float32),
               subtype="PCM_16")


def make_over_full_scale(ctx):
    return wav(ctx.inputs / "loud.wav", 8.0 * signal_2s())  # float wav: values far past +-1


def check_loud(ctx, source):
    codes = load_bsq(ctx.out / "out.bsq")
    assert torch.isfinite(codes.gains_db).all()
    assert codes.num_samples == 2 * RATE
    data, _ = decoded(ctx, ctx.out / "out.bsq")
    assert data.shape == (2 * RATE,) and np.isfinite(data).all() and np.abs(data).max() <= 1.0


def reference_codes(ctx, rate: int = RATE):
    """The tiny model's codes for the 2-second test signal given as float samples."""
    return ctx.codec.encode(torch.from_numpy(signal_2s(rate)[:, 0]), rate)


def make_channels(ctx):
    return wav(ctx.inputs / "octo.wav", np.repeat(signal_2s(), 8, axis=1), subtype="PCM_16")


def check_channels(ctx, source):
    codes = load_bsq(ctx.out / "out.bsq")
    assert codes.header["source_channels"] == 8 and codes.num_samples == 2 * RATE
    # Eight equal channels downmix to that channel: the codes of the mono file.
    mono = wav(ctx.inputs / "mono.wav", signal_2s(), subtype="PCM_16")
    assert torch.equal(codes.indices, ctx.codec.encode_file(mono).indices)


def make_subtype(subtype: str, name: str):
    def make(ctx):
        return wav(ctx.inputs / name, signal_2s(), subtype=subtype)
    return make


def check_same_codes(min_equal: float = 1.0, gain_db: float = 0.0):
    """The file's codes equal (or nearly, for 8-bit) those of the float samples it holds."""

    def check(ctx, source):
        codes, ref = load_bsq(ctx.out / "out.bsq"), reference_codes(ctx)
        assert codes.header["num_samples"] == ref.header["num_samples"] == 2 * RATE
        assert codes.indices.shape == ref.indices.shape
        assert (codes.indices == ref.indices).float().mean().item() >= min_equal
        assert (codes.gains_db - ref.gains_db).abs().max().item() <= gain_db

    return check


def make_rate(rate: int):
    def make(ctx):
        return wav(ctx.inputs / f"at{rate}.wav", signal_2s(rate), rate=rate, subtype="PCM_16")
    return make


def check_rate(rate: int):
    def check(ctx, source):
        codes = load_bsq(ctx.out / "out.bsq")
        assert codes.header["source_sample_rate"] == rate
        assert codes.num_samples == 2 * RATE  # resampled to the model's 16 kHz
        data, out_rate = decoded(ctx, ctx.out / "out.bsq", "--rate", "source")
        assert out_rate == rate and data.shape == (2 * rate,)
    return check


def make_flac_named_wav(ctx):
    return wav(ctx.inputs / "really_flac.wav", signal_2s(), format="FLAC", subtype="PCM_16")


def make_wav_named_mp3(ctx):
    return wav(ctx.inputs / "really_wav.mp3", signal_2s(), format="WAV")


def make_two_hours(ctx):
    """2 hours at 2 kHz, 8 bits: 14 MB, written in 10-minute blocks."""
    path = ctx.inputs / "two_hours.wav"
    block = 0.25 * np.sin(2 * np.pi * 97 * np.arange(600 * 2000) / 2000)
    with sf.SoundFile(path, "w", 2000, 1, subtype="PCM_U8") as handle:
        for _ in range(12):
            handle.write(block.astype(np.float32))
    return path


def encode_two_hours(ctx, source):
    reads = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    ctx.monkeypatch.setattr(sf.SoundFile, "read", spy)
    result = run_in_process("encode", source, "-o", ctx.out / "out.bsq", "--model", ctx.micro,
                            "--device", "cpu")
    # Streamed: read in blocks of at most 20 s, never the whole file at once (frames=-1).
    assert len(reads) >= 7200 // 20 and all(0 < frames <= 20 * 2000 for frames in reads), reads[:5]
    return result


def check_two_hours(ctx, source):
    result = run_in_process("info", ctx.out / "out.bsq", "--json")
    assert result.exit == 0, result
    info = json.loads(result.stdout)
    assert info["duration_s"] == 7200.0
    assert info["windows"] == 704  # ceil(7200 / 10.24)
    assert info["tokens"] == MICRO.num_rows(7200 * 2000) * MICRO.grid_freq
    assert info["source_sample_rate"] == 2000 and info["model"] == "bsqaudio-micro"


CASES: dict[str, Case] = {
    # Inputs that cannot be encoded: one line, naming the file and why.
    "empty-file": Case(make_empty, error=("empty file",)),
    "zero-length-audio": Case(make_zero_frames, error=("no audio samples",)),
    "NaN-samples": Case(make_with(float("nan")), error=("NaN or infinite",)),
    "inf-samples": Case(make_with(float("inf")), error=("NaN or infinite",)),
    "text-file": Case(make_text, error=("not a readable audio file",)),
    "random-bytes": Case(make_random, error=("not a readable audio file",)),
    "directory": Case(make_folder, error=("is a folder", "--out-dir")),
    "missing-path": Case(make_missing, error=("no such file",)),
    "no-read-permission": Case(make_unreadable, error=("permission denied",), marks=(not_as_root,)),
    "FIFO": Case(make_fifo, error=("not a regular file (a named pipe)", "give - as the input")),
    "character-device": Case(make_char_device, error=("not a regular file (a character device)",)),
    "empty-stdin": Case(make_good, run=encode_stdin(b""), error=("empty input",), names=lambda ctx, _: "<stdin>"),
    "stdin-past-limit": Case(make_good, run=encode_stdin_past_limit, error=("give the file's path instead",),
                             names=lambda ctx, _: "<stdin>"),
    "float64-1e300": Case(make_float64_huge, error=("samples reach 1e+300, far outside [-1, 1]",)),
    "float32-max": Case(make_with(float(np.finfo(np.float32).max)), error=("samples reach 3.4e+38, far outside",)),
    "int16-values-in-float": Case(make_with(32767.0 * 2), error=("far outside [-1, 1]", "32768 for 16-bit")),
    "rate-1-Hz": Case(lambda ctx: wav(ctx.inputs / "slow.wav", signal_2s(), rate=1, subtype="PCM_16"),
                      error=("sample rate 1 Hz is outside 1000-384000 Hz",)),
    "truncated-wav": Case(make_wav_claiming_twice, error=(
        "truncated: header declares 4.00 s, only 2.00 s readable (--allow-truncated keeps the readable part)",)),
    "truncated-flac": Case(make_half_of("flac", "FLAC", "PCM_16"),
                           error=("truncated or damaged: decoding failed at", "--allow-truncated")),
    "truncated-ogg": Case(make_half_of("ogg", "OGG", "VORBIS"),
                          error=("truncated: the Ogg stream stops before its end-of-stream page", "--allow-truncated")),
    # Outputs that cannot be written: refused before any work, or removed when a write fails.
    "output-folder-not-writable": Case(make_good, run=encode_into_locked_folder,
                                       error=("not writable",), names=lambda ctx, _: str(ctx.out),
                                       marks=(not_as_root,)),
    "output-folder-is-a-file": Case(make_good, run=encode_under_a_file, error=("not a folder",),
                                    names=lambda ctx, _: str(ctx.out / "notes.txt"), setup=("notes.txt",)),
    "out-dir-under-a-file": Case(make_good, run=batch_encode_under_a_file,
                                 error=("cannot create the output folder",),
                                 names=lambda ctx, _: str(ctx.out / "tokens" / "sub"), setup=("tokens",)),
    "full-disk-encode": Case(make_good, run=encode_to_full_disk, error=("cannot write", "too large"),
                              names=lambda ctx, _: str(ctx.out / "out.bsq")),
    "full-disk-decode": Case(make_good, run=decode_to_full_disk, error=("cannot write", "too large"),
                              names=lambda ctx, _: str(ctx.out / "out.wav")),
    # Inputs that encode: checked for what matters.
    "single-sample": Case(make_single_sample, check=check_single_sample),
    "all-silence": Case(make_silence, check=check_silence),
    "full-scale-clipping": Case(make_clipped, check=check_loud),
    "float-past-full-scale": Case(make_over_full_scale, check=check_loud),
    "8-channels": Case(make_channels, check=check_channels),
    "float32-wav": Case(make_subtype("FLOAT", "f32.wav"), check=check_same_codes()),
    "24-bit-wav": Case(make_subtype("PCM_24", "i24.wav"), check=check_same_codes()),
    "8-bit-wav": Case(make_subtype("PCM_U8", "u8.wav"), check=check_same_codes(0.7, 0.1)),
    "8-kHz": Case(make_rate(8000), check=check_rate(8000)),
    "192-kHz": Case(make_rate(192000), check=check_rate(192000)),
    "FLAC-named-wav": Case(make_flac_named_wav, check=check_same_codes()),
    "WAV-named-mp3": Case(make_wav_named_mp3, check=check_same_codes()),
    "2-hours": Case(make_two_hours, run=encode_two_hours, check=check_two_hours),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=case.marks, id=name)
                                  for name, case in CASES.items()])
def test_bad_audio(name, tmp_path, tiny_model_dir, micro_model_dir, tiny_codec, monkeypatch):
    case = CASES[name]
    ctx = Ctx(tmp_path / "in", tmp_path / "out", tiny_model_dir, micro_model_dir, tiny_codec,
              monkeypatch)
    ctx.inputs.mkdir()
    ctx.out.mkdir()
    source = case.make(ctx)
    try:
        result = (case.run or (lambda c, s: c.encode(s)))(ctx, source)
        if case.error:
            named = case.names(ctx, source) if case.names else str(source)
            line = assert_one_line_error(result, named, *case.error)
            assert line.startswith(f"bsqaudio: error: {named}: "), line
            assert result.exit == 1
        else:
            assert_ok(result)
            case.check(ctx, source)
        # Nothing else: no partial output, no temporary file.
        assert sorted(p.name for p in ctx.out.iterdir()) == sorted(case.setup if case.error else case.outputs)
    finally:
        ctx.out.chmod(0o755)
        if source.exists() and not source.is_dir():
            source.chmod(0o644)


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir):
    """--debug turns the one-line error back into the Python traceback, for a bug report."""
    debug = run_subprocess("--debug", "encode", tmp_path / "missing.wav", "-o", tmp_path / "out.bsq",
                           "--model", tiny_model_dir)  # without --debug: the missing-path row
    assert debug.exit != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "BsqAudioError: " in debug.stderr and "no such file" in debug.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_in_process_runner_sees_what_a_terminal_sees(tmp_path):
    """The table's runner catches warnings and uncaught exceptions as a terminal would show them."""
    from bsqaudio import cli

    def noisy(**_):  # run() calls app(prog_name=...)
        warnings.warn("something odd", UserWarning, stacklevel=1)
        raise ValueError("boom")

    original = cli.app
    cli.app = noisy
    try:
        result = run_in_process("anything")
    finally:
        cli.app = original
    assert result.exit == 1
    assert "UserWarning: something odd" in result.stderr
    assert "Traceback" in result.stderr and "ValueError: boom" in result.stderr


def test_batch_names_the_input_with_samples_past_full_scale(tmp_path, tiny_model_dir):
    """Float32-max samples made an infinite window gain, which batch mode reported as a failure to
    write the output file; the input is refused and named instead."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    good = wav(folder / "good.wav", signal_2s())
    data = signal_2s()
    data[100] = np.finfo(np.float32).max
    loud = wav(folder / "loud.wav", data)
    result = run_in_process("encode", folder, "--out-dir", out, "--model", tiny_model_dir, "--device", "cpu",
                            "--workers", "0", "--quiet")
    assert result.exit == 1 and "Traceback" not in result.stderr, result
    failed = [line for line in result.stderr.splitlines() if "loud" in line]
    assert len(failed) == 1 and f"{loud}: samples reach 3.4e+38, far outside [-1, 1]" in failed[0], result.stderr
    assert "gain" not in result.stderr and str(out) not in failed[0]
    assert sorted(p.name for p in out.iterdir()) == [good.with_suffix(".bsq").name]
