"""Fuzzing the .bsq reader: every input is either read into consistent Codes that round-trip, or
rejected with a one-line BsqAudioError; never another exception, a hang or a huge allocation.

The harness is tests/fuzz/fuzz_bsq.py (see tests/fuzz/README.md for longer runs); here it runs a
fixed 10,000 cases, hypothesis drives the same property, the bugs it found stay fixed, and the CLI
turns broken files into one ``bsqaudio: error:`` line with nothing left behind.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import make_signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsqaudio import BsqAudioError, Codes, read_bsq, write_bsq
from bsqaudio.bitstream import HEADER_FIELDS, MAX_HEADER_BYTES

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_bsq", FUZZ_DIR / "fuzz_bsq.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_bsq"] = module  # dataclasses look the module up while it loads
    spec.loader.exec_module(module)
    return module


fuzz = _load_harness()
CORPUS = fuzz.make_corpus(seed=7, count=16, max_windows=1.5)


def bsq_bytes(head: bytes, payload: bytes, *, version: int = 1) -> bytes:
    body = b"BSQA" + bytes([version]) + struct.pack("<I", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def payload_for(header: dict) -> bytes:
    """Zero codes and 0 dB gains, laid out as write_bsq lays them out (a valid header)."""
    freq = header["n_mels"] // header["patch_freq"]
    per_window = header["window_frames"] // header["patch_time"]
    out = b""
    for w in range(header["num_windows"]):
        rows = max(0, min(per_window, header["num_rows"] - w * per_window))
        out += struct.pack("<e", 0.0) + bytes(-(-rows * freq * header["code_bits"] // 8))
    return out


def header_with(**changes) -> dict:
    return {**fuzz.make_header(16000, 18), **changes}


def assert_rejected(data: bytes, pattern: str) -> str:
    with pytest.raises(BsqAudioError, match=pattern) as caught:
        read_bsq(data)
    message = str(caught.value)
    assert message and "\n" not in message and message.isprintable(), repr(message)
    assert fuzz.check(data) is None
    return message


# -- the harness, 10,000 cases --------------------------------------------------------------------

def test_fuzz_10000_cases():
    report = fuzz.run(cases=10_000, seed=20240611)
    print(report.summary())
    assert report.failures == [], "\n\n".join(f["problem"] for f in report.failures[:3])
    assert report.cases == 10_000
    # The mutations reach past the checksum and the JSON parser: a good share of cases is
    # accepted (then checked against a pure-Python decoding and re-encoded), and the rejections
    # come from many different checks.
    rejected = report.cases - report.accepted
    assert report.accepted > 300
    assert report.messages["checksum mismatch (truncated or damaged)"] < 0.4 * rejected
    assert len(report.messages) > 40
    for check in ("header lacks", "unknown header fields", "must be int", "must be positive",
                  "num_rows/num_windows do not match", "size is", "gain is not finite",
                  "not valid JSON", "bad magic", "newer than", "code_bits must be"):
        assert any(check in reason for reason in report.messages), check
    assert report.memory_checked >= 10_000 // 25


def test_harness_reports_a_broken_reader(monkeypatch):
    """The oracle is not vacuous: a reader that gets one bit wrong, or raises something other
    than BsqAudioError, is caught, with a reproducer."""
    import bsqaudio.bitstream as bitstream

    unpack = bitstream.unpack_codes

    def off_by_one(payload, count, bits):
        out = unpack(payload, count, bits)
        if count > 8:
            out[-1] ^= 1
        return out

    monkeypatch.setattr(bitstream, "unpack_codes", off_by_one)
    report = fuzz.run(cases=200, seed=1, max_failures=1, out=io.StringIO())
    assert report.failures and "pure-Python decoding" in report.failures[0]["problem"]
    data = fuzz.load_repro(report.failures[0]["input_base64"])
    assert fuzz.check(data) is not None
    monkeypatch.setattr(bitstream, "unpack_codes", unpack)
    assert fuzz.check(data) is None

    def explode(header):
        raise KeyError("boom")

    monkeypatch.setattr(bitstream, "validate_header", explode)
    assert fuzz.check(CORPUS[0]).startswith("KeyError")


def test_command_line_runs_and_reproduces(tmp_path):
    assert fuzz.main(["--cases", "300", "--seed", "3"]) == 0
    assert fuzz.main(["--repro", fuzz.reproducer(CORPUS[1])]) == 0
    (tmp_path / "case.bin").write_bytes(b"BSQA\x01" + b"[" * 50)
    assert fuzz.main(["--repro", f"@{tmp_path / 'case.bin'}"]) == 0


# -- hypothesis, same property --------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(CORPUS),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)),
       junk=st.binary(max_size=16),
       fix_crc=st.booleans())
def test_property_on_byte_level_mutations(base, edits, cut, junk, fix_crc):
    data = bytearray(base)
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    data = bytes(data) + junk
    if fix_crc:
        data = fuzz.fix_crc(data)
    assert fuzz.check(data, time_limit=2.0) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                     max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(sorted(HEADER_FIELDS)) | st.text(max_size=8),
                               json_values | st.integers(-2**70, 2**70), max_size=4),
       drop=st.lists(st.sampled_from(sorted(HEADER_FIELDS)), max_size=2),
       num_samples=st.integers(1, 4 * 163840), code_bits=st.integers(1, 63),
       sized_payload=st.booleans())
def test_property_on_header_edits(changes, drop, num_samples, code_bits, sized_payload):
    header = {**fuzz.make_header(num_samples, code_bits), **changes}
    for key in drop:
        header.pop(key, None)
    try:
        head = json.dumps(header).encode()
    except ValueError:  # NaN is fine in JSON here; integers past 4300 digits are not
        return
    try:
        # Only for a header that is valid but for the changes hypothesis made, and not huge.
        plain = all(type(header[k]) is int and 0 < header[k] < 2**40 for k in HEADER_FIELDS
                    if HEADER_FIELDS[k] is int)
        small = plain and header["num_windows"] * header["num_rows"] * header["n_mels"] \
            // header["patch_freq"] * header["code_bits"] < 8 << 20  # bits, over all windows
        payload = payload_for(header) if sized_payload and small else bytes(64)
    except (KeyError, ZeroDivisionError):  # a header too broken to lay out a payload for
        payload = bytes(64)
    assert fuzz.check(bsq_bytes(head, payload), time_limit=2.0) is None


# -- the bugs the fuzzer found stay fixed --------------------------------------------------------

def test_deeply_nested_header_json_is_rejected():
    """Was RecursionError from json.loads."""
    assert_rejected(bsq_bytes(b"[" * 20000, b""), "header is not valid JSON")
    assert_rejected(bsq_bytes(b'{"a":' * 3000 + b"1" + b"}" * 3000, b""), "not valid JSON")


def test_integer_with_too_many_digits_is_rejected():
    """Was ValueError ('Exceeds the limit (4300 digits) for integer string conversion')."""
    head = json.dumps(header_with()).encode().replace(b'"num_samples": 16000',
                                                      b'"num_samples": ' + b"1" * 5000)
    assert_rejected(bsq_bytes(head, b""), "header is not valid JSON")


@pytest.mark.parametrize("value", [10**400, 2**63, -(2**63) - 1, 10**4200],
                         ids=["1e400", "2^63", "-2^63-1", "1e4200"])
def test_huge_integers_are_rejected(value):
    """Was OverflowError ('integer division result too large for a float') in validate_header,
    and ValueError from formatting a size of more than 4300 digits in the size-mismatch message."""
    assert_rejected(bsq_bytes(json.dumps(header_with(num_samples=value)).encode(), b""),
                    "'num_samples' is out of range")
    big = {"num_samples": value, "hop_length": 1, "patch_time": 1, "window_frames": 1,
           "num_rows": value, "num_windows": value, "n_mels": value, "patch_freq": 1}
    assert_rejected(bsq_bytes(json.dumps(header_with(**big)).encode(), b""), "out of range")


def test_largest_allowed_fields_are_fine():
    """int64 where nothing is sized from the field; the geometry at the model config's limits."""
    header = header_with(source_sample_rate=2**63 - 1, source_channels=2**63 - 1,
                         sample_rate=384_000, n_fft=16384, win_length=16384, hop_length=16384,
                         n_mels=1024, patch_freq=1024, window_frames=16384, patch_time=16384,
                         num_samples=3 * 16384 * 16384, num_rows=3, num_windows=3, code_bits=63)
    data = bsq_bytes(json.dumps(header).encode(), payload_for(header))
    assert read_bsq(data).header == header
    assert fuzz.check(data) is None


