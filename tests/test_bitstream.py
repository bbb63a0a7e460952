"""The .bsq format: exact round trips, exact sizes, and a clear error for every malformed file."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bsqaudio
from bsqaudio import BsqAudioError, Codes, load_bsq, read_bsq, write_bsq
from bsqaudio.bitstream import FORMAT_VERSION, MAX_HEADER_BYTES, file_size

WINDOW_SAMPLES = 1024 * 160


def make_header(num_samples: int, code_bits: int = 18, **overrides) -> dict:
    frames = max(1, math.ceil(num_samples / 160))
    rows = math.ceil(frames / 16)
    header = {
        "model": "bsqaudio-test",
        "model_hash": "0123456789abcdef",
        "sample_rate": 16000,
        "n_fft": 1024,
        "hop_length": 160,
        "win_length": 400,
        "n_mels": 128,
        "window_frames": 1024,
        "patch_time": 16,
        "patch_freq": 16,
        "code_bits": code_bits,
        "num_windows": math.ceil(rows / 64),
        "num_rows": rows,
        "num_samples": num_samples,
        "source_sample_rate": 44100,
        "source_channels": 2,
    }
    header.update(overrides)
    return header


def make_codes(num_samples: int, code_bits: int = 18, seed: int = 0) -> Codes:
    header = make_header(num_samples, code_bits)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 2 ** code_bits, size=(header["num_rows"], 8), dtype=np.uint64)
    gains = rng.uniform(-40, 60, size=header["num_windows"]).astype(np.float16)
    return Codes(indices=torch.from_numpy(indices.astype(np.int64)),
                 gains_db=torch.from_numpy(gains.astype(np.float32)), header=header)


def assert_codes_equal(a: Codes, b: Codes) -> None:
    assert a.header == b.header
    assert a.indices.dtype == b.indices.dtype == torch.int64
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.gains_db.float(), b.gains_db.float())


# -- round trip ---------------------------------------------------------------------------------

@st.composite
def random_codes(draw) -> Codes:
    code_bits = draw(st.integers(1, 63))
    num_samples = draw(st.integers(1, 3 * WINDOW_SAMPLES))
    header = make_header(num_samples, code_bits)
    count = header["num_rows"] * 8
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    top = 2 ** code_bits - 1
    indices = rng.integers(0, top, size=count, dtype=np.uint64, endpoint=True).astype(np.int64)
    # Make sure the extremes (0 and 2**L - 1) and a few hand-picked values are exercised too.
    specials = draw(st.lists(st.sampled_from([0, top, top >> 1, 1 & top]), max_size=4))
    indices[: len(specials)] = specials[:count]
    gains = draw(st.lists(
        st.floats(width=16, allow_nan=False, allow_infinity=False),
        min_size=header["num_windows"], max_size=header["num_windows"]))
    return Codes(indices=torch.from_numpy(indices.reshape(-1, 8)),
                 gains_db=torch.tensor(gains, dtype=torch.float32), header=header)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codes=random_codes())
def test_write_read_round_trip(codes):
    data = write_bsq(codes)
    assert len(data) == file_size(codes.header)
    back = read_bsq(data)
    assert_codes_equal(back, codes)
    # Writing what was read gives the same bytes.
    assert write_bsq(back) == data


@pytest.mark.parametrize("code_bits", [1, 18, 63])
def test_extreme_indices_round_trip(code_bits):
    codes = make_codes(WINDOW_SAMPLES + 1, code_bits)
    codes.indices[0, 0] = 2 ** code_bits - 1
    codes.indices[-1, -1] = 2 ** code_bits - 1
    codes.indices[0, 1] = 0
    assert_codes_equal(read_bsq(write_bsq(codes)), codes)


def test_load_bsq_from_path_and_stream(tmp_path):
    codes = make_codes(20000)
    path = tmp_path / "x.bsq"
    path.write_bytes(write_bsq(codes))
    assert_codes_equal(load_bsq(path), codes)
    assert_codes_equal(load_bsq(str(path)), codes)
    with open(path, "rb") as handle:
        assert_codes_equal(load_bsq(handle), codes)


def test_load_bsq_errors_name_the_file(tmp_path):
    with pytest.raises(BsqAudioError, match="no such file"):
        load_bsq(tmp_path / "missing.bsq")
    with pytest.raises(BsqAudioError, match="directory"):
        load_bsq(tmp_path)
    bad = tmp_path / "bad.bsq"
    bad.write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(BsqAudioError, match=r"bad\.bsq: not a \.bsq file"):
        load_bsq(bad)


# -- sizes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [0.1, 10.24, 15.0, 300.0])
@pytest.mark.parametrize("code_bits", [18, 36, 63])
def test_file_size_is_exact(seconds, code_bits):
    num_samples = int(round(seconds * 16000))
    codes = make_codes(num_samples, code_bits)
    header = codes.header
    rows = math.ceil(math.ceil(num_samples / 160) / 16)
    windows = math.ceil(rows / 64)
    assert (header["num_rows"], header["num_windows"]) == (rows, windows)
    header_json = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    expected = 4 + 1 + 4 + len(header_json) + 2 * windows + rows * 8 * code_bits // 8 + 4
    data = write_bsq(codes)
    assert len(data) == expected == file_size(header)


@pytest.mark.parametrize("seconds,rows,windows", [(0.1, 1, 1), (10.24, 64, 1), (15.0, 94, 2),
                                                  (300.0, 1875, 30)])
def test_rows_and_windows(seconds, rows, windows):
    header = make_header(int(round(seconds * 16000)))
    assert (header["num_rows"], header["num_windows"]) == (rows, windows)


def test_bitrate_is_50_tokens_per_second_times_bits():
    assert make_codes(16000, 18).bitrate == 900.0
    assert make_codes(16000, 36).bitrate == 1800.0
    # Bytes of codes grow with rows, not whole windows: a 15 s clip costs 15 s of codes.
    short = len(write_bsq(make_codes(15 * 16000, 36)))
    assert short < len(write_bsq(make_codes(2 * WINDOW_SAMPLES, 36)))


# -- malformed files ----------------------------------------------------------------------------

def build(header, payload: bytes | None = None, *, magic=b"BSQA", version=1,
          header_len: int | None = None, raw_header: bytes | None = None, fix_crc=True,
          extra: bytes = b"") -> bytes:
    """Hand-craft a format-1 .bsq file: preamble, header JSON, payload, then a (correct) CRC32."""
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    if payload is None:
        h = header
        rows = h["num_rows"]
        payload = b""
        for w in range(h["num_windows"]):
            n = min(64, rows - 64 * w)
            payload += struct.pack("<e", 10.0) + bytes(math.ceil(n * 8 * h["code_bits"] / 8))
    body = struct.pack("<4sBI", magic, version, len(head) if header_len is None else header_len)
    body += head + payload + extra
    crc = zlib.crc32(body) if fix_crc else 0
    return body + struct.pack("<I", crc)


def test_hand_built_file_is_valid():
    """The crafting helper itself makes files the reader accepts (so the cases below test one
    defect each)."""
    codes = read_bsq(build(make_header(50000)))
    assert codes.indices.shape == (20, 8)
    assert codes.gains_db.tolist() == [10.0]


def expect_error(data: bytes, pattern: str) -> None:
    with pytest.raises(BsqAudioError, match=pattern):
        read_bsq(data)


def test_bad_magic():
    expect_error(build(make_header(16000), magic=b"RIFF"), "not a .bsq file: bad magic")


@pytest.mark.parametrize("length", [0, 1, 8, 12])
def test_too_short(length):
    expect_error(write_bsq(make_codes(16000))[:length], "too short")


def test_newer_version():
    expect_error(build(make_header(16000), version=FORMAT_VERSION + 1),
                 f"version {FORMAT_VERSION + 1} is newer.*upgrade")


def test_version_zero():
    expect_error(build(make_header(16000), version=0), "unknown format version 0")


@pytest.mark.parametrize("position", [0.3, 0.6, 0.99])
def test_crc_mismatch(position):
    data = bytearray(write_bsq(make_codes(40000)))
    index = int(position * (len(data) - 4))
    index = max(index, 9)  # past magic and version, which have their own checks
    data[index] ^= 0x40
    expect_error(bytes(data), "checksum mismatch")


def test_truncated_file_fails_checksum():
    expect_error(write_bsq(make_codes(40000))[:-7], "checksum")


def test_header_length_too_large():
    header = make_header(16000)
    expect_error(build(header, header_len=10_000_000), "header length")
    expect_error(build(header, header_len=MAX_HEADER_BYTES + 1), "header length")


def test_header_not_json():
    expect_error(build(None, payload=b"", raw_header=b"{not json"), "not valid JSON")
    expect_error(build(None, payload=b"", raw_header=b"\xff\xfe\x00"), "not valid JSON")


@pytest.mark.parametrize("raw", [b"[1, 2, 3]", b"42", b'"header"', b"null"])
def test_header_not_an_object(raw):
    expect_error(build(None, payload=b"", raw_header=raw), "not a JSON object")


@pytest.mark.parametrize("field", ["model_hash", "num_samples", "code_bits", "source_channels"])
def test_missing_field(field):
    header = make_header(16000)
    payload = build(header)[9 + len(json.dumps(header)):-4]
    del header[field]
    expect_error(build(header, payload), f"lacks {field}")


def test_unknown_field():
    header = make_header(16000)
    header["comment"] = "hello"
    expect_error(build(header), "unknown header fields comment")


@pytest.mark.parametrize("field,value", [
    ("sample_rate", True), ("code_bits", "18"), ("num_samples", 16000.0),
    ("num_rows", None), ("model", 3), ("model_hash", ["x"]), ("source_channels", False),
])
def test_wrong_type(field, value):
    header = make_header(16000)
    payload = build(header)[9 + len(json.dumps(header)):-4]
    header[field] = value
    expect_error(build(header, payload), f"'{field}' must be")


@pytest.mark.parametrize("field", ["sample_rate", "hop_length", "n_mels", "patch_time",
                                   "window_frames", "source_sample_rate", "source_channels",
                                   "num_rows", "num_windows"])
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_fields(field, value):
    header = make_header(16000)
    header[field] = value
    expect_error(build(header, payload=b""), f"'{field}' must be positive")


@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_num_samples(value):
    header = {**make_header(16000), "num_samples": value}
    expect_error(build(header, payload=b""), "num_samples must be positive")


@pytest.mark.parametrize("bits", [0, 64, 100])
def test_code_bits_out_of_range(bits):
    header = make_header(16000, code_bits=bits)
    expect_error(build(header, payload=b""), "code_bits")


def test_patch_not_dividing_window():
    expect_error(build(make_header(16000, patch_time=24), payload=b""), "patch size")


@pytest.mark.parametrize("overrides", [
    {"num_rows": 8}, {"num_rows": 11}, {"num_windows": 2},
    {"num_samples": 16000 * 11},  # rows/windows now too few for the length
])
def test_rows_windows_inconsistent_with_samples(overrides):
    header = make_header(16000)
    payload = build(header)[9 + len(json.dumps(header)):-4]
    header.update(overrides)
    expect_error(build(header, payload), "num_rows/num_windows do not match num_samples")


@pytest.mark.parametrize("extra", [1, 100])
def test_size_mismatch_extra_bytes(extra):
    data = write_bsq(make_codes(40000))
    body = data[:-4] + bytes(extra)
    expect_error(body + struct.pack("<I", zlib.crc32(body)), "size is .* the header implies")


def test_size_mismatch_missing_bytes():
    data = write_bsq(make_codes(40000))
    body = data[:-5]
    expect_error(body + struct.pack("<I", zlib.crc32(body)), "size is .* the header implies")


@pytest.mark.parametrize("samples,message", [(10 ** 8, "size is"),
                                             (10 ** 12, "more than the 33554432 a .bsq file")])
def test_huge_claimed_length_is_rejected_without_allocating(samples, message):
    """A header claiming hours of audio in a tiny file fails on the size check, quickly; one
    claiming more codes than any file may hold (MAX_CODES, ~186 hours) fails before that."""
    frames = math.ceil(samples / 160)
    rows = math.ceil(frames / 16)
    header = {**make_header(16000), "num_samples": samples, "num_rows": rows,
              "num_windows": math.ceil(rows / 64)}
    expect_error(build(header, payload=bytes(100)), message)


@pytest.mark.parametrize("gain", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_gain(gain):
    header = make_header(WINDOW_SAMPLES + 5000)
    data = bytearray(write_bsq(make_codes(WINDOW_SAMPLES + 5000)))
    # The second window's gain sits after the header and the first window's 64 * 18 bytes.
    offset = 9 + len(json.dumps(header, sort_keys=True, separators=(",", ":"))) + 2 + 64 * 18
    data[offset:offset + 2] = struct.pack("<e", gain)
    body = bytes(data[:-4])
    expect_error(body + struct.pack("<I", zlib.crc32(body)), "gain is not finite")


def test_write_rejects_codes_that_do_not_match_header():
    codes = make_codes(16000)
    codes.indices = codes.indices[:-1]
    with pytest.raises(ValueError):
        write_bsq(codes)
    codes = make_codes(16000)
    codes.header["num_rows"] = 99
    with pytest.raises(BsqAudioError):
        write_bsq(codes)


def test_window_indices_pads_past_the_end():
    codes = make_codes(WINDOW_SAMPLES + 1600)  # 64 + 1 rows, 2 windows
    windows = codes.window_indices(pad_value=-1)
    assert windows.shape == (2, 512)
    assert torch.equal(windows[0], codes.indices[:64].reshape(-1))
    assert torch.equal(windows[1, :8], codes.indices[64])
    assert (windows[1, 8:] == -1).all()


# -- hostile geometry: sizes come from the rows present, within a model's limits ---------------------

def consistent(num_samples: int, **fields) -> dict:
    """A header with ``fields`` changed and num_rows/num_windows recomputed to match."""
    h = {**make_header(16000), **fields, "num_samples": num_samples}
    frames = -(-num_samples // h["hop_length"])
    rows = -(-frames // h["patch_time"])
    return {**h, "num_rows": rows, "num_windows": -(-rows // (h["window_frames"] // h["patch_time"]))}


def payload_of(header: dict) -> bytes:
    freq = header["n_mels"] // header["patch_freq"]
    per_window = header["window_frames"] // header["patch_time"]
    out = b""
    for w in range(header["num_windows"]):
        rows = min(per_window, header["num_rows"] - w * per_window)
        out += struct.pack("<e", 10.0) + bytes(-(-rows * freq * header["code_bits"] // 8))
    return out


def test_window_far_larger_than_the_rows_present_is_refused():
    """Was: a 2.7 KB file with window_frames 2**30 passed (only the 64 rows present are stored),
    then window_indices() (tokens --format npy, decode) allocated 2**26 rows x 8 int64: 4 GiB."""
    header = consistent(163840, window_frames=16 * 2**26)
    data = build(header, payload_of(header))
    assert len(data) < 4000
    expect_error(data, "'window_frames' is 1073741824, outside the 1-16384")


@pytest.mark.parametrize("fields,message", [
    ({"n_mels": 2**20, "patch_freq": 2**20}, "'n_mels' is 1048576, outside"),
    ({"hop_length": 2**40}, "'hop_length' is 1099511627776, outside"),
    ({"n_fft": 2**20}, "'n_fft' is 1048576"),
    ({"win_length": 2**20}, "'win_length'"),
    ({"sample_rate": 10**9}, "'sample_rate' is 1000000000, outside the 1000-384000"),
    ({"patch_time": 2**15, "window_frames": 2**15}, "'window_frames' is 32768"),
    ({"n_mels": 1024, "patch_freq": 1, "window_frames": 16384, "patch_time": 1},
     "a window of 16384 x 1024 patches is more than the 4096"),
    ({"n_mels": 128, "patch_freq": 1, "window_frames": 1024, "patch_time": 16},
     "a window of 64 x 128 patches"),
])
def test_geometry_outside_a_models_limits_is_refused(fields, message):
    header = consistent(1600, **fields)
    expect_error(build(header, payload_of(header)), message)


def test_geometry_at_the_limits_reads_and_pads_by_less_than_a_window():
    """4096 patches a window (the limit), one row present: window_indices is one window."""
    header = consistent(160, n_mels=1024, patch_freq=2, window_frames=8, patch_time=1)
    codes = read_bsq(build(header, payload_of(header)))
    assert codes.indices.shape == (1, 512)
    windows = codes.window_indices()
    assert windows.shape == (1, 4096) and (windows[0, 512:] == -1).all()


def test_window_indices_of_hand_built_codes_is_bounded():
    """Codes built in Python, not read, get the same bound (and must agree with their gains)."""
    codes = make_codes(16000)
    codes.header = {**codes.header, "window_frames": 16 * 2**26}
    with pytest.raises(BsqAudioError, match="more than the 4096"):
        codes.window_indices()
    codes = make_codes(16000)
    codes.gains_db = torch.zeros(3)
    with pytest.raises(BsqAudioError, match="make 1 windows, but there are 3 gains"):
        codes.window_indices()


def test_tokens_npy_of_the_hostile_file_is_one_line(tmp_path):
    """The issue's command: `bsqaudio tokens FILE --format npy` on the 4 GiB-claiming file."""
    from test_bad_audio import run_in_process

    header = consistent(163840, window_frames=16 * 2**26)
    path = tmp_path / "hostile.bsq"
    path.write_bytes(build(header, payload_of(header)))
    result = run_in_process("tokens", path, "--format", "npy", "-o", tmp_path / "t.npy")
    assert result.exit == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.count("\n") == 1 and "window_frames" in result.stderr, result
    assert not (tmp_path / "t.npy").exists()


