#!/usr/bin/env python3
"""Build a held-out test set of real recordings that bsqaudio never trained on.

The default model was trained only on the packages listed in
TRAINING_PACKAGES (see scripts/build_corpus.py). This script takes recorded
human speech and real music from *other* Debian packages, so that
benchmarks/quality.py can measure how the model generalises to new speakers,
languages, recording chains and music. Nothing is read from the training
corpus or its work folder: packages are downloaded again into WORK.

Pipeline, per package (same conventions as build_corpus.py):
  1. `apt-get download` the .deb into WORK and `dpkg -x` it into WORK/PKG.
  2. List the audio files under each folder ("group") named in PACKAGES,
     skipping symlinks and the sub-folders in `exclude`.
  3. Order each group's files by a hash of "PKG/source path" (so the choice
     never depends on run order or on the file system) and convert them in
     that order with ffmpeg to 16 kHz mono 16-bit FLAC in WORK/flac/PKG,
     keeping a file only if it lasts at least `min_seconds`, until the
     group's quota is met. Music is cut to its first MUSIC_SECONDS seconds.
  4. Hard-link each kept FLAC to OUT/heldout/PKG/NAME.flac and write
     OUT/manifest.jsonl (same schema as build_corpus.py's, split "heldout"),
     OUT/SUMMARY.md and a copy of each copyright file in OUT/copyright/.

Licences were read by hand from each package's copyright file (the files are
free-form or their DEP-5 paths do not match installed paths); each entry
names a phrase that must still be in the copyright file, so a changed file
stops the build instead of silently mislabelling the audio.

Finished downloads, extractions and conversions in WORK are reused on a
re-run (partial results are written under a temporary name and renamed only
when complete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from build_corpus import PACKAGES as CORPUS_PACKAGES
from debian_audio import deb_path, die, fetch, flac_duration, require_tools, run, to_flac

MUSIC_SECONDS = 60.0
SPLIT = "heldout"
AUDIO_EXTS = {".g722", ".gsm", ".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3"}
RAW_FORMATS = {".g722": "g722", ".gsm": "gsm"}  # headerless codecs: ffmpeg needs -f

# What the default model was trained on (scripts/build_corpus.py PACKAGES).
# Held-out packages must not be any of these, nor another encoding of the
# same recordings (asterisk-core-sounds-{en,es,fr,it}{,-gsm,-wav}).
TRAINING_PACKAGES = set(CORPUS_PACKAGES)  # scripts/build_corpus.py: never held out
SAME_RECORDINGS_PREFIXES = tuple(f"asterisk-core-sounds-{lang}" for lang in ("en", "es", "fr", "it"))


@dataclass(frozen=True)
class Package:
    """What to take from a package.

    `groups` maps each audio folder inside the package to the number of files
    to take from it. `licence` is the licence of those files as read from the
    copyright file, `evidence` a phrase of that file that states it, and
    `holders` who made the recordings. `note` describes the material.
    `exclude` names sub-folders, or file names without extension, to leave out.
    """

    kind: str
    groups: dict[str, int]
    licence: str
    evidence: str
    holders: str
    note: str
    min_seconds: float = 1.0
    exclude: tuple[str, ...] = ()


# Asterisk prompt sets hold a few sounds that are not speech: silence/ (digital
# silence), beeps and tones, and tt-monkeys (recorded monkeys).
ASTERISK_NON_SPEECH = (
    "silence",
    "beep",
    "beeperr",
    "ascending-2tone",
    "descending-2tone",
    "confbridge-join",
    "confbridge-leave",
    "tt-monkeys",
)

KLETTRES = "usr/share/klettres"
# Languages whose recorder is credited by name in the KLettres handbook
# (usr/share/doc/HTML/en/klettres, "Credits and License").
KLETTRES_LANGUAGES = ("cs", "da", "de", "es", "he", "nds", "nl", "pt_BR")

PACKAGES = {
    "asterisk-core-sounds-ru-g722": Package(
        "speech",
        {"usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU": 40},
        licence="CC-BY-3.0",
        evidence="Provided by: Maxim Topal",
        holders="Maxim Topal (ivrvoice.ru)",
        note="Russian IVR prompts, one female voice; G.722 (16 kHz, wideband). New "
        "speaker and language, but the same Asterisk prompt genre and codec as the "
        "training speech",
        exclude=ASTERISK_NON_SPEECH,
    ),
    "asterisk-prompt-it-menardi-wav": Package(
        "speech",
        {"usr/share/asterisk/sounds/it_IT_f_Menardi": 30},
        licence="CC-BY-SA-3.0-IT",
        evidence="Marco Menardi e Paola Dal Zot",
        holders="Marco Menardi and Paola Dal Zot (probably the voice: the packager wrote '?the voice?')",
        note="Italian IVR prompts, one female voice; 8 kHz 16-bit PCM (narrowband: nothing above 4 kHz)",
        exclude=ASTERISK_NON_SPEECH,
    ),
    "asterisk-prompt-fr-armelle": Package(
        "speech",
        {"usr/share/asterisk/sounds/fr": 20},
        licence="BSD-style permissive (keep the notice, no endorsement; see copyright file)",
        evidence="Voice actor: Armelle Desjardins",
        holders="Michel Gutierrez (copyright), Armelle Desjardins (voice actor)",
        note="French IVR prompts, one female voice actor; GSM 06.10 at 8 kHz (narrowband and lossy)",
        exclude=ASTERISK_NON_SPEECH,
    ),
    "klettres-data": Package(
        "speech",
        {f"{KLETTRES}/{lang}": 4 for lang in KLETTRES_LANGUAGES},
        licence="GPL-2+",
        evidence="2007, Pino Toscano <pino@kde.org>\nLicense: GPL-2+",
        holders="KDE KLettres; recorded by the volunteers credited per language in its handbook",
        note="Isolated letters and syllables read by native speakers of "
        + ", ".join(KLETTRES_LANGUAGES)
        + " (4 files each; 1-2 readers credited per language, one of them a child; "
        "home recordings); "
        "Ogg Vorbis, 44.1 kHz",
        min_seconds=0.5,
    ),
    "wesnoth-1.16-music": Package(
        "music",
        {"usr/share/games/wesnoth/1.16/data/core/music": 5},
        licence="GPL-2+",
        evidence="GNU General Public License version 2\n        or at your option any later",
        holders="The Battle for Wesnoth project (composers listed in the game's credits)",
        note="Orchestral game soundtrack; Ogg Vorbis, 44.1 kHz stereo; tracks of at "
        "least 30 s (leaves out the victory/defeat jingles and silence.ogg), first "
        f"{MUSIC_SECONDS:.0f} s kept",
        min_seconds=30.0,
    ),
    "asterisk-moh-opsound-g722": Package(
        "music",
        {"usr/share/asterisk/moh": 5},
        licence="CC-BY-SA-3.0",
        evidence="Creative Commons Attribution-ShareAlike\n3.0 license",
        holders="Paul Shuler (Macroform), Manolo Camp, Reno Project",
        note="Five released songs (electronic / downtempo) used as music on hold; "
        f"G.722 (16 kHz, wideband); first {MUSIC_SECONDS:.0f} s kept",
        min_seconds=30.0,
    ),
}


@dataclass
class Item:
    """One candidate audio file of a package and, once converted, its staged FLAC."""

    package: str
    group: str
    source: str  # path inside the package
    file: Path
    name: str = ""
    flac: Path | None = None
    duration: float = 0.0
    formats: set[str] = field(default_factory=set)


def check_packages() -> None:
    for package in PACKAGES:
        if package in TRAINING_PACKAGES or package.startswith(SAME_RECORDINGS_PREFIXES):
            die(f"{package} is (or re-encodes) a training package")


def hash_key(package: str, source: str) -> str:
    return hashlib.sha1(f"{package}/{source}".encode()).hexdigest()


def candidates(package: str, tree: Path) -> dict[str, list[Item]]:
    """Audio files per group, in hash order, named relative to the groups' common folder."""
    spec = PACKAGES[package]
    base = os.path.commonpath(list(spec.groups)) if len(spec.groups) > 1 else next(iter(spec.groups))
    by_group: dict[str, list[Item]] = {}
    for group in spec.groups:
        items = []
        for path in sorted((tree / group).rglob("*")):
            parts = {*path.relative_to(tree / group).parent.parts, path.stem}
            excluded = parts & set(spec.exclude)
            if path.is_symlink() or not path.is_file() or excluded:
                continue
            if path.suffix.lower() not in AUDIO_EXTS:
                continue
            source = path.relative_to(tree).as_posix()
            stem = os.path.splitext(os.path.relpath(source, base))[0]
            items.append(Item(package, group, source, path, stem.replace("/", "__")))
        if not items:
            die(f"no audio in {package} under {group}; update PACKAGES")
        by_group[group] = sorted(items, key=lambda item: hash_key(package, item.source))
    names = Counter(item.name for items in by_group.values() for item in items)
    for items in by_group.values():
        for item in items:  # same stem with two extensions: keep the extension
            if names[item.name] > 1:
                item.name += "_" + item.file.suffix.lstrip(".").lower()
            item.name += ".flac"
    return by_group


