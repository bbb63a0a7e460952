"""Token files for language-model pipelines, both ways: what `encode --format npy|jsonl|npz` and
`bsqaudio tokens` write, and what `bsqaudio decode` reads back into audio.

Order, in every form: time-major patch rows, the ``F`` frequency bands of a row in order from low
to high, and with a sub-token view the ``L/G`` sub-tokens of a code most significant first.

Views (``--tokens``): ``index`` is a code as one L-bit integer (2^36 values for the default model:
too many for a softmax); ``groups:G`` splits each code into L/G integers of G bits (``groups:9`` ->
4 sub-tokens of vocabulary 512); ``bits`` is ``groups:1``. Views are lossless: ``join_tokens``
undoes ``split_tokens`` exactly, and -1 (no code: rows past the end of the audio in the window
layout) stays -1 in every sub-token.

Writing imports no torch (``Codes`` and ``CodeArrays`` alike); reading needs the codec, whose
config gives the geometry that token arrays do not carry.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from bsqaudio.bitstream import MAX_BSQ_BYTES, MAX_CODES, load_bsq, validate_header, write_bsq
from bsqaudio.codes import CodeArrays, Codes
from bsqaudio.errors import BsqAudioError
from bsqaudio.io.bounded import read_file_bounded, reading
from bsqaudio.io.inputs import Job, mirrored

FORMATS = ("bsq", "npy", "jsonl", "npz")  # what `encode --format` writes
TOKEN_SUFFIXES = (".npy", ".npz", ".jsonl")  # what `decode` reads besides .bsq
# The loudness of tokens that come without gains (a language model's output): the median window
# gain (peak mel power, dB) of 66 windows of validation speech (10th-90th percentile 28.4-34.6;
# benchmarks/speech_gain.py).
DEFAULT_GAIN_DB = 31.5
MAX_JSONL_BYTES = 64 << 20


# -- views ----------------------------------------------------------------------------------------

def parse_view(text: str, code_bits: int) -> int | None:
    """``index`` -> None; ``groups:G`` -> G; ``bits`` -> 1. G must divide the code's L bits."""
    if text == "index":
        return None
    if text == "bits":
        return 1
    name, _, value = text.partition(":")
    if name != "groups" or not value.isdigit():
        raise BsqAudioError(f"--tokens must be index, groups:G or bits, not {text!r}")
    group = int(value)
    if not 1 <= group <= code_bits or code_bits % group:
        divisors = [g for g in range(1, code_bits + 1) if code_bits % g == 0]
        raise BsqAudioError(f"--tokens groups:{group}: G must divide the {code_bits} code bits "
                            f"({', '.join(map(str, divisors))})")
    return group


def view_name(group: int | None) -> str:
    return "index" if group is None else "bits" if group == 1 else f"groups:{group}"


def split_tokens(tokens, code_bits: int, group_bits: int):
    """(...) L-bit codes -> (..., L/G) sub-tokens of G bits, most significant first; -1 -> all -1.
    Takes and returns numpy arrays (torch tensors come back as tensors)."""
    array, back = _as_numpy(tokens)
    if code_bits % group_bits:
        raise ValueError(f"{group_bits} does not divide {code_bits}")
    shifts = np.arange(code_bits - group_bits, -1, -group_bits, dtype=np.int64)
    parts = (array[..., None] >> shifts) & ((1 << group_bits) - 1)
    parts = np.where(array[..., None] < 0, -1, parts)
    return back(parts)


def join_tokens(subtokens, code_bits: int, group_bits: int):
    """The inverse of ``split_tokens``: (..., L/G) sub-tokens -> (...) codes; a code with any -1
    (or out-of-range) sub-token is refused, except all -1, which stays -1."""
    array, back = _as_numpy(subtokens)
    count = code_bits // group_bits
    if code_bits % group_bits or array.shape[-1:] != (count,):
        raise BsqAudioError(f"sub-tokens of {group_bits} bits: the last axis must have {count} entries "
                            f"for {code_bits}-bit codes, not shape {array.shape}")
    padding = (array == -1).all(-1)
    if ((array < 0) | (array >= 1 << group_bits))[~padding].any():
        raise BsqAudioError(f"a sub-token is outside [0, {1 << group_bits}) for groups of {group_bits} bits")
    shifts = np.arange(code_bits - group_bits, -1, -group_bits, dtype=np.int64)
    joined = (np.where(padding[..., None], 0, array) << shifts).sum(-1)
    return back(np.where(padding, -1, joined))


