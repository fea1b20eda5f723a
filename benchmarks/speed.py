"""Speed and memory of rvqcodec: real-time factors, batch throughput, peak memory, training throughput.

    python benchmarks/speed.py                                   # shipped model, full run
    python benchmarks/speed.py --model runs/base/best.pt --out /tmp/s
    python benchmarks/speed.py --quick                           # CI: seconds, tiny training only

Sections (each a table in ``speed.md`` and a list in ``speed.json``, written into ``--out``):

* **rtf**: encode (``rvqcodec.streaming.compress``: chunked encoder + bitstream packing) and decode
  (``decompress``) of ``--seconds`` of real speech at ``--bitrate`` (default: the model's highest), on the CPU
  with 1, 2 and all cores' threads, and on the GPU when there is one. Median of ``--repeats`` runs after one
  warm-up. ``RTF`` = processing time / audio duration; ``x real time`` = its inverse.
* **batch**: single-pass ``Codec.encode`` + ``Codec.decode`` of ``B`` clips of ``--batch-seconds`` at once,
  throughput in audio seconds per second, on ``--device``.
* **memory**: peak resident memory (``VmHWM`` on Linux, ``ru_maxrss`` elsewhere) of a fresh Python process that
  loads the model and runs ``compress_file`` then ``decompress_file`` on a ``--memory-minutes`` WAV file (real
  speech repeated), next to its resident memory right after loading the model, with 1 thread and with all cores
  (``--quick``: 1 thread only); plus the peak CUDA allocation on a GPU. With several threads the peak varies
  from run to run (the allocator's per-thread arenas): read the 1-thread row for what the chunking itself needs.
* **training**: generator + discriminator optimiser steps of the ``tiny`` and ``base`` presets on ``--device``
  (losses as in ``rvqcodec.train`` with the default ``LossConfig`` weights, AdamW, fp32, all RVQ stages,
  one fixed batch of random crops of ``--train-data``), once with the rotation-trick estimator and once with the
  straight-through estimator (same initial weights, steps interleaved). ``quantizer share`` = time of the
  residual VQ's forward + backward alone (on the encoder's latents of the same batch) / time of a whole step.
  The weights are thrown away; this only times steps.
* **opus**: libopus (ffmpeg, 6 kbps CBR voip, one thread) encode + decode of the same audio as **rtf**,
  process start included; skipped with a note when ffmpeg is missing.

Targets reported (not enforced): encode + decode of the default model >= 50x real time on 2 CPU threads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import external_codecs as ext  # noqa: E402  (needs BENCH_DIR on sys.path)
from common import DEFAULT_OUT, REPO_ROOT, SPEECH_ROOT, resolved_shown_path, shown_path  # noqa: E402
from rvqcodec import streaming  # noqa: E402
from rvqcodec.cli import UserError  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

DEFAULT_DATA = SPEECH_ROOT / "dev-clean"
DEFAULT_TRAIN_DATA = SPEECH_ROOT / "train-clean-100"
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
RTF_TARGET_X = 50.0  # encode + decode at least this many times faster than real time ...
RTF_TARGET_THREADS = 2  # ... on this many CPU threads

FULL = dict(seconds=60.0, repeats=3, cpu_batch_sizes=(1, 4, 16), gpu_batch_sizes=(1, 8, 32, 128),
            batch_seconds=10.0, memory_minutes=10.0, train_presets=("tiny", "base"), train_batch=8,
            train_seconds=1.0, train_steps=5, train_warmup=2)
QUICK = dict(seconds=4.0, repeats=2, cpu_batch_sizes=(1, 2), gpu_batch_sizes=(1, 4), batch_seconds=1.0,
             memory_minutes=1 / 3, train_presets=("tiny",), train_batch=2, train_seconds=0.5, train_steps=2,
             train_warmup=1)


# ------------------------------------------------------------------------------------------------ helpers


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask; cgroup quotas are not looked at)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls, synchronising a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def list_audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"data folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    return files


def speech_signal(folder: Path, seconds: float, sample_rate: int) -> torch.Tensor:
    """``(T,)`` float32: files of ``folder`` (sorted) read at ``sample_rate`` and joined, repeated if too short,
    cut to ``seconds``."""
    target = int(round(seconds * sample_rate))
    pieces, total = [], 0
    for path in list_audio_files(folder):
        audio = read_audio(path, target_sr=sample_rate, mono=True).samples[0]
        pieces.append(audio)
        total += audio.numel()
        if total >= target:
            break
    signal = torch.cat(pieces)
    if signal.numel() < target:
        signal = signal.repeat(-(-target // signal.numel()))
    return signal[:target].contiguous()


def training_batch(folder: Path, batch: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """``(batch, 1, seconds * sample_rate)`` random crops, one per file, of the first files long enough."""
    length = int(round(seconds * sample_rate))
    rng = np.random.default_rng(seed)
    clips = []
    for path in list_audio_files(folder):
        audio = read_audio(path, target_sr=sample_rate, mono=True).samples[0]
        if audio.numel() < length:
            continue
        start = int(rng.integers(0, audio.numel() - length + 1))
        clips.append(audio[start:start + length])
        if len(clips) == batch:
            break
    if len(clips) < batch:
        raise UserError(f"need {batch} files of at least {seconds:g} s under {folder} for a training batch, "
                        f"found {len(clips)}")
    return torch.stack(clips)[:, None, :]


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews CPU timings); None if unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# --------------------------------------------------------------------------------------------- sections


def measure_rtf(codec, wav: torch.Tensor, n_q: int, device: torch.device, threads: int | None,
                repeats: int) -> dict:
    """Median encode/decode time of the streaming path for ``wav`` ``(T,)`` at ``codec.sample_rate``."""
    codec.to(device)
    if threads is not None:
        torch.set_num_threads(threads)
    seconds = wav.numel() / codec.sample_rate
    holder = {}

    def encode():
        holder["data"] = streaming.compress(codec, wav, codec.sample_rate, n_q=n_q)

    def decode():
        streaming.decompress(codec, holder["data"])

    encode_times = timed(encode, device, repeats)
    decode_times = timed(decode, device, repeats)
    enc, dec = _median(encode_times), _median(decode_times)
    return {"device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "audio_seconds": seconds, "kbps": codec.bitrate(n_q), "encode_seconds": enc, "decode_seconds": dec,
            "encode_rtf": enc / seconds, "decode_rtf": dec / seconds, "rtf": (enc + dec) / seconds,
            "encode_x_realtime": seconds / enc, "decode_x_realtime": seconds / dec,
            "x_realtime": seconds / (enc + dec), "encode_times": encode_times, "decode_times": decode_times}


def measure_batch(codec, wav: torch.Tensor, batch_sizes, clip_seconds: float, n_q: int, device: torch.device,
                  repeats: int) -> list[dict]:
    """Audio seconds per second of single-pass encode and decode for batches of clips cut from ``wav``."""
    codec.to(device).eval()
    length = int(round(clip_seconds * codec.sample_rate))
    rows = []
    for b in batch_sizes:
        source = wav.repeat(-(-b * length // wav.numel()))  # consecutive clips, the audio repeated if short
        batch = source[:b * length].view(b, 1, length).to(device)
        holder = {}

        def encode():
            with torch.inference_mode():
                holder["codes"] = codec.encode(batch, n_q)

        def decode():
            with torch.inference_mode():
                codec.decode(holder["codes"])

        enc = _median(timed(encode, device, repeats))
        dec = _median(timed(decode, device, repeats))
        audio = b * clip_seconds
        rows.append({"device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None,
                     "batch_size": b, "clip_seconds": clip_seconds, "encode_seconds": enc, "decode_seconds": dec,
                     "encode_audio_s_per_s": audio / enc, "decode_audio_s_per_s": audio / dec,
                     "audio_s_per_s": audio / (enc + dec)})
    return rows


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process image. On Linux ``VmHWM`` of /proc/self/status: ``ru_maxrss``
    there carries the parent's peak across fork + exec, so a child started by a big benchmark process would
    report the parent's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


def memory_child(model: str | None, source: str, n_q: int, device: str, threads: int | None) -> dict:
    """Run in a fresh process: load the model, stream ``source`` through compress_file and decompress_file."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    codec = load_codec(model, device=device)
    loaded_rss = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory(prefix="rvqbench-") as tmp:
        coded, decoded = Path(tmp) / "long.rvq", Path(tmp) / "long_decoded.wav"
        start = time.perf_counter()
        report = streaming.compress_file(codec, source, coded, n_q=n_q)
        _sync(dev)
        encode_s = time.perf_counter() - start
        after_encode = _peak_rss_bytes()
        start = time.perf_counter()
        streaming.decompress_file(codec, coded, decoded)
        _sync(dev)
        decode_s = time.perf_counter() - start
        seconds = report.header.duration_s
    result = {"device": device, "threads": torch.get_num_threads() if dev.type == "cpu" else None,
              "audio_seconds": seconds, "rss_after_load_bytes": loaded_rss,
              "peak_rss_after_encode_bytes": after_encode, "peak_rss_bytes": _peak_rss_bytes(),
              "encode_seconds": encode_s, "decode_seconds": decode_s}
    if dev.type == "cuda":
        result["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    return result


def measure_memory(model: Path, wav: torch.Tensor, sample_rate: int, minutes: float, n_q: int, device: str,
                   threads: int | None) -> dict:
    """Peak memory of a fresh process streaming a ``minutes``-long file (``wav`` repeated) through the codec."""
    import soundfile

    length = int(round(minutes * 60 * sample_rate))
    long = wav.repeat(-(-length // wav.numel()))[:length].numpy()
    with tempfile.TemporaryDirectory(prefix="rvqbench-") as tmp:
        source = Path(tmp) / "long.wav"
        soundfile.write(str(source), long, sample_rate, subtype="PCM_16")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(source), "--model", str(model),
               "--device", device, "--memory-n-q", str(n_q)]
        if threads:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"memory measurement process failed: {lines[-1] if lines else done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["file_float32_bytes"] = length * 4
    result["increase_bytes"] = result["peak_rss_bytes"] - result["rss_after_load_bytes"]
    return result


def _pythonpath() -> str:
    """PYTHONPATH for the child: the repository first (so it imports this checkout's rvqcodec)."""
    parts = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


class TrainingBench:
    """One generator + discriminator training setup (as in ``rvqcodec.train``) for timing steps."""

    def __init__(self, preset: str, estimator: str, device: torch.device, seed: int = 0):
        from rvqcodec.config import LossConfig, OptimConfig
        from rvqcodec.losses import ReconstructionLoss, ReconstructionLossConfig
        from rvqcodec.model import Codec, CodecConfig, DiscriminatorConfig, Discriminators

        torch.manual_seed(seed)
        self.device = device
        self.weights = LossConfig()
        optim = OptimConfig()
        self.codec = Codec(CodecConfig.preset(preset, estimator=estimator)).to(device).train()
        self.disc = Discriminators(DiscriminatorConfig.preset(preset)).to(device).train()
        self.recon = ReconstructionLoss(ReconstructionLossConfig(
            l1_weight=self.weights.l1, mrstft_weight=self.weights.mrstft, mel_weight=self.weights.mel,
            sample_rate=self.codec.sample_rate)).to(device)
        self.opt_g = torch.optim.AdamW(self.codec.parameters(), lr=optim.lr, betas=tuple(optim.betas))
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=optim.lr, betas=tuple(optim.betas))
        self.grad_clip = optim.grad_clip

    def step(self, x: torch.Tensor) -> None:
        """One generator step then one discriminator step on the batch ``x`` (B, 1, T), all RVQ stages."""
        from rvqcodec.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

        w = self.weights
        out = self.codec(x, n_q=self.codec.max_n_q)
        fake_outputs = self.disc(out.audio)
        with torch.no_grad():
            real_outputs = self.disc(x)
        loss = (self.recon(out.audio, x)["total"] + w.commit * out.commit_loss + w.codebook * out.codebook_loss
                + w.adv * generator_adversarial_loss(fake_outputs, kind=w.adv_kind)
                + w.fm * feature_matching_loss(real_outputs, fake_outputs))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.codec.parameters(), self.grad_clip)
        self.opt_g.step()
        fake = out.audio.detach()
        d_loss = discriminator_loss(self.disc(x), self.disc(fake), kind=w.adv_kind)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.grad_clip)
        self.opt_d.step()

    def quantizer_step(self, latent: torch.Tensor, upstream: torch.Tensor) -> None:
        """Forward + backward of the residual VQ alone on ``latent`` (B, D, F), as inside :meth:`step`."""
        z = latent.clone().requires_grad_(True)
        out = self.codec.quantizer(z, n_q=self.codec.max_n_q)
        ((out.quantized * upstream).sum() + self.weights.commit * out.commit_loss).backward()