def source_format(item: Item) -> str:
    """'codec rate Hz chN' of the original file, from ffprobe."""
    ext = item.file.suffix.lower()
    fmt = ["-f", RAW_FORMATS[ext]] if ext in RAW_FORMATS else []
    result = run(
        [
            "ffprobe",
            "-v",
            "error",
            *fmt,
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=codec_name,sample_rate,channels",
            "-of",
            "default=nw=1",
            str(item.file),
        ]
    )
    info = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    return f"{info.get('codec_name')} {info.get('sample_rate')} Hz ch{info.get('channels')}"


def convert(item: Item, dest: Path, max_seconds: float | None) -> str | None:
    """Convert to 16 kHz mono s16 FLAC at dest unless already there; return an error or None."""
    if not dest.exists():
        ext = item.file.suffix.lower()
        fmt = ["-f", RAW_FORMATS[ext]] if ext in RAW_FORMATS else []
        cut = ["-t", f"{max_seconds:g}"] if max_seconds else []
        error = to_flac([*fmt, "-i", str(item.file), *cut], dest)
        if error:
            return error
    item.flac = dest
    item.duration = flac_duration(dest)
    return None


def full_duration(item: Item) -> float:
    """Length of the original file (music is cut, so its FLAC does not tell)."""
    ext = item.file.suffix.lower()
    fmt = ["-f", RAW_FORMATS[ext]] if ext in RAW_FORMATS else []
    result = run(
        ["ffprobe", "-v", "error", *fmt, "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(item.file)]
    )
    try:
        return float(result.stdout.strip())
    except ValueError:
        return 0.0


def select(package: str, by_group: dict[str, list[Item]], stage: Path) -> tuple[list[Item], list]:
    """Take each group's quota in hash order; return (kept, [(source, reason) left out])."""
    spec = PACKAGES[package]
    max_seconds = MUSIC_SECONDS if spec.kind == "music" else None
    kept, passed = [], []
    for group, items in by_group.items():
        quota, taken = spec.groups[group], 0
        for item in items:
            if taken == quota:
                break
            if spec.kind == "music":
                length = full_duration(item)
                if length < spec.min_seconds:
                    passed.append((item.source, f"shorter than {spec.min_seconds:g} s ({length:.1f} s)"))
                    continue
            error = convert(item, stage / item.name, max_seconds)
            if error is None and item.duration < spec.min_seconds:
                error = f"shorter than {spec.min_seconds:g} s ({item.duration:.2f} s)"
            if error:
                passed.append((item.source, error))
                continue
            kept.append(item)
            taken += 1
        if taken < quota:
            die(f"{package}: only {taken} of {quota} usable files under {group}")
    return kept, passed


def place(item: Item, out: Path) -> Path:
    """Hard-link the staged FLAC into OUT/heldout/PKG (copy across file systems)."""
    target = out / SPLIT / item.package / item.name
    if not (target.exists() and target.samefile(item.flac)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(item.flac, target)
        except OSError:
            shutil.copyfile(item.flac, target)
    return target


def write_summary(out: Path, rows: list[dict], passed: list[tuple[str, str, str]]) -> None:
    columns = list(rows[0])
    numeric = {"files", "hours", "seconds"}
    total = {"package": "**total**", **{c: sum(row[c] for row in rows) for c in numeric}}
    kinds = sorted({row["kind"] for row in rows})
    lines = [
        "# bsqaudio held-out recordings",
        "",
        "Built by `scripts/build_heldout.py`: real recordings (human speech, released music) "
        "from Debian packages that are **not** among the packages the default model was "
        "trained on (" + ", ".join(sorted(TRAINING_PACKAGES)) + "). 16 kHz mono 16-bit FLAC, "
        f'every file in split "{SPLIT}". Files are chosen per folder in the order of '
        'sha1("PACKAGE/source path"), keeping the first ones that decode and are long enough; '
        f"music is cut to its first {MUSIC_SECONDS:.0f} s. Copyright files are copied to "
        "`copyright/`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "".join("---:|" if c in numeric else "---|" for c in columns),
    ]
    for row in [*rows, total]:
        cells = [row.get(c, "") for c in columns]
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    lines.append("")
    for kind in kinds:
        sel = [row for row in rows if row["kind"] == kind]
        lines.append(
            f"- {kind}: {sum(r['files'] for r in sel)} files, "
            f"{sum(r['seconds'] for r in sel):.1f} s ({sum(r['hours'] for r in sel):.3f} h) "
            f"from {len(sel)} packages"
        )
    lines += ["", "## Files passed over while filling the quotas", ""]
    lines += [f"- {pkg}: `{source}`: {reason}" for pkg, source, reason in passed] or ["None."]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="packages: " + ", ".join(PACKAGES) + "\n\nexample:\n  python scripts/build_heldout.py "
        "--work /work/data/heldout-work --out /work/data/heldout",
    )
    parser.add_argument(
        "--work",
        type=Path,
        required=True,
        help="cache for .debs, unpacked trees and staged FLACs (not the training corpus's)",
    )
    parser.add_argument("--out", type=Path, required=True, help="held-out folder to write")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    check_packages()
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    require_tools(need_apt=any(deb_path(p, work) is None for p in PACKAGES), extra=("ffprobe",))

    manifest, rows, passed_all = [], [], []
    for package, spec in PACKAGES.items():
        deb, tree = fetch(package, work)
        copyright_file = f"usr/share/doc/{package}/copyright"
        text = (tree / copyright_file).read_text(errors="replace")
        if spec.evidence not in text:
            die(f"{copyright_file} no longer says {spec.evidence!r}; re-check the licence")
        (out / "copyright").mkdir(exist_ok=True)
        (out / "copyright" / package).write_text(text)

        stage = work / "flac" / package
        stage.mkdir(parents=True, exist_ok=True)
        kept, passed = select(package, candidates(package, tree), stage)
        passed_all += [(package, source, reason) for source, reason in passed]
        placed = {place(item, out): item for item in kept}
        for stale in set((out / SPLIT / package).glob("*.flac")) - placed.keys():
            stale.unlink()  # left by an earlier run with another selection
        formats = Counter(source_format(item) for item in kept)
        for path, item in placed.items():
            manifest.append(
                {
                    "path": path.relative_to(out).as_posix(),
                    "split": SPLIT,
                    "duration_s": round(item.duration, 4),
                    "package": package,
                    "kind": spec.kind,
                    "source": item.source,
                    "licence": spec.licence,
                }
            )
        seconds = sum(item.duration for item in kept)
        rows.append(
            {
                "package": package,
                "version": run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip(),
                "kind": spec.kind,
                "files": len(kept),
                "seconds": seconds,
                "hours": seconds / 3600,
                "source format": ", ".join(f"{f} ({n})" for f, n in sorted(formats.items())),
                "what": spec.note,
                "licence": spec.licence,
                "copyright holders / voices": spec.holders,
                "copyright file": f"{copyright_file} (copy: copyright/{package})",
            }
        )
        print(f"{package}: {len(kept)} files, {seconds:.1f} s, {len(passed)} passed over", flush=True)

    with open(out / "manifest.jsonl", "w") as f:
        for entry in sorted(manifest, key=lambda e: e["path"]):
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    write_summary(out, rows, passed_all)
    print(f"wrote {len(manifest)} files to {out}")


if __name__ == "__main__":
    main()
