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
    options = result.stdout.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
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
