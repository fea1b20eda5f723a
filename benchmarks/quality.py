"""Quality against bitrate: rvqcodec at every bitrate it supports vs Opus, AMR-WB and Codec2 on the same files.

    python benchmarks/quality.py                                  # shipped model, all of dev-clean
    python benchmarks/quality.py --model runs/base/best.pt --bitrates 1.5,3,6 --out /tmp/q
    python benchmarks/quality.py --quick                          # CI: 2 files of 3 s, 3 bitrates

Every file (resampled to 16 kHz, mono) goes through each codec; the decoded signal is delay-aligned to the
original and scored with :func:`rvqcodec.scoring.evaluate_pair` (the same code as ``rvqcodec eval``): PESQ-WB,
PESQ-NB, STOI, SI-SDR and mel distance. The delay (up to 100 ms) comes from :func:`rvqcodec.metrics.find_delay`:
the waveform cross-correlation peak when it is significant (waveform codecs: Opus, AMR-WB), else the match of
log-energy envelopes (phase-free output: Codec2, rvqcodec), else none; the table reports the median delay and
which method was used for how many files. Bitrates are measured from the bytes actually produced, over the
duration of the input: for rvqcodec the whole ``.rvq`` file (header and CRCs included); for the external
codecs see ``benchmarks/external_codecs.py`` (Opus: the Opus packets without Ogg framing; AMR-WB: the speech
bytes without ToC bytes; Codec2: the bit file).

rvqcodec encodes each file once (:func:`rvqcodec.streams.encode_stages`: the chunk engine, with the most stages
asked for); the stream at a lower bitrate holds the first ``n_q`` stages of those codes (residual VQ is greedy,
so this is exactly what compressing at that bitrate produces). Each stream is real ``.rvq`` bytes, decoded with
:func:`rvqcodec.api.decompress`.

``--reuse PREVIOUS/quality.json`` takes the rows that do not depend on the model (the classical codecs and the
original speech) from an earlier run on the same files, cut the same way, scored with the same listener models
and the same external tools, instead of running and scoring them again (an hour of CPU on speech-ood); each file
and setting it lacks is run as usual. Comparing a new checkpoint against the classical codecs then costs only
rvqcodec's own rows.

Writes ``quality.json`` (settings, per-codec means, per-file scores), ``quality.md`` (the table and the
targets) and ``quality_pesq_wb.png`` (PESQ-WB against measured kbps, one line per codec) into ``--out``.
A missing external codec is skipped with a note (how to install it), never an error.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import external_codecs as ext  # noqa: E402  (needs BENCH_DIR on sys.path)
from common import DEFAULT_OUT, SPEECH_ROOT, fmt_number, list_audio_files, resolved_shown_path, shown_path  # noqa: E402
from rvqcodec import api, level, perceptual, streams  # noqa: E402
from rvqcodec.commands.common import add_level_argument, add_postfilter_argument, apply_postfilter  # noqa: E402
from rvqcodec.errors import UserError  # noqa: E402
from rvqcodec.data.audio_io import read_audio, resample  # noqa: E402
from rvqcodec.extras import MissingExtraError, require  # noqa: E402
from rvqcodec.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.lengths import MAX_SHIFT_SECONDS  # noqa: E402
from rvqcodec.scoring import evaluate_pair, metric_names  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

DEFAULT_DATA = SPEECH_ROOT / "dev-clean"
SCORE_RATE = ext.SAMPLE_RATE  # every codec is scored at 16 kHz

QUICK_FILES = 2
QUICK_SECONDS = 3.0
QUICK_BITRATES = (1.5, 3.0, 6.0)
COMPARABLE_EXTERNAL = {"opus": dict(kbps=(6,)), "amr-wb": dict(kbps=(6.6,)), "codec2": dict(modes=("3200",))}
"""One setting per classical codec, at rates comparable to rvqcodec's (``--quick`` and the listening page)."""

TABLE_COLUMNS = ("codec", "setting", "nominal kbps", "measured kbps", "PESQ-WB", "PESQ-NB", "STOI",
                 "SI-SDR dB", "mel dist", "delay ms", "delay method", "files")