@pytest.mark.parametrize("key", ["a\nb", "tab\there", "\ud800", "\x1b[31mred", "x" * 5000],
                         ids=["newline", "tab", "surrogate", "escape", "long"])
def test_unknown_field_names_are_printed_on_one_line(key):
    """Was: the raw key in the message, so a newline in it made a two-line CLI error."""
    header = header_with(**{key: 1})
    message = assert_rejected(bsq_bytes(json.dumps(header).encode(), payload_for(header)),
                              "unknown header fields")
    assert len(message) < 200


@pytest.mark.parametrize("field", ["model", "model_hash"])
@pytest.mark.parametrize("text", ["a\nb", "tab\t", "\ud800", "\x00", "\ufeff", "\x1b[2J"])
def test_header_strings_must_be_printable(field, text):
    """Was accepted: `bsqaudio info` then died with UnicodeEncodeError (lone surrogate) or printed
    several lines, and a model-mismatch error could span several lines."""
    header = header_with(**{field: text})
    assert_rejected(bsq_bytes(json.dumps(header).encode(), payload_for(header)),
                    f"'{field}' is not printable text")


def test_printable_unicode_header_strings_are_fine():
    header = header_with(model="modèle-ü 中文 ✓")
    data = bsq_bytes(json.dumps(header, ensure_ascii=False).encode(), payload_for(header))
    assert read_bsq(data).header["model"] == "modèle-ü 中文 ✓"
    assert fuzz.check(data) is None


