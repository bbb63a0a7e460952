#!/usr/bin/env python
"""Fuzz the .bsq reader (``bsqaudio.read_bsq``) with structure-aware mutations of valid files.

    python tests/fuzz/fuzz_bsq.py --cases 100000 --seed 1      # seeded-random mutator
    python tests/fuzz/fuzz_bsq.py --minutes 5                  # run for a while
    python tests/fuzz/fuzz_bsq.py --engine atheris --minutes 5 # coverage-guided (pip install atheris)
    python tests/fuzz/fuzz_bsq.py --repro BASE64               # re-check one input
    python tests/fuzz/fuzz_bsq.py --repro @crash-file

The corpus is made in-process: ``write_bsq`` on random Codes (L in 1..63, 0.01 s to 3 windows,
the default geometry and a few others, some with padding bits at the end of each window). Each
case applies 1-3 mutations (bit flips, byte replacements, truncation at every structural boundary,
junk appended, bytes inserted/deleted, splices of two files, header JSON edits, preamble and gain
edits, re-geometried headers with a matching payload), then fixes the CRC most of the time (a
fuzzer that never fixes the CRC only tests the CRC).

The property, for every input: ``read_bsq(data)`` either

* returns Codes that are consistent (header valid; indices (num_rows, n_mels // patch_freq) int64
  in [0, 2**L); gains (num_windows,) finite float32), that agree with an independent pure-Python
  decoding of the same bytes, and that round-trip (``write_bsq`` works, reading its output gives
  the same Codes, writing again gives the same bytes, and equals the input whenever the input's
  header JSON was already canonical and its padding bits zero), or
* raises ``BsqAudioError`` with a non-empty, one-line message;

and it takes under ``--time-limit`` seconds (CPU and wall), and, on the cases sampled with
tracemalloc, allocates at most ``MEMORY_FACTOR * len(data) + 1 MiB`` at peak. Anything else is a
failure: printed with a reproducer (base64 of the input), and the exit status is 1.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import random
import signal
import struct
import sys
import time
import traceback
import tracemalloc
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from bsqaudio.bitstream import (
    HEADER_FIELDS,
    MAGIC,
    _encode_header,
    header_version,
    payload_bytes,
    read_bsq,
    write_bsq,
)
from bsqaudio.codes import Codes
from bsqaudio.errors import BsqAudioError

PREAMBLE = 9  # magic (4) + version (1) + header length (4)
# Peak traced allocation allowed per input byte. Decoding is inherently ~64/L x the payload (one
# int64 per L-bit code: 64x for L = 1), and ``unpack_codes`` holds one bit-per-uint64 temporary
# (64x the window's payload) plus its shifted copy while it works: ~200x the file at worst for
# L = 1. What this bound catches is allocation driven by what a header *claims* rather than by the
# bytes actually present: that would be unbounded, not a constant factor.
MEMORY_FACTOR = 256
MEMORY_SLACK = 1 << 20
WINDOW_SAMPLES = 1024 * 160
HARD_TIMEOUT_S = 30.0
# On every case (cheap, unlike tracemalloc): the process's peak RSS may not grow by more than
# MEMORY_FACTOR * len(data) + RSS_SLACK while read_bsq runs. Catches big native allocations too.
RSS_SLACK = 64 << 20  # a case still running after this is interrupted and reported as a hang


# -- corpus ---------------------------------------------------------------------------------------

GEOMETRIES = [
    # (hop_length, n_mels, window_frames, patch_time, patch_freq): the first is the real one.
    (160, 128, 1024, 16, 16),
    (160, 80, 256, 8, 16),     # 5 patches a row: padding bits whenever 5 * L % 8 != 0
    (256, 40, 64, 16, 8),      # 5 patches a row, 4 rows a window
    (100, 3, 16, 4, 1),        # 3 patches a row
    (512, 1, 8, 8, 1),         # 1 patch a row, 1 row a window: many tiny windows
]


def make_header(num_samples: int, code_bits: int, geometry=GEOMETRIES[0], model: str = "fuzz",
                model_hash: str = "0123456789abcdef", source_rate: int = 44100,
                channels: int = 2) -> dict:
    hop, n_mels, window_frames, patch_time, patch_freq = geometry
    frames = math.ceil(num_samples / hop)
    rows = math.ceil(frames / patch_time)
    return {
        "model": model, "model_hash": model_hash, "sample_rate": 16000, "n_fft": 1024,
        "hop_length": hop, "win_length": 400, "n_mels": n_mels, "window_frames": window_frames,
        "patch_time": patch_time, "patch_freq": patch_freq, "code_bits": code_bits,
        "num_windows": math.ceil(rows / (window_frames // patch_time)), "num_rows": rows,
        "num_samples": num_samples, "source_sample_rate": source_rate, "source_channels": channels,
    }


def random_codes(rng: random.Random, max_windows: float = 3.0) -> Codes:
    """Random Codes with a valid header: 0.01 s up to ``max_windows`` windows of audio."""
    code_bits = rng.choice([1, 2, 7, 8, 9, 16, 18, 31, 32, 33, 36, 62, 63, rng.randint(1, 63)])
    geometry = GEOMETRIES[0] if rng.random() < 0.7 else rng.choice(GEOMETRIES[1:])
    hop, _, window_frames, _, _ = geometry
    window_samples = hop * window_frames
    low, high = math.log(160), math.log(max_windows * WINDOW_SAMPLES)
    num_samples = max(1, int(math.exp(rng.uniform(low, high))))
    if geometry is not GEOMETRIES[0]:  # keep the odd geometries to a few windows
        num_samples = min(num_samples, rng.randint(1, int(max_windows * window_samples)))
    if rng.random() < 0.15:  # exactly on a window boundary, or one sample past it
        num_samples = window_samples * rng.randint(1, max(1, int(max_windows))) + rng.choice([0, 1])
    model = rng.choice(["fuzz", "bsqaudio-small", "m" * rng.randint(1, 40), "modèle-é"])
    header = make_header(num_samples, code_bits, geometry, model=model,
                         model_hash=f"{rng.getrandbits(64):016x}",
                         source_rate=rng.choice([8000, 16000, 44100, 48000, 96000]),
                         channels=rng.choice([1, 2, 6]))
    if rng.random() < 0.5:  # format 2: the code space in a binary header
        header["code_space"] = f"{rng.getrandbits(64):016x}"
    freq = header["n_mels"] // header["patch_freq"]
    np_rng = np.random.default_rng(rng.getrandbits(32))
    count = header["num_rows"] * freq
    top = 2 ** code_bits - 1
    style = rng.random()
    if style < 0.1:
        indices = np.full(count, top, dtype=np.uint64)
    elif style < 0.2:
        indices = np.zeros(count, dtype=np.uint64)
    else:
        indices = np_rng.integers(0, top, size=count, dtype=np.uint64, endpoint=True)
    gains = np_rng.uniform(-60, 60, size=header["num_windows"]).astype(np.float16)
    if rng.random() < 0.1:
        gains[0] = rng.choice([0.0, -0.0, 65504.0, -65504.0, 6e-8, 1e-4])
    return Codes(indices=torch.from_numpy(indices.astype(np.int64).reshape(-1, freq)),
                 gains_db=torch.from_numpy(gains.astype(np.float32)), header=header)


def raw_file(header: dict, gain: float = 10.0, code_byte: int = 0,
             body_bytes: int | None = None) -> bytes:
    """A .bsq file with any header (valid or not) and the payload write_bsq would lay out for it
    (rows present only, each window's codes padded to whole bytes), or a gain and ``body_bytes``
    of codes; CRC fixed."""
    head = _encode_header(header)
    freq = header["n_mels"] // header["patch_freq"]
    per_window = header["window_frames"] // header["patch_time"]
    body = bytearray()
    if body_bytes is not None:
        body += struct.pack("<e", gain) + bytes([code_byte]) * body_bytes
    for w in range(header["num_windows"] if body_bytes is None else 0):
        rows = max(0, min(per_window, header["num_rows"] - w * per_window))
        body += struct.pack("<e", gain) + bytes([code_byte]) * payload_bytes(rows, freq,
                                                                             header["code_bits"])
    return fix_crc(MAGIC + bytes([header_version(header)]) + struct.pack("<I", len(head)) + head +
                   bytes(body) + b"\0\0\0\0")


def hostile_files() -> dict[str, bytes]:
    """Small files whose headers claim sizes the bytes do not back: each once passed the reader's
    checks and then made something downstream allocate or produce what the header claimed."""
    def geometry(num_samples, **fields):
        h = {**make_header(16000, 36), **fields, "num_samples": num_samples}
        frames = -(-num_samples // h["hop_length"])
        rows = -(-frames // h["patch_time"])
        per_window = h["window_frames"] // h["patch_time"]
        return {**h, "num_rows": rows, "num_windows": -(-rows // per_window)}

    return {
        # 2.7 KB: 64 rows present, but a window "holds" 2**26 rows: window_indices() (tokens
        # --format npy, decode) allocated 2**26 x 8 int64, 4 GiB.
        "huge-window": raw_file(geometry(163840, window_frames=16 * 2**26)),
        # 16 M patches a window (1024 mel bands of 1, 16384 frames of 1), one row present.
        "huge-patch-grid": raw_file(geometry(160, n_mels=1024, patch_freq=1, window_frames=16384,
                                             patch_time=1, hop_length=160)),
        # One row standing for 2**62 samples: decode would write exabytes of silence.
        "huge-hop": raw_file(geometry(2**62, hop_length=2**58, patch_time=16)),
        # More mel bands than any model: the window's spectrogram alone would be 2**30 floats.
        "huge-n_mels": raw_file(geometry(160, n_mels=2**20, patch_freq=2**20)),
        # 10**12 samples claimed in a 2 KB file (the size check catches it; MAX_CODES first).
        "huge-length": raw_file(geometry(10**12), body_bytes=2048),
        # Gains the reader accepts (finite float16) but no audio has: Codes.check_gains refuses
        # them before synthesis (+400 dB overflowed to inf, +200 dB made a full-scale square).
        "gain-400dB": raw_file(geometry(16000), gain=400.0),
        "gain-65504dB": raw_file(geometry(16000), gain=65504.0),
    }


def make_corpus(seed: int, count: int = 48, max_windows: float = 3.0) -> list[bytes]:
    """``count`` valid files, then the hostile files (see hostile_files) to mutate as well."""
    rng = random.Random(f"corpus-{seed}")
    return [write_bsq(random_codes(rng, max_windows)) for _ in range(count)] + \
        list(hostile_files().values())


# -- layout: the structural boundaries of a (possibly broken) file ----------------------------------

def boundaries(data: bytes) -> list[int]:
    """Offsets where a field starts or ends: preamble fields, header end, each gain and each
    window's codes, the CRC. Best effort: as far as the bytes can be parsed."""
    n = len(data)
    points = {0, 1, 3, 4, 5, 8, 9, n, max(0, n - 4), max(0, n - 1)}
    if n >= PREAMBLE:
        (hlen,) = struct.unpack_from("<I", data, 5)
        end = PREAMBLE + hlen
        if end <= n:
            points.update({end, end - 1})
            try:
                header = json.loads(data[PREAMBLE:end])
                # Only plain, modest ints: "x" * 70000 * 60000 is a 4 GB string, not a TypeError.
                h = {k: v for k, v in header.items()
                     if type(v) is int and 0 < v < 2**40}  # not bool, not float
                freq = h["n_mels"] // h["patch_freq"]
                per_window = h["window_frames"] // h["patch_time"]
                offset = end
                for w in range(min(h["num_windows"], 4096)):
                    rows = min(per_window, h["num_rows"] - w * per_window)
                    points.update({offset, offset + 1, offset + 2})
                    offset += 2 + payload_bytes(rows, freq, h["code_bits"])
                    if offset > n:
                        break
                points.update({offset, offset - 1})
            except Exception:  # noqa: BLE001 - best effort on damaged files
                pass
    return sorted(p for p in points if 0 <= p <= n)


def split(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(preamble, header JSON, rest including CRC), or None if the header length is unusable."""
    if len(data) < PREAMBLE:
        return None
    (hlen,) = struct.unpack_from("<I", data, 5)
    if PREAMBLE + hlen > len(data):
        return None
    return data[:PREAMBLE], data[PREAMBLE:PREAMBLE + hlen], data[PREAMBLE + hlen:]


def fix_crc(data: bytes) -> bytes:
    if len(data) < 4:
        return data
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def with_header(data: bytes, head: bytes, *, stale_length: bool = False) -> bytes:
    parts = split(data)
    if parts is None:
        return data
    pre, old, rest = parts
    length = len(old) if stale_length else len(head)
    return pre[:5] + struct.pack("<I", length) + head + rest


# -- mutations ------------------------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x22, 0x5B, 0x7B, 0x7D, 0x30, 0x39]
INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 63, 64, 255, 256, 1023, 1024, 65535, 2**31 - 1, 2**31,
                    2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**18, 10**30, -2**63,
                    10**400]
WEIRD_STRINGS = ["", " ", "a\nb", "tab\there", "\x00", "\x1b[31mred", "\u00e9\u4e2d\U0001F600",
                 "\ud800", "\udfff", "\u2028", "\ufeff", "%s%n", "x" * 70000, "\u00e9" * 30000,
                 "../../etc/passwd", "\\", '"']


def weird_value(rng: random.Random):
    choice = rng.randrange(12)
    if choice == 0:
        return rng.choice(INTERESTING_INTS)
    if choice == 1:
        return -rng.choice(INTERESTING_INTS[1:])
    if choice == 2:
        return rng.choice([0.0, -0.0, 1.5, 16000.0, 1e308, -1e-308, float("nan"), float("inf")])
    if choice == 3:
        return rng.choice([True, False, None])
    if choice == 4:
        return rng.choice(WEIRD_STRINGS)
    if choice == 5:
        return str(rng.choice(INTERESTING_INTS))
    if choice == 6:
        return [rng.choice(INTERESTING_INTS)] * rng.randint(0, 3)
    if choice == 7:
        return {"value": rng.choice(INTERESTING_INTS), "nested": {"deeper": [1, {"x": None}]}}
    if choice == 8:
        value: object = 1
        for _ in range(rng.choice([2, 50, 400])):  # deeper: raw text edits
            value = [value] if rng.random() < 0.5 else {"k": value}
        return value
    if choice == 9:
        return rng.randint(-2**70, 2**70)
    if choice == 10:
        return 10 ** rng.choice([19, 100, 1000, 4000])
    return rng.choice(INTERESTING_INTS) * rng.choice([1, 3, 1000])


def dumps(header, rng: random.Random) -> bytes:
    """Header JSON in the canonical form, or some other valid JSON spelling of it."""
    style = rng.randrange(6)
    try:
        if style == 0:
            return json.dumps(header, indent=rng.choice([None, 1, "\t"])).encode()
        if style == 1:
            return json.dumps(header, ensure_ascii=False).encode("utf-8", "surrogatepass")
        if style == 2 and isinstance(header, dict):
            items = list(header.items())
            rng.shuffle(items)
            return json.dumps(dict(items)).encode()
        return _encode_header(header)
    except (ValueError, RecursionError, TypeError):
        return b"{}"


def header_edit(data: bytes, rng: random.Random, corpus: list[bytes]) -> tuple[bytes, str]:
    parts = split(data)
    if parts is None:
        return data, "header_edit(skipped)"
    raw = parts[1]
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    kind = rng.randrange(16)
    keys = list(HEADER_FIELDS)
    if not isinstance(header, dict):
        fresh = random_codes(rng, 1).header
        header = {k: v for k, v in fresh.items() if k != "code_space"}  # JSON: a format 1 header
    if kind == 0:
        key = rng.choice(keys)
        header.pop(key, None)
        desc = f"remove {key}"
    elif kind == 1:
        key = rng.choice(["comment", "extra", "a\nb", "\u00e9", "", "x" * 5000, "\ud800",
                          "code_bits ", "CODE_BITS", "__proto__"])
        header[key] = weird_value(rng)
        desc = f"add {key[:20]!r}"
    elif kind in (2, 3, 4):
        key = rng.choice(keys)
        header[key] = weird_value(rng)
        desc = f"retype {key}"
    elif kind == 5:
        key = rng.choice([k for k, t in HEADER_FIELDS.items() if t is int])
        header[key] = -abs(header.get(key, 1) if isinstance(header.get(key), int) else 1)
        desc = f"negate {key}"
    elif kind == 6:
        key = rng.choice([k for k, t in HEADER_FIELDS.items() if t is str])
        header[key] = rng.choice(WEIRD_STRINGS)
        desc = f"string {key}"
    elif kind in (7, 8, 9):
        return consistent_header(data, rng, header), "consistent header"
    elif kind == 10:  # raw JSON surgery: the bytes no json.dumps would write
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000,
                            b"-" + b"9" * 4400, b"1.0", b"0x10", b"01", b"1e2", b'"\\ud800"',
                            b'"\\u0000"', b"[" * 3000 + b"]" * 3000, b"{" * 100, b"tru", b"nul"])
        key = rng.choice(keys)
        head = _encode_header(header)
        needle = json.dumps(key).encode() + b":"
        at = head.find(needle)
        if at < 0:
            head = head[:-1] + b"," + needle + token + b"}"
        else:
            start = at + len(needle)
            end = start
            depth = 0
            while end < len(head):
                c = head[end:end + 1]
                if c in b"[{":
                    depth += 1
                elif c in b"]}":
                    if depth == 0:
                        break
                    depth -= 1
                elif c == b"," and depth == 0:
                    break
                end += 1
            head = head[:start] + token + head[end:]
        return with_header(data, head, stale_length=rng.random() < 0.1), f"raw token {key}"
    elif kind == 11:  # not UTF-8, or UTF-8 with a twist
        head = bytearray(_encode_header(header))
        junk = rng.choice([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80",
                           b"\xef\xbb\xbf", b"\xf4\x90\x80\x80", b"\x00"])
        at = rng.randint(0, len(head))
        head[at:at] = junk
        return with_header(data, bytes(head)), "non-utf8 header"
    elif kind == 12:
        head = rng.choice([b"", b"{}", b"[]", b"null", b"0", b'"x"', b"{" * 40000,
                           b"[" * 60000, b" " * 100 + _encode_header(header),
                           _encode_header(header) + rng.choice([b" ", b"x", b"{}", b"\x00"]),
                           b'{"a":' * 2000 + b"1" + b"}" * 2000])
        return with_header(data, head), "replace header"
    elif kind == 13:  # duplicate keys: the last one wins
        key = rng.choice(keys)
        head = _encode_header(header)[:-1] + b"," + json.dumps(key).encode() + b":" + \
            dumps(weird_value(rng), rng) + b"}"
        return with_header(data, head), f"duplicate {key}"
    elif kind == 14:  # a header from another file, on this file's body
        other = split(rng.choice(corpus))
        head = other[1] if other else b"{}"
        return with_header(data, head), "foreign header"
    else:  # huge, very long
        key = rng.choice(keys)
        header[key] = rng.choice(["x" * rng.choice([1000, 60000, 70000]), 10 ** 4200,
                                  -(10 ** 4200), 2 ** 64, 1e308])
        desc = f"huge {key}"
    try:
        head = dumps(header, rng)
    except Exception:  # noqa: BLE001
        head = b"{}"
    return with_header(data, head, stale_length=rng.random() < 0.05), desc


def consistent_header(data: bytes, rng: random.Random, header: dict) -> bytes:
    """Change the geometry or length and recompute num_rows/num_windows so the header is valid;
    then often regenerate a payload of exactly the implied size (a new valid file)."""
    # A format 1 (JSON) header: its extreme values may not fit format 2's fixed-width fields.
    header = {k: header.get(k, v) for k, v in random_codes(rng, 1).header.items() if k != "code_space"}
    for key in ("num_samples", "code_bits", "hop_length", "n_mels", "patch_freq", "patch_time",
                "window_frames"):
        if not isinstance(header[key], int) or isinstance(header[key], bool) or header[key] <= 0:
            header[key] = random_codes(rng, 1).header[key]
    change = rng.randrange(6)
    if change == 0:
        header["num_samples"] = rng.choice([1, 2, 159, 160, 161, 2559, 2560, 2561, WINDOW_SAMPLES,
                                            WINDOW_SAMPLES + 1, rng.randint(1, 4 * WINDOW_SAMPLES),
                                            10**9, 10**15, 2**62, 10**30])
    elif change == 1:
        header["code_bits"] = rng.randint(1, 63)
    elif change == 2:
        header["patch_freq"] = rng.choice([1, 2, 3, 5, 16, 128])
        header["n_mels"] = header["patch_freq"] * rng.choice([1, 2, 3, 5, 8])
    elif change == 3:
        header["patch_time"] = rng.choice([1, 2, 4, 16, 1024])
        header["window_frames"] = header["patch_time"] * rng.choice([1, 2, 7, 64])
    elif change == 4:
        header["hop_length"] = rng.choice([1, 7, 160, 10**6, 2**40])
    else:
        header["num_samples"] = 10 ** rng.choice([19, 40, 300, 1000])
        header["hop_length"] = rng.choice([1, 10 ** 10])
    h = header
    if h["window_frames"] % h["patch_time"]:
        h["window_frames"] = h["patch_time"] * rng.choice([1, 4, 64])
    if h["n_mels"] % h["patch_freq"]:
        h["n_mels"] = h["patch_freq"] * rng.choice([1, 3, 8])
    frames = -(-h["num_samples"] // h["hop_length"])
    rows = -(-frames // h["patch_time"])
    h["num_rows"] = rows
    h["num_windows"] = -(-rows // (h["window_frames"] // h["patch_time"]))
    head = _encode_header(h)
    freq = h["n_mels"] // h["patch_freq"]
    size = 2 * h["num_windows"] + -(-rows * freq * h["code_bits"] // 8)
    if size <= 200_000 and rng.random() < 0.7:
        body = bytearray(rng.getrandbits(8 * size).to_bytes(size, "little") if size else b"")
        per_window = h["window_frames"] // h["patch_time"]
        offset = 0
        for w in range(h["num_windows"]):  # finite gains, mostly
            body[offset:offset + 2] = struct.pack("<e", rng.uniform(-80, 80))
            offset += 2 + -(-min(per_window, rows - w * per_window) * freq * h["code_bits"] // 8)
        rest = bytes(body) + b"\0\0\0\0"
    else:
        parts = split(data)
        rest = parts[2] if parts else b""
    return MAGIC + bytes([header_version(h)]) + struct.pack("<I", len(head)) + head + rest


def mutate_once(data: bytes, rng: random.Random, corpus: list[bytes]) -> tuple[bytes, str]:
    n = len(data)
    kind = rng.choices(
        ["flip", "bytes", "truncate", "extend", "insert", "delete", "splice", "header", "preamble",
         "gain", "payload"],
        weights=[10, 10, 10, 5, 4, 4, 6, 30, 6, 5, 5])[0]
    buf = bytearray(data)
    if kind == "flip" and n:
        region = rng.random()
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            if region < 0.3:  # preamble and header: where the parser lives
                at = rng.randrange(min(n, rng.choice([PREAMBLE, 64, 512, n])))
            else:
                at = rng.randrange(n)
            buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), "flip bits"
    if kind == "bytes" and n:
        at = rng.randrange(n)
        count = rng.choice([1, 1, 2, 4, 8])
        for i in range(at, min(n, at + count)):
            buf[i] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
        return bytes(buf), f"replace bytes at {at}"
    if kind == "truncate":
        points = boundaries(data)
        at = rng.choice(points) + rng.choice([-1, 0, 0, 0, 1]) if rng.random() < 0.8 \
            else rng.randint(0, n)
        at = max(0, min(n, at))
        return data[:at], f"truncate at {at}"
    if kind == "extend":
        junk = rng.choice([bytes(rng.randint(1, 64)), b"\xff" * rng.randint(1, 64),
                           os.urandom(rng.randint(1, 256)), data, data[:PREAMBLE],
                           struct.pack("<I", zlib.crc32(data))])
        return (data + junk if rng.random() < 0.8 else junk + data), "extend"
    if kind == "insert":
        at = rng.choice(boundaries(data))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 100])))
        return bytes(buf), f"insert at {at}"
    if kind == "delete" and n:
        at = rng.choice(boundaries(data))
        del buf[at:at + rng.choice([1, 2, 4, 100])]
        return bytes(buf), f"delete at {at}"
    if kind == "splice":
        other = rng.choice(corpus)
        i = rng.choice(boundaries(data))
        j = rng.choice(boundaries(other)) if rng.random() < 0.7 else i
        return data[:i] + other[j:], f"splice {i}/{j}"
    if kind == "header":
        return header_edit(data, rng, corpus)
    if kind == "preamble" and n >= PREAMBLE:
        field_ = rng.randrange(3)
        if field_ == 0:
            buf[0:4] = rng.choice([b"BSQa", b"RIFF", b"\0\0\0\0", b"ABQS", b"BSQ\0"])
        elif field_ == 1:
            buf[4] = rng.choice([0, 2, 3, 127, 128, 255])
        else:
            (hlen,) = struct.unpack_from("<I", data, 5)
            value = rng.choice([0, 1, hlen - 1, hlen + 1, hlen + 2, n, n - 9, n - 12, 65536, 65537,
                                2**31, 2**32 - 1, rng.getrandbits(32)])
            struct.pack_into("<I", buf, 5, value % 2**32)
        return bytes(buf), f"preamble field {field_}"
    if kind in ("gain", "payload"):
        points = boundaries(data)
        if len(points) > 6:
            at = rng.choice(points[4:-2])
            if kind == "gain":
                value = rng.choice([b"\x00\x7c", b"\x00\xfc", b"\x01\x7e", b"\xff\x7f",
                                    b"\xff\x7b", b"\x00\x80", b"\x01\x00"])
            else:
                value = bytes([rng.choice([0x00, 0xFF])]) * rng.choice([1, 8, 64])
            buf[at:at + len(value)] = value
            return bytes(buf[:n]), kind
    return data, "noop"


def mutate(base: bytes, rng: random.Random, corpus: list[bytes]) -> tuple[bytes, list[str]]:
    data = base
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        data, desc = mutate_once(data, rng, corpus)
        steps.append(desc)
    if rng.random() < 0.75:
        data = fix_crc(data)
        steps.append("fix crc")
    return data, steps


# -- the property ---------------------------------------------------------------------------------

def _max_rss() -> int:
    """Peak resident set size of this process so far, in bytes (0 where unknown)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang(f"still running after {HARD_TIMEOUT_S} s")


def reference_decode(data: bytes, header: dict) -> tuple[list[list[int]], list[float], bool]:
    """Decode the codes and gains of an accepted file with plain Python ints, independently of
    numpy: (rows of codes, gains, whether every padding bit is zero)."""
    (hlen,) = struct.unpack_from("<I", data, 5)
    offset = PREAMBLE + hlen
    freq = header["n_mels"] // header["patch_freq"]
    per_window = header["window_frames"] // header["patch_time"]
    bits = header["code_bits"]
    mask = (1 << bits) - 1
    codes, gains, padding_zero = [], [], True
    for w in range(header["num_windows"]):
        rows = min(per_window, header["num_rows"] - w * per_window)
        (gain,) = struct.unpack_from("<e", data, offset)
        gains.append(gain)
        offset += 2
        size = -(-rows * freq * bits // 8)
        value = int.from_bytes(data[offset:offset + size], "big")
        pad = size * 8 - rows * freq * bits
        padding_zero &= (value & ((1 << pad) - 1)) == 0
        value >>= pad
        flat = [(value >> (bits * (rows * freq - 1 - i))) & mask for i in range(rows * freq)]
        codes.extend(flat[r * freq:(r + 1) * freq] for r in range(rows))
        offset += size
    return codes, gains, padding_zero


def v2_reference(raw: bytes) -> dict:
    """A format 2 header decoded independently of the reader: the struct, the name, the counts."""
    fields = struct.unpack("<8s8sIHHHHHHHBQIH", raw[:49])
    names = ("code_space", "model_hash", "sample_rate", "n_fft", "hop_length", "win_length", "n_mels",
             "window_frames", "patch_time", "patch_freq", "code_bits", "num_samples",
             "source_sample_rate", "source_channels")
    h = dict(zip(names, fields, strict=True))
    h["code_space"], h["model_hash"], h["model"] = h["code_space"].hex(), h["model_hash"].hex(), raw[49:].decode()
    h["num_rows"] = math.ceil(math.ceil(h["num_samples"] / h["hop_length"]) / h["patch_time"])
    h["num_windows"] = math.ceil(h["num_rows"] / (h["window_frames"] // h["patch_time"]))
    return h


def check_codes(codes: Codes, data: bytes) -> None:
    """Assert everything the property says about an accepted file."""
    h = codes.header
    version = data[4]
    assert isinstance(h, dict) and set(h) == set(HEADER_FIELDS) | ({"code_space"} if version == 2 else set()), \
        "header fields"
    _, raw, _ = split(data)
    assert h == (json.loads(raw) if version == 1 else v2_reference(raw)), "header differs from the file's"
    for key, kind in HEADER_FIELDS.items():
        assert type(h[key]) is kind, f"{key} type"
        if kind is str:  # what the CLI prints (info, the model-mismatch error) must print
            h[key].encode("utf-8")
            assert h[key].isprintable(), f"{key} is not printable text: {h[key]!r}"
    freq = h["n_mels"] // h["patch_freq"]
    assert isinstance(codes.indices, torch.Tensor) and codes.indices.dtype == torch.int64
    assert tuple(codes.indices.shape) == (h["num_rows"], freq), "indices shape"
    assert isinstance(codes.gains_db, torch.Tensor) and codes.gains_db.dtype == torch.float32
    assert tuple(codes.gains_db.shape) == (h["num_windows"],), "gains shape"
    assert bool(torch.isfinite(codes.gains_db).all()), "gain not finite"
    indices = codes.indices.numpy()
    assert (indices >= 0).all(), "negative index"
    assert (indices >> h["code_bits"] == 0).all(), "index >= 2**L"
    # An independent decoding of the same bytes agrees.
    ref_codes, ref_gains, padding_zero = reference_decode(data, h)
    assert indices.tolist() == ref_codes, "indices differ from a pure-Python decoding"
    assert codes.gains_db.tolist() == ref_gains, "gains differ from a pure-Python decoding"
    # Windows as decode and `tokens --format npy` see them: sized from the rows present.
    windows = codes.window_indices().numpy()
    per_window = h["window_frames"] // h["patch_time"]
    assert windows.shape == (h["num_windows"], per_window * freq), "window_indices shape"
    flat = windows.reshape(-1, freq)
    assert (flat[: h["num_rows"]] == indices).all(), "window_indices differ from indices"
    assert (flat[h["num_rows"]:] == -1).all(), "window_indices padding"
    # Round trip.
    canonical = write_bsq(codes)
    back = read_bsq(canonical)
    assert back.header == h and torch.equal(back.indices, codes.indices), "re-read differs"
    assert back.gains_db.numpy().tobytes() == codes.gains_db.numpy().tobytes(), "re-read gains"
    assert write_bsq(back) == canonical, "writing is not idempotent"
    if raw == _encode_header(h) and padding_zero:
        assert canonical == data, "canonical input does not re-encode to itself"


def check(data: bytes, *, time_limit: float = 1.0, trace_memory: bool = False) -> str | None:
    """None if ``data`` satisfies the property, else a description of the failure."""
    return check_detailed(data, time_limit=time_limit, trace_memory=trace_memory)[0]


def check_detailed(data: bytes, *, time_limit: float = 1.0,
                   trace_memory: bool = False) -> tuple[str | None, str | None]:
    """(failure or None, the rejection message or None if the file was accepted)."""
    use_alarm = hasattr(signal, "setitimer") and \
        __import__("threading").current_thread() is __import__("threading").main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, HARD_TIMEOUT_S)
    if trace_memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
    rss_before = _max_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    problem = None
    codes = None
    message = None
    window_bytes = 0
    try:
        codes = read_bsq(data)
        try:  # what `tokens --format npy` and decode do next; inside the time and memory bounds
            windows = codes.window_indices()
            window_bytes = windows.element_size() * windows.numel()
            del windows
        except BsqAudioError as err:
            raise AssertionError(f"window_indices() of an accepted file raised: {err}") from None
    except BsqAudioError as err:
        message = str(err)
        if not message.strip():
            problem = "BsqAudioError with an empty message"
        elif "\n" in message or "\r" in message or not message.isprintable():
            problem = f"BsqAudioError message is not one printable line: {message[:300]!r}"
    except _Hang as err:
        problem = f"hang: {err}"
    except BaseException as err:  # noqa: BLE001 - anything else is what we are looking for
        if isinstance(err, KeyboardInterrupt):
            raise
        tb = traceback.format_exception(type(err), err, err.__traceback__)
        problem = f"{type(err).__name__}: {str(err)[:300]}\n" + "".join(tb[-4:])
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if trace_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if problem is None and wall > time_limit and cpu > time_limit:
        problem = f"slow: {wall:.2f} s wall, {cpu:.2f} s CPU for {len(data)} bytes"
    if problem is None and trace_memory and peak > MEMORY_FACTOR * len(data) + MEMORY_SLACK:
        problem = f"memory: peak {peak} bytes traced for a {len(data)}-byte input"
    if problem is None and codes is not None and \
            window_bytes > MEMORY_FACTOR * len(data) + MEMORY_SLACK:  # torch's memory is untraced
        problem = f"memory: window_indices() is {window_bytes} bytes for a {len(data)}-byte input"
    rss_growth = _max_rss() - rss_before
    if problem is None and rss_growth > MEMORY_FACTOR * len(data) + RSS_SLACK:
        problem = f"memory: peak RSS grew by {rss_growth} bytes for a {len(data)}-byte input"
    if problem is None and codes is not None:
        try:
            check_codes(codes, data)
        except Exception as err:  # noqa: BLE001
            tb = traceback.format_exception(type(err), err, err.__traceback__)
            problem = f"accepted file breaks the property: {type(err).__name__}: {err}\n" + \
                "".join(tb[-3:])
    return problem, message


# -- driver ---------------------------------------------------------------------------------------

@dataclass
class Report:
    cases: int = 0
    accepted: int = 0
    failures: list[dict] = field(default_factory=list)
    messages: Counter = field(default_factory=Counter)
    memory_checked: int = 0
    wall_s: float = 0.0
    max_case_s: float = 0.0

    def summary(self) -> str:
        top = ", ".join(f"{m!r}: {c}" for m, c in self.messages.most_common(6))
        return (f"{self.cases} cases, {len(self.failures)} failures, {self.accepted} accepted, "
                f"{self.cases - self.accepted} rejected ({len(self.messages)} distinct reasons), "
                f"{self.memory_checked} memory-checked, slowest case {self.max_case_s * 1e3:.1f} ms, "
                f"{self.wall_s:.1f} s wall\n  most common rejections: {top}")


def reason(message: str) -> str:
    """A rejection message without its numbers and names: the kind of check that fired."""
    head = message.split(":", 2)[-1] if message.startswith("corrupt") else message
    return "".join("#" if c.isdigit() else c for c in head)[:60].strip()


def reproducer(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(cases: int | None = None, minutes: float | None = None, seed: int = 0,
        memory_every: int = 25, time_limit: float = 1.0, max_windows: float = 3.0,
        corpus_size: int = 48, max_failures: int = 20, verbose: bool = False,
        out=sys.stdout) -> Report:
    """Run the seeded-random fuzzer for ``cases`` cases or ``minutes`` minutes."""
    if cases is None and minutes is None:
        cases = 10_000
    deadline = time.monotonic() + minutes * 60 if minutes is not None else None
    rng = random.Random(seed)
    corpus = make_corpus(seed, corpus_size, max_windows)
    report = Report()
    start = last_progress = time.perf_counter()
    index = 0
    while (cases is None or index < cases) and (deadline is None or time.monotonic() < deadline):
        if index < len(corpus):
            data, steps = corpus[index], ["unmutated"]  # the seeds themselves must pass
        else:
            data, steps = mutate(rng.choice(corpus), rng, corpus)
        trace = memory_every > 0 and index % memory_every == 0
        t0 = time.perf_counter()
        problem, message = check_detailed(data, time_limit=time_limit, trace_memory=trace)
        report.max_case_s = max(report.max_case_s, time.perf_counter() - t0)
        report.memory_checked += trace
        report.cases += 1
        if problem is None:
            if message is None:
                report.accepted += 1
            else:
                report.messages[reason(message)] += 1
        else:
            failure = {"case": index, "seed": seed, "mutations": steps, "problem": problem,
                       "input_base64": reproducer(data)}
            report.failures.append(failure)
            print(f"FAILURE case {index} (seed {seed}; {' + '.join(steps)}): {problem}\n"
                  f"  reproduce: python tests/fuzz/fuzz_bsq.py --repro {failure['input_base64']}",
                  file=out, flush=True)
            if len(report.failures) >= max_failures:
                print(f"stopping after {max_failures} failures", file=out)
                break
        if verbose and time.perf_counter() - last_progress > 30:
            last_progress = time.perf_counter()
            print(f"  ... {report.cases} cases, {len(report.failures)} failures, "
                  f"{last_progress - start:.0f} s", file=out, flush=True)
        index += 1
    report.wall_s = time.perf_counter() - start
    return report


def run_atheris(args) -> None:  # pragma: no cover - needs atheris, runs until libFuzzer exits
    import tempfile

    import atheris

    from bsqaudio import bitstream

    for name in ("read_bsq", "validate_header", "unpack_codes", "payload_bytes", "file_size",
                 "_encode_header"):
        atheris.instrument_func(getattr(bitstream, name))
    atheris.instrument_func(json.decoder.JSONDecoder.decode)
    atheris.instrument_func(json.decoder.JSONDecoder.raw_decode)
    corpus = make_corpus(args.seed, args.corpus_size)
    corpus_dir = tempfile.mkdtemp(prefix="bsq-fuzz-corpus-")
    for i, data in enumerate(corpus):
        with open(os.path.join(corpus_dir, f"seed-{i:03d}.bsq"), "wb") as handle:
            handle.write(data)
    counter = [0]

    def test_one(data: bytes) -> None:
        counter[0] += 1
        rss = _max_rss()
        problem = check(data, time_limit=args.time_limit,
                        trace_memory=args.memory_every > 0 and counter[0] % args.memory_every == 0)
        if _max_rss() - rss > 256 << 20:  # the harness's own checks included
            print(f"note: peak RSS grew by {(_max_rss() - rss) >> 20} MiB on a {len(data)}-byte "
                  f"input: --repro {reproducer(data)}", flush=True)
        if problem is not None:
            print(f"FAILURE: {problem}\n  reproduce: python tests/fuzz/fuzz_bsq.py --repro "
                  f"{reproducer(data)}", flush=True)
            raise RuntimeError(problem)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.3:
            out = atheris.Mutate(data, max_size)
        else:
            out, _ = mutate(data or rng.choice(corpus), rng, corpus)
        return out[:max_size]

    libfuzzer = [sys.argv[0], f"-seed={args.seed or 1}", "-max_len=262144",
                 f"-timeout={int(HARD_TIMEOUT_S)}", "-rss_limit_mb=4096", "-print_final_stats=1"]
    if args.cases is not None:
        libfuzzer.append(f"-runs={args.cases}")
    if args.minutes is not None:
        libfuzzer.append(f"-max_total_time={int(args.minutes * 60)}")
    if args.artifacts:
        libfuzzer.append(f"-artifact_prefix={args.artifacts.rstrip('/')}/")
    libfuzzer.append(corpus_dir)
    print(f"atheris {getattr(atheris, '__version__', '')}: corpus of {len(corpus)} files in "
          f"{corpus_dir}; libFuzzer args {libfuzzer[1:]}", flush=True)
    atheris.Setup(libfuzzer, test_one, custom_mutator=custom_mutator)
    atheris.Fuzz()


def load_repro(value: str) -> bytes:
    if value.startswith("@"):
        with open(value[1:], "rb") as handle:
            raw = handle.read()
        try:
            return base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            return raw  # a raw crash file (libFuzzer artifact)
    return base64.b64decode(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, help="number of cases (default 10000)")
    parser.add_argument("--minutes", type=float, help="run for this long instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=["random", "atheris"], default="random",
                        help="random: seeded structure-aware mutator (default, reproducible); "
                             "atheris: coverage-guided libFuzzer with the same mutations")
    parser.add_argument("--time-limit", type=float, default=1.0,
                        help="seconds (CPU and wall) a case may take (default 1)")
    parser.add_argument("--memory-every", type=int, default=25,
                        help="trace memory on every Nth case (0: never)")
    parser.add_argument("--max-windows", type=float, default=3.0,
                        help="longest corpus file, in windows (default 3)")
    parser.add_argument("--corpus-size", type=int, default=48)
    parser.add_argument("--artifacts", help="folder to write failing inputs to")
    parser.add_argument("--repro", help="check one input: base64, or @FILE (base64 or raw)")
    args = parser.parse_args(argv)
    if args.repro:
        data = load_repro(args.repro)
        problem = check(data, time_limit=args.time_limit, trace_memory=True)
        try:
            outcome = f"accepted: {read_bsq(data).header}"
        except Exception as err:  # noqa: BLE001
            outcome = f"raised {type(err).__name__}: {err}"[:2000]
        print(f"{len(data)} bytes; {outcome}")
        print("OK" if problem is None else f"FAILURE: {problem}")
        return 0 if problem is None else 1
    if args.engine == "atheris":
        run_atheris(args)
        return 0
    print(f"fuzzing read_bsq (seeded-random mutator, seed {args.seed}) ...", flush=True)
    report = run(args.cases, args.minutes, args.seed, args.memory_every, args.time_limit,
                 args.max_windows, args.corpus_size, verbose=True)
    print(report.summary())
    if args.artifacts and report.failures:
        os.makedirs(args.artifacts, exist_ok=True)
        for f in report.failures:
            path = os.path.join(args.artifacts, f"failure-seed{f['seed']}-case{f['case']}.b64")
            with open(path, "w") as handle:
                handle.write(f["input_base64"] + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