# -- bounded reads: paths must be regular files, streams are read as far as the header allows -------

def zero_device(path):
    """A char device that reads like /dev/zero (1, 5), made in a tmp folder."""
    import os
    import stat

    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except (PermissionError, OSError) as err:
        pytest.skip(f"cannot make a device file here ({err})")
    return path


def test_fifo_path_is_refused_without_blocking(tmp_path, no_hang):
    import os

    os.mkfifo(tmp_path / "pipe.bsq")
    with pytest.raises(BsqAudioError, match=r"pipe\.bsq: not a regular file"):
        load_bsq(tmp_path / "pipe.bsq")


def test_device_path_and_symlink_to_it_are_refused(tmp_path, no_hang):
    """Was: read_bytes() on a /dev/zero-like device read until memory ran out."""
    zero_device(tmp_path / "zero")
    (tmp_path / "link.bsq").symlink_to(tmp_path / "zero")
    for path in (tmp_path / "zero", tmp_path / "link.bsq", str(tmp_path / "link.bsq")):
        with pytest.raises(BsqAudioError, match="not a regular file"):
            load_bsq(path)


def test_file_larger_than_any_bsq_file_is_refused_unread(tmp_path):
    from bsqaudio.bitstream import MAX_BSQ_BYTES

    path = tmp_path / "big.bsq"
    with open(path, "wb") as handle:  # sparse: costs no disk
        handle.write(write_bsq(make_codes(16000)))
        handle.truncate(MAX_BSQ_BYTES + 1)
    with pytest.raises(BsqAudioError, match="more than a .bsq or token file may have"):
        load_bsq(path)


