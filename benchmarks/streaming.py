"""Real-time streaming of the causal model (issue 27): algorithmic latency, compute per 20 ms frame, real-time factor.

    python benchmarks/streaming.py                           # the shipped streaming model (else random weights)
    python benchmarks/streaming.py --model runs/causal/best.pt --seconds 60 --out /tmp/s

* **algorithmic latency**: by construction (a frame of buffering, ``hop``, plus the head's overlap-add,
  ``head_n_fft - hop``: :func:`rvqcodec.realtime.algorithmic_latency_samples`) and measured with an impulse streamed
  one sample at a time through the real encoder and decoder (:func:`rvqcodec.realtime.measure_latency`: samples from
  the impulse entering to the decoded sample at its position leaving; the output returned before it is checked not
  to depend on it). Opus (20 ms frames in WebRTC: 26.5 ms) and AMR-WB (20 ms frames + 5 ms look-ahead: 25 ms) are
  listed beside it for scale.
* **compute per frame**: real speech (dev-clean, or ``--input``) streamed in 20 ms pieces as a microphone delivers
  them (:func:`rvqcodec.realtime.loopback`), each piece's encode + decode timed on ``--threads`` CPU threads (default
  1): mean, median, 99th percentile and maximum over all frames, after ``--warmup`` frames; real-time factor =
  total compute / audio duration.

Without ``--model``, the shipped ``rvqcodec/pretrained/streaming.pt`` is used if it is there, else a random-weight
``convnext-causal`` model (noted in the results): the compute does not depend on the weights, only on the sizes.
Writes ``streaming.json`` and ``streaming.md`` into ``--out`` (default ``benchmarks/results/streaming``). Timings
taken on a busy machine say little: the report records the load average before and after.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, fmt_number, shown_path  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.model import Codec, CodecConfig  # noqa: E402
from rvqcodec.pretrained import load_codec, streaming_checkpoint_path  # noqa: E402
from rvqcodec.realtime import algorithmic_latency_samples, loopback, measure_latency  # noqa: E402

REFERENCE_CODECS = (
    {"codec": "Opus (WebRTC, 20 ms frames)", "frame_ms": 20.0, "algorithmic_latency_ms": 26.5},
    {"codec": "AMR-WB", "frame_ms": 20.0, "algorithmic_latency_ms": 25.0},
)
"""Published frame sizes and algorithmic latencies, for scale (not measured here)."""


def speech(seconds: float, sample_rate: int, path: str | None) -> tuple[np.ndarray, str]:
    """``seconds`` of speech at ``sample_rate``: ``path``, or dev-clean utterances joined (sorted order)."""
    if path is not None:
        return read_audio(path, target_sr=sample_rate).samples[0].numpy()[:int(seconds * sample_rate)], path
    files = sorted((SPEECH_ROOT / "dev-clean").rglob("*.flac"))
    if not files:
        raise SystemExit(f"no dev-clean speech under {SPEECH_ROOT}; pass --input FILE")
    pieces, total = [], 0
    for file in files:
        wav = read_audio(file, target_sr=sample_rate).samples[0].numpy()
        pieces.append(wav)
        total += wav.size
        if total >= seconds * sample_rate:
            break
    return np.concatenate(pieces)[:int(seconds * sample_rate)], shown_path(SPEECH_ROOT / "dev-clean")


def model(path: str | None) -> tuple[Codec, str]:
    """The codec to measure and how it was chosen."""
    if path is not None:
        return load_codec(path), shown_path(path)
    shipped = streaming_checkpoint_path()
    if shipped.is_file():
        return load_codec(shipped), shown_path(shipped)
    torch.manual_seed(0)
    return Codec(CodecConfig.preset("convnext-causal")).eval(), (
        "random-weight convnext-causal (the streaming model is not shipped yet; compute does not depend on the weights)")


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    codec, model_note = model(args.model)
    n_q = codec.n_q_for_bitrate(args.bitrate)
    wav, source = speech(args.seconds, codec.sample_rate, args.input)
    load_before = os.getloadavg()
    latency = measure_latency(codec, n_q)
    result = loopback(codec, wav, n_q)
    load_after = os.getloadavg()
    frame_ms = np.asarray(result.piece_seconds[args.warmup:]) * 1000.0
    frame_s = codec.hop_length / codec.sample_rate
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in load_after]},
        "model": model_note, "model_id": codec.model_id, "bitrate_kbps": codec.bitrate(n_q), "n_q": n_q,
        "audio": source, "seconds": wav.size / codec.sample_rate, "frame_ms": 1000.0 * frame_s,
        "algorithmic_latency_ms": 1000.0 * algorithmic_latency_samples(codec) / codec.sample_rate,
        "latency_made_of_ms": {"frame_buffering": 1000.0 * frame_s,
                               "overlap_add": 1000.0 * (codec.config.head_n_fft - codec.hop_length) / codec.sample_rate},
        "measured_latency_ms": latency.ms, "latency_check": {"causal": latency.causal,
                                                             "impulse_reaches_output": latency.responds},
        "frames_timed": int(frame_ms.size), "warmup_frames": args.warmup,
        "compute_per_frame_ms": {"mean": float(frame_ms.mean()), "median": float(np.median(frame_ms)),
                                 "p99": float(np.percentile(frame_ms, 99)), "max": float(frame_ms.max())},
        "real_time_factor": float(frame_ms.sum() / 1000.0 / (frame_ms.size * frame_s)),
        "reference_codecs": list(REFERENCE_CODECS),
    }


def markdown(r: dict) -> str:
    c, m = r["compute_per_frame_ms"], r["machine"]
    parts = r["latency_made_of_ms"]
    lines = [
        "# Real-time streaming (benchmarks/streaming.py)",
        "",
        f"Model: {r['model']} (id `{r['model_id']}`), {r['bitrate_kbps']:g} kbps ({r['n_q']} stages); audio: "
        f"{r['audio']}, {r['seconds']:.1f} s in {r['frame_ms']:g} ms pieces; {m['threads']} CPU thread(s) on "
        f"{m['processor']} ({m['cpu_count']} cores), torch {m['torch']}; load average {m['load_average_before'][0]} "
        f"before, {m['load_average_after'][0]} after; {r['date']}.",
        "",
        "| codec | frame (ms) | algorithmic latency (ms) |",
        "|---|---:|---:|",
        f"| rvqcodec streaming (by construction: {parts['frame_buffering']:g} ms frame + {parts['overlap_add']:g} "
        f"ms overlap-add) | {r['frame_ms']:g} | {r['algorithmic_latency_ms']:g} |",
        f"| rvqcodec streaming (measured with an impulse) | {r['frame_ms']:g} | {r['measured_latency_ms']:g} |",
    ]
    lines += [f"| {ref['codec']} (published) | {ref['frame_ms']:g} | {ref['algorithmic_latency_ms']:g} |"
              for ref in r["reference_codecs"]]
    lines += [
        "",
        f"Impulse check: output returned before the impulse entered is unchanged by it: "
        f"{r['latency_check']['causal']}; the decoded sample at its position changes: "
        f"{r['latency_check']['impulse_reaches_output']}.",
        "",
        f"| compute per {r['frame_ms']:g} ms frame, encode + decode | mean | median | p99 | max | real-time factor |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {r['frames_timed']} frames, {m['threads']} thread(s) | {fmt_number(c['mean'], '.3f')} ms | "
        f"{fmt_number(c['median'], '.3f')} ms | {fmt_number(c['p99'], '.3f')} ms | {fmt_number(c['max'], '.3f')} ms | "
        f"{fmt_number(r['real_time_factor'], '.4f')} |",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="causal checkpoint (default: rvqcodec/pretrained/streaming.pt if "
                                                 "present, else a random-weight convnext-causal model)")
    p.add_argument("--bitrate", type=float, default=6.0, help="kbps (default 6)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of speech to stream (default 30)")
    p.add_argument("--input", default=None, help="audio file to stream instead of dev-clean")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--warmup", type=int, default=10, help="first frames left out of the timings (default 10)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "streaming", help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "streaming.json", result)
    atomic_write_text(args.out / "streaming.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
