"""Commands that need no model answer without importing torch (over a second on its own): help,
version, and reading a .bsq file's header or tokens. Checked in a fresh interpreter each."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_signal

import bsqaudio

PROBE = """
import sys
sys.argv = ["bsqaudio"] + sys.argv[1:]
from bsqaudio.cli import run
try:
    run()
except SystemExit as stop:
    code = stop.code or 0
else:
    code = 0
print("torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def bsq_file(tmp_path_factory, tiny_codec):
    path = tmp_path_factory.mktemp("startup") / "clip.bsq"
    codes = tiny_codec.encode(torch.from_numpy(make_signal(1.5)), 16000)
    path.write_bytes(bsqaudio.write_bsq(codes))
    return path, codes


def probe(*args) -> tuple[int, str, bool]:
    result = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, timeout=60)
    *_, flag = result.stderr.decode().strip().splitlines()
    return result.returncode, result.stdout.decode(), flag == "True"


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("encode", "--help"), ("train", "-h")])
def test_help_and_version_do_not_import_torch(args):
    code, out, loaded_torch = probe(*args)
    assert code == 0 and out and not loaded_torch


def test_info_and_tokens_read_a_file_without_torch(bsq_file, tmp_path):
    path, codes = bsq_file
    code, out, loaded_torch = probe("info", "--json", path)
    assert code == 0 and not loaded_torch
    info = json.loads(out)
    assert info["tokens"] == codes.indices.numel() and info["windows"] == codes.gains_db.shape[0]

    code, out, loaded_torch = probe("tokens", path)
    assert code == 0 and not loaded_torch
    assert json.loads(out)["tokens"] == codes.indices.reshape(-1).tolist()

    target = tmp_path / "t.npy"
    code, _, loaded_torch = probe("tokens", path, "--format", "npy", "-o", target)
    assert code == 0 and not loaded_torch
    assert np.array_equal(np.load(target), codes.window_indices().numpy())


def test_the_package_imports_its_names_on_first_use():
    code = ("import sys, bsqaudio; assert 'torch' not in sys.modules; "
            "assert set(bsqaudio.__all__) <= set(dir(bsqaudio)); "
            "assert bsqaudio.Codec.__name__ == 'Codec' and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = bsqaudio.nope
