"""Frame-rate spectral front end and back end: a short-time Fourier transform on a fixed frame grid and its
inverse by weighted overlap-add.

**The frame grid.** Audio ``(B, 1, T)`` is padded on the right to ``F·hop`` samples, ``F = ceil(T / hop)``;
frame ``t`` stands for samples ``[t·hop, (t+1)·hop)`` and its ``n_fft``-sample window is placed

* centred on that block (``causal=False``): ``[t·hop + hop/2 - n_fft/2, …)``, i.e. ``(n_fft - hop) / 2``
  samples of look-back and of look-ahead;
* ending with that block (``causal=True``): ``[(t+1)·hop - n_fft, (t+1)·hop)``, no look-ahead.

Samples outside the signal are zeros. So an encoder built on :func:`frame_signal` gives exactly one frame
per ``hop`` samples for any ``T``, and :class:`ISTFTHead` turns ``F`` frames back into exactly ``F·hop``
samples on the same grid.

**Inverse.** ``istft_overlap_add`` inverts ``stft_frames``: frames are inverse-FFT'd, multiplied by the window,
overlap-added and divided by the overlap-added squared window (the least-squares inverse of Griffin & Lim, as
``torch.istft`` does). With a Hann window and ``hop <= n_fft / 2`` the inverse is exact (up to float rounding)
on every sample of centred frames. Causal windows end with their frame, so the last ``n_fft - hop`` samples are
reached only by the falling tails of the last windows, whose squared sum goes to 0 at the last sample: dividing by
it inverts a known STFT exactly but multiplies any error of a *predicted* spectrum there by up to 1e8 (a causal
model trained that way decoded 3 s clips ending at 159 times full scale, and learnt mostly to be quiet). So the
causal normaliser also counts the windows of the frames that would follow the last one, as if they carried
silence: the last ``n_fft - hop`` samples fade out as their window does, and no error is amplified more than by
the steady-state normaliser (1 / 0.5 for Hann at ``hop = n_fft / 2``). A streaming decoder emits the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rvqcodec.model.postfilter import check_strength, deepen_valleys, envelope_operator


ENVELOPE_FLOOR = 1e-8
"""The overlap-added squared window is floored here before dividing by it (:func:`window_envelope`; a streaming
decoder's running sums likewise)."""
MAGNITUDE_FLOOR = 1e-5
"""Added to ``|X|`` in :class:`STFTFeatures` before its log and power law (finite at 0); the frame-by-frame stem's
too."""


def _padding(n_fft: int, hop: int, causal: bool) -> tuple[int, int]:
    extra = n_fft - hop
    left = extra if causal else extra // 2
    return left, extra - left


def check_frame_setup(n_fft: int, hop: int) -> None:
    """ValueError unless ``hop >= 1`` and ``n_fft >= hop`` and ``n_fft - hop`` is even (centred windows)."""
    if hop < 1 or n_fft < hop or (n_fft - hop) % 2:
        raise ValueError(f"need n_fft >= hop >= 1 with n_fft - hop even, got n_fft={n_fft}, hop={hop}")


def frame_signal(wav: torch.Tensor, n_fft: int, hop: int, causal: bool = False) -> torch.Tensor:
    """``(B, 1, T)`` audio -> ``(B, F, n_fft)`` windows of the frame grid (no window function applied)."""
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"expected mono audio of shape (B, 1, T), got {tuple(wav.shape)}")
    n_frames = -(-wav.shape[-1] // hop)
    left, right = _padding(n_fft, hop, causal)
    x = F.pad(wav[:, 0], (left, n_frames * hop - wav.shape[-1] + right))
    return x.unfold(-1, n_fft, hop)


def stft_frames(wav: torch.Tensor, window: torch.Tensor, hop: int, causal: bool = False) -> torch.Tensor:
    """``(B, 1, T)`` -> complex ``(B, F, n_fft // 2 + 1)`` spectra of the windowed frames of the grid."""
    return torch.fft.rfft(frame_signal(wav, window.shape[-1], hop, causal) * window, dim=-1)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """``(B, F, n)`` frames -> ``(B, (F - 1)·hop + n)`` sums of the frames placed every ``hop`` samples."""
    n_frames, n = frames.shape[1], frames.shape[2]
    total = (n_frames - 1) * hop + n
    return F.fold(frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, n), stride=(1, hop)).flatten(1)