class CountingStream:
    """A binary stream of ``prefix`` then endless ``fill`` bytes; counts what was read."""

    def __init__(self, prefix: bytes, fill: bytes = b"\0"):
        self.prefix, self.fill, self.read_bytes = prefix, fill, 0

    def read(self, size: int = -1) -> bytes:
        assert size is not None and size >= 0, "an unbounded read"
        out = self.prefix[:size]
        self.prefix = self.prefix[size:]
        out += self.fill * (size - len(out))
        self.read_bytes += len(out)
        return out


def test_stdin_from_a_zero_device_stops_at_the_preamble(tmp_path, monkeypatch, no_hang):
    """Was: sys.stdin.buffer.read() of `< /dev/zero` never returned."""
    import io
    import sys

    with open(zero_device(tmp_path / "zero"), "rb") as raw:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        with pytest.raises(BsqAudioError, match="-: not a .bsq file: bad magic"):
            load_bsq("-")


def test_endless_stream_after_a_valid_file_reads_one_byte_past_it():
    data = write_bsq(make_codes(40000))
    stream = CountingStream(data, fill=b"\xff")
    with pytest.raises(BsqAudioError, match=f"more bytes than the {len(data)} the header implies"):
        load_bsq(stream)
    assert stream.read_bytes == len(data) + 1