def _as_numpy(values):
    """(int64 array, a function giving results back in the caller's type)."""
    if type(values).__module__.startswith("torch"):
        import torch

        return values.detach().cpu().numpy().astype(np.int64), torch.from_numpy
    return np.asarray(values).astype(np.int64), lambda x: x


# -- writing --------------------------------------------------------------------------------------

def npy_bytes(codes: Codes | CodeArrays, group: int | None = None) -> bytes:
    """(windows, 512) int64 codes, time-major per window, -1 past the end of audio; with a
    sub-token view (windows, 512, L/G)."""
    tokens = np.asarray(codes.window_indices())
    if group is not None:
        tokens = split_tokens(tokens, codes.code_bits, group)
    buffer = io.BytesIO()
    np.save(buffer, tokens)
    return buffer.getvalue()


def jsonl_record(job: Job, codes: Codes | CodeArrays, group: int | None = None) -> dict:
    tokens = np.asarray(codes.indices).reshape(-1)
    if group is not None:
        tokens = split_tokens(tokens, codes.code_bits, group).reshape(-1)
    return {
        "path": str(job.source),
        "duration_s": round(codes.duration, 6),
        "sample_rate": codes.header["source_sample_rate"],
        "bitrate_bps": codes.bitrate,
        "code_bits": codes.code_bits,
        "model": codes.header["model"],
        "code_space": codes.header.get("code_space"),
        "view": view_name(group),
        "gains_db": [float(g) for g in np.asarray(codes.gains_db)],  # float16 values: exact, short
        "tokens": tokens.tolist(),
    }


def jsonl_line(job: Job, codes: Codes | CodeArrays, group: int | None = None) -> bytes:
    return (json.dumps(jsonl_record(job, codes, group)) + "\n").encode()


def npz_bytes(codes: Codes | CodeArrays) -> bytes:
    """Self-describing: the full codes (R, F), the gains (W,) and the .bsq header (JSON text) with
    the model, sample count and source rate. Decodes exactly as the .bsq file of the same codes."""
    buffer = io.BytesIO()
    np.savez(buffer, tokens=np.asarray(codes.indices).astype(np.int64),
             gains_db=np.asarray(codes.gains_db).astype(np.float32),
             header=np.array(json.dumps(codes.header, sort_keys=True)))
    return buffer.getvalue()


def file_bytes(fmt: str, job: Job, codes: Codes | CodeArrays, group: int | None = None) -> bytes:
    """The output of one file in ``fmt`` (one of FORMATS); a sub-token view only for npy/jsonl."""
    if group is not None and fmt in ("bsq", "npz"):
        raise BsqAudioError(f"--format {fmt} keeps the full codes; --tokens applies to npy and jsonl")
    if fmt == "bsq":
        return write_bsq(codes)
    if fmt == "npz":
        return npz_bytes(codes)
    return npy_bytes(codes, group) if fmt == "npy" else jsonl_line(job, codes, group)


# -- reading --------------------------------------------------------------------------------------

def load_codes(source: str | Path, codec, group: int | None = None) -> Codes:
    """A .bsq file (or ``-``: .bsq on stdin) or a token file -> Codes ``codec`` can decode."""
    if str(source) != "-" and Path(source).suffix.lower() in TOKEN_SUFFIXES:
        return load_token_file(source, codec, group)
    if group is not None:
        raise BsqAudioError(f"{source}: --tokens applies to .npy and .jsonl token files")
    return load_bsq(source)


