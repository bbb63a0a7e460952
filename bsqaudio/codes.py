"""``Codes``: the tokens of one file (patch rows x patches per row), its window gains and header.

What the codec produces and consumes, and what a .bsq file (``bitstream``) or a token file
(``token_files``) stores. ``CodeArrays`` is the same on numpy, for the commands that read files
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bsqaudio.errors import BsqAudioError
from bsqaudio.model.config import MAX_PATCHES

if TYPE_CHECKING:
    import torch

# Window gains (a window's peak mel power, dB) that make sense to synthesize: real encodes give
# -20 dB (the silence floor, bsqaudio.dsp.mel.GAIN_FLOOR_DB) to about +45 dB (full-scale DC or a
# full-scale 7 kHz sine; white noise 34, a full-scale square 43); float audio past full scale goes
# higher (8x: +63 dB). +100 dB is ~560x over full scale, and still far from where mel power
# overflows float32 (+385 dB). The format itself stores any finite float16 (the frozen
# tests/data/format-*.bsq files hold +-65504), so this is checked before synthesis, by check_gains.
MAX_GAIN_DB = 100.0

class HeaderFacts:
    """What follows from a file's header alone (``header``: the validated dict)."""

    header: dict

    @property
    def code_bits(self) -> int:
        return self.header["code_bits"]

    @property
    def num_samples(self) -> int:
        return self.header["num_samples"]

    @property
    def sample_rate(self) -> int:
        return self.header["sample_rate"]

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def rows_per_window(self) -> int:
        return self.header["window_frames"] // self.header["patch_time"]

    @property
    def num_tokens(self) -> int:
        return self.header["num_rows"] * (self.header["n_mels"] // self.header["patch_freq"])

    @property
    def bitrate(self) -> float:
        """Code bits per second of audio: 50 * L for 16x16 patches at 16 kHz."""
        h = self.header
        seconds_per_row = h["patch_time"] * h["hop_length"] / h["sample_rate"]
        return h["n_mels"] // h["patch_freq"] * h["code_bits"] / seconds_per_row


@dataclass
class Codes(HeaderFacts):
    """The tokens of one file, as the codec produces and the .bsq file stores them.

    ``indices`` is (R, F): R patch rows over the whole file (time), F patches per row (frequency);
    row r belongs to window r // rows_per_window. ``gains_db`` is (W,), one per window.
    """

    indices: torch.Tensor
    gains_db: torch.Tensor
    header: dict

    def check_gains(self) -> None:
        """Refuse gains outside +-MAX_GAIN_DB: to be called before gains become audio, where a
        crafted +400 dB overflows to inf (a traceback) and +200 dB decodes to a clipped square."""
        gains = self.gains_db.detach().float().cpu()
        bad = ~(gains.abs() <= MAX_GAIN_DB)  # NaN too
        if bad.any():
            value = gains[bad][0].item()
            raise BsqAudioError(f"a window gain of {value:g} dB is outside the +-{MAX_GAIN_DB:g} dB "
                                "that audio can have; the file is damaged or crafted")

    def window_indices(self, pad_value: int = -1) -> torch.Tensor:
        """(W, rows_per_window * F) int64, time-major per window; rows past the audio are
        ``pad_value`` (an output format only: ``indices`` itself never holds padding)."""
        import torch

        layout = window_layout(self.indices.cpu().numpy(), self.gains_db.shape[0], self.rows_per_window,
                               pad_value)
        return torch.from_numpy(layout)


@dataclass
class CodeArrays(HeaderFacts):
    """A .bsq file's tokens as numpy arrays, the same layout as ``Codes``: what reading a file
    needs without torch (``bsqaudio info`` and ``tokens`` answer in a fraction of a second)."""

    indices: np.ndarray  # (R, F) int64
    gains_db: np.ndarray  # (W,) float32
    header: dict

    def window_indices(self, pad_value: int = -1) -> np.ndarray:
        """As ``Codes.window_indices``, a numpy array."""
        return window_layout(self.indices, self.gains_db.shape[0], self.rows_per_window, pad_value)

    def to_codes(self) -> Codes:
        import torch

        return Codes(indices=torch.from_numpy(self.indices), gains_db=torch.from_numpy(self.gains_db),
                     header=self.header)


def window_layout(indices_rf: np.ndarray, num_windows: int, rows_per_window: int,
                  pad_value: int) -> np.ndarray:
    """(R, F) token rows -> (W, rows_per_window * F) int64, the last window padded.

    Sized from the rows present, padded by less than one window of at most MAX_PATCHES codes:
    never by what the header says a window holds times the number of windows."""
    rows, freq = indices_rf.shape
    if not 0 < rows_per_window * freq <= MAX_PATCHES:
        raise BsqAudioError(f"a window of {rows_per_window} x {freq} patches is more than the "
                            f"{MAX_PATCHES} a window may hold")
    windows = -(-rows // rows_per_window)
    if windows != num_windows:
        raise BsqAudioError(f"{rows} patch rows make {windows} windows, but there are {num_windows} gains")
    full = np.full((windows * rows_per_window, freq), pad_value, dtype=np.int64)
    full[:rows] = indices_rf
    return full.reshape(windows, -1)