def test_header_that_would_not_fit_when_rewritten_is_rejected():
    """Was accepted: 20,000 'é' are 40 KB of UTF-8 but 120 KB once write_bsq escapes them, so the
    writer wrote a file the reader then refused. Now both refuse the header."""
    header = header_with(model="é" * 20_000)
    head = json.dumps(header, ensure_ascii=False).encode()
    assert len(head) < MAX_HEADER_BYTES
    assert_rejected(bsq_bytes(head, payload_for(header)), "header longer than")
    codes = Codes(indices=torch.zeros(header["num_rows"], 8, dtype=torch.int64),
                  gains_db=torch.zeros(header["num_windows"]), header=header)
    with pytest.raises(BsqAudioError, match="header longer than"):
        write_bsq(codes)


def test_windows_whose_codes_end_mid_byte_round_trip():
    """Was: write_bsq padded each window to whole bytes but file_size (the reader's size check)
    did not, so such files were unreadable, and a file short by the padding was accepted with the
    CRC read as codes. Real models (8 patches a row) are unaffected."""
    rng = random.Random(0)
    geometry = (512, 1, 8, 8, 1)  # one 36-bit code a window: 4.5 bytes, padded to 5
    header = fuzz.make_header(12289, 36, geometry)
    codes = Codes(indices=torch.tensor([[rng.getrandbits(36)] for _ in range(4)]),
                  gains_db=torch.tensor([1.0, 2.0, 3.0, 4.0]), header=header)
    data = write_bsq(codes)
    back = read_bsq(data)
    assert torch.equal(back.indices, codes.indices)
    assert write_bsq(back) == data
    shorter = fuzz.fix_crc(data[:-6] + data[-4:])  # what the old size check wanted
    assert_rejected(shorter, "size is")


