"""Token file forms for language-model pipelines (`encode --format`, `bsqaudio tokens`).

Work on ``Codes`` (torch) and ``CodeArrays`` (numpy) alike, and import no torch: printing a
file's tokens should not wait for torch to load.
"""

from __future__ import annotations

import io
import json

import numpy as np

from bsqaudio.bitstream import CodeArrays, Codes
from bsqaudio.io.inputs import Job

FORMATS = ("bsq", "npy", "jsonl")  # what `encode --format` writes: the file format and two token files


def npy_bytes(codes: Codes | CodeArrays) -> bytes:
    """(windows, 512) int64 token indices, time-major per window; -1 past the end of audio."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(codes.window_indices()))
    return buffer.getvalue()


def jsonl_record(job: Job, codes: Codes | CodeArrays) -> dict:
    return {
        "path": str(job.source),
        "duration_s": round(codes.duration, 6),
        "sample_rate": codes.header["source_sample_rate"],
        "bitrate_bps": codes.bitrate,
        "code_bits": codes.code_bits,
        "tokens": codes.indices.reshape(-1).tolist(),
    }


def jsonl_line(job: Job, codes: Codes | CodeArrays) -> bytes:
    return (json.dumps(jsonl_record(job, codes)) + "\n").encode()