@pytest.mark.parametrize("header_len", [MAX_HEADER_BYTES + 1, 2**32 - 1])
def test_stream_with_a_huge_header_length_reads_only_the_preamble(header_len):
    stream = CountingStream(b"BSQA\x01" + struct.pack("<I", header_len))
    with pytest.raises(BsqAudioError, match="header length"):
        load_bsq(stream)
    assert stream.read_bytes == 9


def test_stream_whose_header_claims_a_long_file_reads_only_what_is_there():
    header = consistent(10 ** 8)  # 312,500 codes of 18 bits: 700 KB that are not there
    stream = CountingStream(build(header, payload=bytes(100)), fill=b"")
    with pytest.raises(BsqAudioError, match="size is"):
        load_bsq(stream)


def test_valid_file_through_a_pipe_and_stdin(monkeypatch):
    """Pipes return data in pieces; a file object, a pipe and stdin all read the same Codes."""
    import io
    import os
    import sys
    import threading

    codes = make_codes(WINDOW_SAMPLES + 5000, 36)
    data = write_bsq(codes)
    read_fd, write_fd = os.pipe()

    def writer():
        with os.fdopen(write_fd, "wb", buffering=0) as out:
            for i in range(0, len(data), 1000):
                out.write(data[i:i + 1000])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        assert_codes_equal(load_bsq(pipe), codes)
    thread.join()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert_codes_equal(load_bsq("-"), codes)