def jsonl_records(path: Path) -> list[dict]:
    """The records of a jsonl token file, each a dict with ``tokens`` (bounded, as for one)."""
    with reading(str(path), "a token file"):
        return _parse_jsonl(read_file_bounded(path, MAX_BSQ_BYTES))


def _parse_jsonl(data: bytes) -> list[dict]:
    if len(data) > MAX_JSONL_BYTES:
        raise BsqAudioError(f"larger than the {MAX_JSONL_BYTES >> 20} MiB a token file may be")
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                records.append(_jsonl_record(line))
            except BsqAudioError as err:
                raise BsqAudioError(f"line {number}: {err}") from None
    return records


@functools.lru_cache(maxsize=1)
def _records_of(path: str, mtime_ns: int, size: int) -> list[dict]:
    """``jsonl_records``, parsed once for all the records a batch decodes from one file (the
    file's mtime and size are part of the key, so a changed file is read again)."""
    return jsonl_records(Path(path))


def expand_records(jobs: list[Job]) -> list[Job]:
    """Jobs with each many-record jsonl file replaced by a job per record, named under a folder
    of the file's name by the record's ``path`` below the folder all its records share (records
    from ``encode corpus/`` keep corpus/'s tree) or, without one, by its number:
    ``tokens.jsonl`` -> ``tokens/song.wav``, ``tokens/sub/other.wav``, ``tokens/000003.wav``."""
    out = []
    for job in jobs:
        if job.source.suffix.lower() != ".jsonl" or not job.source.is_file():
            out.append(job)
            continue
        info = job.source.stat()
        records = _records_of(str(job.source), info.st_mtime_ns, info.st_size)
        if len(records) == 1:
            out.append(job)
            continue
        names = [Path(r["path"]) if isinstance(r.get("path"), str) and r["path"].strip("/. ")
                 else Path(f"{i + 1:06d}") for i, r in enumerate(records)]
        names = mirrored(names)
        root = Path(os.path.commonpath([str(name.parent) for name in names])) if names else Path()
        folder = job.relative.with_suffix("")
        out += [Job(job.source, folder / name.relative_to(root), i) for i, name in enumerate(names)]
    return out


def load_job(job: Job, codec, group: int | None = None) -> Codes:
    """The codes of a batch job: a whole file, or one record of a jsonl file."""
    if job.record is None:
        return load_codes(job.source, codec, group)
    with reading(job.label, "a token record"):
        info = job.source.stat()
        records = _records_of(str(job.source), info.st_mtime_ns, info.st_size)
        return _codes_from_record(records[job.record], codec, group)


def load_token_file(source: str | Path, codec, group: int | None = None) -> Codes:
    """A .npz, .npy or single-record .jsonl token file -> Codes for ``codec``. ``group``: the
    sub-token view the file was written with (.npz always holds full codes)."""
    path = Path(source)
    suffix = path.suffix.lower()
    with reading(str(path), "a token file"):
        data = read_file_bounded(path, MAX_BSQ_BYTES)
        if suffix == ".npz":
            if group is not None:
                raise BsqAudioError(".npz files hold full codes; leave out --tokens")
            codes = _codes_from_npz(data)
            codec.check_compatible(codes)
            return codes
        if suffix == ".npy":
            tokens = _load_array(data, "token array")
            if group is not None:
                tokens = join_tokens(tokens, codec.config.code_bits, group)
            return codec.codes_from_tokens(tokens)
        if suffix == ".jsonl":
            records = _parse_jsonl(data)
            if len(records) != 1:
                raise BsqAudioError(f"holds {len(records)} records: decode them with --out-dir (one file each)")
            return _codes_from_record(records[0], codec, group)
        raise BsqAudioError("not a token file (.npy, .npz or .jsonl)")


