#!/usr/bin/env python3
"""Build the bsqaudio training corpus from freely licensed Debian packages.

Why Debian packages: they are versioned, mirrored, carry a machine-readable
copyright file, and `apt-get download` fetches exactly the same bytes again,
so the corpus can be rebuilt by anyone from this script alone.

Pipeline, per package:
  1. `apt-get download` the .deb into WORK and `dpkg -x` it into WORK/PKG.
  2. Find its audio files (only under the folders listed in PACKAGES, so that
     e.g. hedgewars contributes its voice packs and none of its effects, and
     only files whose names match the package's `include` globs, so that
     tuxpaint contributes its spoken descriptions and none of its sound
     effects; zip archives such as nexuiz's music.pk3 are read member by
     member) and
     convert each with ffmpeg to 16 kHz mono 16-bit FLAC in WORK/flac/PKG.
     Files shorter than 0.5 s (or the package's own `min_seconds`), that
     ffmpeg cannot decode or (where `dedupe` is set) whose audio repeats an
     earlier file's are reported and left out.
  3. Split by file into train/val with a hash of "PKG/source path", so the
     split never depends on run order, and hard-link each FLAC to
     OUT/{train,val}/PKG/NAME.flac.
  4. Read the licence from the package's copyright file and write
     OUT/manifest.jsonl, OUT/SUMMARY.md and a copy of each copyright file.

Every step is resumable: finished downloads, extractions and conversions are
kept in WORK and skipped on a re-run (partial results are written under a
temporary name and renamed only when complete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from debian_audio import deb_path, die, fetch, flac_duration, require_tools, run, to_flac

MIN_SECONDS = 0.5
AUDIO_EXTS = {".g722", ".ogg", ".oga", ".opus", ".wav", ".flac", ".mp3"}
ZIP_EXTS = {".pk3"}  # zip archives (Quake-engine game data) holding audio


@dataclass(frozen=True)
class Package:
    """What to take from a package.

    `roots` maps each audio folder inside the package to the `Files:` pattern
    of the DEP-5 copyright paragraph that covers it (chosen by reading the
    copyright file, because its paths are upstream source paths that do not
    match installed paths), or to a dict {file-name glob: pattern} where
    files of one folder fall under different paragraphs (the first glob that
    matches a file's name names its paragraph; a file that none matches stops
    the build). None means the copyright file is free-form: then `licence`
    and `holders`, read from it by hand, label the files, and `evidence`, a
    phrase of that file stating the licence, must still be in it (else the
    build stops); without `licence` the licence is guessed from the text.
    Sub-folders or file names (with extension) in `exclude` are left out.
    `include`, if not empty, keeps only files whose names (zip members: the
    member's file name) match one of its globs (fnmatch, case-sensitive).
    `min_seconds`: shorter files are left out (lower only where a package is
    made of short clips, such as isolated syllables).
    `dedupe`: a file whose converted audio is identical to an earlier one's
    (in path order) is left out, so that no recording is in both train and
    val (set for the packages added later; the first ten keep theirs, as
    their split must not move: hedgewars-data has 25 such copies).
    `note` says what is taken and what is left out and why (for SUMMARY.md).
    """

    kind: str
    roots: dict[str, str | None | dict[str, str | None]]
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    licence: str = ""
    holders: str = ""
    evidence: str = ""
    min_seconds: float = MIN_SECONDS
    dedupe: bool = False
    note: str = ""


# Tux Paint descriptions sampled at 8 kHz (band-limited to 4 kHz): left out.
TUXPAINT_8KHZ = tuple(
    f"{name}_desc_{lang}.ogg" for name in ("pigeon", "rat", "wapiti", "wildboar", "zebu") for lang in ("ca", "nl")
)


def _asterisk(pattern: str) -> Package:
    """Asterisk prompts; their silence/ folder is 1-10 s of digital silence."""
    return Package("speech", {"usr/share/asterisk/sounds": pattern}, exclude=("silence",))


PACKAGES = {
    "asterisk-core-sounds-en-g722": _asterisk("*"),
    "asterisk-core-sounds-es-g722": _asterisk("*"),
    "asterisk-core-sounds-fr-g722": _asterisk("fr-*"),
    "asterisk-core-sounds-it-g722": _asterisk("it-*"),
    "hedgewars-data": Package(
        "speech",
        {"usr/share/games/hedgewars/Data/Sounds/voices": "share/hedgewars/Data/Sounds/*"},
    ),
    "drascula-music": Package("music", {"usr/share/scummvm/drascula/audio": "*"}),
    "warzone2100-music": Package("music", {"usr/share/games/warzone2100/music": "*"}),
    "planetblupi-music-ogg": Package("music", {"usr/share/planetblupi/music": "*"}),
    "supertux-data": Package(
        "music",
        {
            "usr/share/games/supertux2/music": "data/music/*",
            "usr/share/games/supertux2/sounds": "*",
        },
    ),
    "nexuiz-music": Package("music", {"usr/share/games/nexuiz/data": None}),
    # Added later (speech and music), with `dedupe` set. Source sample rates
    # were checked with ffprobe for every file: band-limited sources (8 or
    # 11 kHz, or MP3 at <= 16 kbit/s) are left out, as said per package;
    # everything kept is sampled at 16 kHz or more.
    "tuxpaint-stamps-default": Package(
        "speech",
        {"usr/share/tuxpaint/stamps": "*"},
        include=("*_desc_*.ogg",),
        exclude=TUXPAINT_8KHZ,
        dedupe=True,
        note="Spoken stamp descriptions NAME_desc_LANG.ogg (be bg ca da el es fr lt ml nl ro ru), "
        "44.1 kHz Vorbis. Left out: the stamps' sound effects (NAME.ogg) and spoken names "
        "(NAME_LANG.ogg), the language-less NAME_desc.ogg and the NAME_desc_pt_BR.wav files "
        "(outside the NAME_desc_LANG.ogg set), and 10 descriptions sampled at 8 kHz "
        "(band-limited: " + ", ".join(TUXPAINT_8KHZ) + "). Kept, though band-limited: about 200 "
        "Catalan descriptions that are stored at 44.1 kHz but carry nothing above 4 kHz "
        "(upsampled 8 kHz recordings, found by their spectra, not by the sample rate)",
    ),
    "fillets-ng-data-cs": Package(
        "speech",
        {"usr/share/games/fillets-ng/sound": None},
        licence="GPL-2",
        holders="Ivo Danihelka, Pavel Danihelka, ALTAR interactive (upstream authors)",
        evidence="the Free Software Foundation; version 2 dated June, 1991.",
        dedupe=True,
        note="Acted Czech dialogue of Fish Fillets NG (sound/LEVEL/cs), Vorbis, mostly 22.05 kHz "
        "mono, some 44.1 kHz",
    ),
    "festvox-ru": Package(
        "speech",
        {"usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav": "*"},
        dedupe=True,
        note="Read Russian sentences, one male speaker (the Festival msu_ru_nsh voice's recordings), "
        "16 kHz 16-bit PCM. Left out: the voice's other data (labels, mcep, trees)",
    ),
    "gcin-voice": Package(
        "speech",
        {"usr/share/gcin-voice/ogg": {"3.ogg": "*/3.ogg", "5.ogg": "*/5.ogg"}},
        min_seconds=0.2,  # 0.13-0.6 s syllables: 0.5 s would leave 89 of 2,358 files and no 5.ogg
        dedupe=True,
        note="Isolated Mandarin syllables (one folder per Zhuyin syllable and tone) by two voices: "
        "3.ogg (Edward Der-Hua Liu, GPL-3 or LGPL-3) and 5.ogg (Chu Lo for ChionMeilin, CC-BY-3); "
        "44.1 kHz Vorbis. Kept from 0.2 s (not 0.5 s as elsewhere), as nearly all are shorter "
        "than 0.5 s",
    ),
    "kajongg": Package(
        "speech",
        {"usr/share/kajongg/voices": "*"},
        dedupe=True,
        note="Short Mahjongg calls (tile names, chow, pung, kong, ...) by four English and four "
        "German voices, 44.1 kHz Vorbis; voices/*/COPYRIGHT: Wolfgang Rohdewald, GPL v2 or later. "
        "Left out: everything outside voices/",
    ),
    "fretsonfire-songs-muldjord": Package(
        "music",
        {"usr/share/games/fretsonfire/data/songs/muldjord": None},
        licence="CC-BY-SA-3.0",
        holders="2009 El Senator (Muldjord)",
        evidence="Attribution ShareAlike licence 3.0",
        dedupe=True,
        note="Four metal songs, each as song.ogg (backing track) and guitar.ogg (guitar part), "
        "44.1 kHz stereo Vorbis",
    ),
    "fretsonfire-songs-sectoid": Package(
        "music",
        {"usr/share/games/fretsonfire/data/songs/sectoid": None},
        licence="Expat",
        holders="2006/2007 Carlos Viola Iborra",
        evidence="Permission is hereby granted, free of charge, to any person obtaining a copy",
        dedupe=True,
        note="Four rock/metal songs, each as song.ogg (backing track) and guitar.ogg (guitar part), "
        "44.1 kHz stereo Vorbis",
    ),
    "colobot-common-sounds": Package(
        "music",
        {"usr/share/games/colobot/music": "*"},
        dedupe=True,
        note="The game's soundtrack (music/), 44.1 kHz stereo Vorbis. Left out: sounds/ (sound "
        "effects, partly 22.05 kHz 8-bit)",
    ),
    "pushover-data": Package(
        "music",
        {"usr/share/pushover/themes": "*"},
        dedupe=True,
        note="The ten theme tracks (music by Roberto Lorenz), 44.1 kHz stereo Vorbis",
    ),
}


@dataclass
class Item:
    """One audio file of a package and, once converted, its staged FLAC."""

    package: str
    pattern: str | None  # the DEP-5 Files: pattern covering it (None: free-form file)
    source: str  # path inside the package; zip members as ARCHIVE/MEMBER
    file: Path  # what ffmpeg reads (the archive itself for zip members)
    member: str | None = None
    flac: Path | None = None
    duration: float = 0.0
    split: str = "train"


def paragraph_of(package: str, root: str, name: str) -> str | None:
    """The Files: pattern covering file `name` under `root` (see Package.roots)."""
    patterns = PACKAGES[package].roots[root]
    if not isinstance(patterns, dict):
        return patterns
    for glob, pattern in patterns.items():
        if fnmatchcase(name, glob):
            return pattern
    die(f"{package}: no licence for {root}/.../{name} (none of {', '.join(patterns)}); update PACKAGES")


def find_audio(package: str, tree: Path) -> list[Item]:
    """List the package's audio, skipping symlinks (they duplicate real files)."""
    spec = PACKAGES[package]

    def included(name: str) -> bool:
        return not spec.include or any(fnmatchcase(name, glob) for glob in spec.include)

    items = []
    for root in spec.roots:
        for path in sorted((tree / root).rglob("*")):
            excluded = set(path.relative_to(tree / root).parts) & set(spec.exclude)
            if path.is_symlink() or not path.is_file() or excluded:
                continue
            source = path.relative_to(tree).as_posix()
            ext = path.suffix.lower()
            if ext in AUDIO_EXTS and included(path.name):
                items.append(Item(package, paragraph_of(package, root, path.name), source, path))
            elif ext in ZIP_EXTS:
                with zipfile.ZipFile(path) as archive:
                    for member in sorted(archive.namelist()):
                        name = Path(member).name
                        if Path(member).suffix.lower() in AUDIO_EXTS and included(name):
                            pattern = paragraph_of(package, root, name)
                            items.append(Item(package, pattern, f"{source}/{member}", path, member))
    return items


def output_names(items: list[Item]) -> list[str]:
    """Flatten paths below the package's common folder with '__'.

    A file keeps its extension in the name only when another file has the
    same path stem (supertux ships e.g. both grow.ogg and grow.wav).
    """
    common = os.path.commonpath([os.path.dirname(item.source) for item in items])
    stems = [os.path.splitext(os.path.relpath(item.source, common))[0] for item in items]
    clashes = {stem for stem, count in Counter(stems).items() if count > 1}
    names = []
    for item, stem in zip(items, stems, strict=True):
        if stem in clashes:
            stem += "_" + Path(item.source).suffix.lstrip(".").lower()
        names.append(stem.replace("/", "__") + ".flac")
    return names


def convert(item: Item, dest: Path) -> str | None:
    """Convert to 16 kHz mono s16 FLAC at dest unless already there; return an error or None."""
    if not dest.exists():
        stdin = b""
        if item.member:
            with zipfile.ZipFile(item.file) as archive:
                stdin = archive.read(item.member)
        source = "pipe:0" if item.member else str(item.file)
        fmt = ["-f", "g722"] if item.source.endswith(".g722") else []  # raw codec, no header
        error = to_flac([*fmt, "-i", source], dest, stdin)
        if error:
            return error
    item.flac = dest
    item.duration = flac_duration(dest)
    return None if item.duration >= PACKAGES[item.package].min_seconds else f"too short ({item.duration:.2f} s)"


def hash_fraction(package: str, source: str) -> float:
    return int(hashlib.sha1(f"{package}/{source}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def assign_splits(items: list[Item], val_fraction: float) -> None:
    """Hash split by file; a package with >= 10 files gets at least one val file.

    The forced one is the file whose hash is lowest, so it is the first file to
    go to val if val_fraction grows, and the choice is stable across runs.
    """
    for item in items:
        item.split = "val" if hash_fraction(item.package, item.source) < val_fraction else "train"
    if len(items) >= 10 and all(item.split == "train" for item in items):
        min(items, key=lambda item: hash_fraction(item.package, item.source)).split = "val"


def place(item: Item, out: Path, name: str) -> Path:
    """Hard-link the staged FLAC into OUT/split/PKG (copy across filesystems)."""
    target = out / item.split / item.package / name
    if not (target.exists() and target.samefile(item.flac)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(item.flac, target)
        except OSError:
            shutil.copyfile(item.flac, target)
    return target


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a DEP-5 file as {field: value}, continuation lines kept."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def licence_of(text: str, pattern: str | None) -> tuple[str, str]:
    """(licence name, copyright holders) for the paragraph covering `pattern`.

    For free-form copyright files this is a best-effort guess at a GNU licence
    and the first line mentioning a copyright.
    """
    if pattern is None or not text.startswith("Format:"):
        gnu = re.search(
            r"GNU (Lesser |Library )?General Public\s+License.{0,120}?version\s+(\d[\d.]*)",
            text,
            re.S,
        )
        if gnu:
            name = f"{'LGPL' if gnu.group(1) else 'GPL'}-{gnu.group(2)}"
            name += "+" if "any later version" in text else ""
        else:
            name = "unknown (see copyright file)"
        holder = re.search(r"^.*(?:©|\(c\)|Copyright).*$", text, re.M | re.I)
        return name, holder.group(0).strip() if holder else ""
    for fields in parse_dep5(text):
        if pattern in fields.get("Files", "").split():
            holders = [h.strip().rstrip(",") for h in fields.get("Copyright", "").splitlines()]
            holders = [h for h in holders if h]
            more = " et al." if len(holders) > 3 else ""
            return fields["License"].splitlines()[0], "; ".join(holders[:3]) + more
    die(f"no 'Files: {pattern}' paragraph in copyright file; update PACKAGES")


def licence_for(package: str, text: str, pattern: str | None) -> tuple[str, str]:
    """(licence name, copyright holders): as read by hand (Package.licence) or from the file."""
    spec = PACKAGES[package]
    if pattern is None and spec.licence:
        if spec.evidence not in text:
            die(f"{package}: copyright file no longer says {spec.evidence!r}; re-check the licence")
        return spec.licence, spec.holders
    return licence_of(text, pattern)


def write_summary(out: Path, rows: list[dict], skipped: list[tuple[str, str, str]], val: float):
    """SUMMARY.md: a row per package (columns = keys of `rows`), totals, notes, skipped files."""
    columns = list(rows[0])
    numeric = [c for c in columns if c.startswith(("files ", "hours ")) or c == "skipped"]
    total = {"package": "**total**", **{c: sum(row[c] for row in rows) for c in numeric}}
    lines = [
        "# bsqaudio corpus",
        "",
        f"Built by `scripts/build_corpus.py`: 16 kHz mono 16-bit FLAC, split by file "
        f"(val fraction {val}). Copyright files are copied to `copyright/`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "".join("---:|" if c in numeric else "---|" for c in columns),
    ]
    for row in [*rows, total]:
        cells = [row.get(c, "") for c in columns]
        lines.append(
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |"
        )
    kinds = sorted({row["kind"] for row in rows})
    lines.append("")
    for kind in kinds:
        sel = [row for row in rows if row["kind"] == kind]
        lines.append(
            f"- {kind}: {sum(r['hours train'] for r in sel):.3f} h train, "
            f"{sum(r['hours val'] for r in sel):.3f} h val, "
            f"{sum(r['files train'] + r['files val'] for r in sel)} files from {len(sel)} packages"
        )
    notes = [(row["package"], PACKAGES[row["package"]].note) for row in rows]
    lines += ["", "## What is taken from each package", ""]
    lines += [f"- {pkg}: {note}" for pkg, note in notes if note] or ["No notes."]
    lines += ["", "## Skipped files", ""]
    lines += [f"- {pkg}: `{source}`: {reason}" for pkg, source, reason in skipped] or ["None."]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="packages: "
        + ", ".join(PACKAGES)
        + "\n\nexample:\n  python scripts/build_corpus.py "
        "--work /work/data/debs --out /work/data/corpus",
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="cache for .debs, unpacked trees and staged FLACs"
    )
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of files for validation (default 0.05)",
    )
    parser.add_argument(
        "--packages",
        nargs="+",
        choices=PACKAGES,
        default=list(PACKAGES),
        metavar="PKG",
        help="only these packages (the manifest then lists only them)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel ffmpeg processes (default 2)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    require_tools(need_apt=any(deb_path(p, work) is None for p in args.packages))

    manifest, rows, skipped = [], [], []
    for package in args.packages:
        deb, tree = fetch(package, work)
        items = find_audio(package, tree)
        if not items:
            die(
                f"no audio in {package} under {', '.join(PACKAGES[package].roots)}; update PACKAGES"
            )
        names = output_names(items)
        stage = work / "flac" / package
        stage.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            errors = list(pool.map(convert, items, [stage / name for name in names]))
        kept, first_with = [], {}
        for item, name, error in zip(items, names, errors, strict=True):
            if not error and PACKAGES[package].dedupe:
                audio = hashlib.sha1(item.flac.read_bytes()).hexdigest()  # bit-exact FLAC: same audio
                if audio in first_with:
                    error = f"same audio as {first_with[audio]}"
                first_with.setdefault(audio, item.source)
            if error:
                print(f"{package}: skip {item.source}: {error}", file=sys.stderr)
                skipped.append((package, item.source, error))
            else:
                kept.append((item, name))
        assign_splits([item for item, _ in kept], args.val_fraction)

        copyright_file = f"usr/share/doc/{package}/copyright"
        text = (tree / copyright_file).read_text(errors="replace")
        (out / "copyright").mkdir(exist_ok=True)
        (out / "copyright" / package).write_text(text)
        patterns = [
            pattern
            for value in PACKAGES[package].roots.values()
            for pattern in (value.values() if isinstance(value, dict) else [value])
        ]
        licences = {pattern: licence_for(package, text, pattern) for pattern in patterns}
        placed = {place(item, out, name): item for item, name in kept}
        present = {
            *(out / "train" / package).glob("*.flac"),
            *(out / "val" / package).glob("*.flac"),
        }
        for stale in present - placed.keys():
            stale.unlink()  # left by an earlier run with another split or file list
        for path, item in placed.items():
            manifest.append(
                {
                    "path": path.relative_to(out).as_posix(),
                    "split": item.split,
                    "duration_s": round(item.duration, 4),
                    "package": package,
                    "kind": PACKAGES[package].kind,
                    "source": item.source,
                    "licence": licences[item.pattern][0],
                }
            )
        hours = {
            s: sum(i.duration for i, _ in kept if i.split == s) / 3600 for s in ("train", "val")
        }
        rows.append(
            {
                "package": package,
                "version": run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip(),
                "kind": PACKAGES[package].kind,
                "files train": sum(item.split == "train" for item, _ in kept),
                "files val": sum(item.split == "val" for item, _ in kept),
                "hours train": hours["train"],
                "hours val": hours["val"],
                "skipped": len(items) - len(kept),
                "licence": " / ".join(sorted({name for name, _ in licences.values()})),
                "copyright holders": " / ".join(dict.fromkeys(h for _, h in licences.values())),
                "copyright file": f"{copyright_file} (copy: copyright/{package})",
            }
        )
        print(f"{package}: {len(kept)} files kept, {len(items) - len(kept)} skipped", flush=True)

    with open(out / "manifest.jsonl", "w") as f:
        for entry in sorted(manifest, key=lambda e: e["path"]):
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    write_summary(out, rows, skipped, args.val_fraction)
    print(f"wrote {len(manifest)} files to {out}")


if __name__ == "__main__":
    main()