@pytest.mark.parametrize("data,message", [(b"", "too short"), (b"BSQA\x01", "too short"),
                                          (b"BSQA\x01\x05\x00\x00\x00{}", "header length"),
                                          (b"BSQA\x01\x02\x00\x00\x00{]", "not valid JSON")])
def test_short_and_broken_streams(data, message):
    import io

    with pytest.raises(BsqAudioError, match=message):
        load_bsq(io.BytesIO(data))


# -- the writer refuses what it cannot store ---------------------------------------------------------

@pytest.mark.parametrize("value,code_bits", [(2**40 + 5, 36), (2**18, 18), (-1, 18), (-(2**62), 63),
                                             (2, 1)])
def test_writer_refuses_indices_outside_the_code_range(value, code_bits):
    """Was: silently wrapped to the low L bits (2**40 + 5 written as 5, -1 as all ones)."""
    codes = make_codes(16000, code_bits)
    codes.indices[3, 5] = value
    with pytest.raises(BsqAudioError, match=rf"token index {value} is outside \[0, 2\*\*{code_bits}\)"):
        write_bsq(codes)


def test_writer_refuses_float_indices():
    codes = make_codes(16000)
    codes.indices = codes.indices.double() + 0.5
    with pytest.raises(BsqAudioError, match="not integers"):
        write_bsq(codes)