PERCEPTUAL_COLUMNS = (("distillmos", "DistillMOS"), ("dnsmos_p808", "DNSMOS P.808"), ("dnsmos_ovrl", "DNSMOS OVRL"),
                      ("visqol", "ViSQOL"))
LISTENER_LABELS = dict(PERCEPTUAL_COLUMNS)
"""Listener-model columns (``--perceptual``), placed after PESQ-WB."""
REFERENCE_SETTING = "original"
"""The row of the unprocessed speech: the listener models' ceiling (no bitrate, no intrusive scores)."""


# ------------------------------------------------------------------------------------------------- inputs



def parse_bitrates(text: str | None, codec) -> list[float]:
    """``"1.5,3,6"`` -> ``[1.5, 3.0, 6.0]`` checked against the model; None -> every bitrate of the model."""
    if text is None:
        return codec.bitrates()
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            kbps = float(item)
        except ValueError:
            raise UserError(f"--bitrates: {item!r} is not a number (give kbps like 1.5,3,6)") from None
        try:
            codec.n_q_for_bitrate(kbps)
        except ValueError as exc:
            raise UserError(f"--bitrates: {exc}") from None
        values.append(kbps)
    if not values:
        raise UserError("--bitrates is empty")
    return sorted(set(values))


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class Setting:
    """One row of the result table: a codec at one operating point."""

    codec: str
    name: str
    nominal_kbps: float
    description: str
    per_file: list[dict] = field(default_factory=list)


PERCEPTUAL = None
"""The :class:`rvqcodec.perceptual.PerceptualScorer` of this run (``--perceptual``), or None."""


def _score(ref: np.ndarray, deg: np.ndarray) -> dict[str, float]:
    return evaluate_pair(ref, deg, SCORE_RATE, align=True, max_shift_seconds=MAX_SHIFT_SECONDS, perceptual=PERCEPTUAL)


def _file_record(path: Path, ref: np.ndarray, deg: np.ndarray, payload_bytes: int, file_bytes: int,
                 encode_s: float, decode_s: float) -> dict:
    seconds = ref.size / SCORE_RATE
    record = {"file": shown_path(path), "seconds": seconds, "payload_bytes": int(payload_bytes),
              "file_bytes": int(file_bytes), "kbps": payload_bytes * 8 / seconds / 1000,
              "encode_seconds": encode_s, "decode_seconds": decode_s}
    record.update(_score(ref, deg))
    return record


def reference_record(path: Path, ref: np.ndarray) -> dict:
    """The ``original`` row's record of one file: its listener-model scores, every other metric NaN."""
    record = {"file": shown_path(path), "seconds": ref.size / SCORE_RATE, "payload_bytes": 0, "file_bytes": 0,
              "kbps": math.nan, "encode_seconds": 0.0, "decode_seconds": 0.0, "delay_seconds": 0.0,
              "delay_method": "off", **{name: math.nan for name in metric_names(True)}}
    record.update(PERCEPTUAL.non_intrusive(ref, SCORE_RATE))
    return record


def rvq_streams(codec, ref: np.ndarray, bitrates: list[float],
                normalize: bool = level.NORMALIZE_BY_DEFAULT) -> tuple[dict[float, bytes], float]:
    """The ``.rvq`` bytes of ``ref`` (16 kHz ``(T,)``) at every bitrate, from one encode, and its time in seconds.

    :func:`rvqcodec.streams.encode_stages` computes the codes once with the most stages needed; the stream at
    ``kbps`` keeps their first ``n_q`` stages, which is byte for byte what
    ``api.compress(codec, ref, 16000, bitrate=kbps, normalize=normalize)`` gives.
    """
    n_qs = {kbps: streams.resolve_n_q(codec, bitrate=kbps) for kbps in bitrates}
    wav = torch.from_numpy(ref)
    if codec.sample_rate != SCORE_RATE:
        wav = resample(wav, SCORE_RATE, codec.sample_rate)
    start = time.perf_counter()
    gain_db = level.gain_db_of([wav]) if normalize else 0.0
    by_n_q = streams.encode_stages(codec, [wav], list(n_qs.values()), gain_db=gain_db)
    encode_s = time.perf_counter() - start
    return {kbps: by_n_q[n_q] for kbps, n_q in n_qs.items()}, encode_s


