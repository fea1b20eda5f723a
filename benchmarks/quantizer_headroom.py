"""Where a model loses quality: in its decoder, or in its codes?

    python benchmarks/quantizer_headroom.py                          # the shipped model, all of dev-clean
    python benchmarks/quantizer_headroom.py --model runs/x/codec.pt --stages 6,12,16 --fit-seconds 900

For every file of ``--data`` (default: dev-clean), the model's decoder is fed

* the **unquantized** latent: what the trained autoencoder can reproduce, the ceiling of every bitrate;
* the latent quantized by the model's own RVQ with ``n`` stages (``--stages``);
* the latent quantized by a **refitted** RVQ: the same shapes, initialised as the recipe does (principal subspace +
  k-means per stage, :meth:`rvqcodec.quantize.ResidualVQ.initialize`) on the latents of ``--fit-seconds`` of
  training audio (``--fit-data``, default train-clean-100). It shows whether the trained codebooks still fit what
  the encoder emits, and whether the decoder has adapted to its own codebooks' errors.

and scored against the input with PESQ-WB, mel distance, the waveform's normalised cross-correlation at lag 0 (1:
the same waveform up to a gain; does the decoder reproduce phase) and the level ratio (RMS of the output over the
input's). A decoder that is poor even on the unquantized latent has a synthesis problem that better codes will not
fix; one trained with quantization on every batch may decode the unquantized latent worse than 16 stages (it has
not seen it since its warm-up). The latent itself is measured too: its principal-
component spectrum and the residual energy after k stages of either quantizer (relative to the latents' centred
energy: 1 = nothing captured), on the same files. Writes ``headroom.md`` and ``headroom.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, shown_path  # noqa: E402
from quality import list_audio_files  # noqa: E402
from rvqcodec import metrics  # noqa: E402
from rvqcodec.errors import UserError  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.model import Codec  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402
from rvqcodec.quantize import ResidualVQ  # noqa: E402

PCA_DIMS = (8, 16, 32, 64, 96)
"""Principal components at which the cumulative share of the latent energy is reported."""


def read_mono(path: Path, sample_rate: int) -> torch.Tensor:
    """(1, 1, T) float32 audio of ``path`` at ``sample_rate``."""
    try:
        return read_audio(path, target_sr=sample_rate).samples.reshape(1, 1, -1)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@torch.no_grad()
def latent_of(codec: Codec, wav: torch.Tensor) -> torch.Tensor:
    """(1, D, F) encoder output of ``wav`` (1, 1, T)."""
    return codec.encode_latent(wav)


@torch.no_grad()
def refitted_quantizer(codec: Codec, files: list[Path], seconds: float, seed: int) -> tuple[ResidualVQ, float]:
    """A fresh copy of the model's RVQ, every stage initialised from the latents of up to ``seconds`` of audio
    from ``files`` (shuffled with ``seed``). Returns it and the seconds of audio used."""
    order = list(files)
    random.Random(seed).shuffle(order)
    latents, used = [], 0.0
    for path in order:
        wav = read_mono(path, codec.sample_rate)
        latents.append(latent_of(codec, wav))
        used += wav.shape[-1] / codec.sample_rate
        if used >= seconds:
            break
    rvq = Codec(codec.config).quantizer.eval()
    torch.manual_seed(seed)
    rvq.initialize(torch.cat(latents, dim=-1))
    return rvq, used


@torch.no_grad()
def residual_energy(rvq: ResidualVQ, latent: torch.Tensor) -> list[float]:
    """Energy of the residual after k = 1 .. n_q stages, for ``latent`` (1, D, F), unnormalised."""
    residual, out = latent, []
    for layer in rvq.layers:
        residual = residual - layer.decode(layer.encode(residual))
        out.append(float(residual.double().pow(2).sum()))
    return out


@torch.no_grad()
def decode_scores(codec: Codec, latent: torch.Tensor, n_q: int, ref: torch.Tensor) -> dict[str, float]:
    """PESQ-WB, mel distance, waveform cross-correlation at lag 0 and level ratio of the decoder's output for
    ``latent`` (a sum of ``n_q`` stages; 0: unquantized) against ``ref`` (1, 1, T), without alignment: only the
    metrics reported (the full :func:`rvqcodec.metrics.score_aligned` would add STOI and PESQ-NB per decode)."""
    ref_np = ref.flatten().numpy().astype(np.float64)
    audio = codec.decode_latent(latent, n_q)[..., : ref.shape[-1]].flatten().numpy().astype(np.float64)
    energy_ref, energy_out = float(np.dot(ref_np, ref_np)), float(np.dot(audio, audio))
    return {"pesq_wb": metrics.pesq_wb(ref_np, audio, codec.sample_rate),
            "mel_distance": metrics.mel_distance(ref_np, audio, codec.sample_rate),
            "waveform_xcorr": float(np.dot(ref_np, audio)) / max(np.sqrt(energy_ref * energy_out), 1e-20),
            "level_ratio": np.sqrt(energy_out / max(energy_ref, 1e-20))}


def measure(codec: Codec, refit: ResidualVQ, files: list[Path], stages: list[int]) -> dict:
    rows: dict[str, list[dict[str, float]]] = {"unquantized": []}
    for n in stages:
        rows[f"model {n}"], rows[f"refit {n}"] = [], []
    energies = {"model": [0.0] * codec.max_n_q, "refit": [0.0] * codec.max_n_q}
    latents, samples = [], 0
    for path in tqdm(files, desc="files", unit="file"):
        wav = read_mono(path, codec.sample_rate)
        samples += wav.shape[-1]
        latent = latent_of(codec, wav)
        latents.append(latent[0].T.double())
        rows["unquantized"].append(decode_scores(codec, latent, 0, wav))
        for name, rvq in (("model", codec.quantizer), ("refit", refit)):
            for k, value in enumerate(residual_energy(rvq, latent)):
                energies[name][k] += value
            for n in stages:
                quantized = rvq.decode(rvq.encode(latent, n))
                rows[f"{name} {n}"].append(decode_scores(codec, quantized, n, wav))
    frames = torch.cat(latents)
    centred = frames - frames.mean(dim=0)
    total = float(centred.pow(2).sum())
    spectrum = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    share = (spectrum.cumsum(0) / spectrum.sum()).tolist()
    return {
        "decoded": {name: {metric: statistics.fmean(r[metric] for r in scored) for metric in scored[0]}
                    for name, scored in rows.items()},
        "residual_energy": {name: [v / total for v in values] for name, values in energies.items()},
        "pca_share": {d: share[d - 1] for d in PCA_DIMS if d <= len(share)},
        "frames": int(frames.shape[0]),
        "seconds": samples / codec.sample_rate,
    }


def markdown_report(result: dict) -> str:
    codec_rate = result["frame_rate"] * result["bits_per_code"] / 1000.0
    lines = [
        "# Quantizer headroom: the decoder fed unquantized, quantized and re-quantized latents",
        "",
        f"Model `{result['model']}` (id {result['model_id']}), {result['files']} files of `{result['data']}` "
        f"({result['measurement']['seconds']:.1f} s, {result['measurement']['frames']} frames); refitted RVQ: principal subspace + "
        f"k-means per stage on {result['fit_seconds']:.0f} s of `{result['fit_data']}`. Command: `{result['command']}`",
        "",
        "| decoder input | kbps | PESQ-WB | mel distance | waveform xcorr | level ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, scores in result["measurement"]["decoded"].items():
        kbps = "–" if name == "unquantized" else f"{int(name.split()[1]) * codec_rate:g}"
        label = {"model": "model's RVQ", "refit": "refitted RVQ"}.get(name.split()[0], name)
        stages = "" if name == "unquantized" else f", {name.split()[1]} stages"
        lines.append(f"| {label}{stages} | {kbps} | {scores['pesq_wb']:.3f} | {scores['mel_distance']:.4f} | "
                     f"{scores['waveform_xcorr']:.2f} | {scores['level_ratio']:.2f} |")
    energy = result["measurement"]["residual_energy"]
    shown = [k for k in (1, 2, 4, 6, 8, 12, 16) if k <= len(energy["model"])]
    lines += ["", "Residual energy after k stages, relative to the latents' centred energy (1 = nothing captured):", "",
              "| quantizer | " + " | ".join(f"k = {k}" for k in shown) + " |",
              "|---|" + "---:|" * len(shown)]
    for name, values in energy.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k - 1]:.3f}" for k in shown) + " |")
    pca = result["measurement"]["pca_share"]
    lines += ["", "Share of the latent energy in its first principal components: "
              + ", ".join(f"{d}: {share:.3f}" for d, share in pca.items()), ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="PATH", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean", metavar="DIR",
                   help="files to score, searched recursively (default: dev-clean of speech-dev)")
    p.add_argument("--fit-data", type=Path, default=SPEECH_ROOT / "train-clean-100", metavar="DIR",
                   help="training audio whose latents the refitted RVQ is initialised on (default: train-clean-100)")
    p.add_argument("--fit-seconds", type=float, default=900.0, metavar="S",
                   help="seconds of --fit-data for the refit (default 900: ~45 000 frames, ~44 per code)")
    p.add_argument("--stages", default="6,12,16", metavar="N,N",
                   help="RVQ stage counts to decode with (default 6,12,16: 3, 6 and 8 kbps for the shipped model)")
    p.add_argument("--max-files", type=int, default=None, metavar="N", help="use only the first N files")
    p.add_argument("--seed", type=int, default=0, help="seed of the refit's file order and k-means (default 0)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "quantizer-headroom", metavar="DIR",
                   help="output folder (default: benchmarks/results/quantizer-headroom)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not args.fit_seconds > 0:
        raise UserError(f"--fit-seconds must be > 0, got {args.fit_seconds:g}")
    if args.max_files is not None and args.max_files < 1:
        raise UserError(f"--max-files must be >= 1, got {args.max_files}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, expected a folder")
    try:
        checkpoint = resolve_checkpoint(args.model)
        codec = load_codec(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        stages = sorted({int(s) for s in args.stages.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--stages: expected comma-separated integers, got {args.stages!r}") from None
    if not stages or not all(1 <= n <= codec.max_n_q for n in stages):
        raise UserError(f"--stages must lie between 1 and {codec.max_n_q}, got {args.stages!r}")
    files = list_audio_files(args.data)[: args.max_files]
    fit_files = list_audio_files(args.fit_data)
    started = time.perf_counter()
    refit, fit_seconds = refitted_quantizer(codec, fit_files, args.fit_seconds, args.seed)
    measurement = measure(codec, refit, files, stages)
    result = {
        "model": shown_path(checkpoint), "model_id": codec.model_id, "data": shown_path(args.data),
        "files": len(files),
        "fit_data": shown_path(args.fit_data), "fit_seconds": fit_seconds, "stages": stages,
        "frame_rate": codec.frame_rate, "bits_per_code": codec.bits_per_code,
        "command": "python benchmarks/quantizer_headroom.py " + " ".join(argv), "measurement": measurement,
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "headroom.json", result)
    atomic_write_text(args.out / "headroom.md", markdown_report(result))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        result = run(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_report(result))
    print(f"wrote {args.out / 'headroom.md'} and {args.out / 'headroom.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
