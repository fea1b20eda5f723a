"""The listening page (benchmarks/listening.py): built for one short dev-clean clip with a random-weight tiny
model; every file it references exists and decodes, its numbers are the measured ones, missing classical codecs
are named, clips are chosen by the documented rule, and (where Chromium is installed) it renders in a browser.

The classical codecs are used when this machine has them and named as missing otherwise: the tests pass either
way, and check each case against what :mod:`external_codecs` says is installed.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from rvqcodec.bitstream import OVERHEAD_BYTES
from rvqcodec.model import Codec

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import browser_check  # noqa: E402
import external_codecs as ext  # noqa: E402
import listening  # noqa: E402
import listening_clips  # noqa: E402
import listening_page  # noqa: E402

MISSING = "/nonexistent/tool"
BITRATES = (1.5, 3.0, 6.0)
SHORT = ["--clips", "1", "--min-seconds", "1", "--max-seconds", "1.5", "--no-progress"]


@pytest.fixture(scope="module")
def dev_clean(speech_root) -> Path:
    return speech_root / "LibriSpeech" / "dev-clean"


def _installed_external_settings() -> list[str]:
    """Names of the classical settings this machine can run (asked of external_codecs, not of listening)."""
    available, _ = ext.external_codecs(list(listening.COMPARABLE_EXTERNAL))
    return [s.name for c in available for s in type(c)(c.tools, **listening.COMPARABLE_EXTERNAL[c.name]).settings()]


@pytest.fixture(scope="module")
def page(tiny_model, dev_clean, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("listening") / "page"
    assert listening.main(["--model", str(tiny_model), "--data", str(dev_clean), "--out", str(out), *SHORT]) == 0
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "listening.json").read_text(encoding="utf-8"))


def test_every_referenced_file_exists_and_every_audio_file_decodes(page):
    html = (page / "index.html").read_text(encoding="utf-8")
    refs = listening_page.referenced_files(html)
    assert listening_page.count_scripts(html) == 0
    audio = [url for tag, url in refs if tag == "audio"]
    images = [url for tag, url in refs if tag == "img"]
    expected = ["reference"] + [f"rvqcodec-{b:g}k" for b in BITRATES] + _installed_external_settings()
    assert len(audio) == len(expected)
    assert sorted(Path(a).stem.split("_", 1)[1] for a in audio) == sorted(expected)
    assert len(images) == 1
    for tag, url in refs:
        assert "://" not in url and not url.startswith("/"), f"{tag} refers outside the page: {url}"
        assert (page / url).is_file(), f"{tag} refers to a missing file: {url}"
    lengths = set()
    for url in audio:
        info = soundfile.info(str(page / url))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        samples, _ = soundfile.read(str(page / url), dtype="float32")
        assert samples.size == info.frames > 0 and np.all(np.isfinite(samples))
        lengths.add(samples.size)
    assert len(lengths) == 1  # every version aligned to the reference's length
    from PIL import Image

    with Image.open(page / images[0]) as image:
        image.load()
        assert image.width > 300 and image.height > 100 * len(audio) // 2
    manifest = _manifest(page)
    assert sorted(manifest["files"]) == sorted(str(p.relative_to(page)) for p in page.rglob("*") if p.is_file())


def test_page_shows_the_measured_numbers_model_and_date(page, tiny_model, dev_clean):
    html = (page / "index.html").read_text(encoding="utf-8")
    manifest = _manifest(page)
    codec = Codec.load(tiny_model)
    assert manifest["model"]["model_id"] == codec.model_id and codec.model_id in html
    assert manifest["created_display"][:10] in html
    (clip,) = manifest["clips"]
    # the reference is the source file's samples, exactly
    source, sr = soundfile.read(str(listening.REPO_ROOT / clip["source"]), dtype="int16")
    reference, _ = soundfile.read(str(page / clip["versions"][0]["audio"]), dtype="int16")
    start = round(clip["start_seconds"] * sr)
    assert sr == 16000 and np.array_equal(reference, source[start:start + reference.size])
    assert 1.0 <= reference.size / sr <= 1.5
    frames = math.ceil(reference.size / codec.hop_length)
    for entry in clip["versions"][1:]:
        if entry["key"].startswith("rvqcodec"):
            n_q = codec.n_q_for_bitrate(float(entry["key"][len("rvqcodec-"):-1]))
            payload = OVERHEAD_BYTES + math.ceil(n_q * codec.bits_per_code * frames / 8)  # README's size formula
            assert entry["payload_bytes"] == payload
        assert entry["measured_kbps"] == pytest.approx(entry["payload_bytes"] * 8 / (reference.size / sr) / 1000)
        line = (f"measured {entry['measured_kbps']:.2f} kbps · "
                f"PESQ-WB {listening_page.fmt_number(entry['pesq_wb'], '.2f')} · "
                f"STOI {listening_page.fmt_number(entry['stoi'], '.3f')}")
        assert line in html
        assert entry["pesq_wb"] is None or 1.0 <= entry["pesq_wb"] <= 4.7
        # the listener models rate the original above a random-weight model's decode, and the page says so
        if entry["key"].startswith("rvqcodec"):
            assert clip["versions"][0]["distillmos"] > entry["distillmos"] + 0.5
        assert f"DistillMOS {listening_page.fmt_number(entry['distillmos'], '.2f')}" in html
    # each score is the metric of the file's content against the reference (re-measured here)
    from rvqcodec.metrics import pesq_wb

    entry = clip["versions"][1]
    decoded, _ = soundfile.read(str(page / entry["audio"]), dtype="float32")
    if entry["pesq_wb"] is not None:
        assert pesq_wb(reference / 32768.0, decoded, 16000) == pytest.approx(entry["pesq_wb"], abs=0.05)


def test_missing_classical_codecs_are_named_and_left_out(page, tiny_model, dev_clean, tmp_path, capsys):
    out = tmp_path / "page"
    shutil.copytree(page, out)
    (out / "mine.txt").write_text("not the page's")
    args = ["--model", str(tiny_model), "--data", str(dev_clean), "--out", str(out), "--ffmpeg", MISSING,
            "--c2enc", MISSING, "--c2dec", MISSING, *SHORT]
    assert listening.main(args) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    audio = [url for tag, url in listening_page.referenced_files(html) if tag == "audio"]
    assert len(audio) == 1 + len(BITRATES)
    for name in ("Opus skipped", "AMR-WB skipped", "Codec2 skipped"):
        assert name in html
    # the files of the earlier (full) page that this one does not use are gone; other files are kept
    left = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert left == set(_manifest(out)["files"]) | {"mine.txt"}
    assert "note: Opus skipped" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/model.pt"], "model checkpoint not found"),
    (["--clips", "0"], "--clips must be between 1 and"),
    (["--min-seconds", "3", "--max-seconds", "2"], "--max-seconds (2) must be at least --min-seconds (3)"),
    (["--bitrates", "1.5,x"], "--bitrates: 'x' is not a number"),
    (["--codecs", "mp3"], "--codecs: unknown external codec"),
    (["--data", "TRAIN"], "looks like training data"),
])
def test_user_mistakes_give_one_line_errors(argv, message, tiny_model, speech_root, tmp_path, capsys):
    argv = [a.replace("TRAIN", str(speech_root / "LibriSpeech" / "train-clean-100")) for a in argv]
    if "--model" not in argv:
        argv = ["--model", str(tiny_model), *argv]
    assert listening.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def _harmonic(f0: float, seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 12)).astype(np.float32) * 0.1


@pytest.mark.parametrize("f0", [95.0, 130.0, 210.0, 260.0])
def test_median_f0_of_a_harmonic_voice(f0):
    assert listening_clips.median_f0(_harmonic(f0), 16000) == pytest.approx(f0, rel=0.02)


def test_median_f0_of_silence_is_nan():
    assert math.isnan(listening_clips.median_f0(np.zeros(16000), 16000))


def test_clips_are_distinct_speakers_spread_over_pitch_and_end_at_a_pause(dev_clean):
    files = sorted(p for p in dev_clean.rglob("*.flac"))
    read = lambda p: soundfile.read(str(p), dtype="float32")[0]  # noqa: E731  (dev-clean is 16 kHz mono)
    clips = listening_clips.choose_clips(files, 4, 3.0, 4.0, read)
    assert len({c.speaker for c in clips}) == 4
    assert [c.group for c in clips] == ["lower-pitched"] * 2 + ["higher-pitched"] * 2
    assert all(c.f0_hz < 155 for c in clips[:2]) and all(c.f0_hz > 165 for c in clips[2:])
    for clip in clips:
        assert 3.0 <= clip.seconds <= 4.0
        whole = read(clip.path)
        assert np.array_equal(clip.audio, whole[clip.start:clip.end])
        # the clip ends in the quietest part of its last second (a pause), not in the middle of a word
        tail = whole[clip.end - 480:clip.end + 480]
        assert np.sqrt(np.mean(tail ** 2)) < 0.5 * np.sqrt(np.mean(clip.audio ** 2))
    with pytest.raises(ValueError, match="usable speakers"):
        listening_clips.choose_clips(files[:3], 4, 3.0, 4.0, read)


def test_speakers_txt_groups_by_sex(dev_clean, tmp_path):
    data = tmp_path / "LibriSpeech" / "dev-clean"
    chosen = {}
    for path in sorted(dev_clean.rglob("*.flac")):
        speaker = listening_clips.speaker_of(path)
        if len(chosen) < 4 and speaker not in chosen:
            chosen[speaker] = path
            target = data / speaker / path.name
            target.parent.mkdir(parents=True)
            target.symlink_to(path)
    sexes = dict(zip(chosen, "FMFM"))
    (tmp_path / "LibriSpeech" / "SPEAKERS.TXT").write_text(
        "; ID | SEX | SUBSET | MINUTES | NAME\n" + "".join(f"{s} | {x} | dev-clean | 8.0 | someone\n"
                                                          for s, x in sexes.items()))
    speakers_txt = listening_clips.find_speakers_txt(data)
    assert speakers_txt == tmp_path / "LibriSpeech" / "SPEAKERS.TXT"
    read = lambda p: soundfile.read(str(p), dtype="float32")[0]  # noqa: E731
    clips = listening_clips.choose_clips(sorted(data.rglob("*.flac")), 2, 1.0, 1.5, read, speakers_txt)
    assert sorted(c.group for c in clips) == ["female", "male"]
    assert all(c.group == {"F": "female", "M": "male"}[sexes[c.speaker]] for c in clips)
    assert {c.group_source for c in clips} == {"SPEAKERS.TXT"}


@pytest.mark.skipif(browser_check.find_chromium() is None, reason="chromium is not installed")
def test_page_renders_in_headless_chromium_and_a_broken_page_fails(page, tmp_path):
    shot = tmp_path / "screenshot.png"
    report = browser_check.check_page(page / "index.html", screenshot_path=shot)
    n_audio = len(_manifest(page)["clips"][0]["versions"])
    assert report.players_expected == report.players_rendered == len(report.players) == n_audio
    assert all(p["duration"] > 0.9 for p in report.players)
    assert report.failures() == []
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width == 1400 and image.height == report.page_size[1] > 600
    broken = tmp_path / "broken"
    shutil.copytree(page, broken)
    victim = [p for p in (broken / "audio").iterdir()][0]
    victim.unlink()
    with pytest.raises(browser_check.BrowserCheckError, match=victim.name):
        browser_check.check_page(broken / "index.html")
