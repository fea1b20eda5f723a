"""The listening page: a few held-out utterances through rvqcodec at 1.5 / 3 / 6 kbps and through Opus, AMR-WB
and Codec2, with players, measured bitrates, PESQ-WB/STOI and spectrograms, in samples/listening/.

    python benchmarks/listening.py --browser-check       # regenerate the committed page (whenever the default
                                                          # model changes) and check it in headless Chromium
    python benchmarks/listening.py --model runs/x/best.pt --out /tmp/page   # another checkpoint, elsewhere
    python benchmarks/browser_check.py samples/listening/index.html         # only the browser check

What it does:

* picks ``--clips`` (4) utterances of ``--data`` (dev-clean: never training data), one per speaker, spread over
  sex (LibriSpeech ``SPEAKERS.TXT``, when found beside the data) or, without that metadata, over the speakers'
  median F0 (lower- and higher-pitched voices), each cut to 3-4 s ending at a pause; the exact rule is in
  ``benchmarks/listening_clips.py`` and is printed on the page;
* encodes and decodes each clip with the model (``--model``, default the shipped
  ``rvqcodec/pretrained/default.pt``) at every ``--bitrates`` (one encode, the first ``n_q`` stages per rate,
  real ``.rvq`` bytes, as ``benchmarks/quality.py`` does) and with the classical codecs at comparable rates:
  Opus 6 kbps, AMR-WB 6.6 kbps and Codec2 3200, through ``benchmarks/external_codecs.py`` (the code
  ``benchmarks/quality.py`` uses). A codec whose tools are missing is left out and the page says so;
* scores every decoded version against the reference with ``rvqcodec.scoring.evaluate_pair`` and, with the
  ``perceptual`` extra, the listener models DistillMOS, DNSMOS P.808 and ViSQOL (the reference gets its own
  DistillMOS and DNSMOS) (delay removed
  by cross-correlation up to 100 ms, as in ``benchmarks/quality.py``) and measures its bitrate from the bytes
  produced (rvqcodec: the whole ``.rvq`` file; the others as in ``benchmarks/external_codecs.py``);
* writes into ``--out`` (default ``samples/listening/``): ``audio/<utterance>_<version>.flac`` (16 kHz 16-bit
  lossless; decoded versions shifted by the delay found, cut or zero-padded to the reference's length, so all
  versions line up), ``img/<utterance>_spectrogram.png`` (every version on one time axis),
  ``listening.json`` (every number on the page, the selection and the environment) and ``index.html`` (plain
  HTML + CSS, no script, no external resource: it opens offline from the file system). Files of an earlier
  run that this run did not write again are removed (only those listed in the earlier ``listening.json``);
* with ``--browser-check``: checks the page in headless Chromium (``benchmarks/browser_check.py``: every player
  rendered with controls, every audio file loaded and decoded, every image loaded, no error logged) and writes
  ``screenshot.png`` (the whole page) beside it. Without it an earlier screenshot is removed, since it would
  show the previous page.

Every file is written atomically; an input file is never written. A user mistake (missing model or folder, a
bitrate the model does not have, a bad number) prints one ``error: ...`` line and exits with code 2; a failed
browser check exits with code 1.

Needs for the classical codecs (optional): ``apt-get install -y ffmpeg codec2 libvo-amrwbenc0``; for
``--browser-check``: ``apt-get install -y chromium``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import browser_check  # noqa: E402
import external_codecs as ext  # noqa: E402
import listening_clips  # noqa: E402
import listening_page  # noqa: E402
from common import REPO_ROOT, SPEECH_ROOT, shown_path  # noqa: E402
from quality import (  # noqa: E402
    COMPARABLE_EXTERNAL,
    MAX_SHIFT_SECONDS,
    list_audio_files,
    parse_bitrates,
    rvq_streams,
    selected_external_codecs,
)
from rvqcodec import api, level  # noqa: E402
from rvqcodec.errors import UserError  # noqa: E402
from rvqcodec.data.audio_io import read_audio, resample, write_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe  # noqa: E402
from rvqcodec import perceptual  # noqa: E402
from rvqcodec.scoring import evaluate_pair  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

SAMPLE_RATE = listening_clips.SAMPLE_RATE
DEFAULT_DATA = SPEECH_ROOT / "dev-clean"
DEFAULT_OUT = REPO_ROOT / "samples" / "listening"
DEFAULT_BITRATES = "1.5,3,6"
DEFAULT_CLIPS = 4
MAX_CLIPS = 8
DEFAULT_MIN_SECONDS, DEFAULT_MAX_SECONDS = 3.0, 4.0
# The classical codecs at rates comparable with rvqcodec's 1.5-6 kbps (keyword arguments of their classes).
EXTERNAL_LABELS = {"opus": "Opus", "amr-wb": "AMR-WB", "codec2": "Codec2"}
SIZE_WARNING_BYTES = 3_000_000
MANIFEST = "listening.json"
PAGE = "index.html"
SCREENSHOT = "screenshot.png"


# ------------------------------------------------------------------------------------------------ coding


def aligned(decoded: np.ndarray, delay: int, length: int) -> np.ndarray:
    """``decoded`` with its ``delay`` (samples, positive = late) removed, cut or zero-padded to ``length``."""
    decoded = np.asarray(decoded, dtype=np.float32)
    decoded = decoded[delay:] if delay >= 0 else np.concatenate([np.zeros(-delay, np.float32), decoded])
    out = np.zeros(length, dtype=np.float32)
    n = min(length, decoded.size)
    out[:n] = decoded[:n]
    return out


def _versions(codec, bitrates: list[float], externals: list[ext.ExternalCodec]) -> list[dict]:
    """Every version on the page, in the order of the players: reference, rvqcodec by rate, the others by rate."""
    versions = [{"key": "reference", "label": "reference (original)", "codec": "reference", "nominal_kbps": None,
                 "description": "the original 16-bit samples"}]
    for kbps in bitrates:
        n_q = codec.n_q_for_bitrate(kbps)
        versions.append({"key": f"rvqcodec-{kbps:g}k", "label": f"rvqcodec {kbps:g} kbps ({n_q} stages)",
                         "codec": "rvqcodec", "nominal_kbps": kbps, "description": f"{n_q} RVQ stages"})
    others = [(s, c) for c in externals for s in c.settings()]
    for setting, _ in sorted(others, key=lambda sc: sc[0].nominal_kbps):
        mode = f" (mode {setting.parameter})" if setting.codec == "codec2" else ""
        versions.append({"key": setting.name, "codec": setting.codec, "nominal_kbps": setting.nominal_kbps,
                         "label": f"{EXTERNAL_LABELS[setting.codec]} {setting.nominal_kbps:g} kbps{mode}",
                         "description": setting.description})
    return versions


def decode_all(codec, clip: listening_clips.Clip, bitrates: list[float], externals: list[ext.ExternalCodec],
               progress) -> dict[str, tuple[np.ndarray, int] | str]:
    """``{version key: (decoded 16 kHz signal, counted bytes)}`` for every coded version of ``clip``, or
    ``{key: error message}`` where an external tool failed."""
    results: dict[str, tuple[np.ndarray, int] | str] = {}
    streams, _ = rvq_streams(codec, clip.audio, bitrates, normalize=level.NORMALIZE_BY_DEFAULT)
    for kbps, data in streams.items():
        decoded, sr = api.decompress(codec, data)
        decoded = decoded[0]
        if sr != SAMPLE_RATE:
            decoded = resample(decoded, sr, SAMPLE_RATE)
        results[f"rvqcodec-{kbps:g}k"] = (decoded.numpy(), len(data))
        progress.update(1)
    for external in externals:
        for setting in external.settings():
            with tempfile.TemporaryDirectory(prefix="rvq-listening-") as tmp:
                try:
                    coded = external.run(clip.audio, SAMPLE_RATE, setting, Path(tmp))
                    results[setting.name] = (coded.audio, coded.payload_bytes)
                except (ext.ToolError, ValueError, OSError) as exc:
                    results[setting.name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            progress.update(1)
    return results


# ------------------------------------------------------------------------------------------------ driver


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="PATH", default=None,
                   help="codec checkpoint (default: the shipped rvqcodec/pretrained/default.pt)")
    p.add_argument("--data", metavar="DIR", type=Path, default=None,
                   help="held-out speech, searched recursively (default: ../shared/data/speech-dev/LibriSpeech/"
                        "dev-clean beside the repository); a folder whose path names training data is refused")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output folder (default: samples/listening in the repository)")
    p.add_argument("--clips", metavar="N", type=int, default=DEFAULT_CLIPS,
                   help=f"number of clips, one speaker each (default {DEFAULT_CLIPS}, at most {MAX_CLIPS})")
    p.add_argument("--min-seconds", metavar="S", type=float, default=DEFAULT_MIN_SECONDS,
                   help=f"shortest clip (default {DEFAULT_MIN_SECONDS:g}); each ends at a pause")
    p.add_argument("--max-seconds", metavar="S", type=float, default=DEFAULT_MAX_SECONDS,
                   help=f"longest clip (default {DEFAULT_MAX_SECONDS:g}; keeps the page small)")
    p.add_argument("--bitrates", metavar="KBPS", default=DEFAULT_BITRATES,
                   help=f"rvqcodec bitrates in kbps, comma-separated (default {DEFAULT_BITRATES})")
    p.add_argument("--codecs", metavar="NAMES", default=",".join(COMPARABLE_EXTERNAL),
                   help="classical codecs beside rvqcodec, comma-separated (default: opus,amr-wb,codec2 at "
                        "6, 6.6 and 3.2 kbps)")
    p.add_argument("--no-external", action="store_true", help="rvqcodec only")
    p.add_argument("--browser-check", action="store_true",
                   help="check the page in headless Chromium and write screenshot.png beside it")
    p.add_argument("--chromium", metavar="PATH", default=None, help="Chromium executable for --browser-check")
    p.add_argument("--ffmpeg", metavar="PATH", default="ffmpeg", help="ffmpeg executable (name on PATH or path)")
    p.add_argument("--c2enc", metavar="PATH", default="c2enc", help="Codec2 encoder executable")
    p.add_argument("--c2dec", metavar="PATH", default="c2dec", help="Codec2 decoder executable")
    p.add_argument("--amrwbenc-library", metavar="PATH", default=None,
                   help="path of libvo-amrwbenc.so.0 (default: searched)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for rvqcodec")
    p.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args) -> tuple[Path, Path]:
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.clips <= MAX_CLIPS:
        raise UserError(f"--clips must be between 1 and {MAX_CLIPS}, got {args.clips}")
    if not (math.isfinite(args.min_seconds) and args.min_seconds >= 1.0):
        raise UserError(f"--min-seconds must be at least 1, got {args.min_seconds:g}")
    if not (math.isfinite(args.max_seconds) and args.max_seconds >= args.min_seconds):
        raise UserError(f"--max-seconds ({args.max_seconds:g}) must be at least --min-seconds ({args.min_seconds:g})")
    data = (args.data or DEFAULT_DATA)
    if not data.is_dir():
        raise UserError(f"data folder not found: {data}")
    if any(part.lower().startswith("train") for part in data.resolve().parts):
        raise UserError(f"--data {data} looks like training data; the page plays held-out speech only")
    out = args.out or DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, expected a folder")
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is inside the data folder {data}; outputs never go beside the inputs")
    return data, out


def _read_16k(path: Path) -> np.ndarray:
    try:
        return read_audio(path, target_sr=SAMPLE_RATE, mono=True).samples[0].numpy().astype(np.float32)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _selection_summary(clips: list[listening_clips.Clip], n_speakers: int) -> str:
    source = clips[0].group_source
    if source == "SPEAKERS.TXT":
        rule = "one speaker each, half female and half male (sex from LibriSpeech's SPEAKERS.TXT)"
    else:
        rule = (f"one speaker each; no speaker-sex metadata was found beside the data, so voices are chosen by "
                f"their median F0: half lower-pitched (below {listening_clips.LOW_F0_MAX_HZ:g} Hz, the typical "
                f"adult male range) and half higher-pitched (above {listening_clips.HIGH_F0_MIN_HZ:g} Hz, the "
                f"typical adult female range), a guess at sex, not a fact")
    return (f"{rule}; within a group, speakers at the centres of equal slices of its F0 range ({n_speakers} "
            f"speakers in the data); each clip starts just before the first speech and ends in the first pause "
            f"(within 3 dB of the quietest moment) between the shortest and longest clip length (rule: "
            f"benchmarks/listening_clips.py).")


LISTENER_SCORES = ("distillmos", "dnsmos_p808", "visqol")
"""The listener-model scores on the page (rvqcodec.perceptual), when the ``perceptual`` extra is installed."""


def _score_entry(key: str, ref: np.ndarray, decoded: np.ndarray, counted_bytes: int,
                 scorer=None) -> tuple[dict, np.ndarray]:
    seconds = ref.size / SAMPLE_RATE
    scores = evaluate_pair(ref, decoded, SAMPLE_RATE, align=True, max_shift_seconds=MAX_SHIFT_SECONDS,
                           perceptual=scorer)
    entry = {"key": key, "payload_bytes": int(counted_bytes), "measured_kbps": counted_bytes * 8 / seconds / 1000,
             "pesq_wb": scores["pesq_wb"], "stoi": scores["stoi"], "pesq_nb": scores["pesq_nb"],
             "si_sdr": scores["si_sdr"], "mel_distance": scores["mel_distance"],
             **{name: scores.get(name) for name in LISTENER_SCORES},
             "delay_ms": scores["delay_seconds"] * 1000, "delay_method": scores.get("delay_method")}
    return entry, aligned(decoded, scores["delay_samples"], ref.size)


def _means(versions: list[dict], clips: list[dict]) -> list[dict]:
    rows = []
    for v in versions[1:]:
        entries = [e for c in clips for e in c["versions"] if e["key"] == v["key"] and "error" not in e]

        def mean(name):
            values = [e[name] for e in entries if e[name] is not None and math.isfinite(e[name])]
            return sum(values) / len(values) if values else math.nan

        rows.append({"key": v["key"], "label": v["label"], "clips": len(entries),
                     "measured_kbps": mean("measured_kbps"), "pesq_wb": mean("pesq_wb"), "stoi": mean("stoi"),
                     **{name: mean(name) for name in LISTENER_SCORES}})
    return rows


def _earlier_files(out: Path) -> list[str]:
    """The files an earlier run listed in ``out/listening.json`` (empty if there is none or it is unreadable)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return []
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (ValueError, OSError, AttributeError):
        return []
    return [str(f) for f in files] if isinstance(files, list) else []


