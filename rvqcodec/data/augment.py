"""Speech that is not clean: training-time corruptions of the input that the codec must *reproduce*.

A codec is not a denoiser: what it is given is what it should give back. So each corrupted training example is
both the input and the target, and the model learns to code noise, rooms, quiet microphones and narrow bands
instead of meeting them first in use. Per example, with probability :attr:`AugmentConfig.prob`, in this order:

0. **a speed change** (``speed``): the example played ``r`` times as fast, ``r`` drawn from ``speed_factor``
   (band-limited resampling: tempo, pitch and formants move together, as in Kaldi's speed perturbation), cut or
   zero-padded back to its length -- other voices than the training speakers' (higher, lower, faster, slower);
1. **reverberation** (``reverb``): convolution with a room impulse response from a bank of ``n_rooms`` shoebox
   rooms simulated once at start-up with pyroomacoustics' image source method (RT60 drawn from ``rt60``; the
   image order is capped at :data:`MAX_IMAGE_ORDER`, which shortens the longest tails a little), scaled to keep
   the direct-path level;
2. **one additive noise** at an SNR drawn from ``snr_db`` (speech power over the whole crop): real background
   noise (``noise``, recordings under ``noise_dirs``, the held-out part excluded: :func:`split_noise_files`),
   babble (``babble``: 3-6 other examples of the batch, i.e. other speakers, summed) or coloured noise
   (``colored``: Gaussian noise with a power spectrum ∝ f^-β, β drawn from [-1, 2]: blue to brown);
3. **band limiting** (``bandlimit``): everything above a cutoff drawn from ``cutoff_hz`` removed (FFT mask), as
   in telephone or low-rate recordings;
4. **a level change** (``level``): the example is scaled to an RMS drawn from ``level_dbfs`` (dB re full scale;
   a quiet microphone at -60, a loud one at -15), and scaled down if that would clip.

The conditional probabilities of steps 0-4 are independent; of the three noises at most one is drawn (their
probabilities must sum to <= 1). Randomness comes from torch's global generator, so a resumed run continues the
same draws; the room bank from ``seed``. Audio is ``(B, 1, T)``; the batch is changed out of place.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

MAX_IMAGE_ORDER = 30
NOISE_MANIFEST = "MANIFEST.tsv"


@dataclass
class AugmentConfig:
    """The ``augment`` section of a training recipe (module docstring). ``prob = 0`` switches it off."""

    prob: float = 0.0  # fraction of training examples corrupted at all
    speed: float = 0.0  # P(speed change | corrupted)
    speed_factor: tuple[float, float] = (0.85, 1.15)  # playback speed r (1.15: 15 % faster and higher)
    noise_dirs: list[str] = field(default_factory=list)  # folders of background-noise recordings (recursive)
    noise_heldout_fraction: float = 0.2  # recordings kept out of training for the noisy dev set
    noise: float = 0.4  # P(real background noise | corrupted)
    babble: float = 0.15  # P(babble of other examples of the batch | corrupted)
    colored: float = 0.15  # P(coloured Gaussian noise | corrupted)
    snr_db: tuple[float, float] = (0.0, 30.0)
    reverb: float = 0.3  # P(room reverberation | corrupted)
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds
    n_rooms: int = 64  # simulated room impulse responses in the bank
    bandlimit: float = 0.1  # P(low-pass | corrupted)
    cutoff_hz: tuple[float, float] = (3000.0, 7000.0)
    level: float = 0.4  # P(level change | corrupted)
    level_dbfs: tuple[float, float] = (-60.0, -15.0)  # RMS after the change
    seed: int = 0  # the room bank

    def check(self) -> None:
        """ValueError naming the first bad field."""
        for name in ("prob", "speed", "noise", "babble", "colored", "reverb", "bandlimit", "level",
                     "noise_heldout_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.noise + self.babble + self.colored > 1.0 + 1e-9:
            raise ValueError("augment.noise + augment.babble + augment.colored must be <= 1 (one noise at most)")
        for name in ("speed_factor", "snr_db", "rt60", "cutoff_hz", "level_dbfs"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"augment.{name} must be [low, high] with low <= high, got {[low, high]}")
        if self.speed_factor[0] <= 0 or self.rt60[0] <= 0 or self.cutoff_hz[0] <= 0 or self.level_dbfs[1] > 0:
            raise ValueError("augment.speed_factor, augment.rt60 and augment.cutoff_hz must be > 0 and "
                             "augment.level_dbfs <= 0")
        if self.prob > 0 and self.noise > 0 and not self.noise_dirs:
            raise ValueError("augment.noise > 0 needs augment.noise_dirs (folders of noise recordings)")
        if self.n_rooms < 1:
            raise ValueError(f"augment.n_rooms must be >= 1, got {self.n_rooms}")


# ------------------------------------------------------------------------------------------------ noise files


def _recording_keys(folder: Path) -> dict[Path, str]:
    """Each audio file under ``folder`` -> the recording it was cut from (``source_path`` of the folder's
    ``MANIFEST.tsv`` when it has one, else the file itself), so pieces of one recording stay on one side."""
    from rvqcodec.data.datasets import AudioFolderDataset

    files = AudioFolderDataset(folder, segment_seconds=None).files
    keys = {path: str(path.relative_to(folder)) for path in files}
    manifest = folder / NOISE_MANIFEST
    if manifest.is_file():
        with open(manifest, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                path = folder / row["file"]
                if path in keys and row.get("source_path"):
                    keys[path] = f"{row.get('source_repo', '')}:{row['source_path']}"
    return keys


def split_noise_files(folder: str | Path, heldout_fraction: float) -> tuple[list[Path], list[Path]]:
    """``(train, heldout)`` audio files of a noise folder, split by recording with a hash of its key: the same
    split on every machine, whatever else the folder holds, and never one recording on both sides."""
    keys = _recording_keys(Path(folder))

    def heldout(key: str) -> bool:
        digest = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
        return digest / 0xFFFFFFFF < heldout_fraction

    train = sorted(p for p, k in keys.items() if not heldout(k))
    held = sorted(p for p, k in keys.items() if heldout(k))
    return train, held


# ------------------------------------------------------------------------------------------------ rooms


def simulate_rooms(n: int, rt60: tuple[float, float], sample_rate: int, seed: int) -> list[torch.Tensor]:
    """``n`` room impulse responses ``(L,)`` (float32, direct path at 1): shoebox rooms 3x3x2.4 to 10x8x4 m with
    an RT60 drawn from ``rt60``, source and microphone at random points 0.5 m or more from the walls."""
    import numpy as np

    from rvqcodec.extras import require

    pra = require("pyroomacoustics", "for the reverberation augmentation")
    rng = np.random.default_rng(seed)
    rooms = []
    while len(rooms) < n:
        dims = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
        target = rng.uniform(*rt60)
        try:
            absorption, order = pra.inverse_sabine(target, dims)
        except ValueError:  # this room cannot reverberate that long
            continue
        room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                           max_order=min(order, MAX_IMAGE_ORDER))
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        rir = torch.tensor(room.rir[0][0], dtype=torch.float32)
        rir = rir[int(rir.abs().argmax()):]  # start at the direct path: no added delay
        rooms.append(rir / rir[0].abs().clamp_min(1e-8))
    return rooms


# ------------------------------------------------------------------------------------------------ signal ops


def power(x: torch.Tensor) -> torch.Tensor:
    """Mean square over the last axis, keeping it: ``(..., T) -> (..., 1)``."""
    return x.pow(2).mean(-1, keepdim=True)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``speech + g·noise`` with ``g`` such that ``10 log10(P(speech) / P(g·noise)) = snr_db`` (speech unchanged
    when either is silent)."""
    ps, pn = power(speech), power(noise)
    if float(ps) <= 0 or float(pn) <= 0:
        return speech
    return speech + noise * torch.sqrt(ps / (pn * 10 ** (snr_db / 10)))