# -- the command line on broken files --------------------------------------------------------------

def mutated_files(valid: bytes, count: int, seed: int = 5) -> list[bytes]:
    """``count`` mutations of ``valid`` that read_bsq rejects, each for a different reason."""
    rng = random.Random(seed)
    corpus = [valid]
    found, reasons = [], set()
    for _ in range(20_000):
        data, _ = fuzz.mutate(valid, rng, corpus)
        try:
            read_bsq(data)
        except BsqAudioError as err:
            reason = fuzz.reason(str(err))
            if reason not in reasons:
                reasons.add(reason)
                found.append(data)
        if len(found) == count:
            return found
    raise AssertionError(f"only {len(found)} distinct rejections")


def assert_one_line_error(result: dict | subprocess.CompletedProcess) -> str:
    if isinstance(result, subprocess.CompletedProcess):
        result = {"exit": result.returncode, "stdout": result.stdout.decode(),
                  "stderr": result.stderr.decode(), "args": result.args}
    stderr = result["stderr"]
    assert result["exit"] != 0, result
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsqaudio: error:"), result
    assert result["stdout"] == "", result
    return lines[0]


def test_cli_rejects_mutated_files_with_one_line(tmp_path, tiny_codec, tiny_model_dir):
    valid = write_bsq(tiny_codec.encode(torch.from_numpy(make_signal(1.3)[:, 0]), 16000))
    bad = mutated_files(valid, 20)
    # Two more that read fine but that the tiny model cannot decode: another model's hash, and
    # the right hash with other code settings.
    header = {k: v for k, v in read_bsq(valid).header.items() if k != "code_space"}  # format 1
    other_model = {**header, "model": "someone-else", "model_hash": "ffffffffffffffff"}
    other_bits = {**header, "code_bits": 17}
    undecodable = [bsq_bytes(json.dumps(h).encode(), payload_for(h)) for h in (other_model,
                                                                                other_bits)]
    jobs, outputs = [], []
    for i, data in enumerate(bad + undecodable):
        path = tmp_path / f"bad{i:02d}.bsq"
        path.write_bytes(data)
        out_dir = tmp_path / f"out{i:02d}"
        out_dir.mkdir()
        outputs.append(out_dir)
        jobs.append(["decode", str(path), "-o", str(out_dir / "out.wav"), "--model",
                     str(tiny_model_dir), "--device", "cpu", "--quiet"])
        if i < len(bad):
            jobs.append(["info", str(path)])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    driver = subprocess.run([sys.executable, str(FUZZ_DIR / "cli_driver.py"),
                             str(tmp_path / "jobs.json"), str(tmp_path / "results.json")],
                            capture_output=True, text=True, timeout=300)
    assert driver.returncode == 0, driver.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == len(jobs) == 2 * len(bad) + len(undecodable)
    for result in results:
        line = assert_one_line_error(result)
        if not any(name in result["args"][1] for name in ("bad20", "bad21")):
            assert result["args"][1] in line  # read errors name the file
    for out_dir in outputs:
        assert list(out_dir.iterdir()) == [], f"{out_dir} not empty: no output, no .part"
    needs_model = [r for r in results if "bad20" in r["args"][1] or "bad21" in r["args"][1]]
    assert "someone-else (ffffffffffffffff)" in needs_model[0]["stderr"]
    assert "settings differ" in needs_model[1]["stderr"]

    # And twice through the real installed entry point, as a user runs it.
    entry = shutil.which("bsqaudio")
    command = [entry] if entry else [sys.executable, "-m", "bsqaudio"]
    first = tmp_path / "bad00.bsq"
    info = subprocess.run(command + ["info", str(first)], capture_output=True, timeout=120)
    assert_one_line_error(info)
    out = tmp_path / "real.wav"
    decode = subprocess.run(command + ["decode", str(tmp_path / "bad20.bsq"), "-o", str(out),
                                       "--model", str(tiny_model_dir), "--device", "cpu"],
                            capture_output=True, timeout=120)
    assert_one_line_error(decode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("real", ".real"))) == []


