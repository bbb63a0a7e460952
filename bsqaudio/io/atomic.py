"""Writing outputs so that nothing is half-written, clobbered, or replaced that must not be.

- A regular output is written under a temporary name beside it and renamed into place, so an
  interrupted run leaves the old file or the new one, never a mix.
- A writer holds an exclusive ``flock`` on its temporary for as long as it lives. Only temporaries
  that nobody holds (their writer was killed with SIGKILL) are removed as stale, so concurrent runs
  into one folder never delete each other's work in progress.
- An existing output that is a character device or a FIFO (``/dev/null``, a named pipe) is written
  through, never replaced by a rename; any other non-regular file (a block device, a socket, a
  folder) is refused.
- Temporary names fit the filesystem's limit on a name's length; an output name that cannot fit
  is refused before any work.
"""

from __future__ import annotations

import fcntl
import glob
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bsqaudio.errors import BsqAudioError

TOKEN_HEX = 16
PART = ".part"
_TEMP_EXTRA = 1 + 1 + TOKEN_HEX + len(PART)  # ".NAME" + "." + token + ".part"


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def name_limit(folder: Path) -> int:
    """The longest file name (bytes) the filesystem of ``folder`` allows; 255 where it won't say."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("character device", "FIFO",
    "block device", "socket", "directory"); None for a regular file or nothing. Symlinks are
    followed: writing to a link to /dev/null writes to /dev/null."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise BsqAudioError(f"{path}: cannot inspect the output ({err.strerror})") from None
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISCHR, "character device"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


WRITE_THROUGH = frozenset({"character device", "FIFO"})


def check_target(path: Path) -> str | None:
    """Refuse an output that can never be written safely, before any work: a name longer than
    the filesystem allows, a block device, socket or folder. Returns the special kind of a
    write-through target (a character device or FIFO), else None."""
    limit = name_limit(_folder(path))
    if len(path.name.encode()) > limit:
        raise BsqAudioError(f"{path.name[:48]}...: file name too long ({len(path.name.encode())} bytes; "
                            f"this filesystem allows {limit})")
    kind = special_kind(path)
    if kind == "directory":
        raise BsqAudioError(f"{path}: is a directory; give an output file name")
    if kind is not None and kind not in WRITE_THROUGH:
        raise BsqAudioError(f"{path}: is a {kind}, not a regular file; refusing to write to it")
    return kind


def _temporary_prefix(path: Path) -> str:
    """``.NAME.``, with NAME cut (and marked ``~``) where the whole temporary name would not fit."""
    room = name_limit(_folder(path)) - _TEMP_EXTRA
    name = path.name
    if len(name.encode()) > room:
        name = name.encode()[: room - 1].decode(errors="ignore") + "~"
    return f".{name}."


def temporary_path(path: Path) -> Path:
    """A new hidden name beside ``path`` to write it under before renaming it into place (64
    random bits: no clashes). The file is created by whoever writes it, inside the ``try`` that
    removes it, so an interrupt at any point leaves nothing behind."""
    return _folder(path) / f"{_temporary_prefix(path)}{secrets.token_hex(TOKEN_HEX // 2)}{PART}"


def _claim(path: Path, names: list[Path]) -> tuple[Path, int]:
    """Create a temporary for ``path`` and hold its lock -> (temporary, locked descriptor); each
    name is added to ``names`` before its file is created, for the caller to clean up.

    Between creating the file and locking it, a stale-temporary sweep could take the lock and
    unlink it; the writer notices (no links left) and claims another name."""
    while True:
        tmp = temporary_path(path)
        names.append(tmp)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return tmp, fd
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)


def _unheld(candidate: Path) -> int | None:
    """A descriptor of ``candidate`` holding its lock, or None where a live writer holds it."""
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of ``path`` whose writer is gone (nobody holds their lock): what a run killed
    with SIGKILL, which no handler sees, leaves behind; oldest first."""
    pattern = glob.escape(_temporary_prefix(path)) + "[0-9a-f]" * TOKEN_HEX + glob.escape(PART)
    stale = []
    for candidate in _folder(path).glob(pattern):
        fd = _unheld(candidate)
        if fd is not None:
            os.close(fd)
            stale.append(candidate)
    return sorted(stale, key=lambda p: p.stat().st_mtime_ns if p.exists() else 0)


def remove_stale_temporaries(path: Path) -> None:
    """Delete the stale temporaries of ``path``; a live writer's are kept (checked under the lock,
    so a writer that claims the name meanwhile is never hit)."""
    for candidate in stale_temporaries(path):
        fd = _unheld(candidate)
        if fd is None:
            continue
        try:
            candidate.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a file name to write ``path``'s whole content to; when the block ends cleanly the
    content becomes ``path`` (a rename, or a copy into a character device / FIFO), otherwise it is
    removed. Raises OSError from the file system as it comes; callers name the output."""
    kind = check_target(path)
    if kind in WRITE_THROUGH:
        with tempfile.TemporaryDirectory(prefix="bsqaudio-") as scratch:
            tmp = Path(scratch) / path.name
            yield tmp
            with open(tmp, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    # The temporary's name is known here before the file exists: a signal (Interrupted) landing
    # between its creation and the block below left an orphan behind (seen once in ~50
    # interrupted batches).
    names: list[Path] = []
    fd = None
    try:
        tmp, fd = _claim(path, names)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        for name in names:
            name.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    remove_stale_temporaries(path)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` as ``path`` through ``atomic_path``; failures as one-line errors."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(payload)
    except OSError as err:
        raise BsqAudioError(f"{path}: cannot write ({err.strerror})") from None
