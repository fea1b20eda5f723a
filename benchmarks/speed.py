"""Speed and memory of rvqcodec: real-time factors, batch throughput, peak memory, training throughput.

    python benchmarks/speed.py                                   # shipped model, full run
    python benchmarks/speed.py --model runs/base/best.pt --out /tmp/s
    python benchmarks/speed.py --model new.pt --model previous.pt --skip memory,training,opus   # compare
    python benchmarks/speed.py --quick                           # CI: seconds, cheapest training preset only

Models: ``--model PATH`` may be given several times. The first model is the one under test (the default
model); the **rtf** and **batch** sections time every model in the same run, interleaved (each repeat runs
every model once, in turn, so a change of machine load hits all of them alike), at one bitrate that all of
them have. Each model is listed in ``speed.md`` with its label (the file name), checkpoint path, model id,
architecture and parameter count, and its rows carry that label. Under the tables the first model is compared
with each other one, measurement by measurement (same device, threads and batch): ratio = the first model's
audio seconds per second / the other's (above 1: the first model is faster). **memory** measures the first
model only; **training** times presets, not checkpoints. Without ``--model``: the shipped model alone.

Sections (each a table in ``speed.md`` and a list in ``speed.json``, written into ``--out``):

* **rtf**: encode (``rvqcodec.api.compress``: chunked encoder + bitstream packing) and decode
  (``decompress``) of ``--seconds`` of real speech at ``--bitrate`` (default: the highest bitrate every model
  has), on the CPU with 1, 2 and all cores' threads, and on the GPU when there is one. Median of ``--repeats``
  runs after one warm-up. ``RTF`` = processing time / audio duration; ``x real time`` = its inverse (audio
  seconds per second).
* **batch**: single-pass ``Codec.encode`` + ``Codec.decode`` of ``B`` clips of ``--batch-seconds`` at once,
  throughput in audio seconds per second, on ``--device``.
* **memory**: peak resident memory (``VmHWM`` on Linux, ``ru_maxrss`` elsewhere) of a fresh Python process that
  loads the first model and runs ``compress_file`` then ``decompress_file`` on a ``--memory-minutes`` WAV file
  (real speech repeated), next to its resident memory right after loading the model, with 1 thread and with all
  cores (``--quick``: 1 thread only); plus the peak CUDA allocation on a GPU. With several threads the peak
  varies from run to run (the allocator's per-thread arenas): read the 1-thread row for what the chunking
  itself needs.
* **training**: optimiser steps of randomly initialised ``--train-presets`` models (default ``convnext``,
  ``tiny``, ``base``; ``--quick``: ``convnext``, the cheapest) on ``--device``: AdamW, fp32, all RVQ stages,
  one fixed batch of random crops of ``--train-data``, once with the rotation-trick estimator and once with the
  straight-through estimator (same initial weights, steps interleaved). What a step computes depends on the
  preset's architecture (:func:`training_setup`): SEANet presets (``tiny``, ``base``) use ``rvqcodec train``'s
  default ``LossConfig`` (mel 15 + MR-STFT 1, adversarial 1 + feature matching 2) with the preset's
  discriminators, so a step is a generator step plus a discriminator step; ConvNeXt presets use the losses of
  ``recipes/librispeech/convnext.yaml`` (mel 15 + complex STFT 10, no discriminator), as the default model is
  trained, so a step is a generator step only. ``quantizer share`` = time of the residual VQ's forward +
  backward alone (on the encoder's latents of the same batch) / time of a whole step. The weights are thrown
  away; this only times steps.
* **opus**: libopus (ffmpeg, 6 kbps CBR voip, one thread) encode + decode of the same audio as **rtf**,
  process start included; skipped with a note when ffmpeg is missing.

Target reported for every model (not enforced): encode + decode >= 100x real time on 2 CPU threads (the
issue's requirement for the default model).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from typing import Callable

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import external_codecs as ext  # noqa: E402  (needs BENCH_DIR on sys.path)
from common import DEFAULT_OUT, REPO_ROOT, SPEECH_ROOT, fmt_number, list_audio_files, resolved_shown_path, shown_path  # noqa: E402
from rvqcodec import api, codec_files  # noqa: E402
from rvqcodec.errors import UserError  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.model import Codec, CodecConfig  # noqa: E402
from rvqcodec.model.discriminators import DiscriminatorConfig, Discriminators  # noqa: E402
from rvqcodec.model.codec import PRESETS  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402
from rvqcodec.training.config import (  # noqa: E402
    LossConfig,
    OptimConfig,
    load_config,
)

DEFAULT_DATA = SPEECH_ROOT / "dev-clean"
DEFAULT_TRAIN_DATA = SPEECH_ROOT / "train-clean-100"
CONVNEXT_RECIPE = REPO_ROOT / "recipes" / "librispeech" / "convnext.yaml"  # losses of ConvNeXt training steps
RTF_TARGET_X = 100.0  # encode + decode at least this many times faster than real time ...
RTF_TARGET_THREADS = 2  # ... on this many CPU threads

FULL = dict(seconds=60.0, repeats=3, cpu_batch_sizes=(1, 4, 16), gpu_batch_sizes=(1, 8, 32, 128),
            batch_seconds=10.0, memory_minutes=10.0, train_presets=("convnext", "tiny", "base"), train_batch=8,
            train_seconds=1.0, train_steps=5, train_warmup=2)
QUICK = dict(seconds=4.0, repeats=2, cpu_batch_sizes=(1, 2), gpu_batch_sizes=(1, 4), batch_seconds=1.0,
             memory_minutes=1 / 3, train_presets=("convnext",), train_batch=2, train_seconds=0.5, train_steps=2,
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


def timed_interleaved(fns: dict[tuple, Callable[[], object]], device: torch.device, repeats: int,
                      warmup: int = 1) -> dict[tuple, list[float]]:
    """Wall times (s) of each of ``fns``: ``warmup`` untimed rounds, then ``repeats`` rounds that each call every
    function once, in order (round robin), so a change of machine load during the run hits all of them alike.
    A function may rely on the one before it in the same round (decode after encode)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[tuple, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timed(fn, device, repeats=1, warmup=0)
    return times



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


# ----------------------------------------------------------------------------------------------- models


@dataclasses.dataclass
class BenchModel:
    """A checkpoint under test: its label in the tables, its file, the codec (kept on the CPU between
    sections) and the RVQ stages used (``n_q``, the same bitrate for every model of a run)."""

    label: str
    checkpoint: Path
    codec: Codec
    n_q: int

    def info(self) -> dict:
        """What the report says about the model (``config.models`` in the JSON)."""
        return {"label": self.label, "path": shown_path(self.checkpoint), "file": self.checkpoint.name,
                "model_id": self.codec.model_id, "architecture": self.codec.config.architecture,
                "parameters": self.codec.parameter_counts()["total"], "n_q": self.n_q,
                "kbps": self.codec.bitrate(self.n_q), "config": self.codec.config.to_dict()}


def model_labels(checkpoints: list[Path]) -> list[str]:
    """Short names for the tables: the file name, or the path from the repository root where two models share a
    file name; a checkpoint given twice gets `` #2``, `` #3``, ... (an A/A run shows the timing noise)."""
    names = [c.name for c in {c.resolve() for c in checkpoints}]  # one per distinct file
    labels = [shown_path(c) if names.count(c.name) > 1 else c.name for c in checkpoints]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def common_bitrate(codecs: list[Codec], labels: list[str], kbps: float | None) -> tuple[float, list[int]]:
    """The bitrate (kbps) the models are timed at and each model's ``n_q`` for it: ``kbps`` if given, else the
    highest bitrate every model has. One-line ``UserError`` when a model lacks it."""
    if kbps is None:
        kbps = min(codec.bitrate(codec.max_n_q) for codec in codecs)
    stages = []
    for codec, label in zip(codecs, labels):
        try:
            stages.append(codec.n_q_for_bitrate(kbps))
        except ValueError as exc:
            raise UserError(f"--bitrate: {label}: {exc}") from None
    return kbps, stages


def load_models(paths: list[str | None], bitrate: float | None) -> tuple[list[BenchModel], float]:
    """The ``--model`` checkpoints (``[None]``: the shipped model) on the CPU, labelled, with their ``n_q`` for
    one common bitrate; returns them and that bitrate (kbps). One-line ``UserError`` for a missing or foreign
    file, or models of different sample rates."""
    try:
        checkpoints = [resolve_checkpoint(p) for p in paths]
        codecs = [load_codec(c, device="cpu") for c in checkpoints]
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    labels = model_labels(checkpoints)
    rates = {codec.sample_rate for codec in codecs}
    if len(rates) > 1:
        found = ", ".join(f"{label} {codec.sample_rate} Hz" for label, codec in zip(labels, codecs))
        raise UserError(f"--model: the models must share one sample rate to be timed on the same audio ({found})")
    kbps, stages = common_bitrate(codecs, labels, bitrate)
    return [BenchModel(*fields) for fields in zip(labels, checkpoints, codecs, stages)], kbps


# --------------------------------------------------------------------------------------------- sections


def streaming_fns(model: BenchModel, wav: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """``encode()`` (``api.compress`` of ``wav``) and ``decode()`` (``api.decompress`` of the bytes of
    the latest ``encode()``) for ``model`` on whatever device its codec is on."""
    holder = {}

    def encode():
        holder["data"] = api.compress(model.codec, wav, model.codec.sample_rate, n_q=model.n_q)

    def decode():
        api.decompress(model.codec, holder["data"])

    return encode, decode


def measure_rtf(models: list[BenchModel], wav: torch.Tensor, device: torch.device, threads: int | None,
                repeats: int) -> list[dict]:
    """One row per model: median encode/decode time (s) of the streaming path for ``wav`` ``(T,)`` at the models'
    sample rate, and the real-time factors; the models are timed interleaved (:func:`timed_interleaved`)."""
    if threads is not None:
        torch.set_num_threads(threads)
    seconds = wav.numel() / models[0].codec.sample_rate
    fns = {}
    for model in models:
        model.codec.to(device)
        fns[model.label, "encode"], fns[model.label, "decode"] = streaming_fns(model, wav)
    times = timed_interleaved(fns, device, repeats)
    rows = []
    for model in models:
        encode_times, decode_times = times[model.label, "encode"], times[model.label, "decode"]
        enc, dec = _median(encode_times), _median(decode_times)
        rows.append({"model": model.label, "device": device.type,
                     "threads": torch.get_num_threads() if device.type == "cpu" else None, "audio_seconds": seconds,
                     "kbps": model.codec.bitrate(model.n_q), "encode_seconds": enc, "decode_seconds": dec,
                     "encode_rtf": enc / seconds, "decode_rtf": dec / seconds, "rtf": (enc + dec) / seconds,
                     "encode_x_realtime": seconds / enc, "decode_x_realtime": seconds / dec,
                     "x_realtime": seconds / (enc + dec), "encode_times": encode_times, "decode_times": decode_times})
    return rows


def batch_fns(model: BenchModel, batch: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """``encode()`` (single-pass ``Codec.encode`` of ``batch`` (B, 1, T)) and ``decode()`` (``Codec.decode`` of the
    codes of the latest ``encode()``) for ``model``, in inference mode."""
    holder = {}

    def encode():
        with torch.inference_mode():
            holder["codes"] = model.codec.encode(batch, model.n_q)

    def decode():
        with torch.inference_mode():
            model.codec.decode(holder["codes"])

    return encode, decode


def measure_batch(models: list[BenchModel], wav: torch.Tensor, batch_sizes, clip_seconds: float,
                  device: torch.device, repeats: int) -> list[dict]:
    """Audio seconds per second of single-pass encode and decode for batches of clips cut from ``wav``; one row
    per batch size and model, the models timed interleaved at each batch size."""
    for model in models:
        model.codec.to(device).eval()
    length = int(round(clip_seconds * models[0].codec.sample_rate))
    rows = []
    for b in batch_sizes:
        source = wav.repeat(-(-b * length // wav.numel()))  # consecutive clips, the audio repeated if short
        batch = source[:b * length].view(b, 1, length).to(device)
        fns = {}
        for model in models:
            fns[model.label, "encode"], fns[model.label, "decode"] = batch_fns(model, batch)
        times = timed_interleaved(fns, device, repeats)
        audio = b * clip_seconds
        for model in models:
            enc, dec = _median(times[model.label, "encode"]), _median(times[model.label, "decode"])
            rows.append({"model": model.label, "device": device.type,
                         "threads": torch.get_num_threads() if device.type == "cpu" else None, "batch_size": b,
                         "clip_seconds": clip_seconds, "encode_seconds": enc, "decode_seconds": dec,
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
        report = codec_files.compress_file(codec, source, coded, n_q=n_q)
        _sync(dev)
        encode_s = time.perf_counter() - start
        after_encode = _peak_rss_bytes()
        start = time.perf_counter()
        codec_files.decompress_file(codec, coded, decoded)
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


@dataclasses.dataclass
class TrainingSetup:
    """What a timed training step computes: the loss weights, the discriminators (None: no discriminator, a
    generator step only) and, in words, what they are and where they come from."""

    loss: LossConfig
    disc: DiscriminatorConfig | None
    description: str


def _loss_terms(loss: LossConfig) -> str:
    """``"mel 15 + mrstft 1 + adv 1 + fm 2"``: the loss terms with a non-zero weight."""
    names = ("mel", "mrstft", "complex", "l1", "adv", "fm")
    return " + ".join(f"{name} {getattr(loss, name):g}" for name in names if getattr(loss, name))


def training_setup(preset: str) -> TrainingSetup:
    """The training step timed for a codec preset. SEANet presets (``tiny``, ``base``): ``rvqcodec train``'s
    default ``LossConfig`` (mel + MR-STFT, adversarial + feature matching) with the preset's discriminators.
    ConvNeXt presets: the losses (and discriminators, if any) of ``recipes/librispeech/convnext.yaml``, the
    default model's recipe (mel + complex STFT, no discriminator). ``UserError`` if that recipe is unreadable."""
    if CodecConfig.preset(preset).architecture == "seanet":
        loss = LossConfig()
        return TrainingSetup(loss, DiscriminatorConfig.preset(preset),
                             f"{_loss_terms(loss)}, {preset} discriminators (rvqcodec train defaults)")
    try:
        recipe = load_config(CONVNEXT_RECIPE)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--train-presets {preset}: cannot read its losses: {exc}") from None
    disc = recipe.disc_config if recipe.loss.uses_discriminator else None
    where = shown_path(CONVNEXT_RECIPE)
    return TrainingSetup(recipe.loss, disc, f"{_loss_terms(recipe.loss)}, "
                         f"{'discriminators' if disc else 'no discriminator'} ({where})")


class TrainingBench:
    """One training setup (as in ``rvqcodec train``: codec, optional discriminators, losses, AdamW) for timing
    steps of a freshly initialised ``preset`` codec with the given gradient ``estimator``."""

    def __init__(self, preset: str, estimator: str, setup: TrainingSetup, device: torch.device, seed: int = 0):
        from rvqcodec.losses import ReconstructionLoss

        torch.manual_seed(seed)
        self.device = device
        self.weights = setup.loss
        optim = OptimConfig()
        self.codec = Codec(CodecConfig.preset(preset, estimator=estimator)).to(device).train()
        self.disc = Discriminators(setup.disc).to(device).train() if setup.disc is not None else None
        self.recon = ReconstructionLoss(self.weights.reconstruction(self.codec.sample_rate)).to(device)
        self.opt_g = torch.optim.AdamW(self.codec.parameters(), lr=optim.lr, betas=tuple(optim.betas))
        self.opt_d = (torch.optim.AdamW(self.disc.parameters(), lr=optim.lr, betas=tuple(optim.betas))
                      if self.disc is not None else None)
        self.grad_clip = optim.grad_clip

    def step(self, x: torch.Tensor) -> None:
        """One generator step, then (with discriminators) one discriminator step, on the batch ``x`` (B, 1, T),
        all RVQ stages."""
        out = self.codec(x, n_q=self.codec.max_n_q)
        w = self.weights
        loss = self.recon(out.audio, x)["total"] + w.commit * out.commit_loss + w.codebook * out.codebook_loss
        if self.disc is not None:
            loss = loss + self._adversarial_terms(out.audio, x)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.codec.parameters(), self.grad_clip)
        self.opt_g.step()
        if self.disc is not None:
            self._discriminator_step(out.audio.detach(), x)

    def _adversarial_terms(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Weighted generator adversarial + feature-matching loss of the reconstruction ``fake``."""
        from rvqcodec.losses import feature_matching_loss, generator_adversarial_loss

        w = self.weights
        fake_outputs = self.disc(fake)
        with torch.no_grad():
            real_outputs = self.disc(real)
        return (w.adv * generator_adversarial_loss(fake_outputs, kind=w.adv_kind)
                + w.fm * feature_matching_loss(real_outputs, fake_outputs))

    def _discriminator_step(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """One optimiser step of the discriminators: ``real`` clips against the detached reconstructions."""
        from rvqcodec.losses import discriminator_loss

        d_loss = discriminator_loss(self.disc(real), self.disc(fake), kind=self.weights.adv_kind)
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


def measure_training(preset: str, setup: TrainingSetup, x: torch.Tensor, device: torch.device, steps: int,
                     warmup: int) -> dict:
    """Step time (s), steps/s and audio-s/s of ``preset`` trained as ``setup`` says, for rotation and STE, and the
    share of each step spent in the quantizer."""
    x = x.to(device)
    benches = {name: TrainingBench(preset, name, setup, device) for name in ("rotation", "ste")}
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
    disc = benches["rotation"].disc
    result = {"preset": preset, "architecture": benches["rotation"].codec.config.architecture,
              "losses": setup.description, "loss_weights": dataclasses.asdict(setup.loss),
              "discriminator": setup.disc.to_dict() if setup.disc is not None else None, "device": device.type,
              "threads": torch.get_num_threads() if device.type == "cpu" else None,
              "batch_size": int(x.shape[0]), "segment_seconds": x.shape[-1] / benches["rotation"].codec.sample_rate,
              "parameters_generator": benches["rotation"].codec.parameter_counts()["total"],
              "parameters_discriminator": sum(p.numel() for p in disc.parameters()) if disc is not None else 0,
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


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if load is None else ", ".join(f"{v:.1f}" for v in load)


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Markdown table; the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def _unless_skipped(cfg: dict, section: str, lines: list[str]) -> list[str]:
    """``lines`` (a section's table), or a line saying the section was left out with ``--skip``."""
    return [f"Skipped (`--skip {section}`)."] if section in cfg["skipped"] else lines


def _where(row: dict) -> str:
    """``"cpu, 2 threads"`` / ``"cuda"``: where a row was measured."""
    return row["device"] + (f", {row['threads']} thread{'s' if row['threads'] != 1 else ''}"
                            if row["threads"] is not None else "")


def comparisons(result: dict) -> list[dict]:
    """The first model against each other model, measurement by measurement (rtf and batch rows of the same
    device, threads and batch size): ``ratio`` = the first model's audio seconds per second / the other's
    (above 1: the first model is faster). Empty with a single model."""
    labels = [m["label"] for m in result["config"]["models"]]
    out = []
    for section, key in (("rtf", "x_realtime"), ("batch", "audio_s_per_s")):
        setting = lambda r: (r["device"], r["threads"], r.get("batch_size"))  # noqa: E731
        rows = result[section]
        for first in (r for r in rows if r["model"] == labels[0]):
            for other in (r for r in rows if r["model"] != labels[0] and setting(r) == setting(first)):
                measurement = ("streaming enc+dec" if section == "rtf"
                               else f"batch {first['batch_size']} x {first['clip_seconds']:g} s enc+dec")
                out.append({"section": section, "measurement": f"{measurement}, {_where(first)}",
                            "device": first["device"], "threads": first["threads"],
                            "batch_size": first.get("batch_size"), "model": labels[0], "against": other["model"],
                            "model_audio_s_per_s": first[key], "against_audio_s_per_s": other[key],
                            "ratio": first[key] / other[key]})
    return out


def ratios(result: dict) -> list[str]:
    """Plain-language comparisons between the measured numbers."""
    lines = []
    for label in (m["label"] for m in result["config"]["models"]):
        rows = [r for r in result["rtf"] if r["model"] == label]
        one = next((r for r in rows if r["device"] == "cpu" and r["threads"] == 1), None)
        if one is None:
            continue
        for r in rows:
            if r["device"] == "cpu" and r["threads"] != 1:
                lines.append(f"`{label}`: CPU {r['threads']} threads vs 1 thread: {one['rtf'] / r['rtf']:.2f}x faster "
                             "(encode + decode)")
        gpu = next((r for r in rows if r["device"] == "cuda"), None)
        if gpu is not None:
            lines.append(f"`{label}`: GPU vs CPU 1 thread: {one['rtf'] / gpu['rtf']:.1f}x faster (encode + decode)")
        if result.get("opus"):
            o = result["opus"]
            lines.append(f"`{label}` (CPU, 1 thread) takes {one['rtf'] / o['rtf']:.2f}x the time of Opus "
                         f"{o['codec']} (1 thread, ffmpeg process start included) for encode + decode")
    for c in result["comparisons"]:
        if c["section"] == "rtf" and c["device"] == "cpu" and c["threads"] == RTF_TARGET_THREADS:
            lines.append(f"`{c['model']}` vs `{c['against']}`, {c['measurement']}: {c['ratio']:.2f}x the speed "
                         f"({c['model_audio_s_per_s']:.1f} vs {c['against_audio_s_per_s']:.1f}x real time)")
    for t in result["training"]:
        lines.append(f"training {t['preset']} ({t['device']}): rotation step = {t['rotation_over_ste_step']:.3f} x "
                     f"STE step; rotation quantizer fwd+bwd = {t['rotation_over_ste_quantizer']:.3f} x STE's")
    return lines


def target_check(result: dict, label: str) -> dict:
    """Whether model ``label`` encodes + decodes >= ``RTF_TARGET_X`` times real time on ``RTF_TARGET_THREADS``
    CPU threads (or the most threads measured, if fewer, with a note); ``met`` None when not measured."""
    cpu = [r for r in result["rtf"] if r["device"] == "cpu" and r["model"] == label]
    row = next((r for r in cpu if r["threads"] == RTF_TARGET_THREADS), None)
    note = None
    if row is None and cpu:
        row = max(cpu, key=lambda r: r["threads"])
        note = f"no {RTF_TARGET_THREADS}-thread run; used {row['threads']} thread(s)"
    return {"model": label,
            "target": f"encode + decode >= {RTF_TARGET_X:g}x real time on {RTF_TARGET_THREADS} CPU threads",
            "x_realtime": row["x_realtime"] if row else None,
            "met": bool(row["x_realtime"] >= RTF_TARGET_X) if row else None, "note": note}


def _verdict(t: dict) -> str:
    verdict = "not measured" if t["met"] is None else f"{t['x_realtime']:.1f}x -> " + ("met" if t["met"] else "NOT met")
    return verdict + (f" ({t['note']})" if t["note"] else "")


def _models_section(models: list[dict]) -> list[str]:
    """The models under test: label, checkpoint, model id, architecture, parameters, bitrate timed."""
    out = ["## Models (the first is the model under test; ratios compare it with the others)", ""]
    return out + _table(["model", "checkpoint", "model id", "architecture", "parameters", "kbps (n_q)"],
                        [[f"`{m['label']}`", f"`{m['path']}`", m["model_id"], m["architecture"],
                          f"{m['parameters']:,}", f"{m['kbps']:g} ({m['n_q']})"] for m in models], text_columns=4)


def _comparison_section(result: dict) -> list[str]:
    """Table of :func:`comparisons` (nothing with a single model or no rtf/batch rows)."""
    rows = result["comparisons"]
    if not rows:
        return []
    first = result["config"]["models"][0]["label"]
    out = ["", f"## Model comparison (`{first}` against each other model; ratio = its audio-s/s / the other's, "
               "above 1: faster)", ""]
    return out + _table(["measurement", "against", f"`{first}` audio-s/s", "other audio-s/s", "ratio"],
                        [[c["measurement"], f"`{c['against']}`", fmt_number(c["model_audio_s_per_s"], ".1f"),
                          fmt_number(c["against_audio_s_per_s"], ".1f"), fmt_number(c["ratio"], ".2f")] for c in rows],
                        text_columns=2)


def _rtf_section(result: dict) -> list[str]:
    """Real-time factors, one row per model and thread count, and the Opus reference line."""
    cfg = result["config"]
    out = ["## Real-time factor (streaming compress / decompress, "
           f"{cfg['rtf_seconds']:g} s of speech at {cfg['kbps']:g} kbps, median of {cfg['repeats']}, "
           "models interleaved)", ""]
    out += _unless_skipped(cfg, "rtf", _table(
        ["model", "device", "threads", "encode s", "decode s", "RTF enc+dec", "x real time enc", "x real time dec",
         "x real time enc+dec"],
        [[f"`{r['model']}`", r["device"], fmt_number(r["threads"], "d"), fmt_number(r["encode_seconds"], ".3f"),
          fmt_number(r["decode_seconds"], ".3f"), fmt_number(r["rtf"], ".4f"),
          fmt_number(r["encode_x_realtime"], ".1f"), fmt_number(r["decode_x_realtime"], ".1f"),
          fmt_number(r["x_realtime"], ".1f")] for r in result["rtf"]],
        text_columns=2))
    if result.get("opus"):
        o = result["opus"]
        out += ["", f"Opus reference ({o['codec']}, ffmpeg, 1 thread, same audio): encode {o['encode_seconds']:.3f} s, "
                    f"decode {o['decode_seconds']:.3f} s, RTF {o['rtf']:.4f} ({o['x_realtime']:.0f}x real time)."]
    return out


def _batch_section(result: dict) -> list[str]:
    """Batch throughput, one row per batch size and model."""
    cfg = result["config"]
    out = [f"## Batch throughput (single-pass encode / decode, clips of {cfg['batch_seconds']:g} s, "
           "models interleaved)", ""]
    return out + _unless_skipped(cfg, "batch", _table(
        ["model", "device", "threads", "batch", "encode audio-s/s", "decode audio-s/s", "enc+dec audio-s/s"],
        [[f"`{r['model']}`", r["device"], fmt_number(r["threads"], "d"), str(r["batch_size"]),
          fmt_number(r["encode_audio_s_per_s"], ".1f"), fmt_number(r["decode_audio_s_per_s"], ".1f"),
          fmt_number(r["audio_s_per_s"], ".1f")] for r in result["batch"]], text_columns=2))


def _memory_section(result: dict) -> list[str]:
    """Peak memory of the first model, one row per device and thread count."""
    cfg = result["config"]
    out = [f"## Peak memory, {cfg['memory_minutes']:.3g}-minute file through compress_file + decompress_file "
           f"(fresh process, `{cfg['models'][0]['label']}`)", ""]
    return out + _unless_skipped(cfg, "memory", _table(
        ["device", "threads", "RSS after model load MiB", "peak RSS MiB", "increase MiB", "CUDA peak MiB",
         "file as float32 MiB", "encode s", "decode s"],
        [[m["device"], fmt_number(m["threads"], "d"), _mib(m["rss_after_load_bytes"]), _mib(m["peak_rss_bytes"]),
          _mib(m["increase_bytes"]), _mib(m.get("cuda_peak_allocated_bytes")), _mib(m["file_float32_bytes"]),
          fmt_number(m["encode_seconds"], ".1f"), fmt_number(m["decode_seconds"], ".1f")] for m in result["memory"]]))


def _training_section(result: dict) -> list[str]:
    """Training step times, one row per preset and estimator, and what each preset's step computes."""
    rows = []
    for t in result["training"]:
        for name in ("rotation", "ste"):
            r = t[name]
            rows.append([t["preset"], name, t["device"], fmt_number(t["threads"], "d"),
                         f"{t['batch_size']}x{t['segment_seconds']:g} s", fmt_number(r["step_seconds"], ".3f"),
                         fmt_number(r["steps_per_s"], ".2f"), fmt_number(r["audio_s_per_s"], ".1f"),
                         fmt_number(r["quantizer_seconds"], ".4f"), fmt_number(100 * r["quantizer_share"], ".1f")])
    out = ["## Training throughput (optimiser steps of fresh preset models, fp32, all RVQ stages)", ""]
    out += _unless_skipped(result["config"], "training", _table(
        ["preset", "estimator", "device", "threads", "batch", "step s", "steps/s", "audio-s/s",
         "quantizer fwd+bwd s", "quantizer share %"], rows, text_columns=3))
    if result["training"]:
        out += ["", "Losses of a step:", ""] + [f"- {t['preset']}: {t['losses']}" for t in result["training"]]
    return out


def markdown_report(result: dict) -> str:
    """``speed.md``: machine, models, one section per measurement, the comparison, targets and ratios."""
    cfg = result["config"]
    status = "" if result.get("complete") else ", incomplete: stopped before the end"
    out = [f"# Speed and memory ({'quick' if cfg['quick'] else 'full'} run{status})", "",
           f"Machine: {cfg['cpu_cores']} CPU cores available, GPU: {cfg['gpu'] or 'none'}, "
           f"load average at start/end {_fmt_load(result['environment']['load_average_start'])} / "
           f"{_fmt_load(result['environment']['load_average_end'])} (1 min, 5 min, 15 min). "
           f"torch {result['environment']['torch']}.", ""]
    out += _models_section(cfg["models"])
    out += [""] + _rtf_section(result) + [""] + _batch_section(result) + _comparison_section(result)
    out += [""] + _memory_section(result) + [""] + _training_section(result)
    out += ["", "## Target and ratios", ""]
    out += [f"- `{t['model']}`: {t['target']}: {_verdict(t)}" for t in result["targets"]]
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
    p.add_argument("--model", metavar="PATH", action="append", default=None,
                   help="codec checkpoint (default: the shipped model); repeat it to time several models in one run, "
                        "the first being the model under test")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="speech to time (default: ../shared/data/speech-dev/LibriSpeech/dev-clean, relative to the "
                        "repository root)")
    p.add_argument("--train-data", type=Path, default=None,
                   metavar="DIR",
                   help="speech for training batches (default: ../shared/data/speech-dev/LibriSpeech/train-clean-100)")
    p.add_argument("--quick", action="store_true", help="CI mode: seconds of audio, convnext training preset only")
    p.add_argument("--out", metavar="DIR", type=Path, default=None,
                   help="output folder (default: benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--bitrate", metavar="KBPS", type=float, default=None,
                   help="kbps for rtf/batch/memory (default: the highest that every model has)")
    p.add_argument("--seconds", metavar="S", type=float, default=None, help="audio length for the real-time factors (default 60)")
    p.add_argument("--repeats", metavar="N", type=int, default=None, help="timed runs per measurement (default 3)")
    p.add_argument("--threads", metavar="N,N", default=None, help="CPU thread counts for rtf, e.g. 1,2,16 (default: 1, 2, all cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device for batch throughput and training (default: cuda if present)")
    p.add_argument("--batch-sizes", metavar="B,B", default=None, help="batch sizes for throughput (default: 1,4,16 CPU; 1,8,32,128 GPU)")
    p.add_argument("--batch-seconds", metavar="S", type=float, default=None, help="clip length for batch throughput (default 10)")
    p.add_argument("--memory-minutes", metavar="MIN", type=float, default=None, help="length of the memory test file (default 10)")
    p.add_argument("--train-presets", metavar="NAMES", default=None,
                   help=f"training presets to time, from {','.join(PRESETS)} (default: convnext,tiny,base)")
    p.add_argument("--train-batch", metavar="B", type=int, default=None, help="training batch size (default 8)")
    p.add_argument("--train-seconds", metavar="S", type=float, default=None, help="training segment length (default 1.0)")
    p.add_argument("--train-steps", metavar="N", type=int, default=None, help="timed training steps per estimator (default 5)")
    p.add_argument("--skip", metavar="SECTIONS", default="", help="sections to leave out, comma-separated: rtf,batch,memory,training,opus")
    p.add_argument("--ffmpeg", metavar="PATH", default="ffmpeg", help="ffmpeg executable for the Opus reference")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-n-q", type=int, default=None, help=argparse.SUPPRESS)
    return p


SECTIONS = ("rtf", "batch", "memory", "training", "opus")


def section_options(args: argparse.Namespace) -> dict:
    """The ``FULL`` or ``QUICK`` settings with the command line's sizes applied (each must be > 0)."""
    opt = dict(QUICK if args.quick else FULL)
    for key in ("seconds", "repeats", "batch_seconds", "memory_minutes", "train_batch", "train_seconds",
                "train_steps"):
        value = getattr(args, key)
        if value is not None:
            if not value > 0:
                raise UserError(f"--{key.replace('_', '-')} must be > 0, got {value}")
            opt[key] = value
    if args.train_presets:
        opt["train_presets"] = tuple(p.strip() for p in args.train_presets.split(",") if p.strip())
        bad = [p for p in opt["train_presets"] if p not in PRESETS]
        if bad or not opt["train_presets"]:
            raise UserError(f"--train-presets: unknown preset(s) {', '.join(bad) or repr(args.train_presets)}; "
                            f"choose from {', '.join(PRESETS)}")
    return opt


def skipped_sections(text: str) -> set[str]:
    """The ``--skip`` sections (one-line ``UserError`` for an unknown name)."""
    skip = {s.strip() for s in text.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise UserError(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return skip


def run(args: argparse.Namespace) -> dict:
    """Run the selected sections; returns the JSON-ready result (also written to ``--out``)."""
    opt = section_options(args)
    skip = skipped_sections(args.skip)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    cores = available_cores()
    threads = (_int_list(args.threads, "--threads") if args.threads
               else tuple(sorted({1, min(RTF_TARGET_THREADS, cores), cores})))
    out_dir = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, expected a folder")
    models, kbps = load_models(args.model or [None], args.bitrate)
    first = models[0]
    sample_rate = first.codec.sample_rate
    setups = {} if "training" in skip else {name: training_setup(name) for name in opt["train_presets"]}
    try:
        wav = speech_signal(args.data or DEFAULT_DATA, opt["seconds"], sample_rate)
    except ValueError as exc:  # unreadable audio
        raise UserError(str(exc)) from None
    default_threads = torch.get_num_threads()
    notes: list[str] = []
    result: dict = {
        "benchmark": "speed", "complete": False,
        "config": {
            "quick": bool(args.quick), "data": shown_path(args.data or DEFAULT_DATA),
            "train_data": shown_path(args.train_data or DEFAULT_TRAIN_DATA), "rtf_seconds": opt["seconds"],
            "repeats": opt["repeats"], "kbps": kbps, "batch_seconds": opt["batch_seconds"],
            "memory_minutes": opt["memory_minutes"], "train_presets": list(opt["train_presets"]),
            "device": device.type, "cpu_cores": cores,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "skipped": sorted(skip), "out": shown_path(out_dir), "models": [m.info() for m in models],
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
        result["comparisons"] = comparisons(result)
        result["targets"] = [target_check(result, m.label) for m in models]
        result["target"] = result["targets"][0]  # the model under test's
        result["ratios"] = ratios(result)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "speed.json", result, fsync=True)  # NaN and inf become null
        atomic_write_text(out_dir / "speed.md", markdown_report(result), fsync=True)

    names = ", ".join(m.label for m in models)
    if "rtf" not in skip:
        for n in threads:
            log(f"rtf: cpu, {n} thread(s), {names}")
            result["rtf"] += measure_rtf(models, wav, torch.device("cpu"), n, opt["repeats"])
        torch.set_num_threads(default_threads)
        if torch.cuda.is_available():
            log(f"rtf: cuda, {names}")
            result["rtf"] += measure_rtf(models, wav, torch.device("cuda"), None, opt["repeats"])
        for model in models:
            model.codec.to("cpu")
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
        log(f"batch: {device.type}, sizes {sizes}, {names}")
        result["batch"] = measure_batch(models, wav, sizes, opt["batch_seconds"], device, opt["repeats"])
        for model in models:
            model.codec.to("cpu")
        save()
    if "memory" not in skip:
        runs = [("cpu", n) for n in sorted({1, cores if not args.quick else 1})]
        runs += [("cuda", None)] if torch.cuda.is_available() else []
        for dev, n in runs:
            log(f"memory: {first.label}, {opt['memory_minutes']:g} min file, {dev}"
                + (f", {n} thread(s)" if n else ""))
            try:
                row = measure_memory(first.checkpoint, wav, sample_rate, opt["memory_minutes"], first.n_q, dev, n)
                result["memory"].append({"model": first.label, **row})
            except RuntimeError as exc:
                notes.append(str(exc))
        save()
    if "training" not in skip:
        try:
            x = training_batch(args.train_data or DEFAULT_TRAIN_DATA, opt["train_batch"], opt["train_seconds"],
                               sample_rate)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        for name, setup in setups.items():
            log(f"training: {name} on {device.type}, batch {opt['train_batch']}x{opt['train_seconds']:g} s, "
                f"{setup.description}")
            result["training"].append(measure_training(name, setup, x, device, opt["train_steps"],
                                                       opt["train_warmup"]))
            save()
    for note in notes:
        log(f"note: {note}")
    result["complete"] = True
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_child is not None:  # internal: the fresh process of the memory section
        model = args.model[0] if args.model else None
        print(json.dumps(memory_child(model, args.memory_child, args.memory_n_q, args.device,
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
