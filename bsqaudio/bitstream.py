"""The .bsq file format: write, read, validate. Never pickle.

Layout (all integers little-endian)::

    magic     4 bytes   b"BSQA"
    version   1 byte    1 or 2 (FORMAT_VERSION is the newest read)
    hlen      4 bytes   uint32, length of the header
    header    hlen      version 1: a UTF-8 JSON object (HEADER_FIELDS)
                        version 2: the fixed binary struct V2_HEADER, then the model name (UTF-8)
    windows   for each window: gain (float16, dB) then its codes, bit-packed
    crc       4 bytes   uint32 CRC32 of everything before it

Version 2 (what ``encode`` writes) adds the code space (``bsqaudio.code_space``: what the tokens
mean, so any decoder of it decodes the file) and packs the header into 49 bytes plus the model
name (63 for ``bsqaudio-small``) instead of about 300 of JSON: on a 2.7 s prompt about 190 bit/s
of header instead of about 900. Version 1 files
(no code space) keep reading, and a ``Codes`` without a code space is still written as version 1.

Codes are L-bit integers, most significant bit first, packed back to back in time-major patch
order with no padding. A full window holds ``grid_time * grid_freq`` codes; the last window holds
only the patch rows that cover real audio, so the payload is ``rows * grid_freq * L / 8`` bytes
(a row of 8 patches is L whole bytes) and the bitrate is 50 * L bit/s whatever the duration.
Each window's codes end on a byte boundary (zero bits fill the last byte), which only matters
for geometries where a window's ``rows * grid_freq * L`` is not a multiple of 8.

A file is untrusted input, so the header's geometry is held to the limits a model config has
(``bsqaudio.model.config.INT_LIMITS``, at most ``MAX_PATCHES`` codes a window), a file holds at
most ``MAX_CODES`` codes, and every size derives from the rows actually present: what a header
claims never sizes an allocation or a read by itself.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from bsqaudio.codes import CodeArrays, Codes
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.bounded import read_at_most, read_file_bounded, reading
from bsqaudio.model.config import INT_LIMITS, MAX_NAME_CHARS, MAX_PATCHES, rows_and_windows

if TYPE_CHECKING:  # torch only where tensors are made: `bsqaudio info` and `tokens` never load it
    pass

MAGIC = b"BSQA"
FORMAT_VERSION = 2
# Version 2's header: code space and model hash (8 raw bytes each), the front-end and patch
# geometry, the code length, the audio's length and its source's rate and channels; the model
# name follows. num_rows and num_windows derive from num_samples.
V2_HEADER = struct.Struct("<8s8sIHHHHHHHBQIH")
V2_FIELDS = ("code_space", "model_hash", "sample_rate", "n_fft", "hop_length", "win_length", "n_mels",
             "window_frames", "patch_time", "patch_freq", "code_bits", "num_samples",
             "source_sample_rate", "source_channels")
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_INT = 2**63 - 1  # integer fields fit in an int64
# Codes in one file: 256 MiB once decoded to int64, about 186 hours at the real models' 50 tokens
# a second. The largest valid file is then 320 MiB (L = 63 and one code a window: 8 bytes of codes
# and 2 of gain each); MAX_BSQ_BYTES caps any read, of a path or a stream, whatever its header says.
MAX_CODES = 1 << 25
MAX_BSQ_BYTES = 512 << 20
_PREAMBLE = struct.Struct("<4sBI")

# Header field -> type. Every field is required; unknown fields are rejected.
HEADER_FIELDS: dict[str, type] = {
    "model": str,
    "model_hash": str,
    "sample_rate": int,
    "n_fft": int,
    "hop_length": int,
    "win_length": int,
    "n_mels": int,
    "window_frames": int,
    "patch_time": int,
    "patch_freq": int,
    "code_bits": int,
    "num_windows": int,
    "num_rows": int,
    "num_samples": int,
    "source_sample_rate": int,
    "source_channels": int,
}
# The header fields a model config also has are held to its limits (code_bits has its own check).
_GEOMETRY_LIMITS = {k: v for k, v in INT_LIMITS.items() if k in HEADER_FIELDS and k != "code_bits"}


def payload_bytes(num_rows: int, grid_freq: int, code_bits: int) -> int:
    return math.ceil(num_rows * grid_freq * code_bits / 8)


def file_size(header: dict) -> int:
    """The exact size in bytes of a .bsq file with this header."""
    header_bytes = len(_encode_header(header))
    grid_freq = header["n_mels"] // header["patch_freq"]
    bits = header["code_bits"]
    # Each window's codes are padded to whole bytes (see write_bsq and read_bsq).
    rows_per_window = header["window_frames"] // header["patch_time"]
    full_windows = header["num_windows"] - 1
    last_rows = header["num_rows"] - full_windows * rows_per_window
    payload = (full_windows * payload_bytes(rows_per_window, grid_freq, bits)
               + payload_bytes(last_rows, grid_freq, bits))
    return _PREAMBLE.size + header_bytes + 2 * header["num_windows"] + payload + 4


def header_version(header: dict) -> int:
    """The format a header is written in: 2 with a code space, 1 without."""
    return 2 if "code_space" in header else 1


def _encode_header(header: dict) -> bytes:
    if header_version(header) == 1:
        return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    values = [header[k] for k in V2_FIELDS]
    values[:2] = [bytes.fromhex(values[0]), bytes.fromhex(values[1])]
    try:
        return V2_HEADER.pack(*values) + header["model"].encode("utf-8")
    except struct.error:
        raise BsqAudioError("cannot write a .bsq file: a header value does not fit format 2 "
                            "(source rate or channels too large)") from None


def _decode_v2_header(raw: bytes) -> dict:
    if len(raw) < V2_HEADER.size:
        raise BsqAudioError("corrupt .bsq file: format 2 header is too short")
    header = dict(zip(V2_FIELDS, V2_HEADER.unpack_from(raw), strict=True))
    header["code_space"], header["model_hash"] = header["code_space"].hex(), header["model_hash"].hex()
    try:
        header["model"] = raw[V2_HEADER.size:].decode("utf-8")
    except UnicodeDecodeError:
        raise BsqAudioError("corrupt .bsq file: the model name is not UTF-8") from None
    if not header["model"] or len(header["model"]) > MAX_NAME_CHARS:
        raise BsqAudioError(f"corrupt .bsq file: the model name must have 1 to {MAX_NAME_CHARS} characters")
    # Derived, not stored (zeros are left for validate_header to refuse).
    geometry = [max(header[k], 1) for k in ("hop_length", "patch_time", "window_frames")]
    header["num_rows"], header["num_windows"] = rows_and_windows(header["num_samples"], *geometry)
    return header


def _is_hex16(value: object) -> bool:
    return isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)


def pack_codes(indices: np.ndarray, code_bits: int) -> bytes:
    """(N,) unsigned L-bit integers -> bytes, MSB first, no padding between codes."""
    values = indices.astype(np.uint64)
    shifts = np.arange(code_bits - 1, -1, -1, dtype=np.uint64)
    bits = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack_codes(payload: bytes | np.ndarray, count: int, code_bits: int) -> np.ndarray:
    """The inverse of ``pack_codes`` -> (count,) int64. Given a 2-D uint8 array instead, one
    packed window a row (padding bits after its codes), -> (rows, count): read_bsq decodes many
    windows a call, since a Python loop over windows made a file of tiny windows slow to read."""
    rows = payload if isinstance(payload, np.ndarray) else np.frombuffer(payload, np.uint8)[None]
    bits = np.unpackbits(rows, axis=1)[:, : count * code_bits]
    bits = bits.reshape(rows.shape[0], count, code_bits).astype(np.uint64)
    shifts = np.arange(code_bits - 1, -1, -1, dtype=np.uint64)
    out = (bits << shifts).sum(axis=2, dtype=np.uint64).astype(np.int64)
    return out if isinstance(payload, np.ndarray) else out[0]


def _printable(name: str, limit: int = 40) -> str:
    """A header key as one printable line: escapes control and other non-printable characters."""
    if not name.isprintable():
        name = name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return name if len(name) <= limit else name[:limit] + "..."


def validate_header(header: object) -> dict:
    """Check every field's presence, type and range; raise BsqAudioError naming the problem."""
    if not isinstance(header, dict):
        raise BsqAudioError("corrupt .bsq file: header is not a JSON object")
    missing = sorted(set(HEADER_FIELDS) - set(header))
    if missing:
        raise BsqAudioError(f"corrupt .bsq file: header lacks {', '.join(missing)}")
    unknown = sorted(set(header) - set(HEADER_FIELDS) - {"code_space"})
    if unknown:
        names = ", ".join(_printable(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise BsqAudioError(f"corrupt .bsq file: unknown header fields {names}{more}")
    for key, kind in HEADER_FIELDS.items():
        value = header[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BsqAudioError(f"corrupt .bsq file: header field {key!r} must be {kind.__name__}")
        if kind is str and not value.isprintable():  # what `info` and error messages print
            raise BsqAudioError(f"corrupt .bsq file: header field {key!r} is not printable text")
        if kind is int and abs(value) > MAX_HEADER_INT:
            raise BsqAudioError(f"corrupt .bsq file: header field {key!r} is out of range")
    if "code_space" in header and not _is_hex16(header["code_space"]):
        raise BsqAudioError("corrupt .bsq file: code_space must be 16 hexadecimal digits")
    if "code_space" in header and not _is_hex16(header["model_hash"]):
        raise BsqAudioError("corrupt .bsq file: model_hash must be 16 hexadecimal digits")
    positive = [k for k, kind in HEADER_FIELDS.items()
                if kind is int and k not in ("num_samples",) and header[k] <= 0]
    if positive:
        raise BsqAudioError(f"corrupt .bsq file: header field {positive[0]!r} must be positive")
    h = header
    if not 1 <= h["code_bits"] <= 63:
        raise BsqAudioError("corrupt .bsq file: code_bits must be between 1 and 63")
    for key, (low, high) in _GEOMETRY_LIMITS.items():
        if not low <= h[key] <= high:
            raise BsqAudioError(f"corrupt .bsq file: header field {key!r} is {h[key]}, outside "
                                f"the {low}-{high} a model may have")
    if h["window_frames"] % h["patch_time"] or h["n_mels"] % h["patch_freq"]:
        raise BsqAudioError("corrupt .bsq file: patch size does not divide the window")
    freq = h["n_mels"] // h["patch_freq"]
    per_window = h["window_frames"] // h["patch_time"]
    if per_window * freq > MAX_PATCHES:
        raise BsqAudioError(f"corrupt .bsq file: a window of {per_window} x {freq} patches is "
                            f"more than the {MAX_PATCHES} a window may hold")
    if h["num_samples"] <= 0:
        raise BsqAudioError("corrupt .bsq file: num_samples must be positive")
    rows, windows = rows_and_windows(h["num_samples"], h["hop_length"], h["patch_time"], h["window_frames"])
    if h["num_rows"] != rows or h["num_windows"] != windows:
        raise BsqAudioError(
            "corrupt .bsq file: num_rows/num_windows do not match num_samples "
            f"({h['num_rows']}/{h['num_windows']}, expected {rows}/{windows})"
        )
    if rows * freq > MAX_CODES:
        raise BsqAudioError(f"corrupt .bsq file: {rows * freq} codes, more than the {MAX_CODES} "
                            "a .bsq file may hold")
    if len(_encode_header(h)) > MAX_HEADER_BYTES:  # the writer could not write it back
        raise BsqAudioError(f"corrupt .bsq file: header longer than {MAX_HEADER_BYTES} bytes")
    return h


def write_bsq(codes: Codes) -> bytes:
    """Codes -> the bytes of a .bsq file."""
    header = validate_header(dict(codes.header))
    freq = header["n_mels"] // header["patch_freq"]
    rows_per_window = header["window_frames"] // header["patch_time"]
    indices = codes.indices.cpu().numpy()
    if indices.dtype.kind not in "iu":  # floats, complex and bools are no token indices
        raise BsqAudioError(f"cannot write a .bsq file: token indices are {codes.indices.dtype}, "
                            "not integers")
    indices = indices.astype(np.int64)
    if indices.shape != (header["num_rows"], freq):
        raise ValueError(f"indices shape {indices.shape} does not match the header")
    bits = header["code_bits"]
    outside = indices >> bits != 0  # negative values too: the shift keeps their sign
    if outside.any():
        # pack_codes keeps the low L bits: 2**40 + 5 would be written as 5, -1 as all ones.
        raise BsqAudioError(f"cannot write a .bsq file: token index {indices[outside][0]} is "
                            f"outside [0, 2**{bits})")
    gains = codes.gains_db.cpu().numpy().astype("<f2")
    if gains.shape != (header["num_windows"],):
        raise ValueError(f"gains shape {gains.shape} does not match the header")
    if not np.isfinite(gains).all():
        raise BsqAudioError("cannot write a .bsq file: a window gain is not finite")
    head = _encode_header(header)
    parts = [_PREAMBLE.pack(MAGIC, header_version(header), len(head)), head]
    for w in range(header["num_windows"]):
        rows = indices[w * rows_per_window: (w + 1) * rows_per_window]
        parts.append(gains[w].tobytes())
        parts.append(pack_codes(rows.reshape(-1), bits))
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _check_preamble(data: bytes) -> tuple[int, int]:
    """Magic and version of a file's first bytes (at least the preamble) -> (version, header length)."""
    magic, version, header_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise BsqAudioError("not a .bsq file: bad magic bytes")
    if version > FORMAT_VERSION:
        raise BsqAudioError(
            f".bsq format version {version} is newer than this bsqaudio reads ({FORMAT_VERSION}); "
            "upgrade bsqaudio"
        )
    if version < 1:
        raise BsqAudioError(f"corrupt .bsq file: unknown format version {version}")
    return version, header_len


def _parse_header(raw: bytes, version: int) -> dict:
    if version == 2:
        return validate_header(_decode_v2_header(raw))
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError: JSONDecodeError, or an integer of more than 4300 digits;
        # RecursionError: arrays or objects nested too deep.
        raise BsqAudioError("corrupt .bsq file: header is not valid JSON") from None
    if isinstance(header, dict) and "code_space" in header:
        raise BsqAudioError("corrupt .bsq file: a format 1 header has no code_space (format 2 has)")
    return validate_header(header)


def read_bsq(data: bytes) -> Codes:
    """The bytes of a .bsq file -> Codes; raises BsqAudioError on anything malformed."""
    return read_bsq_arrays(data).to_codes()


def read_bsq_arrays(data: bytes) -> CodeArrays:
    """The bytes of a .bsq file -> CodeArrays (numpy, no torch); BsqAudioError if malformed."""
    if len(data) < _PREAMBLE.size + 4:
        raise BsqAudioError("not a .bsq file: too short")
    version, header_len = _check_preamble(data)
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise BsqAudioError("corrupt .bsq file: checksum mismatch (truncated or damaged)")
    if header_len > MAX_HEADER_BYTES or _PREAMBLE.size + header_len > len(data) - 4:
        raise BsqAudioError("corrupt .bsq file: header length exceeds the file")
    header = _parse_header(data[_PREAMBLE.size: _PREAMBLE.size + header_len], version)
    expected = file_size(header) - len(_encode_header(header)) + header_len
    if len(data) != expected:
        raise BsqAudioError(
            f"corrupt .bsq file: size is {len(data)} bytes, the header implies {expected}"
        )
    freq = header["n_mels"] // header["patch_freq"]
    per_window = header["window_frames"] // header["patch_time"]
    bits = header["code_bits"]
    offset = _PREAMBLE.size + header_len
    gains = np.empty(header["num_windows"], dtype=np.float32)
    chunks = []
    # Every window but the last has the same layout (gain, then its codes padded to whole bytes):
    # decode them as rows of a 2-D array, ~64 KiB at a time so temporaries stay small.
    full = header["num_windows"] - 1
    stride = 2 + payload_bytes(per_window, freq, bits)
    step = max(1, (64 << 10) // stride)
    for first in range(0, full, step):
        n = min(step, full - first)
        block = np.frombuffer(data, np.uint8, count=n * stride, offset=offset + first * stride)
        block = block.reshape(n, stride)
        gains[first: first + n] = block[:, :2].copy().view("<f2")[:, 0]
        chunks.append(unpack_codes(block[:, 2:], per_window * freq, bits).reshape(-1))
    offset += full * stride
    rows = header["num_rows"] - full * per_window
    gains[full] = np.frombuffer(data, dtype="<f2", count=1, offset=offset)[0]
    offset += 2
    chunks.append(unpack_codes(data[offset: offset + payload_bytes(rows, freq, bits)], rows * freq, bits))
    if not np.isfinite(gains).all():
        raise BsqAudioError("corrupt .bsq file: a window gain is not finite")
    indices = np.concatenate(chunks).reshape(header["num_rows"], freq)
    return CodeArrays(indices=indices, gains_db=gains, header=header)


def _read_stream(stream: BinaryIO) -> bytes:
    """A .bsq file from a stream, reading no more than its header allows: the preamble, the header
    (at most MAX_HEADER_BYTES), then exactly the size the header implies (at most MAX_BSQ_BYTES)
    and one byte to tell whether more follows. /dev/zero or an endless pipe is refused after its
    first bytes; the checks of the header happen here, those of the body in read_bsq."""
    data = read_at_most(stream, _PREAMBLE.size)
    if len(data) < _PREAMBLE.size:
        return data  # read_bsq says it is too short
    version, header_len = _check_preamble(data)
    if header_len > MAX_HEADER_BYTES:
        raise BsqAudioError("corrupt .bsq file: header length exceeds the file")
    data += read_at_most(stream, header_len)
    if len(data) < _PREAMBLE.size + header_len:
        raise BsqAudioError("corrupt .bsq file: header length exceeds the file")
    header = _parse_header(data[_PREAMBLE.size:], version)
    expected = file_size(header) - len(_encode_header(header)) + header_len
    if expected > MAX_BSQ_BYTES:
        raise BsqAudioError(f"corrupt .bsq file: the header implies {expected} bytes, more than a "
                            f".bsq file may have ({MAX_BSQ_BYTES})")
    data += read_at_most(stream, expected - len(data) + 1)
    if len(data) > expected:
        raise BsqAudioError(f"corrupt .bsq file: more bytes than the {expected} the header implies")
    return data


def save_bsq(codes: Codes, path: str | Path) -> Path:
    """Write ``codes`` to a .bsq file at ``path`` (the pair of ``load_bsq``), atomically: a
    temporary file renamed into place, so a crash leaves the old file or the new one."""
    from bsqaudio.io.atomic import write_bytes_atomic

    write_bytes_atomic(Path(path), write_bsq(codes))
    return Path(path)


def load_bsq(source: str | Path | BinaryIO) -> Codes:
    """Read a .bsq file from a path, ``-`` (stdin) or a binary file object. A path must be a
    regular file; stdin and file objects are read only as far as the header allows."""
    return load_bsq_arrays(source).to_codes()


def load_bsq_arrays(source: str | Path | BinaryIO) -> CodeArrays:
    """As ``load_bsq``, the tokens as numpy arrays (no torch)."""
    name = str(source) if isinstance(source, (str, Path)) else "<stream>"
    with reading(name, "a .bsq file"):
        if name == "-":
            data = _read_stream(sys.stdin.buffer)
        elif isinstance(source, (str, Path)):
            data = read_file_bounded(Path(source), MAX_BSQ_BYTES)
        else:
            data = _read_stream(source)
        return read_bsq_arrays(data)
