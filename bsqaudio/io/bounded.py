"""Reading untrusted files with a bound: never more bytes than a limit, never a FIFO or a device
(which would block or never end), and every failure as one line naming the file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bsqaudio.errors import BsqAudioError


def read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes, fewer only at the end of the stream (a pipe returns them in pieces)."""
    parts, size = [], 0
    while size < limit:
        part = stream.read(min(limit - size, 1 << 20))
        if not part:  # b"" at the end; None from a non-blocking stream with nothing yet
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def read_file_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes (symlinks followed), at most ``limit``. A FIFO would block the
    open itself (hence O_NONBLOCK, which regular files ignore) and a device like /dev/zero would
    be read forever: both are refused by what fstat says of the opened file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            raise BsqAudioError("not a regular file (a FIFO, device or socket); read it from stdin "
                                "with '-' instead")
        if info.st_size > limit:
            raise BsqAudioError(f"{info.st_size} bytes, more than a .bsq or token file may have "
                                f"({limit})")
        return read_at_most(handle, limit + 1)


@contextmanager
def reading(name: str, what: str) -> Iterator[None]:
    """Errors while reading the file ``name`` as one line naming it (``what`` it should be)."""
    try:
        yield
    except FileNotFoundError:
        raise BsqAudioError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise BsqAudioError(f"{name}: is a directory, not {what}") from None
    except PermissionError:
        raise BsqAudioError(f"{name}: permission denied") from None
    except OSError as err:
        raise BsqAudioError(f"{name}: cannot read ({err.strerror or err})") from None
    except BsqAudioError as err:
        raise BsqAudioError(f"{name}: {err}") from None