def measure_training(preset: str, x: torch.Tensor, device: torch.device, steps: int, warmup: int) -> dict:
    """Steps/s and audio-s/s for rotation and STE, and the share of each step spent in the quantizer."""
    x = x.to(device)
    benches = {name: TrainingBench(preset, name, device) for name in ("rotation", "ste")}
    step_times = {name: [] for name in benches}
    quantizer_times = {name: [] for name in benches}
    for bench in benches.values():
        for _ in range(warmup):  # the first step also runs the k-means initialisation of the codebooks
            bench.step(x)
    with torch.no_grad():
        latent = benches["rotation"].codec.encoder(x).detach()
    upstream = torch.randn_like(latent)
    for bench in benches.values():
        bench.quantizer_step(latent, upstream)  # warm-up
    for _ in range(steps):  # interleaved, so load changes hit both estimators alike
        for name, bench in benches.items():
            step_times[name] += timed(lambda: bench.step(x), device, repeats=1, warmup=0)
            quantizer_times[name] += timed(lambda: bench.quantizer_step(latent, upstream), device, repeats=1,
                                           warmup=0)
    batch_audio = x.shape[0] * x.shape[-1] / benches["rotation"].codec.sample_rate
    result = {"preset": preset, "device": device.type,
              "threads": torch.get_num_threads() if device.type == "cpu" else None,
              "batch_size": int(x.shape[0]), "segment_seconds": x.shape[-1] / benches["rotation"].codec.sample_rate,
              "parameters_generator": benches["rotation"].codec.parameter_counts()["total"],
              "parameters_discriminator": sum(p.numel() for p in benches["rotation"].disc.parameters()),
              "n_q": benches["rotation"].codec.max_n_q, "steps_timed": steps}
    for name in benches:
        step_s, quant_s = _median(step_times[name]), _median(quantizer_times[name])
        result[name] = {"step_seconds": step_s, "steps_per_s": 1 / step_s, "audio_s_per_s": batch_audio / step_s,
                        "quantizer_seconds": quant_s, "quantizer_share": quant_s / step_s,
                        "step_times": step_times[name], "quantizer_times": quantizer_times[name]}
    result["rotation_over_ste_step"] = result["rotation"]["step_seconds"] / result["ste"]["step_seconds"]
    result["rotation_over_ste_quantizer"] = (result["rotation"]["quantizer_seconds"]
                                             / result["ste"]["quantizer_seconds"])
    return result


