"""Tokens for a language model, and back: tokenize a folder, load it for training, decode one.

    python examples/lm_tokens.py examples/ --out /tmp/lm

1. `bsqaudio encode FOLDER --format jsonl --tokens groups:9`: one record a file, each 36-bit code
   as 4 sub-tokens of 9 bits (vocabulary 512), time-major, bands low to high within a row.
2. A flat uint16 stream of every file's sub-tokens (nanoGPT style: tokens.bin, memory-mapped) and
   an index of file boundaries (index.npy: offsets, one more than files), read by a PyTorch
   DataLoader as random windows of --block sub-tokens.
3. The same records through Hugging Face `datasets` (if installed): `load_dataset("json", ...)`.
4. One sequence back to audio: the sub-tokens of the first file joined into codes, decoded at the
   default loudness (a language model generates codes, not gains) and at the file's own gains.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import bsqaudio
from bsqaudio.token_files import join_tokens

GROUP_BITS = 9  # 36-bit codes -> 4 sub-tokens of vocabulary 512 (fits uint16)


def tokenize(folder: Path, out: Path) -> Path:
    records = out / "tokens.jsonl"
    subprocess.run([sys.executable, "-m", "bsqaudio", "encode", str(folder), "--format", "jsonl",
                    "--tokens", f"groups:{GROUP_BITS}", "-o", str(records), "--force", "--quiet"], check=True)
    return records


def write_stream(records: Path, out: Path) -> tuple[Path, Path]:
    """Every record's sub-tokens, concatenated, as uint16; and where each file starts."""
    stream, index = out / "tokens.bin", out / "index.npy"
    offsets = [0]
    with open(stream, "wb") as handle:
        for line in records.read_text().splitlines():
            tokens = np.asarray(json.loads(line)["tokens"], dtype=np.uint16)
            handle.write(tokens.tobytes())
            offsets.append(offsets[-1] + tokens.size)
    np.save(index, np.asarray(offsets, dtype=np.int64))
    return stream, index


class Windows(torch.utils.data.Dataset):
    """Random-access windows of ``block`` + 1 sub-tokens (inputs and next-token targets)."""

    def __init__(self, stream: Path, block: int) -> None:
        self.data = np.memmap(stream, dtype=np.uint16, mode="r")
        self.block = block

    def __len__(self) -> int:
        return max(0, len(self.data) - self.block - 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.data[i: i + self.block + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--block", type=int, default=256, help="sub-tokens per training window")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    records = tokenize(args.folder, args.out)
    stream, index = write_stream(records, args.out)
    offsets = np.load(index)
    print(f"{len(offsets) - 1} files, {offsets[-1]} sub-tokens of {GROUP_BITS} bits in {stream}")

    loader = torch.utils.data.DataLoader(Windows(stream, args.block), batch_size=4, shuffle=True)
    inputs, targets = next(iter(loader))
    print(f"a training batch: inputs {tuple(inputs.shape)}, targets {tuple(targets.shape)}, "
          f"max id {int(inputs.max())} < {1 << GROUP_BITS}")

    try:
        from datasets import load_dataset
    except ImportError:
        print("datasets is not installed: skipping the Hugging Face datasets recipe")
    else:
        table = load_dataset("json", data_files=str(records), split="train").with_format("numpy")
        print(f"datasets: {table.num_rows} rows, columns {sorted(table.column_names)}, "
              f"first row {len(table[0]['tokens'])} sub-tokens")

    codec = bsqaudio.Codec.from_pretrained(device="cpu")
    first = np.asarray(np.memmap(stream, dtype=np.uint16, mode="r")[offsets[0]: offsets[1]], dtype=np.int64)
    codes_bits = codec.config.code_bits
    tokens = join_tokens(first.reshape(-1, codes_bits // GROUP_BITS), codes_bits, GROUP_BITS)
    record = json.loads(records.read_text().splitlines()[0])
    for name, gains in (("default-loudness", None), ("own-gains", record["gains_db"])):
        codes = codec.codes_from_tokens(tokens, gains_db=gains)
        target = args.out / f"decoded_{name}.wav"
        sf.write(target, codec.decode(codes).numpy(), codec.config.sample_rate)
        print(f"{record['path']} -> {target} ({codes.duration:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
