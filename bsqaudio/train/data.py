"""Training data: a one-time cache of 16 kHz mono int16 audio, and random window crops from it.

Decoding and resampling compressed audio every step would starve a 2-core machine, so the first
run decodes every input once into ``audio.npy`` (memory-mapped, int16) with an ``index.json`` of
file offsets; later runs and other ranks reuse it. Unreadable files are reported and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bsqaudio.errors import BsqAudioError
from bsqaudio.io.audio_files import load_mono
from bsqaudio.io.inputs import list_inputs

CACHE_VERSION = 1


def input_of_each_file(inputs: list[str | Path], names: list[str]) -> torch.Tensor:
    """(files,) index of the first of ``inputs`` that lists each cached file (by name), for
    batches drawn from one input at a time."""
    owner: dict[str, int] = {}
    for index, item in enumerate(inputs):
        for path in list_inputs([item]):
            owner.setdefault(str(path), index)
    missing = [n for n in names if n not in owner]
    if missing:
        raise BsqAudioError(f"{missing[0]}: in the audio cache but in none of the inputs (use a fresh --cache)")
    return torch.tensor([owner[n] for n in names], dtype=torch.int64)


def validation_rank(path: Path) -> float:
    """A file's place in the validation split, in [0, 1], from its name alone: the same file gets
    the same place wherever the corpus lies (the whole path made a moved corpus split anew)."""
    return int(hashlib.sha1(Path(path).name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def is_validation(path: Path, fraction: float) -> bool:
    """A deterministic split by file: the files ranked below ``fraction``."""
    return validation_rank(path) < fraction


@dataclass
class AudioCache:
    """int16 audio of many files back to back, with each file's (offset, length) and name."""

    audio: np.ndarray  # (S,) int16, memory-mapped
    offsets: np.ndarray  # (N,) int64
    lengths: np.ndarray  # (N,) int64
    names: list[str]

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / 16000

    @classmethod
    def open(cls, folder: Path) -> AudioCache:
        index = json.loads((folder / "index.json").read_text())
        audio = np.load(folder / "audio.npy", mmap_mode="r", allow_pickle=False)
        return cls(audio, np.asarray(index["offsets"], dtype=np.int64),
                   np.asarray(index["lengths"], dtype=np.int64), index["names"])

    @classmethod
    def build(cls, files: list[Path], folder: Path, sample_rate: int, log=print) -> AudioCache:
        """Decode ``files`` once into ``folder``; reuse it when it already holds the same list."""
        key = hashlib.sha1(json.dumps([CACHE_VERSION, sample_rate] + [str(f) for f in files])
                           .encode()).hexdigest()
        index_path = folder / "index.json"
        if index_path.exists() and json.loads(index_path.read_text()).get("key") == key:
            return cls.open(folder)
        folder.mkdir(parents=True, exist_ok=True)
        chunks, names, lengths, failed = [], [], [], 0
        for path in files:
            try:
                wave, _, _ = load_mono(path, sample_rate)
            except BsqAudioError as err:
                log(f"skipping {err}")
                failed += 1
                continue
            if wave.numel() < sample_rate // 10:
                log(f"skipping {path}: shorter than 0.1 s")
                failed += 1
                continue
            chunks.append((wave.clamp(-1, 1) * 32767).round().to(torch.int16).numpy())
            names.append(str(path))
            lengths.append(chunks[-1].shape[0])
        if not chunks:
            raise BsqAudioError("no readable audio among the training inputs")
        lengths_np = np.asarray(lengths, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths_np)[:-1]])
        tmp = folder / "audio.tmp.npy"
        np.save(tmp, np.concatenate(chunks))
        os.replace(tmp, folder / "audio.npy")
        index = {"key": key, "names": names, "offsets": offsets.tolist(), "lengths": lengths,
                 "skipped": failed}
        tmp_index = folder / "index.tmp.json"
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)
        log(f"cached {len(names)} files ({lengths_np.sum() / sample_rate / 3600:.2f} h), "
            f"skipped {failed}")
        return cls.open(folder)

    def subset(self, keep: np.ndarray) -> AudioCache:
        return AudioCache(self.audio, self.offsets[keep], self.lengths[keep],
                          [n for n, k in zip(self.names, keep, strict=True) if k])

    def random_crops(self, count: int, length: int, generator: torch.Generator,
                     gain_db: tuple[float, float] = (-12.0, 0.0), silence: float = 1e-3,
                     tries: int = 8, among: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((count, length) float32 crops, (count,) samples of real audio in each): a file chosen
        in proportion to its length (only where the (files,) bool ``among`` is true, if given), a
        random start; shorter files are zero-padded; near-silent crops are drawn again (up to
        ``tries``). The losses count only the patches that hold real audio (the padding is never
        stored in a file, and as 20 % of the tokens it pulled the bit balance of all the others;
        see the model card)."""
        weights = torch.as_tensor(self.lengths, dtype=torch.float64)
        if among is not None:
            weights = weights * among.to(torch.float64)
        out = torch.zeros(count, length)
        real = torch.zeros(count, dtype=torch.int64)
        for i in range(count):
            for _ in range(tries):
                f = int(torch.multinomial(weights, 1, generator=generator))
                span = int(self.lengths[f]) - length
                start = int(torch.randint(0, span + 1, (1,), generator=generator)) if span > 0 else 0
                take = min(length, int(self.lengths[f]))
                lo = int(self.offsets[f]) + start
                piece = torch.from_numpy(self.audio[lo: lo + take].astype(np.float32) / 32768)
                if piece.abs().max() > silence:
                    break
            out[i, :take] = piece
            real[i] = take
        low, high = gain_db
        gains = low + (high - low) * torch.rand(count, 1, generator=generator)
        return out * 10 ** (gains / 20), real

    def first_crops(self, length: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic validation crops: the start of at most ``limit`` files spread evenly over
        the (sorted) list, so every source is represented -> ((count, length), (count,) lengths
        of real audio)."""
        picks = np.unique(np.linspace(0, len(self.names) - 1, min(limit, len(self.names)))
                          .round().astype(np.int64))
        out = torch.zeros(len(picks), length)
        real = torch.zeros(len(picks), dtype=torch.int64)
        for row, i in enumerate(picks):
            take = min(length, int(self.lengths[i]))
            lo = int(self.offsets[i])
            out[row, :take] = torch.from_numpy(self.audio[lo: lo + take].astype(np.float32) / 32768)
            real[row] = take
        return out, real
