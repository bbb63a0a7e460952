"""benchmarks/quality.py: input collection, alignment, summaries (no model, no external tools)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_alignment import speechlike

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
spec = importlib.util.spec_from_file_location("quality_bench", SCRIPT)
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_collect_inputs_reads_manifest_relative_paths(tmp_path):
    (tmp_path / "val").mkdir()
    for name in ("a.flac", "b.flac", "c.flac"):
        sf.write(tmp_path / "val" / name, np.zeros(1600, dtype=np.float32), 16000)
    lines = [{"path": "val/a.flac", "split": "val", "kind": "speech"},
             {"path": "val/b.flac", "split": "val", "kind": "music"},
             {"path": "val/c.flac", "split": "train", "kind": "speech"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    items = quality.collect_inputs([str(manifest)], "val", "all")
    assert [(i["name"], i["kind"]) for i in items] == [("val/b.flac", "music"),
                                                       ("val/a.flac", "speech")]
    assert items[1]["path"] == (tmp_path / "val" / "a.flac").resolve()
    assert [i["name"] for i in quality.collect_inputs([str(manifest)], "val", "speech")] == [
        "val/a.flac"]
    assert len(quality.collect_inputs([str(tmp_path / "val")], None, "all")) == 3


def test_summarize_and_target_check():
    def row(duration, systems):
        return {"duration_s": duration, "truncated": False, "systems": systems}

    def m(stoi, pesq, mrstft, bits, **extra):
        return {"mel_mae_db": 1.0, "mel_mse_db": 2.0, "mrstft": mrstft, "si_sdr_db": 0.0,
                "stoi": stoi, "pesq_wb": pesq, "bits": bits, "lag_samples": 0,
                "codec_seconds": 0.1, "bitrate_bps": None if bits is None else bits / 2.0, **extra}

    rows = [row(2.0, {"bsqaudio": m(0.8, 1.5, 1.0, 3800, code_bitrate_bps=1800.0),
                      "codec2-1200": m(0.7, None, 3.0, 2400),
                      "codec2-3200": m(0.8, 1.3, 2.5, 6400)}),
            row(2.0, {"bsqaudio": m(0.9, 1.7, 1.2, 3800, code_bitrate_bps=1800.0),
                      "codec2-1200": m(0.75, 1.2, 3.0, 2400),
                      "codec2-3200": {"error": "boom"}})]
    summary = quality.summarize(rows, ["bsqaudio", "codec2-1200", "codec2-3200"])
    b = summary["systems"]["bsqaudio"]
    assert b["stoi"] == pytest.approx(0.85) and b["bitrate_bps"] == pytest.approx(1900)
    assert b["code_bitrate_bps"] == pytest.approx(1800)
    assert summary["systems"]["codec2-1200"]["pesq_wb"] == pytest.approx(1.2)
    assert summary["systems"]["codec2-1200"]["pesq_wb_n"] == 1
    assert summary["systems"]["codec2-3200"]["errors"] == 1
    target = quality.target_check(summary, rows)
    assert target["code_bitrate_le_1800"] and not target["file_bitrate_le_1800"]
    assert target["stoi_above_codec2_1200"] and target["pesq_wb_above_codec2_1200"]
    assert target["mrstft_below_codec2_3200"]
    assert target["paired"]["stoi"]["wins"] == 2 and target["paired"]["pesq_wb"]["n"] == 1
    assert target["paired"]["mrstft"]["mean_advantage"] == pytest.approx(1.5)
    assert "| bsqaudio | 1900 (codes 1800) |" in quality.render_table("t", summary,
                                                                      ["bsqaudio"])


@pytest.mark.skipif(shutil.which("c2enc") is None or shutil.which("opusenc") is None,
                    reason="codec2 / opus-tools not installed")
def test_external_codecs_round_trip(tmp_path):
    wave = speechlike(1.0)
    decoded, bits = quality.run_codec2(wave, "1200", tmp_path)
    assert abs(decoded.shape[0] - wave.shape[0]) < 400 and bits == pytest.approx(1200, rel=0.1)
    decoded, bits = quality.run_opus(wave, 8, tmp_path)
    assert decoded.shape[0] == wave.shape[0] and bits > 0


def test_reuse_adds_missing_systems_from_an_earlier_report(tmp_path):
    """A new model's run of bsqaudio alone borrows the reference codecs' rows of an earlier run
    on the same files, and refuses one that does not cover them."""
    def report(systems: dict[str, float], paths: list[str], date: str) -> dict:
        return {"date_utc": date, "settings": {"max_seconds": None, "music_max_seconds": 60.0,
                                               "systems": list(systems)},
                "files": [{"path": p, "duration_s": 2.0, "systems": {n: {"stoi": v} for n, v in systems.items()}}
                          for p in paths]}

    new = report({"bsqaudio": 0.8}, ["a.flac", "b.flac"], "new")
    quality.reuse_systems(new, report({"bsqaudio": 0.7, "codec2-1200": 0.75}, ["a.flac", "b.flac", "c.flac"],
                                      "old"), tmp_path / "old.json")
    assert new["settings"]["systems"] == ["bsqaudio", "codec2-1200"]
    assert [f["systems"] for f in new["files"]] == [{"bsqaudio": {"stoi": 0.8}, "codec2-1200": {"stoi": 0.75}}] * 2
    assert new["settings"]["reused"]["systems"] == ["codec2-1200"]
    with pytest.raises(SystemExit, match="no result for b.flac"):
        quality.reuse_systems(report({"bsqaudio": 0.8}, ["a.flac", "b.flac"], "new"),
                              report({"opus-6k": 0.9}, ["a.flac"], "old"), tmp_path / "old.json")