def test_cli_info_on_a_file_that_was_accepted_before_the_fix(tmp_path):
    """A lone surrogate in the model name made `bsqaudio info` die with a UnicodeEncodeError
    traceback; now it is a one-line error (checked in-process: no model needed)."""
    from bsqaudio.cli import codec_commands

    header = header_with(model="x\ud800")
    path = tmp_path / "surrogate.bsq"
    path.write_bytes(bsq_bytes(json.dumps(header).encode(), payload_for(header)))
    with pytest.raises(BsqAudioError, match="'model' is not printable text"):
        codec_commands.info(str(path), as_json=False)


# -- hostile files in the corpus ------------------------------------------------------------------

HOSTILE = fuzz.hostile_files()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_corpus_files_keep_the_property(name):
    """Each is small, claims far more than it holds, and is in every corpus the harness mutates."""
    data = HOSTILE[name]
    assert len(data) < 6000 and data in CORPUS
    assert fuzz.check(data, trace_memory=True) is None
    if not name.startswith("gain-"):
        assert_rejected(data, "outside|more than")
    else:  # the format stores any finite gain; they are refused before synthesis
        with pytest.raises(BsqAudioError, match="outside the \\+-100 dB"):
            read_bsq(data).check_gains()


def test_harness_catches_window_indices_sized_by_the_header(monkeypatch):
    """The property covers window_indices(): with the geometry limits taken away (the reader as
    it was), a 2.7 KB file whose window claims 2**20 rows makes 64 MiB of padding, and the harness
    reports it (the real file claimed 2**26 rows: 4 GiB)."""
    import bsqaudio.bitstream as bitstream
    import bsqaudio.codes as codes

    header = fuzz.make_header(163840, 36)
    header["window_frames"] = 16 * 2**20
    data = fuzz.raw_file(header)
    monkeypatch.setattr(bitstream, "_GEOMETRY_LIMITS", {})
    monkeypatch.setattr(bitstream, "MAX_PATCHES", 2**30)
    monkeypatch.setattr(codes, "MAX_PATCHES", 2**30)
    problem = fuzz.check(data)
    assert problem is not None and problem.startswith("memory: window_indices()"), problem
    monkeypatch.undo()
    assert fuzz.check(data) is None
    assert_rejected(data, "'window_frames' is 16777216, outside")


def test_file_of_many_tiny_windows_reads_fast():
    """Found by the atheris run (a 65 KB file of 21,695 one-code windows, 'slow: 1.56 s wall,
    1.00 s CPU' under its instrumentation): read_bsq looped over windows in Python, ~5.5 us each
    uninstrumented, so these 300,000 windows (900 KB) took 1.6 s and a 320 MiB file of them
    (MAX_CODES windows) three minutes. Windows are now decoded as rows of an array: ~40 ms."""
    import time

    n = 300_000
    header = header_with(hop_length=1, n_mels=1, patch_freq=1, window_frames=1, patch_time=1,
                         code_bits=8, num_samples=n, num_rows=n, num_windows=n)
    data = bsq_bytes(json.dumps(header).encode(), b"\x00\x49\x5a" * n)  # gain 10 dB, code 90
    start = time.process_time()
    codes = read_bsq(data)
    elapsed = time.process_time() - start
    assert codes.indices.shape == (n, 1) and (codes.indices == 90).all()
    assert (codes.gains_db == 10.0).all()
    assert elapsed < 0.5, f"{elapsed:.2f} s CPU"