def run_rvqcodec(codec, ref: np.ndarray, bitrates: list[float], path: Path, settings: dict[str, Setting],
                 normalize: bool) -> None:
    """Score rvqcodec on ``ref`` at every bitrate: one encode (:func:`rvq_streams`), one decode per stream."""
    by_kbps, encode_s = rvq_streams(codec, ref, bitrates, normalize)
    for kbps, data in by_kbps.items():
        start = time.perf_counter()
        decoded, sr = api.decompress(codec, data)
        decode_s = time.perf_counter() - start
        decoded = decoded[0]
        if sr != SCORE_RATE:
            decoded = resample(decoded, sr, SCORE_RATE)
        key = f"rvqcodec-{kbps:g}k"
        if key not in settings:
            settings[key] = Setting("rvqcodec", key, kbps, f"{codec.n_q_for_bitrate(kbps)} RVQ stages")
        settings[key].per_file.append(
            _file_record(path, ref, decoded.numpy(), len(data), len(data), encode_s, decode_s))


def run_external(codec: ext.ExternalCodec, ref: np.ndarray, path: Path, settings: dict[str, Setting],
                 notes: list[str], reused: Reused | None = None) -> None:
    """Every setting of an external codec on ``ref``; a tool failure becomes a note, not an error. A record in
    ``reused`` (``--reuse``) is taken as it is instead of running the codec."""
    for s in codec.settings():
        if s.name not in settings:
            settings[s.name] = Setting(s.codec, s.name, s.nominal_kbps, s.description)
        if reused is not None and reused.take(settings[s.name], path):
            continue
        with tempfile.TemporaryDirectory(prefix="rvqbench-") as tmp:
            try:
                coded = codec.run(ref, SCORE_RATE, s, Path(tmp))
            except (ext.ToolError, ValueError, OSError) as exc:
                notes.append(f"{s.name} failed on {path.name}: {exc}")
                continue
        settings[s.name].per_file.append(_file_record(path, ref, coded.audio, coded.payload_bytes,
                                                      coded.file_bytes, coded.encode_seconds, coded.decode_seconds))


REUSE_MUST_MATCH = (("config", "max_seconds"), ("config", "score_sample_rate"), ("config", "max_shift_seconds"),
                    ("config", "perceptual"), ("environment", "ffmpeg"), ("environment", "amr_wb_encoder"))
"""What an earlier result must share with this run for ``--reuse`` to take its records."""