def measure_opus(wav: torch.Tensor, tools: ext.Tools, repeats: int, kbps: float = 6) -> dict:
    """Wall time of libopus encode and decode (separate ffmpeg processes) of ``wav`` (T,) at 16 kHz."""
    opus = ext.Opus(tools, kbps=(kbps,))
    setting = opus.settings()[0]
    audio = wav.numpy()
    seconds = audio.size / ext.SAMPLE_RATE
    encodes, decodes = [], []
    for i in range(repeats + 1):
        with tempfile.TemporaryDirectory(prefix="rvqbench-") as tmp:
            coded = opus.run(audio, ext.SAMPLE_RATE, setting, Path(tmp))
        if i:  # first run is a warm-up
            encodes.append(coded.encode_seconds)
            decodes.append(coded.decode_seconds)
    enc, dec = _median(encodes), _median(decodes)
    return {"codec": setting.name, "audio_seconds": seconds, "encode_seconds": enc, "decode_seconds": dec,
            "rtf": (enc + dec) / seconds, "x_realtime": seconds / (enc + dec), "threads": 1}


# ------------------------------------------------------------------------------------------------ report


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    text = format(value, spec)
    if text.startswith("-") and not text.strip("-0."):  # "-0.0": a small negative number rounded to zero
        text = text[1:]
    return text


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else ", ".join(f"{v:.1f}" for v in load)


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Markdown table; the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def ratios(result: dict) -> list[str]:
    """Plain-language comparisons between the measured numbers."""
    lines = []
    cpu = [r for r in result["rtf"] if r["device"] == "cpu"]
    one = next((r for r in cpu if r["threads"] == 1), None)
    if one is not None:
        for r in cpu:
            if r["threads"] != 1:
                lines.append(f"CPU {r['threads']} threads vs 1 thread: {one['rtf'] / r['rtf']:.2f}x faster "
                             "(encode + decode)")
        gpu = next((r for r in result["rtf"] if r["device"] == "cuda"), None)
        if gpu is not None:
            lines.append(f"GPU vs CPU 1 thread: {one['rtf'] / gpu['rtf']:.1f}x faster (encode + decode)")
        if result.get("opus"):
            o = result["opus"]
            lines.append(f"rvqcodec (CPU, 1 thread) takes {one['rtf'] / o['rtf']:.1f}x the time of Opus "
                         f"{o['codec']} (1 thread, ffmpeg process start included) for encode + decode")
    for t in result["training"]:
        lines.append(f"training {t['preset']} ({t['device']}): rotation step = {t['rotation_over_ste_step']:.3f} x "
                     f"STE step; rotation quantizer fwd+bwd = {t['rotation_over_ste_quantizer']:.3f} x STE's")
    return lines