def _remove_stale(out: Path, earlier: list[str], keep: set[str]) -> list[str]:
    """Delete the files of ``earlier`` (inside ``out``) that are not in ``keep``; returns their names."""
    removed = []
    root = out.resolve()
    for name in earlier:
        path = (out / name).resolve()
        if name in keep or root not in path.parents or not path.is_file():
            continue
        path.unlink()
        removed.append(name)
    return removed


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Build the page described by ``args``; returns the manifest (also written as ``listening.json``)."""
    from tqdm import tqdm

    data, out = _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = resolve_checkpoint(args.model)
        codec = load_codec(checkpoint, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    bitrates = parse_bitrates(args.bitrates, codec)
    tools = ext.Tools(ffmpeg=args.ffmpeg, c2enc=args.c2enc, c2dec=args.c2dec,
                      amrwbenc_library=args.amrwbenc_library)
    externals, notes = ([], []) if args.no_external else selected_external_codecs(args.codecs, tools,
                                                                                   COMPARABLE_EXTERNAL)
    if args.browser_check and browser_check.find_chromium(args.chromium) is None:
        raise UserError(f"--browser-check: chromium not found ({args.chromium or 'chromium on PATH'}); "
                        "install: apt-get install -y chromium")
    files = list_audio_files(data)
    print(f"choosing {args.clips} clip(s) among {len(files)} files of {data} ...", file=sys.stderr)
    try:
        clips = listening_clips.choose_clips(files, args.clips, args.min_seconds, args.max_seconds, _read_16k,
                                             listening_clips.find_speakers_txt(data))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    versions = _versions(codec, bitrates, externals)
    labels = {v["key"]: v["label"] for v in versions}
    scorer = perceptual.get_scorer() if perceptual.available() else None
    if scorer is None:
        notes.append("listener-model scores (DistillMOS, DNSMOS, ViSQOL): the perceptual extra is not installed")

    earlier = _earlier_files(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    written: list[str] = []
    clip_records = []
    progress = tqdm(total=len(clips) * (len(versions) - 1), desc="coding and scoring", unit="version",
                    file=sys.stderr, disable=args.no_progress)
    with progress:
        for clip in clips:
            decoded = decode_all(codec, clip, bitrates, externals, progress)
            ref_name = f"audio/{clip.utterance}_reference.flac"
            write_audio(out / ref_name, clip.audio, SAMPLE_RATE, subtype="PCM_16", overwrite=True,
                        protected=[clip.path])
            entries = [{"key": "reference", "audio": ref_name,
                        "file_kbps": (out / ref_name).stat().st_size * 8 / clip.seconds / 1000,
                        **(scorer.non_intrusive(clip.audio, SAMPLE_RATE) if scorer else {})}]
            panels = [(labels["reference"], clip.audio)]
            written.append(ref_name)
            for version in versions[1:]:
                result = decoded[version["key"]]
                if isinstance(result, str):
                    entries.append({"key": version["key"], "error": result})
                    notes.append(f"{version['label']} failed on {clip.utterance}: {result}")
                    continue
                entry, signal = _score_entry(version["key"], clip.audio, *result, scorer=scorer)
                name = f"audio/{clip.utterance}_{version['key']}.flac"
                write_audio(out / name, signal, SAMPLE_RATE, subtype="PCM_16", overwrite=True, protected=[clip.path])
                entry["audio"] = name
                entries.append(entry)
                panels.append((version["label"], signal))
                written.append(name)
            image = f"img/{clip.utterance}_spectrogram.png"
            atomic_write_bytes(out / image, listening_page.spectrogram_png(
                panels, SAMPLE_RATE, f"{clip.utterance} (speaker {clip.speaker}), model {codec.model_id}"))
            written.append(image)
            clip_records.append({"utterance": clip.utterance, "source": shown_path(clip.path),
                                 "speaker": clip.speaker, "group": clip.group, "group_source": clip.group_source,
                                 "f0_hz": clip.f0_hz, "start_seconds": clip.start / SAMPLE_RATE,
                                 "seconds": clip.seconds, "spectrogram": image, "versions": entries})

    now = datetime.datetime.now(datetime.timezone.utc)
    amrwb = next((c for c in externals if c.name == "amr-wb"), None)
    manifest = {
        "page": "listening",
        "created": now.isoformat(timespec="seconds"),
        "created_display": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/listening.py", *argv]),
        "model": {"path": shown_path(checkpoint), "model_id": codec.model_id, "postfilter": codec.postfilter,
                  "normalize": level.NORMALIZE_BY_DEFAULT, "parameters": codec.parameter_counts()["total"]},
        "data": shown_path(data),
        "sample_rate": SAMPLE_RATE,
        "bitrates_kbps": bitrates,
        "selection": {"summary": _selection_summary(clips, len({listening_clips.speaker_of(f) for f in files})),
                      "group_source": clips[0].group_source, "min_seconds": args.min_seconds,
                      "max_seconds": args.max_seconds},
        "versions": versions,
        "clips": clip_records,
        "means": _means(versions, clip_records),
        "notes": notes,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "ffmpeg": ext.ffmpeg_version(args.ffmpeg) if externals else None,
                        "amr_wb_encoder": amrwb.encoder_backend() if amrwb else None},
        "files": sorted(written) + [MANIFEST, PAGE],
    }
    atomic_write_json(out / MANIFEST, manifest, fsync=True)
    atomic_write_text(out / PAGE, listening_page.render_html(json_safe(manifest)), fsync=True)
    removed = _remove_stale(out, earlier, set(manifest["files"]))
    if removed:
        print(f"removed {len(removed)} file(s) of the earlier page that this one does not use: "
              f"{', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}", file=sys.stderr)
    if args.browser_check:
        print("checking the page in headless Chromium ...", file=sys.stderr)
        report = browser_check.check_page(out / PAGE, args.chromium, out / SCREENSHOT)
        manifest["browser_check"] = report.summary()
        manifest["files"].append(SCREENSHOT)
        atomic_write_json(out / MANIFEST, manifest, fsync=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        manifest = run(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except browser_check.BrowserCheckError as exc:
        print(f"browser check FAILED: {exc}", file=sys.stderr)
        return 1
    out = args.out or DEFAULT_OUT
    for m in manifest["means"]:
        print(f"{m['label']:<34} {m['measured_kbps']:6.2f} kbps   PESQ-WB {m['pesq_wb']:.2f}   STOI {m['stoi']:.3f}"
              f"   ({m['clips']} clips)")
    for note in manifest["notes"]:
        print(f"note: {note}")
    if "browser_check" in manifest:
        print(f"browser check passed: {manifest['browser_check']}")
    size = sum((out / f).stat().st_size for f in manifest["files"])
    print(f"wrote {len(manifest['files'])} files, {size / 1e6:.2f} MB, to {shown_path(out)}/{PAGE}")
    if size > SIZE_WARNING_BYTES:
        print(f"warning: the page is over {SIZE_WARNING_BYTES / 1e6:g} MB; use fewer or shorter clips "
              "(--clips, --max-seconds)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
