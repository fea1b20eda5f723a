"""Encoding and decoding a signal of any length chunk by chunk, in bounded memory (the chunk engine).

Chunking (see ``docs/bitstream.md``, "Long files"): the signal is cut into chunks of ``chunk_seconds``
(whole frames), and each chunk is encoded together with some real signal on each side (clipped at the
signal's ends); only the chunk's own frames are kept. Decoding works the same way on code frames. Windows
start on frame boundaries, so every chunk sees the same frame grid as the whole signal. The context is by
default the model's own (``Codec.context_frames``: 10 frames of audio for the default model's encoder and 21
frames of codes for its decoder; ``FALLBACK_CONTEXT_SECONDS``, 1 s, for SEANet models, whose receptive field
of about 0.2 s is not derived), at least the
encoder's and the decoder's receptive fields (checked in ``tests/test_streaming.py``), so a chunk's frames
depend on exactly the same samples as in a single pass; the only difference is float32 summation order inside
convolutions of different lengths (~1e-6 on latents). Documented tolerance vs unchunked processing:

* codes: identical except for a latent lying within float rounding of a tie between two codewords
  (tested: at least 99.9 % of codes equal; in practice all of them);
* decoded audio from the same codes: max absolute difference ``<= 1e-4`` (measured ~1e-6).

Memory is bounded by the chunk, not the signal: a window is ``chunk + 2 * context`` (at most 12 s by
default); the context costs ``2 * context / chunk`` of extra work (4 % / 8 % for the default model's encoder /
decoder with 10 s chunks, 20 % with 1 s of context).
:func:`encode_blocks` takes the signal as consecutive blocks (e.g. from
:func:`rvqcodec.data.audio_io.iter_audio_blocks`) and :func:`decode_chunks` yields the decoded signal piece by
piece; only the codes of the whole signal are held (``n_q * frames`` int64: 23 MB for 1 h at 8 kbps). Measured
peak RSS with the ``base`` model is about 300 MB above the ~650 MB that importing torch itself takes here,
whatever the file length (numbers and commands in ``docs/bitstream.md``).

Used by :mod:`rvqcodec.streams` (a codec's ``.rvq`` streams), behind the bytes API (:mod:`rvqcodec.api`), the
file API (:mod:`rvqcodec.codec_files`) and ``rvqcodec roundtrip``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from rvqcodec.errors import InputError
from rvqcodec.lengths import CHUNK_SECONDS, READ_BLOCK_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec


FALLBACK_CONTEXT_SECONDS = 1.0
"""Context for models whose receptive field is not derived (``Codec.context_frames`` is None: SEANet), 5x the
~0.2 s measured for ``base`` (tests/test_streaming.py checks it covers every preset)."""

MIN_CHUNK_SECONDS = 1.0
"""Shortest chunk accepted: each chunk is encoded with its context on each side (up to 1 s), so a window costs
``(chunk + 2 * context) / chunk`` times the single-pass work (up to 3x at 1 s, 2001x at 1 ms)."""


@dataclass(frozen=True)
class ChunkConfig:
    """How long inputs are cut for bounded-memory processing.

    Attributes:
        chunk_seconds: audio whose frames are kept from one window (rounded to whole frames; at least
            ``MIN_CHUNK_SECONDS``, else :class:`rvqcodec.errors.InputError`).
        context_seconds: extra real signal on each side of a chunk (rounded up to whole frames); must cover
            the model's receptive field for chunked output to equal single-pass output. ``None`` (default):
            the model's own, ``Codec.context_frames``, or ``FALLBACK_CONTEXT_SECONDS`` where it has none.
        read_block_seconds: how much of the file is read per step (at the file's own rate).
    """

    chunk_seconds: float = CHUNK_SECONDS
    context_seconds: float | None = None
    read_block_seconds: float = READ_BLOCK_SECONDS

    def __post_init__(self) -> None:
        if not self.read_block_seconds > 0 or not (self.context_seconds is None or self.context_seconds >= 0):
            raise ValueError(f"read_block_seconds must be > 0 and context_seconds >= 0, got "
                             f"{self.read_block_seconds}, {self.context_seconds}")
        if not (self.chunk_seconds >= MIN_CHUNK_SECONDS and math.isfinite(self.chunk_seconds)):
            raise InputError(f"chunk length must be at least {MIN_CHUNK_SECONDS:g} s (each chunk is processed with "
                             f"up to 1 s of context on each side, which covers the model's receptive field: shorter "
                             f"chunks multiply the work without changing the result), got {self.chunk_seconds:g} s")

    def frames(self, codec: Codec) -> tuple[int, int, int]:
        """``(chunk, encoder_context, decoder_context)`` in frames of ``codec``."""
        chunk = max(1, round(self.chunk_seconds * codec.frame_rate))
        seconds = self.context_seconds
        if seconds is None:
            if codec.context_frames is not None:
                return (chunk, *codec.context_frames)
            seconds = FALLBACK_CONTEXT_SECONDS
        context = math.ceil(seconds * codec.frame_rate - 1e-9)
        return chunk, context, context


@contextmanager
def _inference(codec: Codec):
    """Eval mode + inference mode for the duration, restoring the codec's training flag afterwards."""
    was_training = codec.training
    codec.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        codec.train(was_training)


def _device(codec: Codec) -> torch.device:
    return next(codec.parameters()).device


def encode_blocks(codec: Codec, blocks: Iterable[torch.Tensor | np.ndarray], n_q: int,
                  chunking: ChunkConfig = ChunkConfig()) -> tuple[np.ndarray, int]:
    """Encode consecutive mono blocks at ``codec.sample_rate`` into codes, chunk by chunk.

    Args:
        codec: the model (its training flag is restored afterwards).
        blocks: consecutive pieces of one signal, each ``(t,)`` or ``(1, t)`` float, any sizes.
        n_q: stages to keep.
        chunking: chunk and context lengths.

    Returns:
        ``(codes, num_samples)``: codes ``(n_q, ceil(num_samples / hop))`` int64 numpy; the signal is
        zero-padded to whole frames, exactly as ``codec.encode`` does for a single pass.

    Raises:
        ValueError: a block is not mono or contains NaN/inf.
    """
    hop = codec.hop_length
    chunk, context, _ = chunking.frames(codec)
    device = _device(codec)
    buffer = torch.zeros(0)
    buffer_start = 0  # absolute sample index of buffer[0]
    total = 0
    next_frame = 0  # first frame not yet encoded
    parts: list[np.ndarray] = []

    def encode_frames(first: int, last: int, known_frames: int) -> np.ndarray:
        """Codes of frames [first, last), from a window with up to ``context`` frames each side."""
        lo, hi = max(0, first - context), min(known_frames, last + context)
        window = buffer[lo * hop - buffer_start: hi * hop - buffer_start]
        if window.numel() < (hi - lo) * hop:  # end of signal: zero-pad to whole frames like codec.encode
            window = torch.nn.functional.pad(window, (0, (hi - lo) * hop - window.numel()))
        with _inference(codec):
            codes = codec.encode(window.to(device).view(1, 1, -1), n_q)
        return codes[0, :, first - lo:last - lo].cpu().numpy()

    for block in blocks:
        block = torch.as_tensor(block, dtype=torch.float32)
        if block.dim() == 2 and block.shape[0] == 1:
            block = block[0]
        if block.dim() != 1:
            raise ValueError(f"expected mono blocks of shape (t,) or (1, t), got {tuple(block.shape)}")
        if not torch.isfinite(block).all():
            raise InputError("audio contains NaN or infinite samples")
        buffer = torch.cat([buffer, block])
        total += block.numel()
        # Encode every chunk whose right context is fully available.
        while (next_frame + chunk + context) * hop <= total:
            parts.append(encode_frames(next_frame, next_frame + chunk, next_frame + chunk + context))
            next_frame += chunk
            drop = max(0, (next_frame - context) * hop) - buffer_start
            buffer, buffer_start = buffer[drop:], buffer_start + drop
    num_frames = -(-total // hop)
    while next_frame < num_frames:
        last = min(next_frame + chunk, num_frames)
        parts.append(encode_frames(next_frame, last, num_frames))
        next_frame = last
    codes = np.concatenate(parts, axis=1) if parts else np.zeros((n_q, 0), dtype=np.int64)
    return codes.astype(np.int64, copy=False), total


def decode_chunks(codec: Codec, codes: np.ndarray | torch.Tensor, num_samples: int,
                  chunking: ChunkConfig = ChunkConfig()) -> Iterator[torch.Tensor]:
    """Decode codes ``(n_q, frames)`` chunk by chunk.

    Yields float32 CPU tensors ``(t,)`` at ``codec.sample_rate`` whose concatenation is the decoded signal
    trimmed to ``num_samples`` (which must be ``<= frames * hop``).
    """
    codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes, dtype=torch.long)
    if codes.dim() != 2:
        raise ValueError(f"codes must have shape (n_q, frames), got {tuple(codes.shape)}")
    hop = codec.hop_length
    num_frames = codes.shape[1]
    if num_samples > num_frames * hop:
        raise ValueError(f"{num_samples} samples need {-(-num_samples // hop)} frames, got {num_frames}")
    chunk, _, context = chunking.frames(codec)
    device = _device(codec)
    for first in range(0, -(-num_samples // hop), chunk):
        last = min(first + chunk, num_frames)
        lo, hi = max(0, first - context), min(num_frames, last + context)
        with _inference(codec):
            audio = codec.decode(codes[None, :, lo:hi].to(device))[0, 0]
        start = (first - lo) * hop
        stop = start + min(last * hop, num_samples) - first * hop
        yield audio[start:stop].float().cpu().clone()
