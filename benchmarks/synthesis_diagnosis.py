"""Where a decode loses naturalness: listener-model scores of hybrids of the original's and the decode's STFTs.

    python benchmarks/synthesis_diagnosis.py                      # the shipped model, 8 dev-clean files
    python benchmarks/synthesis_diagnosis.py --model runs/x/codec.pt --files 4 --out /tmp/diag

DistillMOS and DNSMOS P.808 (non-intrusive listener models, :mod:`rvqcodec.perceptual`) of each dev-clean file
(``--files`` of them, spread over the sorted list) as:

* the original; the decode at 12 and 16 stages (6 and 8 kbps) without the decoder's formant postfilter, and at 12
  stages with the model's own (when it has one); the decoder fed the unquantized latent;
* the original's magnitude with the 16-stage decode's phase, and the decode's magnitude with the original's phase,
  at 512/128 and at the model's own head size 1280/320 (Hann STFT, inverted by overlap-add): which of the two
  costs more;
* with the original's phase (512/128), the decode's spectral envelope (the liftered log-magnitude of
  :mod:`rvqcodec.model.postfilter`) on the original's fine structure (harmonics), and the reverse: which of the two
  parts of the magnitude costs more;
* the original below 2 or 4 kHz with the decode above, and the reverse: which band costs more;
* the original low-passed at 4 and 6 kHz, and with random phase: how the models react to a known loss.

Writes ``synthesis_diagnosis.json`` and ``synthesis_diagnosis.md`` into ``--out``
(default ``benchmarks/results/synthesis-diagnosis``). Needs the ``perceptual`` extra.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, shown_path  # noqa: E402
from rvqcodec import perceptual  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.data.datasets import find_audio_files  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.model.postfilter import envelope_operator  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

SR = 16000


def stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    return torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)


def istft(spec: torch.Tensor, length: int, n_fft: int, hop: int) -> torch.Tensor:
    return torch.istft(spec, n_fft, hop, window=torch.hann_window(n_fft), length=length)


def lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    spec = torch.fft.rfft(x)
    spec[torch.fft.rfftfreq(x.numel(), 1 / SR) > cutoff] = 0
    return torch.fft.irfft(spec, n=x.numel())


def variants(codec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every version of ``x`` (T,) scored (module docstring)."""
    n = x.numel()
    wav = x[None, None]
    strength = codec.postfilter
    with torch.no_grad():
        codec.postfilter = 0.0
        out = {f"decode, {k} stages": codec.decode(codec.encode(wav, n_q=k))[0, 0, :n] for k in (12, 16)}
        out["decoder fed the unquantized latent"] = codec(wav, quantize=False).audio[0, 0, :n]
        codec.postfilter = strength
        if strength:
            name = f"decode, 12 stages, formant postfilter {strength:g}"
            out[name] = codec.decode(codec.encode(wav, n_q=12))[0, 0, :n]
    decoded = out["decode, 16 stages"]
    versions = {"original": x, **out}
    a, b = stft(x, 512, 128), stft(decoded, 512, 128)
    log_a, log_b = a.abs().clamp_min(1e-7).log(), b.abs().clamp_min(1e-7).log()
    lifter = envelope_operator(a.shape[0]).float()
    env_a, env_b = (lifter.T @ log_a), (lifter.T @ log_b)  # (bins, frames): the envelope of each frame
    phase = torch.exp(1j * a.angle())
    versions["decoded envelope, original fine structure and phase (512/128)"] = istft(
        torch.exp(env_b + log_a - env_a) * phase, n, 512, 128)
    versions["original envelope, decoded fine structure, original phase (512/128)"] = istft(
        torch.exp(env_a + log_b - env_b) * phase, n, 512, 128)
    for n_fft, hop in ((512, 128), (codec.config.head_n_fft, codec.hop_length)):
        a, b = stft(x, n_fft, hop), stft(decoded, n_fft, hop)
        size = f"({n_fft}/{hop})"
        mixed = {"original magnitude, decoded phase": a.abs() * torch.exp(1j * b.angle()),
                 "decoded magnitude, original phase": b.abs() * torch.exp(1j * a.angle())}
        for name, spec in mixed.items():
            versions[f"{name} {size}"] = istft(spec, n, n_fft, hop)
    for cutoff in (2000, 4000):
        khz = cutoff // 1000
        versions[f"original below {khz} kHz, decoded above"] = lowpass(x, cutoff) + decoded - lowpass(decoded, cutoff)
        versions[f"decoded below {khz} kHz, original above"] = lowpass(decoded, cutoff) + x - lowpass(x, cutoff)
    for cutoff in (4000, 6000):
        versions[f"original low-passed at {cutoff // 1000} kHz"] = lowpass(x, cutoff)
    a = stft(x, 512, 128)
    generator = torch.Generator().manual_seed(0)
    versions["original magnitude, random phase"] = istft(
        a.abs() * torch.exp(2j * np.pi * torch.rand(a.shape, generator=generator)), n, 512, 128)
    return versions


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint(args.model)
    codec = load_codec(checkpoint).eval()
    scorer = perceptual.get_scorer()
    files = find_audio_files(args.data, (".flac", ".wav"))
    files = files[::max(1, len(files) // args.files)][:args.files]
    scores: dict[str, list[tuple[float, float]]] = {}
    for path in files:
        x = read_audio(path, target_sr=SR).samples[0]
        for name, y in variants(codec, x).items():
            s = scorer.non_intrusive(y.clamp(-1, 1), SR)
            scores.setdefault(name, []).append((s["distillmos"], s["dnsmos_p808"]))
        print(f"scored {path.name}", file=sys.stderr)
    return {"model": shown_path(checkpoint), "model_id": codec.model_id, "data": shown_path(args.data),
            "files": [shown_path(p) for p in files],
            "means": {name: {"distillmos": float(np.mean([v[0] for v in values])),
                             "dnsmos_p808": float(np.mean([v[1] for v in values]))} for name, values in scores.items()}}


def markdown(result: dict) -> str:
    lines = [f"# Where the decode loses naturalness (model {result['model_id']})", "",
             f"`python benchmarks/synthesis_diagnosis.py`: means over {len(result['files'])} files of "
             f"`{result.get('data', 'dev-clean')}`.", "",
             "| version | DistillMOS | DNSMOS P.808 |", "|---|---:|---:|"]
    lines += [f"| {name} | {m['distillmos']:.2f} | {m['dnsmos_p808']:.2f} |" for name, m in result["means"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "synthesis-diagnosis")
    args = p.parse_args(argv)
    result = run(args)
    atomic_write_json(args.out / "synthesis_diagnosis.json", result, parents=True)
    atomic_write_text(args.out / "synthesis_diagnosis.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