class Reused:
    """The model-independent per-file records of an earlier ``quality.json`` (``--reuse``): the original speech's
    row and the classical codecs', by ``(setting, shown file path)``.

    Raises ``UserError`` (one line) when the file is unreadable or was made under other conditions
    (:data:`REUSE_MUST_MATCH`: cut length, scoring rate and alignment, listener models, ffmpeg, AMR-WB encoder).
    """

    def __init__(self, path: Path, current: dict[str, dict]):
        try:
            previous = json.loads(Path(path).read_text())
            config, records = previous["config"], previous["per_file"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--reuse {path}: not a quality.json this script wrote ({exc})") from None
        for section, key in REUSE_MUST_MATCH:
            if key not in current[section]:  # the tools of codecs this run does not use
                continue
            ours, theirs = current[section][key], previous.get(section, {}).get(key)
            if ours != theirs:
                raise UserError(f"--reuse {path}: made with {section} {key} = {theirs!r}, this run has {ours!r}")
        self.path = path
        self.seconds = {f["file"]: f["seconds"] for f in config["files"]}
        self.records = {(r["setting"], r["file"]): r for r in records if r["codec"] != "rvqcodec"}
        self.taken = 0

    def take(self, setting: Setting, path: Path) -> bool:
        """Append the earlier record of ``setting`` on ``path`` to ``setting.per_file`` if there is one (for the
        same file at the same length); False if this run must make it."""
        name = shown_path(path)
        record = self.records.get((setting.name, name))
        if record is None:
            return False
        record = {k: v for k, v in record.items() if k not in ("codec", "setting")}
        record.update({k: math.nan for k, v in record.items() if v is None})  # JSON null: an undefined score
        setting.per_file.append(record)
        self.taken += 1
        return True

    def covers(self, path: Path, seconds: float) -> bool:
        """True if the earlier run scored ``path`` at this length (its records may then be taken)."""
        return abs(self.seconds.get(shown_path(path), -1.0) - seconds) < 1e-9


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(setting: Setting, n_files: int, groups: dict[str, str] | None = None) -> dict:
    """Means over files of every metric (NaN/inf values left out), bitrate over the whole set. With ``groups``
    (shown file path -> group name) every metric is the mean of the groups' means (a macro average: each corpus
    counts the same however many files it has)."""
    files = setting.per_file
    seconds = sum(f["seconds"] for f in files)
    coded = seconds > 0 and setting.codec != REFERENCE_SETTING
    row = {"codec": setting.codec, "setting": setting.name, "description": setting.description,
           "nominal_kbps": setting.nominal_kbps,
           "measured_kbps": sum(f["payload_bytes"] for f in files) * 8 / seconds / 1000 if coded else math.nan,
           "file_kbps": sum(f["file_bytes"] for f in files) * 8 / seconds / 1000 if coded else math.nan,
           "seconds": seconds, "files_scored": len(files), "files_total": n_files}
    for name in metric_names(bool(files) and "visqol" in files[0]):
        if groups:
            by_group: dict[str, list[float]] = {}
            for f in files:
                by_group.setdefault(groups[f["file"]], []).append(f[name])
            row[name] = _finite_mean([_finite_mean(values) for values in by_group.values()])
        else:
            row[name] = _finite_mean([f[name] for f in files])
        row[f"{name}_n"] = sum(1 for f in files if math.isfinite(f[name]))
    row["delay_ms_median"] = (statistics.median(f["delay_seconds"] * 1000 for f in files) if files else math.nan)
    row["delay_methods"] = {m: sum(1 for f in files if f["delay_method"] == m)
                            for m in sorted({f["delay_method"] for f in files})}
    return row


ABSOLUTE_TARGETS = (("rvqcodec-6k", 2.9), ("rvqcodec-3k", 2.4), ("rvqcodec-1.5k", 2.0))
"""PESQ-WB the quality issue asks of rvqcodec at 6, 3 and 1.5 kbps (above AMR-WB 6.6 kbps, ..., Opus 6 kbps)."""
RISING_SETTINGS = ("rvqcodec-1.5k", "rvqcodec-3k", "rvqcodec-4.5k", "rvqcodec-6k", "rvqcodec-7.5k")


def targets(rows: list[dict]) -> list[dict]:
    """The quality targets, each ``{"target", "rvqcodec", "reference", "met"}`` (None where not measured):
    rvqcodec 6 kbps PESQ-WB > Opus 6 kbps and >= AMR-WB 6.6 kbps; PESQ-WB >= 2.9 / 2.4 / 2.0 at 6 / 3 / 1.5 kbps;
    with listener scores, DistillMOS at 6 kbps >= AMR-WB 6.6's + 0.2, at 3 kbps >= AMR-WB 6.6's, at 1.5 kbps >=
    Opus 6's, DNSMOS P.808 and ViSQOL at 6 kbps >= AMR-WB 6.6's (``reference``: the other codec's score plus the
    margin); PESQ-WB rising with every added 1.5 kbps (``rvqcodec``: the smallest rise, ``reference``: 0)."""
    by_name = {r["setting"]: r for r in rows}

    def pesq(name: str) -> float | None:
        row = by_name.get(name)
        return row["pesq_wb"] if row is not None and math.isfinite(row["pesq_wb"]) else None

    def check(target: str, ours: float | None, reference: float | None, strict: bool) -> dict:
        met = None if ours is None or reference is None else bool(ours > reference if strict else ours >= reference)
        return {"target": target, "rvqcodec": ours, "reference": reference, "met": met}

    checks = [check(f"PESQ-WB rvqcodec-6k {'>' if strict else '>='} {other}", pesq("rvqcodec-6k"), pesq(other), strict)
              for other, strict in (("opus-6k", True), ("amr-wb-6.6k", False))]
    checks += [check(f"PESQ-WB {name} >= {value:g}", pesq(name), value, False) for name, value in ABSOLUTE_TARGETS]
    if rows and "distillmos" in rows[0]:  # the quality-as-heard issue's targets, from the listener models
        def score(name: str, metric: str, offset: float = 0.0) -> float | None:
            row = by_name.get(name)
            value = row[metric] if row is not None else math.nan
            return value + offset if math.isfinite(value) else None

        for ours, metric, other, offset in (("rvqcodec-6k", "distillmos", "amr-wb-6.6k", 0.2),
                                            ("rvqcodec-3k", "distillmos", "amr-wb-6.6k", 0.0),
                                            ("rvqcodec-1.5k", "distillmos", "opus-6k", 0.0),
                                            ("rvqcodec-6k", "dnsmos_p808", "amr-wb-6.6k", 0.0),
                                            ("rvqcodec-6k", "visqol", "amr-wb-6.6k", 0.0)):
            label = f"{LISTENER_LABELS[metric]} {ours} >= {other}" + (f" + {offset:g}" if offset else "")
            checks.append(check(label, score(ours, metric), score(other, metric, offset), False))
    rising = [pesq(name) for name in RISING_SETTINGS]
    smallest = None if None in rising else min(b - a for a, b in zip(rising, rising[1:]))
    checks.append(check("PESQ-WB rises with every added 1.5 kbps (1.5 to 7.5 kbps; smallest rise)", smallest,
                        None if smallest is None else 0.0, True))
    return checks


# ------------------------------------------------------------------------------------------------ outputs


def markdown_table(rows: list[dict]) -> str:
    perceptual = [(key, title) for key, title in PERCEPTUAL_COLUMNS if rows and key in rows[0]]
    titles = list(TABLE_COLUMNS[:5]) + [title for _, title in perceptual] + list(TABLE_COLUMNS[5:])
    lines = ["| " + " | ".join(titles) + " |", "|---|---|" + "---:|" * (len(titles) - 2)]
    for r in rows:
        cells = [r["codec"], r["setting"], fmt_number(r["nominal_kbps"], ".2f"),
                 fmt_number(r["measured_kbps"], ".2f"), fmt_number(r["pesq_wb"], ".2f"),
                 *(fmt_number(r[key], ".2f") for key, _ in perceptual), fmt_number(r["pesq_nb"], ".2f"), fmt_number(r["stoi"], ".3f"), fmt_number(r["si_sdr"], ".1f"),
                 fmt_number(r["mel_distance"], ".3f"), fmt_number(r["delay_ms_median"], ".1f"),
                 ", ".join(f"{m} {n}" for m, n in r["delay_methods"].items()) or "–",
                 f"{r['files_scored']}/{r['files_total']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    cfg = result["config"]
    parts = [f"# Quality vs bitrate ({'quick' if cfg['quick'] else 'full'} run)", "",
             f"Model: `{cfg['model']['path']}` (id {cfg['model']['model_id']}, "
             f"formant postfilter {cfg['model'].get('postfilter', 0.0):g}, "
             f"input level {'normalized' if cfg['model'].get('normalize') else 'as recorded'}, "
             f"{cfg['model']['parameters']:,} parameters). Data: `{cfg['data']}`, {len(cfg['files'])} files, "
             f"{cfg['total_seconds']:.1f} s" + (f" (each cut to {cfg['max_seconds']:g} s)" if cfg["max_seconds"] else "")
             + f". Scored at {SCORE_RATE} Hz after delay alignment (up to {MAX_SHIFT_SECONDS * 1000:g} ms; "
             "`rvqcodec.metrics.find_delay`).", "",
             markdown_table(result["results"]), ""]
    parts += ["Targets:", ""]
    for t in result["targets"]:
        if t["met"] is None:
            parts.append(f"- {t['target']}: not measured (a codec was skipped or scores are undefined)")
        else:
            parts.append(f"- {t['target']}: {t['rvqcodec']:.2f} vs {t['reference']:.2f} -> "
                         f"{'met' if t['met'] else 'NOT met'}")
    if result["notes"]:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    parts += ["", "Columns: measured kbps = counted bytes x 8 / input duration (rvqcodec: whole .rvq file; Opus: "
              "Opus packets without Ogg framing; AMR-WB: speech bytes without ToC bytes; Codec2: bit file). "
              "Metrics are means over files (undefined values left out"
              + ("; macro average: the mean of each top-level folder's mean" if cfg.get("macro_by_folder") else "")
              + "); DistillMOS, DNSMOS (P.808, P.835 OVRL) and ViSQOL v3 speech are listener models "
              "(rvqcodec.perceptual; the original row is the unprocessed speech); delay ms is the median delay removed "
              "before scoring; delay method: how many files were aligned by a significant waveform "
              "cross-correlation peak, by log-energy envelopes (phase-free output) or not at all (none); "
              "files = files scored / files in the set. See benchmarks/README.md.", ""]
    return "\n".join(parts)


def plot_pesq(rows: list[dict], path: Path, title: str) -> None:
    """PESQ-WB against measured kbps, one line per codec, written atomically as PNG."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for name in codecs:
        points = sorted((r["measured_kbps"], r["pesq_wb"]) for r in rows
                        if r["codec"] == name and math.isfinite(r["pesq_wb"]) and math.isfinite(r["measured_kbps"]))
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=2 if name == "rvqcodec" else 1.2, label=name)
    ax.set_xscale("log")
    ticks = [0.5, 1, 2, 4, 6, 8, 12, 16]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("measured bitrate (kbps)")
    ax.set_ylabel("PESQ-WB (MOS-LQO)")
    ax.set_ylim(1.0, 4.7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), fsync=True)


# ------------------------------------------------------------------------------------------------ driver


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="folder of speech files, searched recursively (default: "
                        "../shared/data/speech-dev/LibriSpeech/dev-clean, relative to the repository root)")
    p.add_argument("--model", metavar="PATH", default=None, help="codec checkpoint (default: the shipped rvqcodec/pretrained/default.pt)")
    add_postfilter_argument(p)
    add_level_argument(p)
    p.add_argument("--bitrates", metavar="KBPS", default=None, help="rvqcodec bitrates in kbps, comma-separated (default: all)")
    p.add_argument("--codecs", metavar="NAMES", default=",".join(ext.EXTERNAL_CODECS),
                   help=f"external codecs to compare, comma-separated (default: {','.join(ext.EXTERNAL_CODECS)})")
    p.add_argument("--no-external", action="store_true", help="score rvqcodec only")
    p.add_argument("--comparable", action="store_true",
                   help="one setting per classical codec, at rates comparable to rvqcodec's (Opus 6 kbps, AMR-WB "
                        "6.6 kbps, Codec2 3200), as --quick does")
    p.add_argument("--max-files", metavar="N", type=int, default=None, help="use only the first N files")
    p.add_argument("--max-seconds", metavar="S", type=float, default=None, help="cut each file to its first S seconds")
    p.add_argument("--quick", action="store_true",
                   help=f"CI mode: {QUICK_FILES} files cut to {QUICK_SECONDS:g} s, bitrates "
                        f"{','.join(f'{b:g}' for b in QUICK_BITRATES)}, one setting per external codec")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output folder (default: benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--ffmpeg", metavar="PATH", default="ffmpeg", help="ffmpeg executable (name on PATH or path)")
    p.add_argument("--c2enc", metavar="PATH", default="c2enc", help="Codec2 encoder executable")
    p.add_argument("--c2dec", metavar="PATH", default="c2dec", help="Codec2 decoder executable")
    p.add_argument("--amrwbenc-library", metavar="PATH", default=None, help="path of libvo-amrwbenc.so.0 (default: searched)")
    p.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None,
                   help="also score DistillMOS, DNSMOS P.808 / P.835 OVRL and ViSQOL for every codec, and the "
                        "original speech as its own row (default: when the 'perceptual' extra is installed)")
    p.add_argument("--macro-by-folder", action="store_true",
                   help="average each metric over the top-level folders of --data first, then over folders (each "
                        "corpus of ../shared/data/speech-ood counts the same, as its README asks)")
    p.add_argument("--reuse", metavar="JSON", type=Path, default=None,
                   help="take the classical codecs' and the original speech's scores from an earlier quality.json "
                        "of the same files (same cut, listener models and tools) instead of computing them again")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for rvqcodec")
    p.add_argument("--threads", metavar="N", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def selected_external_codecs(names: str, tools: ext.Tools, settings: dict[str, dict] | None = None
                             ) -> tuple[list[ext.ExternalCodec], list[str]]:
    """The classical codecs named in ``names`` (comma-separated, as ``--codecs``) that this machine has, each with
    its settings from ``settings`` (None: every setting the codec has), and notes on the missing ones.
    ``UserError`` for an unknown name."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    try:
        codecs, notes = ext.external_codecs(wanted, tools)
    except ValueError as exc:
        raise UserError(f"--codecs: {exc}") from None
    if settings is not None:
        codecs = [type(c)(tools, **settings[c.name]) for c in codecs]
    return codecs, notes


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by parsed ``args``; returns the JSON-ready result (also written to disk)."""
    for module, purpose in (("pesq", "for PESQ"), ("pystoi", "for STOI"), ("matplotlib", "for the plot")):
        try:  # before any work, not after an hour of it
            require(module, purpose)
        except MissingExtraError as exc:
            raise UserError(str(exc)) from None
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("max_files", "max_seconds"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    max_files = args.max_files or (QUICK_FILES if args.quick else None)
    max_seconds = args.max_seconds or (QUICK_SECONDS if args.quick else None)
    out_dir = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, expected a folder")

    try:
        checkpoint = resolve_checkpoint(args.model)
        codec = load_codec(checkpoint, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    apply_postfilter(codec, args)
    bitrates = parse_bitrates(args.bitrates, codec)
    if args.quick and args.bitrates is None:
        valid = set(codec.bitrates())
        bitrates = [b for b in QUICK_BITRATES if b in valid] or [codec.bitrates()[0], codec.bitrates()[-1]]
    files = list_audio_files(args.data or DEFAULT_DATA)[:max_files]
    tools = ext.Tools(ffmpeg=args.ffmpeg, c2enc=args.c2enc, c2dec=args.c2dec,
                      amrwbenc_library=args.amrwbenc_library)
    externals, notes = ([], []) if args.no_external else selected_external_codecs(
        args.codecs, tools, COMPARABLE_EXTERNAL if args.quick or args.comparable else None)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    global PERCEPTUAL
    PERCEPTUAL = None
    if args.perceptual or (args.perceptual is None and perceptual.available()):
        try:
            PERCEPTUAL = perceptual.get_scorer()
        except MissingExtraError as exc:
            raise UserError(str(exc)) from None
    elif args.perceptual is None:
        print("note: listener-model scores skipped: pip install \"rvqcodec[perceptual]\" to add them",
              file=sys.stderr)
    data_root = args.data or DEFAULT_DATA
    groups = ({shown_path(p): p.relative_to(data_root).parts[0] if len(p.relative_to(data_root).parts) > 1 else "."
               for p in files} if args.macro_by_folder else None)

    environment = {"python": platform.python_version(), "torch": torch.__version__,
                   "ffmpeg": ext.ffmpeg_version(args.ffmpeg),
                   "amr_wb_encoder": next((c.encoder_backend() for c in externals if c.name == "amr-wb"), None)}
    run_config = {"max_seconds": max_seconds, "score_sample_rate": SCORE_RATE, "max_shift_seconds": MAX_SHIFT_SECONDS,
                  "perceptual": PERCEPTUAL is not None}  # written into the result's config, checked by --reuse
    reused = (Reused(args.reuse, {"config": run_config, "environment": environment if externals else {}})
              if args.reuse else None)

    settings: dict[str, Setting] = {}
    file_info = []
    started = time.perf_counter()
    for i, path in enumerate(files, 1):
        try:
            audio = read_audio(path, target_sr=SCORE_RATE, mono=True).samples[0]
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if max_seconds:
            audio = audio[:int(round(max_seconds * SCORE_RATE))]
        ref = audio.numpy().astype(np.float32)
        file_info.append({"file": shown_path(path), "seconds": ref.size / SCORE_RATE})
        print(f"[{i}/{len(files)}] {path.name} ({ref.size / SCORE_RATE:.1f} s, "
              f"{time.perf_counter() - started:.0f} s elapsed)", file=sys.stderr)
        reuse_file = reused if reused is not None and reused.covers(path, ref.size / SCORE_RATE) else None
        if PERCEPTUAL is not None:
            original = settings.setdefault(REFERENCE_SETTING, Setting(REFERENCE_SETTING, REFERENCE_SETTING, math.nan,
                                                                      "the unprocessed speech"))
            if reuse_file is None or not reuse_file.take(original, path):
                original.per_file.append(reference_record(path, ref))
        run_rvqcodec(codec, ref, bitrates, path, settings, args.normalize)
        for external in externals:
            run_external(external, ref, path, settings, notes, reuse_file)
    if reused is not None:
        notes.append(f"{reused.taken} records of the original speech and the classical codecs reused from "
                     f"{shown_path(reused.path)}")

    order = [REFERENCE_SETTING, "rvqcodec"] + [c.name for c in externals]
    rows = sorted((summarise(s, len(files), groups) for s in settings.values()),
                  key=lambda r: (order.index(r["codec"]), 0 if math.isnan(r["nominal_kbps"]) else r["nominal_kbps"]))
    result = {
        "benchmark": "quality",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "quick": bool(args.quick), "data": shown_path(args.data or DEFAULT_DATA), "files": file_info,
            "total_seconds": sum(f["seconds"] for f in file_info), **run_config,
            "bitrates_kbps": bitrates, "external_codecs": [c.name for c in externals],
            "model": {"path": shown_path(checkpoint), "model_id": codec.model_id,
                      "postfilter": codec.postfilter, "normalize": args.normalize,
                      "parameters": codec.parameter_counts()["total"], "config": codec.config.to_dict()},
            "out": shown_path(out_dir), "device": args.device, "threads": torch.get_num_threads(),
            "macro_by_folder": sorted(set(groups.values())) if groups else None,
            "reused_from": shown_path(args.reuse) if args.reuse else None,
        },
        "environment": environment,
        "notes": notes,
        "results": rows,
        "targets": targets(rows),
        "per_file": [dict(codec=s.codec, setting=s.name, **f) for s in settings.values() for f in s.per_file],
        "elapsed_seconds": time.perf_counter() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "quality.json", result, fsync=True)  # NaN and inf become null
    atomic_write_text(out_dir / "quality.md", markdown_report(result), fsync=True)
    plot_pesq(rows, out_dir / "quality_pesq_wb.png",
              f"PESQ-WB vs bitrate, {len(files)} files ({result['config']['total_seconds']:.0f} s), "
              f"model {codec.model_id}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result["results"]))
    for t in result["targets"]:
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"target: {t['target']}: {verdict}")
    out = resolved_shown_path(result["config"]["out"])
    print(f"wrote {out / 'quality.json'}, {out / 'quality.md'} and {out / 'quality_pesq_wb.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