# -- gains ---------------------------------------------------------------------------------------

def test_real_encodes_give_gains_well_inside_the_bound():
    """The measured range behind MAX_GAIN_DB: silence sits on the -20 dB floor, the loudest
    full-scale signals reach about +45 dB, 8x past full scale (float audio) +63 dB."""
    from bsqaudio.codes import MAX_GAIN_DB
    from bsqaudio.dsp.mel import GAIN_FLOOR_DB, MelFrontend
    from bsqaudio.model.config import preset

    frontend = MelFrontend(preset("tiny"))
    t = torch.arange(16000) / 16000
    signals = {"silence": torch.zeros(16000), "dc": torch.ones(16000),
               "square": torch.sign(torch.sin(2 * math.pi * 220 * t)),
               "sine-7k": torch.sin(2 * math.pi * 7000 * t),
               "noise": torch.rand(16000, generator=torch.Generator().manual_seed(0)) * 2 - 1}
    gains = {name: frontend.analyze(wave)[1].item() for name, wave in signals.items()}
    assert gains["silence"] == GAIN_FLOOR_DB
    assert max(gains.values()) < 46
    assert frontend.analyze(8 * signals["dc"])[1].item() < 64
    assert MAX_GAIN_DB >= 100 - 1e-9 and -MAX_GAIN_DB < GAIN_FLOOR_DB


