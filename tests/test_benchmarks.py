"""The benchmark scripts (benchmarks/quality.py, speed.py, external_codecs.py) in their quick modes.

They run in-process on a randomly initialised tiny codec and a few seconds of dev-clean. External codecs
are used when installed; without them (CI) the scripts must still succeed and say what was skipped.
"""
from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rvqcodec import api, bitstream
from rvqcodec.data.audio_io import read_audio
from rvqcodec.model import Codec, CodecConfig

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import compare_quality  # noqa: E402
import external_codecs as ext  # noqa: E402
import quality  # noqa: E402
import speed  # noqa: E402

HAVE_FFMPEG = ext.ffmpeg_codecs("ffmpeg") is not None and "libopus" in ext.ffmpeg_codecs("ffmpeg")[0]
MISSING = "/nonexistent/tool"


@pytest.fixture(scope="module")
def dev_clean(speech_root) -> Path:
    return speech_root / "LibriSpeech" / "dev-clean"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _table_rows(markdown: str, first_column: str) -> list[list[str]]:
    """Cells of the markdown table whose header starts with ``first_column`` (header row included)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


# ------------------------------------------------------------------------------------------ quality


def test_quality_quick_writes_consistent_table_json_and_plot(tiny_model, dev_clean, tmp_path, capsys):
    out = tmp_path / "q"
    assert quality.main(["--quick", "--model", str(tiny_model), "--data", str(dev_clean), "--out", str(out)]) == 0
    result = json.loads((out / "quality.json").read_text())
    rows = {r["setting"]: r for r in result["results"]}
    files = result["config"]["files"]
    assert len(files) == quality.QUICK_FILES
    assert all(abs(f["seconds"] - quality.QUICK_SECONDS) < 1e-9 for f in files)

    codec = Codec.load(tiny_model)
    for kbps in quality.QUICK_BITRATES:
        row = rows[f"rvqcodec-{kbps:g}k"]
        assert row["files_scored"] == row["files_total"] == len(files)
        # measured bitrate = whole .rvq files (39 bytes overhead + packed codes) over the input duration
        n_q = codec.n_q_for_bitrate(kbps)
        n = round(quality.QUICK_SECONDS * 16000)
        expected = len(files) * bitstream.file_size(n_q, n, codec.hop_length, codec.bits_per_code) * 8
        assert row["measured_kbps"] == pytest.approx(expected / row["seconds"] / 1000)
        assert row["measured_kbps"] > kbps  # header + frame rounding only add
        for name in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance"):
            assert _finite(row[name]), (row["setting"], name, row[name])
        assert 1.0 <= row["pesq_wb"] <= 4.7 and 0.0 <= row["stoi"] <= 1.0 and row["mel_distance"] >= 0

    if HAVE_FFMPEG:
        opus = rows["opus-6k"]
        assert opus["measured_kbps"] == pytest.approx(6.0, rel=0.1)
        assert opus["file_kbps"] > opus["measured_kbps"]  # Ogg framing and headers are not counted
        assert _finite(opus["pesq_wb"]) and abs(opus["delay_ms_median"]) < 5
        target = result["targets"][0]  # PESQ-WB rvqcodec-6k > opus-6k, from the rows above
        assert target["rvqcodec"] == pytest.approx(rows["rvqcodec-6k"]["pesq_wb"])
        assert target["reference"] == pytest.approx(opus["pesq_wb"])
        assert target["met"] is (target["rvqcodec"] > target["reference"])
    else:
        assert any("Opus skipped" in n for n in result["notes"])
    assert [t["target"] for t in result["targets"]][:5] == [
        "PESQ-WB rvqcodec-6k > opus-6k", "PESQ-WB rvqcodec-6k >= amr-wb-6.6k", "PESQ-WB rvqcodec-6k >= 2.9",
        "PESQ-WB rvqcodec-3k >= 2.4", "PESQ-WB rvqcodec-1.5k >= 2"]
    absolute = result["targets"][2]
    assert absolute["rvqcodec"] == pytest.approx(rows["rvqcodec-6k"]["pesq_wb"]) and absolute["reference"] == 2.9
    assert absolute["met"] is (absolute["rvqcodec"] >= 2.9)
    rising = next(t for t in result["targets"] if t["target"].startswith("PESQ-WB rises"))
    assert rising["met"] is None  # --quick has no 4.5 and 7.5 kbps rows: not measured
    listener = {t["target"]: t for t in result["targets"] if not t["target"].startswith("PESQ")}
    assert len(listener) == 5
    distill = listener["DistillMOS rvqcodec-6k >= amr-wb-6.6k + 0.2"]
    assert distill["rvqcodec"] == pytest.approx(rows["rvqcodec-6k"]["distillmos"])
    if "amr-wb-6.6k" in rows:
        assert distill["reference"] == pytest.approx(rows["amr-wb-6.6k"]["distillmos"] + 0.2)
        assert distill["met"] is (distill["rvqcodec"] >= distill["reference"])

    # the markdown table has the documented columns and one line per result row, with the same numbers
    table = _table_rows((out / "quality.md").read_text(), "codec")
    listener_titles = tuple(title for _, title in quality.PERCEPTUAL_COLUMNS)
    assert tuple(table[0]) == quality.TABLE_COLUMNS[:5] + listener_titles + quality.TABLE_COLUMNS[5:]
    assert [r[1] for r in table[1:]] == [r["setting"] for r in result["results"]]
    for cells, row in zip(table[2:], result["results"][1:]):
        assert float(cells[3]) == pytest.approx(row["measured_kbps"], abs=0.006)
        if _finite(row["pesq_wb"]):
            assert float(cells[4]) == pytest.approx(row["pesq_wb"], abs=0.006)
        assert float(cells[5]) == pytest.approx(row["distillmos"], abs=0.006)
    # the listener models' row of the unprocessed speech comes first, with no bitrate or intrusive scores,
    # and rates it above the random-weight model's output at every rate
    original = result["results"][0]
    assert original["setting"] == "original" and table[1][3] == "–" and table[1][4] == "–"
    assert not _finite(original["visqol"]) and not _finite(original["measured_kbps"])
    for kbps in quality.QUICK_BITRATES:
        assert original["distillmos"] > rows[f"rvqcodec-{kbps:g}k"]["distillmos"] + 0.5
    assert (out / "quality_pesq_wb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rvqcodec-6k" in capsys.readouterr().out


def test_quality_reuses_the_model_independent_rows_of_an_earlier_run(tiny_model, dev_clean, tmp_path, capsys,
                                                                      monkeypatch):
    base = ["--quick", "--model", str(tiny_model), "--data", str(dev_clean)]
    assert quality.main(base + ["--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "quality.json").read_text())

    made = {"scored": 0, "original": 0}
    score, original = quality._file_record, quality.reference_record

    def counted_score(*args, **kwargs):
        made["scored"] += 1
        return score(*args, **kwargs)

    def counted_original(*args, **kwargs):
        made["original"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(quality, "_file_record", counted_score)
    monkeypatch.setattr(quality, "reference_record", counted_original)
    reuse = ["--reuse", str(tmp_path / "first" / "quality.json")]
    assert quality.main(base + reuse + ["--out", str(tmp_path / "second")]) == 0
    second = json.loads((tmp_path / "second" / "quality.json").read_text())
    # only rvqcodec's records were made again; every other row and record is the earlier run's
    assert made == {"scored": quality.QUICK_FILES * len(quality.QUICK_BITRATES), "original": 0}
    assert {r["setting"] for r in second["results"]} == {r["setting"] for r in first["results"]}
    kept = [r for r in second["results"] if r["codec"] != "rvqcodec"]
    assert kept and kept == [r for r in first["results"] if r["codec"] != "rvqcodec"]
    assert any("records of the original speech and the classical codecs reused" in n for n in second["notes"])
    assert second["config"]["reused_from"].endswith("quality.json")

    # an earlier run on files cut to another length cannot be reused: one line, nothing written
    capsys.readouterr()
    assert quality.main(base + reuse + ["--max-seconds", "2", "--out", str(tmp_path / "third")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --reuse") and "max_seconds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "third").exists()


def test_quality_skips_missing_external_codecs_with_a_note(tiny_model, dev_clean, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["--quick", "--model", str(tiny_model), "--data", str(dev_clean), "--out", str(out),
            "--bitrates", "6", "--max-files", "1", "--max-seconds", "1.5", "--no-perceptual", "--ffmpeg", MISSING,
            "--c2enc", MISSING, "--c2dec", MISSING, "--amrwbenc-library", MISSING]
    assert quality.main(argv) == 0
    result = json.loads((out / "quality.json").read_text())
    assert [r["setting"] for r in result["results"]] == ["rvqcodec-6k"]
    notes = " ".join(result["notes"])
    for codec in ("Opus skipped", "AMR-WB skipped", "Codec2 skipped"):
        assert codec in notes
    assert notes.count("apt-get install") == 3
    assert all(t["met"] is None for t in result["targets"][:2])  # the classical codecs were skipped
    assert "not measured" in (out / "quality.md").read_text()
    assert "note: Opus skipped" in capsys.readouterr().err


def test_rvq_streams_equal_compressing_at_each_bitrate(tiny_model, dev_clean):
    codec = Codec.load(tiny_model)
    path = sorted(dev_clean.rglob("*.flac"))[0]
    ref = read_audio(path, target_sr=16000).samples[0, :20000].numpy()
    streams, _ = quality.rvq_streams(codec, ref, [1.5, 4.0, 8.0])
    for kbps, data in streams.items():
        assert data == api.compress(codec, ref, 16000, bitrate=kbps)


@pytest.mark.parametrize("argv, message", [
    (["--bitrates", "2.25"], "valid bitrates"),
    (["--bitrates", "six"], "not a number"),
    (["--data", "/nonexistent/speech"], "audio folder not found"),
    (["--codecs", "mp3"], "unknown external codec"),
    (["--max-files", "0"], "must be > 0"),
    (["--postfilter", "0.2"], "no spectral head: no postfilter"),  # the tiny model is a SEANet codec
])
def test_quality_user_mistakes_give_one_line_errors(tiny_model, dev_clean, tmp_path, capsys, argv, message):
    base = ["--model", str(tiny_model), "--data", str(dev_clean), "--out", str(tmp_path / "q")]
    assert quality.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "q").exists()


def test_quality_missing_model_is_a_user_error(tmp_path, capsys):
    assert quality.main(["--model", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "q")]) == 2
    assert "model checkpoint not found" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- speed


def test_speed_quick_reports_every_section(tiny_model, dev_clean, speech_root, tmp_path):
    out = tmp_path / "s"
    threads = torch.get_num_threads()
    try:
        rc = speed.main(["--quick", "--model", str(tiny_model), "--data", str(dev_clean),
                         "--train-data", str(speech_root / "LibriSpeech" / "train-clean-100"), "--out", str(out),
                         "--threads", "1", "--seconds", "2", "--repeats", "1", "--memory-minutes", "0.05",
                         "--train-steps", "1", "--train-batch", "1", "--train-seconds", "0.3", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((out / "speed.json").read_text())
    assert result["complete"] is True

    (rtf,) = result["rtf"]
    assert rtf["device"] == "cpu" and rtf["threads"] == 1 and rtf["audio_seconds"] == pytest.approx(2.0)
    assert rtf["encode_seconds"] > 0 and rtf["decode_seconds"] > 0
    assert rtf["x_realtime"] == pytest.approx(2.0 / (rtf["encode_seconds"] + rtf["decode_seconds"]))
    assert rtf["rtf"] == pytest.approx(1 / rtf["x_realtime"])

    assert [b["batch_size"] for b in result["batch"]] == list(speed.QUICK["cpu_batch_sizes"])
    assert all(b["audio_s_per_s"] > 0 and _finite(b["encode_audio_s_per_s"]) for b in result["batch"])

    (memory,) = result["memory"]
    assert memory["audio_seconds"] == pytest.approx(3.0)
    assert memory["peak_rss_bytes"] >= memory["rss_after_load_bytes"] > 10 * 2**20
    assert memory["file_float32_bytes"] == 3 * 16000 * 4

    (train,) = result["training"]
    assert train["preset"] == "convnext" and train["batch_size"] == 1 and train["segment_seconds"] == pytest.approx(0.3)
    # the default model's recipe: mel + complex STFT losses, no discriminator
    assert train["discriminator"] is None and train["parameters_discriminator"] == 0
    assert train["loss_weights"]["complex"] > 0 and train["loss_weights"]["adv"] == 0
    assert "no discriminator" in train["losses"]
    for name in ("rotation", "ste"):
        t = train[name]
        assert t["steps_per_s"] == pytest.approx(1 / t["step_seconds"])
        assert t["audio_s_per_s"] == pytest.approx(train["batch_size"] * train["segment_seconds"] / t["step_seconds"])
        # (not "< 1": both are medians of separate timings, which a loaded machine can put either way)
        assert t["quantizer_seconds"] > 0
        assert t["quantizer_share"] == pytest.approx(t["quantizer_seconds"] / t["step_seconds"])
    assert _finite(train["rotation_over_ste_step"])

    if HAVE_FFMPEG:
        assert result["opus"]["x_realtime"] > 0 and result["opus"]["audio_seconds"] == pytest.approx(2.0)
    else:
        assert result["opus"] is None and any("Opus skipped" in n for n in result["notes"])
    target = result["target"]  # judged on the only run (1 thread), and says so
    assert target["x_realtime"] == pytest.approx(rtf["x_realtime"])
    assert target["met"] is (rtf["x_realtime"] >= speed.RTF_TARGET_X)
    assert "used 1 thread" in target["note"]

    md = (out / "speed.md").read_text()
    for heading in ("## Real-time factor", "## Batch throughput", "## Peak memory", "## Training throughput",
                    "## Target and ratios"):
        assert heading in md
    assert len(_table_rows(md, "preset")) == 3  # header + rotation + ste


def test_speed_missing_ffmpeg_skips_opus_with_a_note(tiny_model, dev_clean, tmp_path):
    out = tmp_path / "s"
    threads = torch.get_num_threads()
    try:
        rc = speed.main(["--quick", "--model", str(tiny_model), "--data", str(dev_clean), "--out", str(out),
                         "--skip", "batch,memory,training", "--threads", "1", "--seconds", "1", "--repeats", "1",
                         "--ffmpeg", MISSING])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((out / "speed.json").read_text())
    assert result["opus"] is None and result["batch"] == [] and result["training"] == []
    assert any("Opus skipped" in n and "apt-get install" in n for n in result["notes"])


def test_speed_user_mistakes_give_one_line_errors(tiny_model, tmp_path, capsys):
    assert speed.main(["--model", str(tiny_model), "--skip", "gpu", "--out", str(tmp_path / "s")]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert speed.main(["--model", str(tiny_model), "--bitrate", "2.25", "--out", str(tmp_path / "s")]) == 2
    assert "valid bitrates" in capsys.readouterr().err
    assert speed.main(["--model", str(tiny_model), "--train-presets", "tiny,huge", "--out", str(tmp_path / "s")]) == 2
    assert "unknown preset(s) huge" in capsys.readouterr().err
    # a missing second --model is named, on one line, before anything is measured or written
    absent = tmp_path / "absent.pt"
    assert speed.main(["--model", str(tiny_model), "--model", str(absent), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: model checkpoint not found: {absent}"
    assert not (tmp_path / "s").exists()


def _small_convnext(path: Path) -> Path:
    """A random-weight ConvNeXt-architecture checkpoint, narrow and shallow so that it runs in milliseconds."""
    torch.manual_seed(1)
    config = CodecConfig.preset("convnext", frame_dim=32, encoder_blocks=1, decoder_blocks=1)
    return Codec(config).save(path)


def test_speed_compares_models_in_one_run(tiny_model, dev_clean, tmp_path):
    other = _small_convnext(tmp_path / "convnext-small.pt")
    out = tmp_path / "s"
    threads = torch.get_num_threads()
    try:
        rc = speed.main(["--quick", "--model", str(other), "--model", str(tiny_model), "--data", str(dev_clean),
                         "--out", str(out), "--skip", "memory,training,opus", "--threads", "1", "--seconds", "1",
                         "--repeats", "1", "--batch-sizes", "1,2", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads((out / "speed.json").read_text())
    first, second = Codec.load(other), Codec.load(tiny_model)
    labels = ["convnext-small.pt", "tiny.pt"]
    assert [(m["label"], m["model_id"], m["architecture"], m["parameters"]) for m in result["config"]["models"]] == [
        (labels[0], first.model_id, "convnext", first.parameter_counts()["total"]),
        (labels[1], second.model_id, "seanet", second.parameter_counts()["total"])]

    # every measurement is taken for both models, under the same conditions
    assert [(r["model"], r["threads"]) for r in result["rtf"]] == [(labels[0], 1), (labels[1], 1)]
    assert [(r["model"], r["batch_size"]) for r in result["batch"]] == [
        (labels[0], 1), (labels[1], 1), (labels[0], 2), (labels[1], 2)]
    assert all(r["kbps"] == 8 for r in result["rtf"])

    # the ratio: the first model's audio seconds per second over the other's, per measurement
    rtf = {r["model"]: r for r in result["rtf"]}
    comparisons = result["comparisons"]
    assert [(c["section"], c["model"], c["against"]) for c in comparisons] == [
        ("rtf", labels[0], labels[1]), ("batch", labels[0], labels[1]), ("batch", labels[0], labels[1])]
    assert comparisons[0]["ratio"] == pytest.approx(rtf[labels[0]]["x_realtime"] / rtf[labels[1]]["x_realtime"])
    assert [t["model"] for t in result["targets"]] == labels and result["target"] == result["targets"][0]
    for t in result["targets"]:
        assert t["met"] == (rtf[t["model"]]["x_realtime"] >= speed.RTF_TARGET_X)

    md = (out / "speed.md").read_text()
    assert [row[0] for row in _table_rows(md, "model")[1:]] == [f"`{label}`" for label in labels]  # models table
    assert first.model_id in md and second.model_id in md
    # rtf: one row per model (1 thread); batch: one per model and batch size (at the default thread count)
    cpu_rows = [line for line in md.splitlines() if line.startswith(tuple(f"| `{label}` | cpu | " for label in labels))]
    assert len(cpu_rows) == 2 + 4 and all(" | cpu | 1 | " in line for line in cpu_rows[:2])
    (row,) = [r for r in _table_rows(md, "measurement")[1:] if r[0].startswith("streaming")]
    assert row[1] == f"`{labels[1]}`" and float(row[4]) == pytest.approx(comparisons[0]["ratio"], abs=0.006)
    assert md.count(f"{speed.RTF_TARGET_X:g}x real time on 2 CPU threads") == 2


def test_model_labels_are_file_names_unless_they_clash(tmp_path):
    a, b, c = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt", tmp_path / "c.pt"
    labels = speed.model_labels([a, b, c, c])
    assert labels[2:] == ["c.pt", "c.pt #2"]
    assert labels[0].endswith("a/best.pt") and labels[1].endswith("b/best.pt")


def test_training_setup_follows_the_architecture():
    convnext, tiny = speed.training_setup("convnext"), speed.training_setup("tiny")
    assert convnext.disc is None and convnext.loss.complex > 0 and not convnext.loss.uses_discriminator
    assert "recipes/librispeech/convnext.yaml" in convnext.description
    assert tiny.disc is not None and tiny.loss.uses_discriminator and "tiny discriminators" in tiny.description


# ------------------------------------------------------------------------------- bitstream parsers


def _ogg_page(lacing: list[int], sequence: int) -> bytes:
    header = b"OggS" + bytes([0, 0]) + struct.pack("<qIII", 0, 1, sequence, 0) + bytes([len(lacing)])
    return header + bytes(lacing) + b"\x00" * sum(lacing)


def test_ogg_packet_sizes_follow_lacing_across_pages():
    # page 1: OpusHead (19) and OpusTags (30); page 2: a 300-byte packet (255 + 45) and a 7-byte one;
    # page 3: a packet continued over two pages (255 | 255 + 3)
    data = (_ogg_page([19, 30], 0) + _ogg_page([255, 45, 7], 1) + _ogg_page([255], 2) + _ogg_page([255, 3], 3))
    assert ext.ogg_packet_sizes(data) == [19, 30, 300, 7, 513]
    assert ext.opus_payload_bytes(data) == 300 + 7 + 513
    with pytest.raises(ValueError, match="truncated"):
        ext.ogg_packet_sizes(data[:-1])
    with pytest.raises(ValueError, match="not an Ogg page"):
        ext.ogg_packet_sizes(b"RIFF" + data[4:])


def test_amrwb_payload_leaves_out_magic_and_toc_bytes():
    frame = lambda mode: bytes([(mode << 3) | 0x04]) + b"\x55" * math.ceil(ext.AMRWB_FRAME_BITS[mode] / 8)  # noqa: E731
    data = ext.AMRWB_MAGIC + frame(0) * 3 + frame(2) + bytes([(15 << 3) | 0x04])  # 3 x 6.6, 1 x 12.65, 1 no-data
    assert ext.amrwb_frames(data) == [0, 0, 0, 2, 15]
    assert ext.amrwb_payload_bytes(data) == 3 * 17 + 32
    with pytest.raises(ValueError, match="truncated"):
        ext.amrwb_frames(data[:-2])
    with pytest.raises(ValueError, match="magic"):
        ext.amrwb_frames(data[1:])


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg with libopus not installed")
def test_opus_round_trip_measures_its_bitrate(tmp_path):
    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    opus = ext.Opus(kbps=(12,))
    coded = opus.run(tone, 16000, opus.settings()[0], tmp_path)
    assert coded.payload_bytes * 8 / 2.0 / 1000 == pytest.approx(12, rel=0.05)
    assert abs(coded.audio.size - tone.size) <= 320
    assert np.corrcoef(coded.audio[:30000], tone[:30000])[0, 1] > 0.9
    with pytest.raises(ValueError, match="16000 Hz"):
        opus.run(tone, 8000, opus.settings()[0], tmp_path)


def test_training_curve_joins_a_saved_log_and_a_run_folder(tmp_path, capsys):
    import training_curve

    saved = tmp_path / "first.jsonl"  # validation records kept from a run whose folder is gone (lineage recorded)
    saved.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "valid", "step": 1000, "lineage/audio_hours": 4.0, "lineage/minutes": 12.0,
         "valid/ae/pesq_wb": 2.2, "valid/ae/mel": 0.2},
        {"kind": "train", "step": 1500, "loss": 1.0},
        {"kind": "valid", "step": 2000, "lineage/audio_hours": 8.0, "lineage/minutes": 24.0,
         "valid/6kbps/pesq_wb": 1.9, "valid/6kbps/mel": 0.21}]) + "\n{\"kind\": \"val")  # last line cut short
    run = tmp_path / "second"  # a run folder without lineage: hours from config.yaml, offset by the first run
    run.mkdir()
    (run / "config.yaml").write_text("data: {batch_size: 16, segment_seconds: 1.0}\ntrain: {grad_accum: 1}\n")
    (run / "log.jsonl").write_text(json.dumps({"kind": "valid", "step": 900, "valid/6kbps/pesq_wb": 2.5,
                                               "valid/6kbps/mel": 0.18}) + "\n")
    out = tmp_path / "curve"
    assert training_curve.main([str(saved), str(run), "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in (out / "training_curve.md").read_text().splitlines()
            if line.startswith(("| first |", "| second |"))]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows] == [
        ("first", "1000", "4.00"), ("first", "2000", "8.00"), ("second", "900", f"{8 + 900 * 16 / 3600:.2f}")]
    assert (out / "training_curve.png").stat().st_size > 0

    assert training_curve.main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "no such log file" in capsys.readouterr().err


def test_compute_scaling_rates_targets_and_adding_a_scored_stage(tmp_path, capsys):
    import compute_scaling

    stages = tmp_path / "stages.json"
    stages.write_text(json.dumps([
        {"label": "one", "model_id": "a", "steps": 10, "audio_hours": 100.0, "cpu_minutes": 60,
         "pesq_wb": {"1.5": 1.5, "3": 2.0, "6": 2.8, "8": 3.0}, "recipe_changed": True},
        {"label": "two", "model_id": "b", "steps": 20, "audio_hours": 200.0, "cpu_minutes": 120,
         "pesq_wb": {"1.5": 1.6, "3": 2.4, "6": 2.7, "8": 3.1}}]))
    out = tmp_path / "out"
    assert compute_scaling.main([str(stages), "--out", str(out)]) == 0
    table = (out / "compute_scaling.md").read_text()
    assert "| one → two | 1.00 | +0.10 | +0.40 | -0.10 | +0.10 |" in table  # one doubling
    # 1.5 kbps needs +0.4 at +0.1 per doubling: 4 doublings, i.e. 200 h · (2^4 − 1) more; 3 kbps is met and
    # 6 kbps lost quality, so its target is never reached at that rate
    assert "| 1.5 kbps | 1.60 | 2.0 | 4.0 (~3000 h more audio) | 4.0 (~3000 h more audio) |" in table
    assert "at the rate of the same recipe since one | at the rate of the whole lineage |" in table
    assert "\n| 3 kbps |" not in table and "| 6 kbps | 2.70 | 2.9 | never (no gain) |" in table
    assert (out / "compute_scaling.png").stat().st_size > 0

    codec = Codec(CodecConfig.preset("tiny"))
    model = codec.save(tmp_path / "m.pt", meta={"lineage": {"steps": 30, "audio_hours": 400.0,
                                                            "minutes": {"cpu": 200.0}}})
    quality_json = tmp_path / "quality.json"
    rows = [{"codec": "rvqcodec", "nominal_kbps": k, "pesq_wb": 2.0 + k / 10} for k in (0.5, 1.5, 3.0, 6.0, 8.0)]
    rows.append({"codec": "opus", "nominal_kbps": 6.0, "pesq_wb": 9.0})
    quality_json.write_text(json.dumps({"config": {"model": {"model_id": codec.model_id}}, "results": rows}))
    assert compute_scaling.main([str(stages), "--add", str(quality_json), "--model", str(model), "--label",
                                 "three", "--out", str(out)]) == 0
    added = json.loads(stages.read_text())[-1]
    assert added == {"label": "three", "model_id": codec.model_id, "steps": 30, "audio_hours": 400.0,
                     "cpu_minutes": 200, "pesq_wb": {"1.5": 2.15, "3": 2.3, "6": 2.6, "8": 2.8}}

    # a benchmark of another model, or a stage that saw no more audio, is refused and the file left as it was
    before = stages.read_text()
    other = Codec(CodecConfig.preset("tiny", n_q=4)).save(tmp_path / "other.pt", meta={"lineage": {
        "steps": 40, "audio_hours": 500.0}})
    assert compute_scaling.main([str(stages), "--add", str(quality_json), "--model", str(other), "--label", "x",
                                 "--out", str(out)]) == 2
    assert "scored model" in capsys.readouterr().err
    assert compute_scaling.main([str(stages), "--add", str(quality_json), "--model", str(model), "--label", "x",
                                 "--out", str(out)]) == 2
    assert "no more audio" in capsys.readouterr().err and stages.read_text() == before


# ----------------------------------------------------------------------------------- quantizer headroom


def test_quantizer_headroom_decodes_as_the_codec_does(tiny_model, dev_clean, tmp_path, capsys):
    import quantizer_headroom
    from rvqcodec.scoring import evaluate_pair

    out = tmp_path / "headroom"
    base = ["--model", str(tiny_model), "--data", str(dev_clean), "--max-files", "1", "--fit-data", str(dev_clean),
            "--fit-seconds", "60", "--threads", "1", "--out", str(out)]
    assert quantizer_headroom.main(base + ["--stages", "4,1"]) == 0
    result = json.loads((out / "headroom.json").read_text())
    decoded = result["measurement"]["decoded"]
    assert list(decoded) == ["unquantized", "model 1", "refit 1", "model 4", "refit 4"]

    codec = Codec.load(tiny_model).eval()  # the model's rows are what the codec itself decodes at that n_q
    wav = read_audio(quality.list_audio_files(dev_clean)[0], target_sr=codec.sample_rate).samples.reshape(1, 1, -1)
    for n_q in (1, 4):
        with torch.no_grad():
            audio = codec(wav, n_q=n_q).audio
        expected = evaluate_pair(wav.flatten().numpy(), audio.flatten().numpy(), codec.sample_rate, align=False)
        assert decoded[f"model {n_q}"]["mel_distance"] == pytest.approx(expected["mel_distance"], rel=1e-5)
        ref, out_audio = wav.flatten().double(), audio.flatten()[:wav.shape[-1]].double()
        assert decoded[f"model {n_q}"]["level_ratio"] == pytest.approx(float(out_audio.norm() / ref.norm()), rel=1e-5)
        xcorr = float(torch.dot(ref, out_audio) / (ref.norm() * out_audio.norm()))
        assert decoded[f"model {n_q}"]["waveform_xcorr"] == pytest.approx(xcorr, rel=1e-4, abs=1e-6)
    assert decoded["refit 4"]["mel_distance"] != pytest.approx(decoded["model 4"]["mel_distance"], rel=1e-3)

    energy = result["measurement"]["residual_energy"]
    assert len(energy["model"]) == len(energy["refit"]) == codec.max_n_q
    assert all(_finite(v) and v > 0 for v in energy["model"] + energy["refit"])
    shares = list(result["measurement"]["pca_share"].values())
    assert shares == sorted(shares) and 0 < shares[0] and shares[-1] <= 1 + 1e-9

    rows = _table_rows((out / "headroom.md").read_text(), "decoder input")
    assert rows[1][0] == "unquantized" and rows[1][2] == f"{decoded['unquantized']['pesq_wb']:.3f}"
    assert rows[-1][:2] == ["refitted RVQ, 4 stages", f"{codec.bitrate(4):g}"]

    assert quantizer_headroom.main(base + ["--stages", f"{codec.max_n_q + 1}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --stages must lie between 1 and")


@pytest.mark.parametrize("value, spec, text", [
    (1.2345, ".2f", "1.23"), (-1.5, ".1f", "-1.5"), (-0.0004, ".2f", "0.00"), (-0.0, ".1f", "0.0"),
    (3, "d", "3"), (None, ".2f", "–"), (math.nan, ".2f", "–"), (math.inf, ".1f", "–"), (-math.inf, ".1f", "–"),
])
def test_results_tables_write_undefined_numbers_as_a_dash_and_never_minus_zero(value, spec, text):
    assert common.fmt_number(value, spec) == text


def test_compare_quality_gives_each_folders_means_and_their_macro_average(tmp_path, capsys):
    """Two quality.py results on the same data: per folder the means of the files scored in both runs, then the mean
    of the folders' means (a file scored in one run only, and other codecs' records, are left out)."""
    def result(values: dict[str, float], extra: dict | None = None) -> dict:
        records = [{"codec": "rvqcodec", "setting": "rvqcodec-6k", "file": f"data/{name}", "pesq_wb": v}
                   for name, v in values.items()]
        records.append({"codec": "opus", "setting": "opus-6k", "file": "data/a/1.flac", "pesq_wb": 9.0})
        return {"config": {"data": "data"}, "per_file": records + [extra] if extra else records}

    before = result({"a/1.flac": 2.0, "a/2.flac": 3.0, "b/1.flac": 1.0})
    after = result({"a/1.flac": 2.5, "a/2.flac": 3.5, "b/1.flac": 2.0},
                   {"codec": "rvqcodec", "setting": "rvqcodec-6k", "file": "data/b/2.flac", "pesq_wb": 0.0})
    rows = {r["folder"]: r for r in compare_quality.compare(before, after, None, ["pesq_wb"])}
    assert rows["a"]["pesq_wb"] == (2.5, 3.0) and rows["a"]["files"] == 2
    assert rows["b"]["pesq_wb"] == (1.0, 2.0) and rows["b"]["files"] == 1  # b/2 scored in one run only
    assert rows["macro"]["pesq_wb"] == (1.75, 2.5) and set(rows) == {"a", "b", "macro"}
    for name, data in (("before", before), ("after", after)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert compare_quality.main([str(tmp_path / "before.json"), str(tmp_path / "after.json"),
                                 "--metrics", "pesq_wb"]) == 0
    assert "| rvqcodec-6k | macro | 3 | 1.750 / 2.500 (+0.750) |" in capsys.readouterr().out