def target_check(result: dict) -> dict:
    """Encode + decode >= 50x real time on 2 CPU threads (or the most threads measured, if fewer)."""
    cpu = [r for r in result["rtf"] if r["device"] == "cpu"]
    row = next((r for r in cpu if r["threads"] == RTF_TARGET_THREADS), None)
    note = None
    if row is None and cpu:
        row = max(cpu, key=lambda r: r["threads"])
        note = f"no {RTF_TARGET_THREADS}-thread run; used {row['threads']} thread(s)"
    return {"target": f"encode + decode >= {RTF_TARGET_X:g}x real time on {RTF_TARGET_THREADS} CPU threads",
            "x_realtime": row["x_realtime"] if row else None,
            "met": bool(row["x_realtime"] >= RTF_TARGET_X) if row else None, "note": note}


def markdown_report(result: dict) -> str:
    cfg = result["config"]
    status = "" if result.get("complete") else ", incomplete: stopped before the end"
    out = [f"# Speed and memory ({'quick' if cfg['quick'] else 'full'} run{status})", "",
           f"Model: `{cfg['model']['path']}` (id {cfg['model']['model_id']}, {cfg['model']['parameters']:,} "
           f"parameters). Machine: {cfg['cpu_cores']} CPU cores available, GPU: {cfg['gpu'] or 'none'}, "
           f"load average at start/end {_fmt_load(result['environment']['load_average_start'])} / "
           f"{_fmt_load(result['environment']['load_average_end'])} (1 min, 5 min, 15 min). "
           f"torch {result['environment']['torch']}.", ""]
    out += ["## Real-time factor (streaming compress / decompress, "
            f"{cfg['rtf_seconds']:g} s of speech at {cfg['kbps']:g} kbps, median of {cfg['repeats']})", ""]
    out += _table(["device", "threads", "encode s", "decode s", "RTF enc+dec", "x real time enc", "x real time dec",
                   "x real time enc+dec"],
                  [[r["device"], _fmt(r["threads"], "d"), _fmt(r["encode_seconds"], ".3f"),
                    _fmt(r["decode_seconds"], ".3f"), _fmt(r["rtf"], ".4f"), _fmt(r["encode_x_realtime"], ".1f"),
                    _fmt(r["decode_x_realtime"], ".1f"), _fmt(r["x_realtime"], ".1f")] for r in result["rtf"]])
    if result.get("opus"):
        o = result["opus"]
        out += ["", f"Opus reference ({o['codec']}, ffmpeg, 1 thread, same audio): encode {o['encode_seconds']:.3f} s, "
                    f"decode {o['decode_seconds']:.3f} s, RTF {o['rtf']:.4f} ({o['x_realtime']:.0f}x real time)."]
    out += ["", f"## Batch throughput (single-pass encode / decode, clips of {cfg['batch_seconds']:g} s)", ""]
    out += _table(["device", "threads", "batch", "encode audio-s/s", "decode audio-s/s", "enc+dec audio-s/s"],
                  [[r["device"], _fmt(r["threads"], "d"), str(r["batch_size"]), _fmt(r["encode_audio_s_per_s"], ".1f"),
                    _fmt(r["decode_audio_s_per_s"], ".1f"), _fmt(r["audio_s_per_s"], ".1f")] for r in result["batch"]])
    out += ["", f"## Peak memory, {cfg['memory_minutes']:g}-minute file through compress_file + decompress_file "
                "(fresh process)", ""]
    out += _table(["device", "threads", "RSS after model load MiB", "peak RSS MiB", "increase MiB",
                   "CUDA peak MiB", "file as float32 MiB", "encode s", "decode s"],
                  [[m["device"], _fmt(m["threads"], "d"), _mib(m["rss_after_load_bytes"]), _mib(m["peak_rss_bytes"]),
                    _mib(m["increase_bytes"]), _mib(m.get("cuda_peak_allocated_bytes")),
                    _mib(m["file_float32_bytes"]), _fmt(m["encode_seconds"], ".1f"), _fmt(m["decode_seconds"], ".1f")]
                   for m in result["memory"]])
    out += ["", "## Training throughput (generator + discriminator step, fp32, all RVQ stages)", ""]
    rows = []
    for t in result["training"]:
        for name in ("rotation", "ste"):
            r = t[name]
            rows.append([t["preset"], name, t["device"], _fmt(t["threads"], "d"), f"{t['batch_size']}x{t['segment_seconds']:g} s",
                         _fmt(r["step_seconds"], ".3f"), _fmt(r["steps_per_s"], ".2f"), _fmt(r["audio_s_per_s"], ".1f"),
                         _fmt(r["quantizer_seconds"], ".4f"), _fmt(100 * r["quantizer_share"], ".1f")])
    out += _table(["preset", "estimator", "device", "threads", "batch", "step s", "steps/s", "audio-s/s",
                   "quantizer fwd+bwd s", "quantizer share %"], rows, text_columns=3)
    t = result["target"]
    verdict = "not measured" if t["met"] is None else (f"{t['x_realtime']:.1f}x -> " + ("met" if t["met"] else "NOT met"))
    out += ["", "## Target and ratios", "", f"- {t['target']}: {verdict}" + (f" ({t['note']})" if t["note"] else "")]
    out += [f"- {line}" for line in result["ratios"]]
    if result["notes"]:
        out += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ driver


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what}: expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="PATH", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="speech to time (default: ../shared/data/speech-dev/LibriSpeech/dev-clean, relative to the "
                        "repository root)")
    p.add_argument("--train-data", type=Path, default=None,
                   metavar="DIR",
                   help="speech for training batches (default: ../shared/data/speech-dev/LibriSpeech/train-clean-100)")
    p.add_argument("--quick", action="store_true", help="CI mode: seconds of audio, tiny training preset only")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output folder (default: benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--bitrate", metavar="KBPS", type=float, default=None, help="kbps for rtf/batch/memory (default: the highest)")
    p.add_argument("--seconds", metavar="S", type=float, default=None, help="audio length for the real-time factors (default 60)")
    p.add_argument("--repeats", metavar="N", type=int, default=None, help="timed runs per measurement (default 3)")
    p.add_argument("--threads", metavar="N,N", default=None, help="CPU thread counts for rtf, e.g. 1,2,16 (default: 1, 2, all cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device for batch throughput and training (default: cuda if present)")
    p.add_argument("--batch-sizes", metavar="B,B", default=None, help="batch sizes for throughput (default: 1,4,16 CPU; 1,8,32,128 GPU)")
    p.add_argument("--batch-seconds", metavar="S", type=float, default=None, help="clip length for batch throughput (default 10)")
    p.add_argument("--memory-minutes", metavar="MIN", type=float, default=None, help="length of the memory test file (default 10)")
    p.add_argument("--train-presets", metavar="NAMES", default=None, help="training presets to time (default: tiny,base)")
    p.add_argument("--train-batch", metavar="B", type=int, default=None, help="training batch size (default 8)")
    p.add_argument("--train-seconds", metavar="S", type=float, default=None, help="training segment length (default 1.0)")
    p.add_argument("--train-steps", metavar="N", type=int, default=None, help="timed training steps per estimator (default 5)")
    p.add_argument("--skip", metavar="SECTIONS", default="", help="sections to leave out, comma-separated: rtf,batch,memory,training,opus")
    p.add_argument("--ffmpeg", metavar="PATH", default="ffmpeg", help="ffmpeg executable for the Opus reference")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-n-q", type=int, default=None, help=argparse.SUPPRESS)
    return p


SECTIONS = ("rtf", "batch", "memory", "training", "opus")


def run(args: argparse.Namespace) -> dict:
    """Run the selected sections; returns the JSON-ready result (also written to ``--out``)."""
    preset = QUICK if args.quick else FULL
    opt = {k: preset[k] for k in preset}
    for key in ("seconds", "repeats", "batch_seconds", "memory_minutes", "train_batch", "train_seconds",
                "train_steps"):
        value = getattr(args, key)
        if value is not None:
            if not value > 0:
                raise UserError(f"--{key.replace('_', '-')} must be > 0, got {value}")
            opt[key] = value
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise UserError(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    presets = tuple(p.strip() for p in args.train_presets.split(",")) if args.train_presets else opt["train_presets"]
    bad = [p for p in presets if p not in ("tiny", "base")]
    if bad:
        raise UserError(f"--train-presets: unknown preset(s) {', '.join(bad)}; choose from tiny, base")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    cores = available_cores()
    threads = (_int_list(args.threads, "--threads") if args.threads
               else tuple(sorted({1, min(RTF_TARGET_THREADS, cores), cores})))
    out_dir = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, expected a folder")

    try:
        checkpoint = resolve_checkpoint(args.model)
        codec = load_codec(checkpoint, device="cpu")
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        n_q = codec.n_q_for_bitrate(args.bitrate) if args.bitrate is not None else codec.max_n_q
    except ValueError as exc:
        raise UserError(f"--bitrate: {exc}") from None
    try:
        wav = speech_signal(args.data or DEFAULT_DATA, opt["seconds"], codec.sample_rate)
    except ValueError as exc:  # unreadable audio
        raise UserError(str(exc)) from None
    default_threads = torch.get_num_threads()
    notes: list[str] = []
    result: dict = {
        "benchmark": "speed", "complete": False,
        "config": {
            "quick": bool(args.quick), "data": shown_path(args.data or DEFAULT_DATA),
            "train_data": shown_path(args.train_data or DEFAULT_TRAIN_DATA), "rtf_seconds": opt["seconds"],
            "repeats": opt["repeats"], "kbps": codec.bitrate(n_q), "n_q": n_q, "batch_seconds": opt["batch_seconds"],
            "memory_minutes": opt["memory_minutes"], "train_presets": list(presets), "device": device.type,
            "cpu_cores": cores, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "skipped": sorted(skip), "out": shown_path(out_dir),
            "model": {"path": shown_path(checkpoint), "model_id": codec.model_id,
                      "parameters": codec.parameter_counts()["total"], "config": codec.config.to_dict()},
        },
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "ffmpeg": ext.ffmpeg_version(args.ffmpeg), "platform": platform.platform(),
                        "load_average_start": _load_average(), "load_average_end": None},
        "notes": notes, "rtf": [], "batch": [], "memory": [], "training": [], "opus": None,
    }
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {text}", file=sys.stderr, flush=True)

    def save() -> None:
        """Write what has been measured so far (a long run that is stopped keeps its finished sections)."""
        result["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        result["elapsed_seconds"] = time.perf_counter() - started
        result["environment"]["load_average_end"] = _load_average()
        result["target"] = target_check(result)
        result["ratios"] = ratios(result)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "speed.json", result, fsync=True)  # NaN and inf become null
        atomic_write_text(out_dir / "speed.md", markdown_report(result), fsync=True)

    if "rtf" not in skip:
        for n in threads:
            log(f"rtf: cpu, {n} thread(s)")
            result["rtf"].append(measure_rtf(codec, wav, n_q, torch.device("cpu"), n, opt["repeats"]))
        torch.set_num_threads(default_threads)
        if torch.cuda.is_available():
            log("rtf: cuda")
            result["rtf"].append(measure_rtf(codec, wav, n_q, torch.device("cuda"), None, opt["repeats"]))
            codec.to("cpu")
        save()
    if "opus" not in skip:
        reason = ext.Opus(ext.Tools(ffmpeg=args.ffmpeg)).unavailable_reason()
        if reason:
            notes.append(reason)
        else:
            log("opus reference")
            try:
                result["opus"] = measure_opus(wav, ext.Tools(ffmpeg=args.ffmpeg), opt["repeats"])
            except ext.ToolError as exc:
                notes.append(f"Opus reference failed: {exc}")
        save()
    if "batch" not in skip:
        sizes = (_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes
                 else opt["gpu_batch_sizes" if device.type == "cuda" else "cpu_batch_sizes"])
        log(f"batch: {device.type}, sizes {sizes}")
        result["batch"] = measure_batch(codec, wav, sizes, opt["batch_seconds"], n_q, device, opt["repeats"])
        codec.to("cpu")
        save()
    if "memory" not in skip:
        runs = [("cpu", n) for n in sorted({1, cores if not args.quick else 1})]
        runs += [("cuda", None)] if torch.cuda.is_available() else []
        for dev, n in runs:
            log(f"memory: {opt['memory_minutes']:g} min file, {dev}" + (f", {n} thread(s)" if n else ""))
            try:
                result["memory"].append(measure_memory(checkpoint, wav, codec.sample_rate, opt["memory_minutes"],
                                                       n_q, dev, n))
            except RuntimeError as exc:
                notes.append(str(exc))
        save()
    if "training" not in skip:
        try:
            x = training_batch(args.train_data or DEFAULT_TRAIN_DATA, opt["train_batch"], opt["train_seconds"],
                               codec.sample_rate)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        for name in presets:
            log(f"training: {name} on {device.type}, batch {opt['train_batch']}x{opt['train_seconds']:g} s")
            result["training"].append(measure_training(name, x, device, opt["train_steps"], opt["train_warmup"]))
            save()
    for note in notes:
        log(f"note: {note}")
    result["complete"] = True
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_child is not None:  # internal: the fresh process of the memory section
        print(json.dumps(memory_child(args.model, args.memory_child, args.memory_n_q, args.device,
                                      int(args.threads) if args.threads else None)))
        return 0
    try:
        result = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_report(result))
    out = resolved_shown_path(result["config"]["out"])
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