@pytest.mark.parametrize("gain", [400.0, 200.0, 100.5, -101.0, 65504.0])
def test_gains_no_audio_has_are_refused_before_synthesis(gain):
    """A crafted +400 dB overflowed mel power to inf (IndexError traceback in decode) and +200 dB
    decoded to a full-scale square wave. The format keeps any finite float16 (the frozen format
    test files hold +-65504), so the file reads; Codes.check_gains refuses it."""
    header = make_header(16000)
    data = bytearray(write_bsq(make_codes(16000)))
    offset = 9 + len(json.dumps(header, sort_keys=True, separators=(",", ":")))
    data[offset:offset + 2] = struct.pack("<e", gain)
    body = bytes(data[:-4])
    codes = read_bsq(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(BsqAudioError, match="window gain of .* dB is outside the \\+-100 dB"):
        codes.check_gains()


@pytest.mark.parametrize("gain", [100.0, -100.0, 45.0, -20.0, 0.0])
def test_gains_inside_the_bound_pass(gain):
    codes = make_codes(16000)
    codes.gains_db = torch.tensor([gain])
    codes.check_gains()
    codes.gains_db = torch.tensor([float("nan")])
    with pytest.raises(BsqAudioError, match="outside"):
        codes.check_gains()


# -- format 2: the code space in a compact header ---------------------------------------------

def format2(codes: Codes, code_space: str = "fedcba9876543210") -> Codes:
    return Codes(codes.indices, codes.gains_db, {**codes.header, "code_space": code_space})


@pytest.mark.parametrize("seconds", [0.3, 2.7, 21.0])
def test_format_2_round_trips_with_a_header_of_tens_of_bytes(seconds):
    v1 = make_codes(int(seconds * 16000), 36)
    v2 = format2(v1)
    old, new = write_bsq(v1), write_bsq(v2)
    assert (old[4], new[4]) == (1, 2)
    assert_codes_equal(read_bsq(new), v2)
    header_len = struct.unpack_from("<I", new, 5)[0]
    assert header_len == 49 + len("bsqaudio-test")
    assert len(old) - len(new) > 200  # ~300 bytes of JSON become ~60
    assert len(new) == file_size(v2.header)
    assert_codes_equal(load_bsq(io.BytesIO(new)), v2)  # the stream reader knows it too


def test_a_2_7_s_prompt_costs_about_2000_bit_s_in_format_2_not_2700():
    codes = make_codes(int(2.7 * 16000), 36)  # 1800 bit/s of codes, the rest header and gains
    assert len(write_bsq(codes)) * 8 / 2.7 > 2600
    assert len(write_bsq(format2(codes))) * 8 / 2.7 < 2100


@pytest.mark.parametrize("damage, pattern", [
    (lambda raw: raw[:30], "format 2 header is too short"),
    (lambda raw: raw[:49] + b"\xff\xfe", "not UTF-8"),
    (lambda raw: raw[:49], "model name must have"),
    (lambda raw: raw[:49] + b"x" * 201, "model name must have"),
    (lambda raw: raw[:16] + struct.pack("<I", 0) + raw[20:], "sample_rate"),
])
def test_damaged_format_2_headers_are_refused(damage, pattern):
    data = write_bsq(format2(make_codes(16000, 36)))
    header_len = struct.unpack_from("<I", data, 5)[0]
    raw = damage(data[9: 9 + header_len])
    rebuilt = data[:5] + struct.pack("<I", len(raw)) + raw + data[9 + header_len: -4]
    expect_error(rebuilt + struct.pack("<I", zlib.crc32(rebuilt)), pattern)


def test_code_space_belongs_to_format_2_only():
    expect_error(build({**make_header(16000), "code_space": "fedcba9876543210"}), "format 1 header has no code_space")
    with pytest.raises(BsqAudioError, match="16 hexadecimal digits"):
        write_bsq(format2(make_codes(16000), code_space="not-hex"))
    with pytest.raises(BsqAudioError, match="does not fit format 2"):
        write_bsq(_with(format2(make_codes(16000)), source_sample_rate=2 ** 40))


def _with(codes: Codes, **changes) -> Codes:
    return Codes(codes.indices, codes.gains_db, {**codes.header, **changes})


def test_save_bsq_and_load_bsq_are_a_pair(tmp_path):
    codes = make_codes(40000, 36)
    path = bsqaudio.save_bsq(codes, tmp_path / "a.bsq")
    assert_codes_equal(bsqaudio.load_bsq(path), codes)
    assert path.read_bytes() == write_bsq(codes) and list(tmp_path.iterdir()) == [path]  # no temporary left
