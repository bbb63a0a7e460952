"""examples/lm_tokens.py, run as its docstring says: tokenize, load for training, decode back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_the_language_model_example_runs_end_to_end(tmp_path):
    pytest.importorskip("datasets")  # the dev extra installs it; its recipe is part of the example
    result = subprocess.run([sys.executable, "examples/lm_tokens.py", "examples", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    offsets = np.load(tmp_path / "index.npy")
    stream = np.fromfile(tmp_path / "tokens.bin", dtype=np.uint16)
    records = [json.loads(line) for line in (tmp_path / "tokens.jsonl").read_text().splitlines()]
    assert len(records) == len(offsets) - 1 == 2 and offsets[-1] == stream.size
    assert all(r["view"] == "groups:9" and len(r["tokens"]) % 32 == 0 for r in records)  # 8 codes x 4 a row
    assert stream.max() < 512 and "a training batch: inputs (4, 256)" in result.stdout
    assert "datasets: 2 rows" in result.stdout
    for name in ("default-loudness", "own-gains"):
        audio, rate = sf.read(tmp_path / f"decoded_{name}.wav")
        assert rate == 16000 and audio.shape[0] >= records[0]["duration_s"] * rate
        assert np.abs(audio).max() > 1e-3
