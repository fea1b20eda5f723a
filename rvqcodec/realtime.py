"""Real-time streaming with a causal frame-rate codec: audio in pieces of any size -> codes as soon as they are
determined, codes -> audio as soon as it is final, each frame at one frame's compute.

::

    encoder = StreamEncoder(codec, n_q=12)        # codec: a causal frame-rate model (CodecConfig.causal)
    decoder = StreamDecoder(codec)
    for piece in microphone:                      # (t,) float samples at codec.sample_rate, any t >= 0
        codes = encoder.push(piece)               # (n_q, frames completed by this piece) int64, often 0 frames
        play(decoder.push(codes))                 # (samples now final,) float32 in [-1, 1]
    play(decoder.push(encoder.flush()))           # the last, zero-padded frame
    play(decoder.flush())                         # the overlap-add tail

**Same result as offline.** The concatenated codes equal ``codec.encode`` of the whole signal and the concatenated
audio equals ``codec.decode`` of all the codes (``F·hop`` samples; float rounding aside), whatever the piece sizes:

* encoder: frame ``t``'s STFT window is the ``stem_n_fft`` samples ending with sample ``(t+1)·hop`` (zeros before
  the signal). The encoder keeps the last ``stem_n_fft - hop`` samples and the unfinished frame's samples, and
  runs the stem on the completed frames, then the ConvNeXt stack and the quantizer frame by frame
  (:mod:`rvqcodec.model.frame_by_frame`: each causal convolution reads a window of its last input frames, the
  weights are folded for one frame). :meth:`StreamEncoder.flush` zero-pads the unfinished frame, as
  ``Codec.encode`` pads the signal to whole frames;
* decoder: each frame's latent (a sum of looked-up decoded codes) goes through the causal ConvNeXt stack (frame by
  frame likewise) and the inverse-STFT head.
  Head frame ``t``'s windowed inverse FFT covers output samples ``[(t+1)·hop - head_n_fft, (t+1)·hop)``, so after
  frame ``t`` the samples before ``(t+1)·hop - (head_n_fft - hop)`` have every window they will get: they are
  divided by the overlap-added squared window (the offline normaliser) and returned; the ``head_n_fft - hop``
  samples after them wait in an overlap-add tail, with their partial window sums. Samples before 0 (the first
  windows' overhang) are dropped as offline. :meth:`StreamDecoder.flush` returns the tail divided by its window
  sum plus what the windows of the frames that would follow add, which is what offline does at the end of the
  signal (it fades out as if silence followed; :mod:`rvqcodec.model.spectral`).

**Latency** (:func:`algorithmic_latency_samples`): a sample waits for the end of its frame (``hop``: 20 ms at 16 kHz,
hop 320) and, decoded, for the next ``head_n_fft - hop`` samples' windows (20 ms for ``head_n_fft`` 640): 40 ms for
the ``convnext-causal`` preset. The causal stem and ConvNeXt stacks add none. :func:`measure_latency` checks it with
an impulse through the real streaming objects. Non-causal models are refused (:class:`NotStreamableError`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from rvqcodec.data.audio_io import mono_samples
from rvqcodec.errors import InputError
from rvqcodec.model.frame_by_frame import FrameHead, FrameQuantizer, FrameStack, FrameStem, decoded_code_tables
from rvqcodec.model.spectral import ENVELOPE_FLOOR, frames_to_come, overlap_add

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec


class NotStreamableError(InputError):
    """The model has look-ahead (not causal, or not a frame-rate model): it cannot run frame by frame."""


def check_streamable(codec: Codec) -> None:
    """Raise :class:`NotStreamableError` (one line) unless ``codec`` is a causal frame-rate model."""
    config = codec.config
    if config.architecture != "convnext":
        raise NotStreamableError(f"model {codec.model_id} is a {config.architecture} model; streaming needs a causal "
                                 "frame-rate model (preset convnext-causal)")
    if not config.causal:
        raise NotStreamableError(f"model {codec.model_id} is not causal (it looks ahead); streaming needs a causal "
                                 "model (preset convnext-causal, e.g. the 'streaming' model)")


def algorithmic_latency_samples(codec: Codec) -> int:
    """Samples from a sample entering :class:`StreamEncoder` to its decoded copy leaving :class:`StreamDecoder`
    (playback at a constant delay, zero compute time): one frame of buffering (``hop``) plus the head's overlap-add
    (``head_n_fft - hop``). 640 (40 ms at 16 kHz) for the ``convnext-causal`` preset."""
    check_streamable(codec)
    hop = codec.hop_length
    return hop + (codec.config.head_n_fft - hop)


def _as_samples(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """A mono piece of float samples as a 1-D float32 numpy array (ValueError for another shape or dtype)."""
    piece = mono_samples(samples)
    if not (np.issubdtype(piece.dtype, np.floating) or piece.size == 0):
        raise ValueError(f"expected float samples in [-1, 1], got {piece.dtype}")
    return piece.astype(np.float32, copy=False)


class StreamEncoder:
    """Audio pieces -> codes, frame by frame (module docstring).

    Args:
        codec: a causal frame-rate model (:func:`check_streamable`), in eval mode.
        n_q: RVQ stages per frame (1 .. ``codec.max_n_q``; None: all).

    :attr:`samples_in` counts the samples pushed; :attr:`frames_out` the frames returned.
    """

    def __init__(self, codec: Codec, n_q: int | None = None):
        check_streamable(codec)
        self.codec = codec
        self.n_q = codec.max_n_q if n_q is None else n_q
        if isinstance(self.n_q, bool) or int(self.n_q) != self.n_q or not 1 <= self.n_q <= codec.max_n_q:
            raise ValueError(f"n_q must be an integer between 1 and {codec.max_n_q}, got {n_q!r}")
        self.n_q = int(self.n_q)
        self.hop = codec.hop_length
        self.n_fft = codec.encoder.stem.n_fft
        self._history = self.n_fft - self.hop  # samples before a frame that its window reads
        self._buffer = np.zeros(self._history, dtype=np.float32)  # history + the unfinished frame
        self._stem = FrameStem(codec.encoder.stem)
        self._stack = FrameStack(codec.encoder.net, codec.encoder.net.proj_out)
        self._quantizer = FrameQuantizer(codec.quantizer, self.n_q)
        self.samples_in = 0
        self.frames_out = 0
        self._finished = False

    def push(self, samples: np.ndarray | torch.Tensor) -> np.ndarray:
        """Feed ``(t,)`` float samples at ``codec.sample_rate`` (any ``t >= 0``) -> ``(n_q, frames)`` int64 codes
        of the frames this piece completed (0 frames until a frame's ``hop`` samples are in)."""
        if self._finished:
            raise RuntimeError("push after flush: start a new StreamEncoder for a new signal")
        piece = _as_samples(samples)
        self.samples_in += piece.size
        self._buffer = np.concatenate([self._buffer, piece])
        n_frames = (self._buffer.size - self._history) // self.hop
        return self._encode(n_frames)

    def flush(self) -> np.ndarray:
        """End of the signal: the codes of the unfinished frame, zero-padded (``(n_q, 0)`` when the samples filled
        whole frames). Equals what ``codec.encode`` gives for the last frame."""
        if self._finished:
            return np.zeros((self.n_q, 0), dtype=np.int64)
        pending = self._buffer.size - self._history
        if pending:
            self._buffer = np.concatenate([self._buffer, np.zeros(self.hop - pending, dtype=np.float32)])
        codes = self._encode(1 if pending else 0)
        self._finished = True
        return codes

    def _encode(self, n_frames: int) -> np.ndarray:
        if n_frames == 0:
            return np.zeros((self.n_q, 0), dtype=np.int64)
        codes = np.empty((self.n_q, n_frames), dtype=np.int64)
        with torch.inference_mode():
            for t in range(n_frames):  # frame t's window: the n_fft samples ending with its last sample
                window = self._buffer[t * self.hop:t * self.hop + self.n_fft]
                codes[:, t] = self._quantizer.encode(self._stack.step(self._stem.features(window)))
        self._buffer = self._buffer[n_frames * self.hop:]
        self.frames_out += n_frames
        return codes


class StreamDecoder:
    """Codes -> audio, frame by frame (module docstring). Every push must carry the same number of stages.

    :attr:`frames_in` counts the frames pushed; :attr:`samples_out` the samples returned.
    """

    def __init__(self, codec: Codec):
        check_streamable(codec)
        self.codec = codec
        self.hop = codec.hop_length
        head = codec.decoder.head
        self._head = FrameHead(head)
        self._window_sq = self._head.window * self._head.window
        self._overhang = head.n_fft - self.hop  # samples a frame's window reaches back beyond its own block
        self._tail = np.zeros(self._overhang, dtype=np.float32)  # overlap-add sums not yet final
        self._tail_weight = np.zeros(self._overhang, dtype=np.float32)  # their squared-window sums
        # what the windows of the frames after the last would add to the tail's sums (offline's normaliser)
        to_come = frames_to_come(head.n_fft, self.hop)
        window_sq = torch.from_numpy(self._window_sq)
        self._tail_weight_to_come = overlap_add(window_sq.expand(1, to_come, -1), self.hop)[0, :self._overhang].numpy()
        self._to_drop = self._overhang  # the first windows' samples before the signal's start
        self._tables = decoded_code_tables(codec.quantizer)  # (S, K, D): a frame's latent is a sum of rows
        self._stack: FrameStack | None = None  # made on the first push, when the stream's stage count is known
        self.n_q: int | None = None
        self.frames_in = 0
        self.samples_out = 0
        self._finished = False

    def push(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Feed ``(n_q, frames)`` integer codes (any ``frames >= 0``) -> ``(samples,)`` float32 audio now final,
        clamped to [-1, 1] as ``codec.decode`` clamps."""
        if self._finished:
            raise RuntimeError("push after flush: start a new StreamDecoder for a new signal")
        codes = np.asarray(codes.detach().cpu() if torch.is_tensor(codes) else codes)
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"expected integer codes of shape (n_q, frames), got {codes.dtype} {codes.shape}")
        n_q = codes.shape[0]
        if self.n_q is None:
            if not 1 <= n_q <= self.codec.max_n_q:
                raise ValueError(f"codes must have 1 to {self.codec.max_n_q} stages, got {n_q}")
            self.n_q = n_q
        elif n_q != self.n_q:
            raise ValueError(f"this stream has {self.n_q} stages per frame, got codes with {n_q}")
        n_frames = codes.shape[1]
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        if int(codes.min()) < 0 or int(codes.max()) >= self._tables.shape[1]:
            raise ValueError(f"codes must lie in [0, {self._tables.shape[1]})")
        if self._stack is None:
            decoder = self.codec.decoder
            self._stack = FrameStack(decoder.net, decoder.head.proj, decoder.conditioning(n_q))
        latents = self._tables[np.arange(n_q)[:, None], codes].sum(0)  # (n_frames, D)
        with torch.inference_mode():
            out = np.concatenate([self._synthesise(latent) for latent in latents])
        self.frames_in += n_frames
        return self._emit(out)

    def _synthesise(self, latent: np.ndarray) -> np.ndarray:
        """One frame's latent ``(D,)`` -> the ``hop`` output samples it makes final (``frames_in·hop - overhang``
        on); its window's later samples join the overlap-add tail."""
        audio = self._head.windowed(self._stack.step(latent))  # (n_fft,)
        weight = self._window_sq.copy()
        audio[:self._overhang] += self._tail
        weight[:self._overhang] += self._tail_weight
        self._tail, self._tail_weight = audio[self.hop:], weight[self.hop:]
        return audio[:self.hop] / np.maximum(weight[:self.hop], ENVELOPE_FLOOR)

    def flush(self) -> np.ndarray:
        """End of the codes: the overlap-add tail (``head_n_fft - hop`` samples) normalised as offline decoding
        ends, as if silent frames followed (:mod:`rvqcodec.model.spectral`). Afterwards ``samples_out == frames_in ·
        hop``, ``codec.decode``'s length."""
        if self._finished:
            return np.zeros(0, dtype=np.float32)
        self._finished = True
        if self.frames_in == 0:
            return np.zeros(0, dtype=np.float32)
        weight = self._tail_weight + self._tail_weight_to_come
        return self._emit(self._tail / np.maximum(weight, ENVELOPE_FLOOR))

    def _emit(self, out: np.ndarray) -> np.ndarray:
        if self._to_drop:
            dropped = min(self._to_drop, out.size)
            out, self._to_drop = out[dropped:], self._to_drop - dropped
        self.samples_out += out.size
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------- measuring


@dataclass
class LatencyMeasurement:
    """:func:`measure_latency`'s result."""

    samples: int  # from the impulse entering the encoder to the decoded sample at its position leaving the decoder
    ms: float
    by_construction_samples: int  # algorithmic_latency_samples
    causal: bool  # nothing returned before the impulse entered changed because of it
    responds: bool  # the decoded sample at the impulse's position changed because of it


def measure_latency(codec: Codec, n_q: int | None = None, frames: int = 6) -> LatencyMeasurement:
    """Measure the algorithmic latency with an impulse: a signal of ``frames`` frames, silent but for an impulse at
    the first sample of a middle frame (the sample that waits longest), and the same signal without it, are
    streamed one sample at a time through :class:`StreamEncoder` and :class:`StreamDecoder`. The latency is the
    number of input samples between the impulse entering and the decoder returning the output sample at the
    impulse's position; the output returned before the impulse entered must not depend on it (``causal``), and the
    output at its position must (``responds``, else the measured position says nothing). Independent of the
    weights (any causal model)."""
    hop = codec.hop_length
    position = (frames // 2) * hop
    silent = np.zeros(frames * hop, dtype=np.float32)
    impulse = silent.copy()
    impulse[position] = 0.5
    outputs, returned_at = [], None
    for signal in (silent, impulse):
        encoder, decoder = StreamEncoder(codec, n_q), StreamDecoder(codec)
        pieces, at = [], []
        for count in range(1, signal.size + 1):
            out = decoder.push(encoder.push(signal[count - 1:count]))
            pieces.append(out)
            at += [count] * out.size
        out = decoder.push(encoder.flush())
        tail = decoder.flush()
        pieces += [out, tail]
        at += [signal.size + hop] * (out.size + tail.size)  # after the end: never the measured sample
        outputs.append(np.concatenate(pieces))
        returned_at = np.asarray(at)
    before = returned_at <= position  # returned before the impulse (input sample ``position``) entered
    differs = outputs[0] != outputs[1]
    samples = int(returned_at[position] - position)
    return LatencyMeasurement(samples=samples, ms=1000.0 * samples / codec.sample_rate,
                              by_construction_samples=algorithmic_latency_samples(codec),
                              causal=not bool(differs[before].any()), responds=bool(differs[position]))


@dataclass
class LoopbackResult:
    """:func:`loopback`'s result: the decoded signal and the compute time of every piece."""

    audio: np.ndarray  # (frames · hop,) float32: what StreamDecoder returned in all
    codes: np.ndarray  # (n_q, frames) int64
    piece_seconds: list[float] = field(default_factory=list)  # encoder.push + decoder.push per piece (wall clock)
    flush_seconds: float = 0.0


def loopback(codec: Codec, samples: np.ndarray, n_q: int | None = None, piece: int | None = None) -> LoopbackResult:
    """Stream ``samples`` ``(T,)`` through a :class:`StreamEncoder` and a :class:`StreamDecoder` in pieces of
    ``piece`` samples (default one frame, ``hop``: 20 ms), timing each piece's encode + decode."""
    piece = codec.hop_length if piece is None else int(piece)
    if piece < 1:
        raise ValueError(f"piece must be at least 1 sample, got {piece}")
    encoder, decoder = StreamEncoder(codec, n_q), StreamDecoder(codec)
    audio, codes, seconds = [], [], []
    samples = np.asarray(samples, dtype=np.float32)
    for start in range(0, samples.size, piece):
        began = time.perf_counter()
        frame_codes = encoder.push(samples[start:start + piece])
        out = decoder.push(frame_codes)
        seconds.append(time.perf_counter() - began)
        codes.append(frame_codes)
        audio.append(out)
    began = time.perf_counter()
    last = encoder.flush()
    audio += [decoder.push(last), decoder.flush()]
    codes.append(last)
    flush_seconds = time.perf_counter() - began
    return LoopbackResult(audio=np.concatenate(audio), codes=np.concatenate(codes, axis=1), piece_seconds=seconds,
                          flush_seconds=flush_seconds)
