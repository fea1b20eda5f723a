"""Build the noisy / reverberant dev set: dev-clean corrupted in six conditions, the same on every machine.

    python benchmarks/noisy_dev.py                       # -> local/noisy-dev (17 MB)
    python benchmarks/quality.py --data local/noisy-dev --macro-by-folder --out benchmarks/results/noisy

Every dev-clean file (``../shared/data/speech-dev/LibriSpeech/dev-clean``, never trained on) is written twice,
each time in another of six conditions (file ``i`` gets conditions ``2i mod 6`` and ``2i+1 mod 6``), into
``OUT/<condition>/<speaker>-<chapter>-<utterance>.flac`` (24-bit, 16 kHz), with ``OUT/manifest.tsv`` listing
what was done to each file:

* ``noise``: real background noise at 5-15 dB SNR, from the recordings of ``../shared/data/noise`` that training
  never sees (:func:`rvqcodec.data.augment.split_noise_files`, the recipe's held-out fraction 0.2);
* ``babble``: 4-6 other dev-clean speakers summed, at 5-15 dB SNR;
* ``reverb``: a simulated room (pyroomacoustics image sources; RT60 0.3-0.9 s; rooms drawn from another seed than
  training's);
* ``noise-reverb``: a simulated room, then held-out noise at 10-20 dB SNR;
* ``quiet``: the level lowered to -55 to -45 dBFS RMS (a distant or low-gain microphone);
* ``narrowband``: everything above 3.4-4 kHz removed (telephone-band input).

The codec is scored against the corrupted signal (it must reproduce its input, not clean it). All draws come from
a generator seeded with ``--seed`` (default 2026), so the set is the same on every machine; the script refuses to
write into a non-empty folder unless ``--force``.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import SPEECH_ROOT, shown_path  # noqa: E402
from rvqcodec.data import augment  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.errors import UserError  # noqa: E402
from rvqcodec.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

CONDITIONS = ("noise", "babble", "reverb", "noise-reverb", "quiet", "narrowband")
SAMPLE_RATE = 16000
NOISE_DIR = BENCH_DIR.parent.parent / "shared" / "data" / "noise"
HELDOUT_FRACTION = augment.AugmentConfig.noise_heldout_fraction
ROOM_SEED_OFFSET = 7919  # rooms of the dev set are not the training bank's (seed 0)
DEFAULT_OUT = BENCH_DIR.parent / "local" / "noisy-dev"


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def corrupt(condition: str, x: torch.Tensor, rng: np.random.Generator, noises: list[tuple[str, torch.Tensor]],
            others: list[torch.Tensor], rooms: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """``x`` ``(T,)`` in ``condition``; returns the signal and what was drawn (for the manifest)."""

    def noise_clip() -> tuple[str, torch.Tensor]:
        name, recording = noises[int(rng.integers(len(noises)))]
        if recording.numel() < x.numel():
            recording = recording.repeat(-(-x.numel() // recording.numel()))
        start = int(rng.integers(recording.numel() - x.numel() + 1))
        return name, recording[start:start + x.numel()]

    info: dict = {}
    if condition in ("reverb", "noise-reverb"):
        room = int(rng.integers(len(rooms)))
        x = augment.reverberate(x, rooms[room])
        info["room"] = room
    if condition in ("noise", "noise-reverb"):
        info["noise"], clip = noise_clip()
        info["snr_db"] = _uniform(rng, 5, 15) if condition == "noise" else _uniform(rng, 10, 20)
        x = augment.mix_at_snr(x, clip, info["snr_db"])
    elif condition == "babble":
        count = int(rng.integers(4, 7))
        chosen = rng.choice(len(others), size=count, replace=False)
        babble = torch.zeros_like(x)
        for i in chosen:
            other = others[int(i)]
            other = other.repeat(-(-x.numel() // other.numel()))[:x.numel()]
            babble += other / augment.power(other).sqrt().clamp_min(1e-5)
        info["snr_db"], info["talkers"] = _uniform(rng, 5, 15), count
        x = augment.mix_at_snr(x, babble, info["snr_db"])
    elif condition == "quiet":
        info["rms_dbfs"] = _uniform(rng, -55, -45)
        x = augment.set_level(x, info["rms_dbfs"])
    elif condition == "narrowband":
        info["cutoff_hz"] = _uniform(rng, 3400, 4000)
        x = augment.lowpass(x, info["cutoff_hz"], SAMPLE_RATE)
    peak = float(x.abs().max())
    if peak > 0.99:
        x = x * (0.99 / peak)
        info["scaled_to_peak"] = 0.99
    return x, info


def build(data: Path, noise_dir: Path, out: Path, seed: int) -> list[dict]:
    """Write the set (module docstring); returns the manifest rows."""
    import soundfile

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".flac", ".wav") and p.is_file())
    if not files:
        raise UserError(f"no audio files under {data}")
    _, heldout = augment.split_noise_files(noise_dir, HELDOUT_FRACTION)
    noises = [(shown_path(p), read_audio(p, target_sr=SAMPLE_RATE).samples[0]) for p in heldout]
    noises = [(n, s) for n, s in noises if s.numel() and float(s.abs().max()) > 0]
    if not noises:
        raise UserError(f"no held-out noise recordings under {noise_dir}")
    speech = [read_audio(p, target_sr=SAMPLE_RATE).samples[0] for p in files]
    rooms = augment.simulate_rooms(16, (0.3, 0.9), SAMPLE_RATE, seed + ROOM_SEED_OFFSET)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (path, x) in enumerate(zip(files, speech)):
        others = [s for j, s in enumerate(speech) if j != i]
        for condition in (CONDITIONS[(2 * i) % 6], CONDITIONS[(2 * i + 1) % 6]):
            y, info = corrupt(condition, x, rng, noises, others, rooms)
            target = out / condition / f"{path.stem}.flac"
            buffer = io.BytesIO()
            soundfile.write(buffer, y.numpy(), SAMPLE_RATE, subtype="PCM_24", format="FLAC")
            atomic_write_bytes(target, buffer.getvalue(), overwrite=True, parents=True)
            rows.append({"file": f"{condition}/{target.name}", "source": shown_path(path), "condition": condition,
                         "seconds": round(y.numel() / SAMPLE_RATE, 3), **info})
    keys = ["file", "source", "condition", "seconds", "noise", "snr_db", "talkers", "room", "rms_dbfs", "cutoff_hz",
            "scaled_to_peak"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "manifest.tsv", text.getvalue(), overwrite=True, parents=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean",
                   help="clean speech folder (default: dev-clean)")
    p.add_argument("--noise", type=Path, default=NOISE_DIR,
                   help="noise folder with MANIFEST.tsv (default: ../shared/data/noise)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: local/noisy-dev)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)
    try:
        if args.out.exists() and any(args.out.iterdir()) and not args.force:
            raise UserError(f"{args.out} is not empty; pass --force to write into it")
        rows = build(args.data, args.noise, args.out, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {c: sum(r["condition"] == c for r in rows) for c in CONDITIONS}
    print(f"wrote {len(rows)} files to {args.out} ({', '.join(f'{c} {n}' for c, n in counts.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