def _codes_from_record(record: dict, codec, group: int | None) -> Codes:
    """One jsonl record (tokens in its view, gains, duration, source rate) -> Codes for ``codec``."""
    written = record.get("code_space")
    if isinstance(written, str) and written != codec.code_space:
        raise BsqAudioError(f"its tokens are of code space {written} ({record.get('model', 'another model')}); "
                            f"the loaded model's is {codec.code_space}")
    tokens, gains, group = _jsonl_tokens(record, group, codec.config.code_bits)
    if group is not None:
        tokens = join_tokens(tokens, codec.config.code_bits, group)
    duration, source_rate = record.get("duration_s"), record.get("sample_rate")
    plausible = isinstance(duration, (int, float)) and math.isfinite(duration) and 0 < duration < 1e7
    num_samples = round(duration * codec.config.sample_rate) if plausible else None
    return codec.codes_from_tokens(tokens, gains, num_samples=num_samples or None,
                                   source_rate=source_rate if isinstance(source_rate, int) else None)


def _load_array(data: bytes, what: str) -> np.ndarray:
    """An .npy payload -> integer or float array; never unpickled, size checked from its header."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(stream))
        if dtype.hasobject or dtype.kind not in "iuf" or int(np.prod(shape)) > MAX_CODES * 64:
            raise BsqAudioError(f"{what}: a {dtype} array of shape {shape} is no token array")
        stream.seek(0)
        return np.load(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BsqAudioError(f"{what}: not a readable .npy array ({err})") from None


def _codes_from_npz(data: bytes) -> Codes:
    import torch

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {}
        for name in ("tokens.npy", "gains_db.npy", "header.npy"):
            with archive.open(name) as handle:  # bounded: a deflate bomb stops at the cap
                members[name] = handle.read(MAX_BSQ_BYTES + 1)
            if len(members[name]) > MAX_BSQ_BYTES:
                raise BsqAudioError(f"{name} is larger than a token file may be")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
        raise BsqAudioError(f"not a bsqaudio .npz file ({err})") from None
    text = np.load(io.BytesIO(members["header.npy"]), allow_pickle=False)
    if text.dtype.kind != "U" or text.shape != ():
        raise BsqAudioError("not a bsqaudio .npz file (no header)")
    try:
        header = validate_header(json.loads(str(text)))
    except ValueError:
        raise BsqAudioError("not a bsqaudio .npz file (its header is not JSON)") from None
    tokens = _load_array(members["tokens.npy"], "tokens")
    gains = _load_array(members["gains_db.npy"], "gains_db").astype(np.float32)
    freq = header["n_mels"] // header["patch_freq"]
    if tokens.shape != (header["num_rows"], freq) or gains.shape != (header["num_windows"],):
        raise BsqAudioError("the tokens or gains do not match the header's geometry")
    codes = Codes(indices=torch.from_numpy(tokens.astype(np.int64)), gains_db=torch.from_numpy(gains),
                  header=header)
    codes.check_gains()
    return codes


def _jsonl_record(line: bytes) -> dict:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise BsqAudioError(f"not a token record ({err})") from None
    if not isinstance(record, dict) or "tokens" not in record:
        raise BsqAudioError("not a token record (no \"tokens\")")
    return record


def _jsonl_tokens(record: dict, group: int | None, code_bits: int) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """The record's tokens (sub-tokens grouped per code), gains and view."""
    try:
        tokens = np.asarray(record["tokens"], dtype=np.int64).reshape(-1)
        gains = record.get("gains_db")
        gains = None if gains is None else np.asarray(gains, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OverflowError) as err:
        raise BsqAudioError(f"not a token record ({type(err).__name__}: {err})") from None
    if record.get("code_bits", code_bits) != code_bits:
        raise BsqAudioError(f"its tokens are {record['code_bits']}-bit codes; the model's are {code_bits}-bit")
    written = record.get("view")
    if written is not None:
        written_group = parse_view(str(written), code_bits)
        if group is not None and group != written_group:
            raise BsqAudioError(f"written with --tokens {written}, not {view_name(group)}")
        group = written_group
    if group is not None:
        count = code_bits // group
        if tokens.size % count:
            raise BsqAudioError(f"{tokens.size} sub-tokens are not whole codes of {count}")
        tokens = tokens.reshape(-1, count)
    return tokens, gains, group
