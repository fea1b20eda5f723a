"""Can a discriminator tell a trained codec's output from real speech? Each candidate trained alone, codec frozen.

    python benchmarks/discriminator_probe.py                       # the shipped model, every candidate, 300 steps
    python benchmarks/discriminator_probe.py --candidates magnitude8-lr1e-3 --steps 1500

An adversarial fine-tune can only teach the codec what its discriminators see. Against a trained codec a fresh
discriminator starts at chance, and a generator trained against one at chance learns nothing from it (the 300- and
1000-step fine-tunes of docs/training.md moved no score). This probe measures how fast each candidate learns to
separate real clips from decoded ones, with the codec frozen: a pool of 0.5 s crops of train-clean-100 (the first
``--files`` files, one crop every 1.5 s, ``--pool`` crops) and their decodes by ``--model`` at a random prefix of 3,
6, 12 or 16 stages (1.5 to 8 kbps); each candidate is trained on batches of ``--batch`` real/decoded pairs with
AdamW (betas 0.8/0.99, gradient clipping at 1) and the LSGAN loss ``mean((1 - D(x))²) + mean(D(x̂)²)``, which is
0.5 for a discriminator that cannot tell them apart and 0 for one that always can. Reports the mean loss over every
100 steps and the seconds per step (one thread).

Writes ``discriminator_probe.json`` and ``discriminator_probe.md`` into ``--out``
(default ``benchmarks/results/discriminator-probe``).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, shown_path  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.losses import discriminator_loss  # noqa: E402
from rvqcodec.model.discriminators import DiscriminatorConfig, Discriminators  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

CANDIDATES: dict[str, tuple[dict, float]] = {
    "period4-64-lr2e-4": (dict(kinds=("period",), period_channels=4, period_max_channels=64), 2e-4),
    "period4-64-lr1e-3": (dict(kinds=("period",), period_channels=4, period_max_channels=64), 1e-3),
    "period16-256-lr2e-4": (dict(kinds=("period",), period_channels=16, period_max_channels=256), 2e-4),
    "stft8-lr2e-4": (dict(kinds=("stft",), stft_channels=8), 2e-4),
    "magnitude8-lr2e-4": (dict(kinds=("magnitude",), magnitude_channels=8), 2e-4),
    "magnitude16-lr2e-4": (dict(kinds=("magnitude",), magnitude_channels=16), 2e-4),
    "magnitude8-lr1e-3": (dict(kinds=("magnitude",), magnitude_channels=8), 1e-3),
}
"""Name -> (DiscriminatorConfig fields, learning rate). ``period``: HiFi-GAN's multi-period discriminator (widths
from/to); ``stft``: EnCodec's complex multi-scale STFT discriminator; ``magnitude``: the multi-resolution
log-magnitude discriminator (UnivNet / Vocos); the number is the channel count."""
STAGE_CHOICES = (3, 6, 12, 16)
CROP = 8000  # 0.5 s at 16 kHz, as loss.disc_segment_seconds in the fine-tune recipe


def pool(model, files: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, decoded)`` crops ``(size, 1, CROP)`` (see the module docstring)."""
    random.seed(seed)
    torch.manual_seed(seed)
    codec = load_codec(model).eval()
    paths = sorted((SPEECH_ROOT / "train-clean-100").rglob("*.flac"))[:files]
    crops = []
    for path in paths:
        x = read_audio(path).samples[0]
        crops += [x[s:s + CROP] for s in range(0, x.numel() - CROP, 3 * CROP)]
    real = torch.stack(crops)[:, None]
    real = real[torch.randperm(real.shape[0])[:size]]
    decoded = []
    with torch.no_grad():
        for i in range(0, real.shape[0], 32):
            batch = real[i:i + 32]
            n_q = random.choice(STAGE_CHOICES)
            decoded.append(codec.decode(codec.encode(batch, n_q=n_q))[..., :CROP])
    return real, torch.cat(decoded)


def probe(name: str, real: torch.Tensor, decoded: torch.Tensor, steps: int, batch: int, seed: int) -> dict:
    fields, lr = CANDIDATES[name]
    torch.manual_seed(seed)
    disc = Discriminators(DiscriminatorConfig.preset("tiny", **fields))
    optimizer = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.8, 0.99))
    losses, started = [], time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, real.shape[0], (batch,))
        loss = discriminator_loss(disc(real[index]), disc(decoded[index]), kind="lsgan")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = (time.perf_counter() - started) / steps
    curve = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, steps, 100)]
    print(f"{name}: LSGAN loss per 100 steps {', '.join(f'{v:.3f}' for v in curve)} ({seconds:.2f} s/step)",
          file=sys.stderr)
    return {"name": name, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
            "lr": lr, "parameters": sum(p.numel() for p in disc.parameters()), "loss_per_100_steps": curve,
            "seconds_per_step": seconds}


def markdown(result: dict) -> str:
    width = max(len(r["loss_per_100_steps"]) for r in result["candidates"])
    lines = [f"# Can a discriminator see the codec's artefacts? (model {result['model_id']})", "",
             f"`{result['command']}`: each candidate trained alone on {result['pool']} real/decoded pairs of 0.5 s "
             f"(decoded at 3, 6, 12 or 16 stages), batches of {result['batch']}, one thread. LSGAN loss: 0.5 = "
             "cannot tell them apart, 0 = always can. Mean per 100 steps:", "",
             "| candidate | parameters | s/step | " + " | ".join(f"steps {100 * i + 1}-{100 * (i + 1)}"
                                                             for i in range(width)) + " |",
             "|---|---:|---:|" + "---:|" * width]
    for r in result["candidates"]:
        cells = [f"{v:.3f}" for v in r["loss_per_100_steps"]] + ["–"] * (width - len(r["loss_per_100_steps"]))
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['seconds_per_step']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--candidates", default=",".join(CANDIDATES),
                   help=f"comma-separated, from {', '.join(CANDIDATES)} (default: all)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--pool", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "discriminator-probe")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or args.steps < 1:
        print(f"error: unknown candidates {unknown} or --steps < 1; choose from {', '.join(CANDIDATES)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint(args.model)
    real, decoded = pool(checkpoint, args.files, args.pool, args.seed)
    result = {"model": shown_path(checkpoint), "model_id": load_codec(checkpoint).model_id, "pool": real.shape[0],
              "batch": args.batch, "steps": args.steps,
              "command": "python benchmarks/discriminator_probe.py " + " ".join(argv or sys.argv[1:]),
              "candidates": [probe(n, real, decoded, args.steps, args.batch, args.seed + 1) for n in names]}
    atomic_write_json(args.out / "discriminator_probe.json", result, parents=True)
    atomic_write_text(args.out / "discriminator_probe.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
