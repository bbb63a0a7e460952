"""What the corpus scripts share: fetch Debian packages, unpack them, read FLAC durations.

Imported by scripts/build_corpus.py and scripts/build_heldout.py (run as scripts, so this folder
is on sys.path). Errors end the run with one line prefixed by the running script's name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def die(message: str) -> None:
    sys.exit(f"{Path(sys.argv[0]).stem}: error: {message}")


def require_tools(need_apt: bool, extra: tuple[str, ...] = ()) -> None:
    """Fail early with one clear line rather than a traceback mid-run."""
    tools = ["ffmpeg", *extra, "dpkg", "dpkg-deb"] + (["apt-get"] if need_apt else [])
    for tool in tools:
        if shutil.which(tool) is None:
            hint = "apt-get install ffmpeg" if tool.startswith("ff") else "run this on Debian or Ubuntu"
            die(f"'{tool}' not found on PATH; {hint}")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode:
        lines = result.stderr.strip().splitlines()
        die(f"{' '.join(cmd)} failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result


def deb_path(package: str, work: Path) -> Path | None:
    debs = sorted(work.glob(f"{package}_*.deb"))
    if len(debs) > 1:
        die(f"several .deb files for {package} in {work}; delete the stale ones")
    return debs[0] if debs else None


def fetch(package: str, work: Path) -> tuple[Path, Path]:
    """Download and unpack a package once; return (deb, unpacked tree)."""
    deb = deb_path(package, work)
    if deb is None:
        print(f"{package}: apt-get download", flush=True)
        run(["apt-get", "download", package], cwd=work)
        deb = deb_path(package, work)
    tree = work / package
    if not tree.is_dir():
        partial = work / f"{package}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        run(["dpkg", "-x", str(deb), str(partial)])
        partial.rename(tree)
    return deb, tree


SAMPLE_RATE = 16000


def to_flac(source: list[str], dest: Path, stdin: bytes | None = None) -> str | None:
    """ffmpeg ``source`` (input options, ``-i`` and any output cut) -> 16 kHz mono s16 FLAC at
    ``dest``, bit-exact and without metadata, via a ``.partial`` name; an error line or None."""
    partial = dest.with_name(dest.name + ".partial")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *source, "-map", "0:a:0", "-ac", "1",
           "-ar", str(SAMPLE_RATE), "-sample_fmt", "s16", "-map_metadata", "-1",
           "-fflags", "+bitexact", "-flags:a", "+bitexact", "-c:a", "flac", "-f", "flac", str(partial)]
    result = subprocess.run(cmd, input=stdin, capture_output=True)
    if result.returncode:
        partial.unlink(missing_ok=True)
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return "ffmpeg cannot decode: " + (lines[-1] if lines else f"exit {result.returncode}")
    partial.rename(dest)
    return None


def flac_duration(path: Path) -> float:
    """Duration from the FLAC STREAMINFO block (ffmpeg fills in the sample count)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:4] != b"fLaC":
        raise ValueError(f"{path} is not a FLAC file")
    info = int.from_bytes(head[18:26], "big")  # 20 bits rate, 3 channels, 5 bps, 36 samples
    return (info & (1 << 36) - 1) / (info >> 44)
