"""Help text as a user meets it at 80 columns: nothing cut, nothing eaten, every option explained."""

from __future__ import annotations

import re

import pytest
from cli_inprocess import run_in_process

COMMANDS = ("encode", "tokens", "decode", "roundtrip", "info", "train", "eval", "export")


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_and_explains_every_option(command):
    result = run_in_process(command, "-h")
    assert result.exit == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in result.stdout and "<bool>" not in result.stdout
    sections = re.split(r"\n(?:[A-Z][\w ()]*)?[Oo]ptions:\n", result.stdout)[1:]
    assert sections, result.stdout
    options = [line for section in sections for line in section.split("\n\n", 1)[0].splitlines()]
    for index, line in enumerate(options):
        if not re.match(r"^  -", line):
            continue
        words = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        text = words[1] if len(words) > 1 else options[index + 1].strip()
        assert not text.startswith("[") and text, f"{command}: {line.strip()} has no help text"


def test_option_help_keeps_its_brackets():
    text = run_in_process("encode", "--help").stdout
    assert "[windows, 512]" in " ".join(text.split())
    assert "[default: CPU cores - 2, at least 0]" in " ".join(text.split())


def test_train_options_are_grouped_and_none_is_lost():
    """Every training setting with a section is an option, listed under that section's heading."""
    import dataclasses

    from bsqaudio.train.settings import SECTIONS, TrainSettings

    text = run_in_process("train", "-h").stdout
    headings = re.findall(r"^(\w[\w ()]*) options:$", text, flags=re.M)
    assert headings == [*SECTIONS, "Other"]
    blocks = dict(zip(headings, re.split(r"^\w[\w ()]* options:$", text, flags=re.M)[1:], strict=True))
    for spec in dataclasses.fields(TrainSettings):
        if spec.metadata["section"]:
            flag = spec.metadata.get("flag", "--" + spec.name.replace("_", "-"))
            assert re.search(rf"^  (-\w, )?{re.escape(flag)}\b", blocks[spec.metadata["section"]], flags=re.M), flag
    for flag in ("--out", "--resume", "--force"):
        assert re.search(rf"^  (-\w, )?{flag}\b", blocks["Run"], flags=re.M), flag


def test_completion_for_bash_is_offered():
    import os
    import subprocess
    import sys

    env = {**os.environ, "_BSQAUDIO_COMPLETE": "complete_bash", "COMP_WORDS": "bsqaudio enc", "COMP_CWORD": "1"}
    result = subprocess.run([sys.executable, "-m", "bsqaudio"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["encode"]