def colored_noise(length: int, beta: float) -> torch.Tensor:
    """``(length,)`` Gaussian noise with a power spectrum ∝ f^-beta (0 white, 1 pink, 2 brown, -1 blue)."""
    spectrum = torch.fft.rfft(torch.randn(length))
    freqs = torch.arange(spectrum.numel(), dtype=torch.float32).clamp_min(1.0)
    return torch.fft.irfft(spectrum * freqs.pow(-beta / 2), n=length)


def lowpass(x: torch.Tensor, cutoff_hz: float, sample_rate: int) -> torch.Tensor:
    """``x`` with every FFT bin above ``cutoff_hz`` removed (last axis)."""
    spectrum = torch.fft.rfft(x, dim=-1)
    freqs = torch.fft.rfftfreq(x.shape[-1], 1.0 / sample_rate).to(x.device)
    return torch.fft.irfft(spectrum * (freqs <= cutoff_hz), n=x.shape[-1], dim=-1)


SPEED_STEPS = 160
"""A speed factor is rounded to a multiple of 1/SPEED_STEPS, so the resampling ratio stays one of small integers."""


def change_speed(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` (``(..., T)``) played ``factor`` times as fast (tempo and pitch together; ``factor`` rounded to a
    multiple of 1/:data:`SPEED_STEPS`), cut or zero-padded at the end to ``T`` samples."""
    import torchaudio

    steps = max(1, round(factor * SPEED_STEPS))
    y = torchaudio.functional.resample(x, orig_freq=steps, new_freq=SPEED_STEPS)
    length = x.shape[-1]
    if y.shape[-1] >= length:
        return y[..., :length]
    return torch.nn.functional.pad(y, (0, length - y.shape[-1]))


def reverberate(x: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``x`` (``(..., T)``) convolved with ``rir``, cut to ``T`` samples (the direct path keeps its timing). FFT
    convolution at a power-of-two length (several times faster than an awkward full length)."""
    n = 1 << (x.shape[-1] + rir.numel() - 2).bit_length()
    spectrum = torch.fft.rfft(x, n=n, dim=-1) * torch.fft.rfft(rir.to(x.device, x.dtype), n=n)
    return torch.fft.irfft(spectrum, n=n, dim=-1)[..., :x.shape[-1]]


def set_level(x: torch.Tensor, rms_dbfs: float) -> torch.Tensor:
    """``x`` scaled to an RMS of ``rms_dbfs`` dB re full scale, then down to a peak of 0.99 if it would clip."""
    rms = power(x).sqrt()
    if float(rms) <= 0:
        return x
    y = x * (10 ** (rms_dbfs / 20) / rms)
    peak = float(y.abs().max())
    return y * (0.99 / peak) if peak > 0.99 else y


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class Augmenter:
    """Applies :class:`AugmentConfig` to training batches: ``augmenter(batch (B, 1, T)) -> (B, 1, T)``."""

    def __init__(self, config: AugmentConfig, sample_rate: int, device: torch.device | str = "cpu"):
        from rvqcodec.data.audio_io import read_audio

        config.check()
        self.config, self.sample_rate = config, sample_rate
        self.noises: list[torch.Tensor] = []
        if config.prob > 0 and config.noise > 0:
            for folder in config.noise_dirs:
                train, _ = split_noise_files(folder, config.noise_heldout_fraction)
                for path in train:
                    samples = read_audio(path, target_sr=sample_rate, mono=True).samples[0]
                    if samples.numel() and float(samples.abs().max()) > 0:
                        self.noises.append(samples.to(device))
            if not self.noises:
                raise ValueError(f"augment.noise_dirs {config.noise_dirs} hold no training noise recordings")
        self.rooms = (simulate_rooms(config.n_rooms, config.rt60, sample_rate, config.seed)
                      if config.prob > 0 and config.reverb > 0 else [])

    def _noise_clip(self, length: int) -> torch.Tensor:
        recording = self.noises[int(torch.randint(len(self.noises), ()))]
        if recording.numel() < length:
            recording = recording.repeat(-(-length // recording.numel()))
        start = int(torch.randint(recording.numel() - length + 1, ()))
        return recording[start:start + length]

    def _babble(self, batch: torch.Tensor, index: int) -> torch.Tensor:
        others = [i for i in range(batch.shape[0]) if i != index]
        count = min(len(others), int(torch.randint(3, 7, ())))
        chosen = torch.randperm(len(others))[:count].tolist()
        return sum((batch[others[i], 0] / power(batch[others[i], 0]).sqrt().clamp_min(1e-5) for i in chosen),
                   torch.zeros_like(batch[index, 0]))

    def corrupt(self, x: torch.Tensor, batch: torch.Tensor, index: int) -> torch.Tensor:
        """One example ``x`` ``(T,)`` of ``batch`` corrupted (module docstring)."""
        c = self.config
        if c.speed > 0 and float(torch.rand(())) < c.speed:  # no draw when off: older recipes keep their draws
            x = change_speed(x, _uniform(*c.speed_factor))
        if self.rooms and float(torch.rand(())) < c.reverb:
            x = reverberate(x, self.rooms[int(torch.randint(len(self.rooms), ()))])
        draw = float(torch.rand(()))
        noise = None
        if draw < c.noise:
            noise = self._noise_clip(x.shape[-1])
        elif draw < c.noise + c.babble and batch.shape[0] > 1:
            noise = self._babble(batch, index)
        elif draw < c.noise + c.babble + c.colored:
            noise = colored_noise(x.shape[-1], _uniform(-1.0, 2.0)).to(x.device, x.dtype)
        if noise is not None:
            x = mix_at_snr(x, noise, _uniform(*c.snr_db))
        if float(torch.rand(())) < c.bandlimit:
            x = lowpass(x, _uniform(*c.cutoff_hz), self.sample_rate)
        if float(torch.rand(())) < c.level:
            x = set_level(x, _uniform(*c.level_dbfs))
        elif float(x.abs().max()) > 0.99:  # noise or a room can push a loud clip over full scale
            x = x * (0.99 / float(x.abs().max()))
        return x

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() != 3 or batch.shape[1] != 1:
            raise ValueError(f"expected a batch of mono audio (B, 1, T), got {tuple(batch.shape)}")
        out = batch.clone()
        for i in range(batch.shape[0]):
            if float(torch.rand(())) < self.config.prob:
                out[i, 0] = self.corrupt(batch[i, 0], batch, i)
        return out