def synthesis_frames(spec: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, F, n_fft // 2 + 1)`` -> ``(B, F, n_fft)`` windowed inverse FFTs: what
    :func:`istft_overlap_add` overlap-adds (a streaming decoder adds them one frame at a time)."""
    return torch.fft.irfft(spec, n=window.shape[-1], dim=-1) * window


def frames_to_come(n_fft: int, hop: int) -> int:
    """Frames after a causal frame whose windows reach back into its last ``n_fft - hop`` samples."""
    return -(-(n_fft - hop) // hop)


def window_envelope(window: torch.Tensor, hop: int, n_frames: int, causal: bool = False) -> torch.Tensor:
    """``(n_frames·hop,)`` overlap-added squared window on the frame grid, floored at :data:`ENVELOPE_FLOOR`: the
    normaliser of :func:`istft_overlap_add`. Causal: with the windows of the :func:`frames_to_come` after the last
    frame (module docstring)."""
    n_fft = window.shape[-1]
    left, _ = _padding(n_fft, hop, causal)
    n_windows = n_frames + (frames_to_come(n_fft, hop) if causal else 0)
    envelope = overlap_add((window * window).expand(1, n_windows, -1), hop)[0]
    return envelope[left:left + n_frames * hop].clamp_min(ENVELOPE_FLOOR)


def istft_overlap_add(spec: torch.Tensor, window: torch.Tensor, hop: int, causal: bool = False,
                      envelope: torch.Tensor | None = None) -> torch.Tensor:
    """Complex ``(B, F, n_fft // 2 + 1)`` -> ``(B, 1, F·hop)`` audio on the frame grid (see module docstring).
    ``envelope``: :func:`window_envelope` for these ``F`` frames, if already at hand."""
    n_fft = window.shape[-1]
    n_frames = spec.shape[1]
    audio = overlap_add(synthesis_frames(spec, window), hop)  # (B, (F - 1)·hop + n_fft)
    if envelope is None:
        envelope = window_envelope(window, hop, n_frames, causal)
    left, _ = _padding(n_fft, hop, causal)
    return (audio[:, left:left + n_frames * hop] / envelope).unsqueeze(1)


class STFTFeatures(nn.Module):
    """Spectral stem: ``(B, 1, T)`` audio -> ``(B, 3·(n_fft // 2 + 1), F)`` per-frame features.

    Per bin: ``log(|X| + 1e-5)`` and the power-law-compressed complex value ``|X|^0.3 · X / |X|`` (real and
    imaginary parts): level-robust magnitudes plus phase, as in ESC. Hann window, no parameters.
    """

    def __init__(self, n_fft: int, hop: int, causal: bool = False, compress: float = 0.3):
        super().__init__()
        check_frame_setup(n_fft, hop)
        self.n_fft, self.hop, self.causal, self.compress = n_fft, hop, causal, compress
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.out_dim = 3 * (n_fft // 2 + 1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.from_frames(frame_signal(wav.float(), self.n_fft, self.hop, self.causal))

    def from_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, F, n_fft)`` windows of the frame grid (:func:`frame_signal`) -> ``(B, 3·n_bins, F)`` features: a
        streaming encoder cuts each new frame's window from its own sample history."""
        spec = torch.fft.rfft(frames.float() * self.window, dim=-1)
        mag = spec.abs()
        scale = (mag + MAGNITUDE_FLOOR).pow(self.compress - 1.0)  # |X|^0.3 / |X|, finite at 0
        feats = torch.cat([torch.log(mag + MAGNITUDE_FLOOR), spec.real * scale, spec.imag * scale], dim=-1)
        return feats.transpose(1, 2)


class ISTFTHead(nn.Module):
    """Output head: ``(B, dim, F)`` frames -> ``(B, 1, F·hop)`` audio.

    A linear map gives per bin a log-magnitude ``m`` and a phase ``p``; ``X = exp(m) · e^{ip}`` (magnitude
    capped at ``e^{max_log_mag}``) is inverted by :func:`istft_overlap_add` with a Hann window (Vocos' head).
    :attr:`postfilter` > 0 deepens the valleys of each frame's envelope first (:mod:`rvqcodec.model.postfilter`;
    0, the default, is the head as trained).
    """

    def __init__(self, dim: int, n_fft: int, hop: int, causal: bool = False, max_log_mag: float = 4.6):
        super().__init__()
        check_frame_setup(n_fft, hop)
        self.n_fft, self.hop, self.causal, self.max_log_mag = n_fft, hop, causal, max_log_mag
        self.n_bins = n_fft // 2 + 1
        self.proj = nn.Linear(dim, 2 * self.n_bins)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self._envelopes: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}  # by frame count
        self._postfilter = 0.0
        # the postfilter's lifter (n_bins, n_bins), made the first time a strength > 0 is set; moves with the module
        self.register_buffer("_lifter", None, persistent=False)

    @property
    def postfilter(self) -> float:
        """Formant postfilter strength in [0, 1] (:mod:`rvqcodec.model.postfilter`); not a weight, not trained."""
        return self._postfilter

    @postfilter.setter
    def postfilter(self, strength: float) -> None:
        self._postfilter = check_strength(strength)
        if self._postfilter and self._lifter is None:
            self._lifter = envelope_operator(self.n_bins).to(self.window)

    def postfiltered(self, log_mag: torch.Tensor) -> torch.Tensor:
        """``(..., n_bins)`` float32 log-magnitudes through the postfilter (themselves when it is off); frame by
        frame, so the frame-by-frame decoder applies it too."""
        if not self._postfilter:
            return log_mag
        return deepen_valleys(log_mag, self._lifter.to(log_mag), self._postfilter)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, F)`` -> complex ``(B, F, n_bins)`` (float32)."""
        return self.to_spectrum(self.proj(x.transpose(1, 2)))

    def to_spectrum(self, projected: torch.Tensor) -> torch.Tensor:
        """The projection's output ``(..., 2·n_bins)`` (log-magnitudes, then phases) -> complex ``(..., n_bins)``
        (float32)."""
        log_mag, phase = projected.float().chunk(2, dim=-1)
        log_mag = self.postfiltered(log_mag)
        return torch.polar(torch.exp(log_mag.clamp(max=self.max_log_mag)), phase)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum(x)
        key = (spec.shape[1], self.window.device, self.window.dtype)
        envelope = self._envelopes.get(key)
        if envelope is None:  # the same few frame counts recur (training crops, decoding chunks)
            if len(self._envelopes) >= 16:
                self._envelopes.clear()
            envelope = self._envelopes[key] = window_envelope(self.window, self.hop, spec.shape[1], self.causal)
        return istft_overlap_add(spec, self.window, self.hop, self.causal, envelope)
