"""Compressing and decompressing audio of any length in bounded memory, to and from ``.rvq`` bitstreams.

Chunking (see ``docs/bitstream.md``, "Long files"): the signal is cut into chunks of ``chunk_seconds``
(whole frames), and each chunk is encoded together with ``context_seconds`` of real signal on each side
(clipped at the signal's ends); only the chunk's own frames are kept. Decoding works the same way on code
frames. Windows start on frame boundaries, so every chunk sees the same frame grid as the whole signal.
Because the context (1 s by default) is longer than the encoder's and the decoder's receptive fields
(about 0.2 s for the ``base`` model, checked in ``tests/test_streaming.py``), a chunk's central frames depend
on exactly the same samples as in a single pass; the only difference is float32 summation order inside
convolutions of different lengths (~1e-6 on latents). Documented tolerance vs unchunked processing:

* codes: identical except for a latent lying within float rounding of a tie between two codewords
  (tested: at least 99.9 % of codes equal; in practice all of them);
* decoded audio from the same codes: max absolute difference ``<= 1e-4`` (measured ~1e-6).

Memory is bounded by the chunk, not the file: a window is ``chunk + 2 * context`` seconds (12 s by default),
the audio is read with :func:`rvqcodec.data.audio_io.iter_audio_blocks`, and decoded audio is streamed to
the output file. Only the codes of the whole file are held (``n_q * frames`` int64: 23 MB for 1 h at 8 kbps).
Measured peak RSS with the ``base`` model is about 300 MB above the ~650 MB that importing torch itself takes
here, whatever the file length (numbers and commands in ``docs/bitstream.md``).

Public API: :func:`compress` / :func:`decompress` (bytes in memory), :func:`compress_file` /
:func:`decompress_file` (files, atomic writes), :func:`encode_blocks` / :func:`decode_chunks` (the chunked
engines), :func:`streamed_audio_file` (write decoded blocks atomically), :func:`as_mono` (the array layouts the
bytes API accepts), :func:`resolve_n_q`, :func:`check_codec_matches`, :func:`load_default_codec`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from rvqcodec import bitstream
from rvqcodec.bitstream import ModelMismatchError, RVQHeader
from rvqcodec.data import audio_io
from rvqcodec.errors import InputError
from rvqcodec.fileio import already_exists_message, atomic_path, check_output_folder, check_writable_folder, same_file
from rvqcodec.model.codec import Codec
from rvqcodec.pretrained import load_codec


MIN_CHUNK_SECONDS = 1.0
"""Shortest chunk accepted: each chunk is encoded with ``context_seconds`` (1 s) on each side, 5x the receptive
field of the shipped presets, so a window costs ``(chunk + 2 * context) / chunk`` times the single-pass work
(3x at 1 s, 2001x at 1 ms)."""


@dataclass(frozen=True)
class ChunkConfig:
    """How long inputs are cut for bounded-memory processing.

    Attributes:
        chunk_seconds: audio whose frames are kept from one window (rounded to whole frames; at least
            ``MIN_CHUNK_SECONDS``, else :class:`rvqcodec.errors.InputError`).
        context_seconds: extra real signal on each side of a chunk (rounded up to whole frames); must exceed
            the model's receptive field for chunked output to equal single-pass output.
        read_block_seconds: how much of the file is read per step (at the file's own rate).
    """

    chunk_seconds: float = 10.0
    context_seconds: float = 1.0
    read_block_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.read_block_seconds > 0 or not self.context_seconds >= 0:
            raise ValueError(f"read_block_seconds must be > 0 and context_seconds >= 0, got "
                             f"{self.read_block_seconds}, {self.context_seconds}")
        if not (self.chunk_seconds >= MIN_CHUNK_SECONDS and math.isfinite(self.chunk_seconds)):
            raise InputError(f"chunk length must be at least {MIN_CHUNK_SECONDS:g} s (the default context around "
                             f"each chunk, which covers the model's receptive field: shorter chunks multiply the "
                             f"work without changing the result), got {self.chunk_seconds:g} s")

    def frames(self, frame_rate: float) -> tuple[int, int]:
        """``(chunk_frames, context_frames)`` at ``frame_rate`` frames/s."""
        return max(1, round(self.chunk_seconds * frame_rate)), math.ceil(self.context_seconds * frame_rate - 1e-9)


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


# ------------------------------------------------------------------------------------ bitrate / header


def resolve_n_q(codec: Codec, bitrate: float | None = None, n_q: int | None = None) -> int:
    """Number of RVQ stages for a bitrate in kbps or an explicit ``n_q``; neither: all stages.

    Raises ValueError (listing the valid bitrates / range) for an unsupported value or a contradiction.
    """
    if n_q is not None:
        if isinstance(n_q, bool) or int(n_q) != n_q or not 1 <= n_q <= codec.max_n_q:
            raise ValueError(f"n_q must be an integer between 1 and {codec.max_n_q}, got {n_q!r}")
        n_q = int(n_q)
    if bitrate is not None:
        from_bitrate = codec.n_q_for_bitrate(bitrate)
        if n_q is not None and n_q != from_bitrate:
            raise ValueError(f"--bitrate {bitrate:g} means n_q={from_bitrate}, which contradicts n_q={n_q}")
        return from_bitrate
    return codec.max_n_q if n_q is None else n_q


def make_header(codec: Codec, n_q: int, num_samples: int, model_id: str | None = None) -> RVQHeader:
    """The ``.rvq`` header for ``num_samples`` samples encoded by ``codec`` with ``n_q`` stages."""
    return RVQHeader(sample_rate=codec.sample_rate, hop_length=codec.hop_length, n_q=n_q,
                     bits_per_code=codec.bits_per_code, num_samples=num_samples,
                     model_id=model_id if model_id is not None else codec.model_id)


def check_codec_matches(header: RVQHeader, codec: Codec, model_id: str | None = None) -> None:
    """Raise :class:`ModelMismatchError` unless ``codec`` is the model that wrote ``header``'s file."""
    bitstream.check_model(header, model_id if model_id is not None else codec.model_id)
    # Same id implies the same config; these guard against a hand-made header with a copied id.
    if (header.sample_rate, header.hop_length, header.bits_per_code) != (
            codec.sample_rate, codec.hop_length, codec.bits_per_code) or header.n_q > codec.max_n_q:
        raise ModelMismatchError(
            f"stream ({header.sample_rate} Hz, hop {header.hop_length}, {header.bits_per_code}-bit codes, "
            f"{header.n_q} stages) does not fit the model ({codec.sample_rate} Hz, hop {codec.hop_length}, "
            f"{codec.bits_per_code}-bit codes, up to {codec.max_n_q} stages)")


# ---------------------------------------------------------------------------------- chunked engines


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
    chunk, context = chunking.frames(codec.frame_rate)
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
    chunk, context = chunking.frames(codec.frame_rate)
    device = _device(codec)
    for first in range(0, -(-num_samples // hop), chunk):
        last = min(first + chunk, num_frames)
        lo, hi = max(0, first - context), min(num_frames, last + context)
        with _inference(codec):
            audio = codec.decode(codes[None, :, lo:hi].to(device))[0, 0]
        start = (first - lo) * hop
        stop = start + min(last * hop, num_samples) - first * hop
        yield audio[start:stop].float().cpu().clone()


# ------------------------------------------------------------------------------------- bytes API


MAX_CHANNELS = 64
"""More than this along an axis means that axis is time, not channels (see :func:`as_mono`)."""


def as_mono(wav: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Audio in the layouts people pass -> ``(T,)`` float32 mono (channels averaged). Never truncates.

    Accepted: ``(T,)`` mono; ``(C, T)`` channel-first (torchaudio, rvqcodec); ``(T, C)`` frame-first (what
    ``soundfile.read`` and most numpy code return); ``(1, C, T)``, a batch of one. A 2-D array's channel axis is
    the one of length 1, else the shorter one if it has at most ``MAX_CHANNELS`` (64) entries. Shapes that do not
    say which axis is time (both axes longer than 64, or both between 2 and 64 like ``(20, 30)``, i.e. under
    4 ms of audio) are refused. Integer PCM (``int16``/``int32``, e.g. ``soundfile.read(dtype="int16")``) is
    scaled to ``[-1, 1)``; boolean, complex and other non-numeric arrays are refused.

    Raises:
        InputError: an ambiguous or unsupported shape, or an unsupported dtype (one-line message).
    """
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu()
        if wav.dtype in (torch.int16, torch.int32):
            wav = wav.to(torch.float64) / (2.0 ** (8 * wav.element_size() - 1))
        elif not wav.dtype.is_floating_point:
            raise InputError(f"audio must be float (or int16/int32 PCM), got dtype {wav.dtype}")
    else:
        array = np.asarray(wav)
        if array.dtype in (np.int16, np.int32):
            array = array.astype(np.float64) / (2.0 ** (8 * array.dtype.itemsize - 1))
        elif array.dtype.kind != "f":
            raise InputError(f"audio must be float (or int16/int32 PCM), got dtype {array.dtype}")
        wav = torch.from_numpy(np.ascontiguousarray(array))
    wav = wav.float()
    shape = tuple(wav.shape)
    if wav.dim() in (2, 3) and 0 in shape:
        return torch.zeros(0)  # no samples (e.g. soundfile's (0, C) for an empty file)
    if wav.dim() == 3:
        if shape[0] != 1:
            raise InputError(f"audio of shape {shape} is a batch of {shape[0]} signals; compress one at a time "
                             "(or use codec.encode for batches)")
        wav = wav[0]
        if wav.shape[0] > MAX_CHANNELS:
            raise InputError(f"audio of shape {shape}: expected (1, channels, samples) with at most "
                             f"{MAX_CHANNELS} channels")
        return wav.mean(dim=0)
    if wav.dim() == 1:
        return wav
    if wav.dim() != 2:
        raise InputError(f"audio must have shape (T,), (C, T) or (T, C), got {shape}")
    rows, cols = shape
    if rows == 1:
        return wav[0]
    if cols == 1:
        return wav[:, 0]
    if rows < cols and rows <= MAX_CHANNELS < cols:
        return wav.mean(dim=0)  # (C, T)
    if cols < rows and cols <= MAX_CHANNELS < rows:
        return wav.mean(dim=1)  # (T, C)
    raise InputError(f"ambiguous audio shape {shape}: cannot tell the channel axis from the time axis; pass (T,) "
                     f"mono, or (C, T) / (T, C) with at most {MAX_CHANNELS} channels and more than "
                     f"{MAX_CHANNELS} samples")


def compress(codec: Codec, wav: torch.Tensor | np.ndarray, sr: int, bitrate: float | None = None,
             n_q: int | None = None, chunking: ChunkConfig = ChunkConfig()) -> bytes:
    """Audio -> the bytes of a ``.rvq`` file.

    Args:
        codec: the model.
        wav: ``(T,)`` mono, ``(channels, T)`` or ``(T, channels)`` (averaged to mono; see :func:`as_mono`), float
            in ``[-1, 1]`` (or int16/int32 PCM), numpy or torch.
        sr: sample rate of ``wav`` in Hz (resampled to ``codec.sample_rate`` if different).
        bitrate: kbps, one of ``codec.bitrates()``; or give ``n_q``; neither: all stages.
        n_q: number of RVQ stages.

    Raises:
        ValueError: unsupported bitrate (listing the valid ones), bad sample rate.
        InputError (a ValueError): an ambiguous shape or unsupported dtype, NaN/inf samples.
    """
    n_q = resolve_n_q(codec, bitrate, n_q)
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {sr!r}")
    mono = as_mono(wav)
    if mono.numel() and int(sr) != codec.sample_rate:
        mono = audio_io.resample(mono, int(sr), codec.sample_rate)
    codes, num_samples = encode_blocks(codec, [mono], n_q, chunking)
    return bitstream.encode_bitstream(make_header(codec, n_q, num_samples), codes)


def decompress(codec: Codec, data: bytes, chunking: ChunkConfig = ChunkConfig()) -> tuple[torch.Tensor, int]:
    """The bytes of a ``.rvq`` file -> ``(wav (1, T) float32 in [-1, 1], codec.sample_rate)``.

    Raises a :class:`rvqcodec.bitstream.BitstreamError` subclass for a damaged, foreign or newer stream,
    or one written by another model.
    """
    header, codes = bitstream.decode_bitstream(data)
    check_codec_matches(header, codec)
    pieces = list(decode_chunks(codec, codes, header.num_samples, chunking))
    wav = torch.cat(pieces) if pieces else torch.zeros(0)
    return wav.view(1, -1), header.sample_rate


def load_default_codec(device: str = "cpu") -> Codec:
    """The shipped default model (``rvqcodec/pretrained/default.pt``); FileNotFoundError if not installed."""
    return load_codec(None, device=device)


# -------------------------------------------------------------------------------------------- files


def _check_output(path: Path, overwrite: bool, protected: Iterable[str | os.PathLike]) -> None:
    """Refuse to write an input, a folder, or (without ``overwrite``) an existing file."""
    for other in protected:
        if same_file(path, other):
            raise InputError(f"refusing to write {path}: it is an input file")
    if path.is_dir():
        raise InputError(f"output {path} is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(already_exists_message(path))
    check_writable_folder(path)


@dataclass
class CompressReport:
    """What :func:`compress_file` did."""

    source: Path
    output: Path
    header: RVQHeader
    n_bytes: int
    source_sample_rate: int
    source_channels: int

    @property
    def downmixed(self) -> bool:
        return self.source_channels > 1

    @property
    def resampled(self) -> bool:
        return self.source_sample_rate != self.header.sample_rate


def compress_file(codec: Codec, source: str | os.PathLike, output: str | os.PathLike, n_q: int,
                  overwrite: bool = False, chunking: ChunkConfig = ChunkConfig(),
                  model_id: str | None = None, protected: Sequence[str | os.PathLike] = ()) -> CompressReport:
    """Compress an audio file (any format/rate/channels soundfile reads) into a ``.rvq`` file, in bounded memory.

    The input is read block by block, resampled to the codec rate and averaged to mono. An audio file with
    zero samples gives a valid empty stream. The output is written atomically and never over ``source`` or a
    ``protected`` path.

    Raises:
        AudioReadError: unreadable / non-audio input. FileExistsError: output exists and not ``overwrite``.
        PermissionError: the output folder is not writable (checked before encoding).
        InputError: output is an input or a folder, NaN/inf samples. ValueError: bad ``n_q``.
    """
    source, output = Path(source), Path(output)
    n_q = resolve_n_q(codec, n_q=n_q)
    info = audio_io.audio_info(source)
    _check_output(output, overwrite, [source, *protected])
    if info.frames == 0:
        codes, num_samples = np.zeros((n_q, 0), dtype=np.int64), 0
    else:
        block_frames = max(1, round(chunking.read_block_seconds * info.samplerate))
        blocks = audio_io.iter_audio_blocks(source, block_frames, target_sr=codec.sample_rate, mono=True)
        codes, num_samples = encode_blocks(codec, blocks, n_q, chunking)
    header = make_header(codec, n_q, num_samples, model_id)
    n_bytes = bitstream.write_rvq(output, header, codes, overwrite=overwrite)
    return CompressReport(source, output, header, n_bytes, int(info.samplerate), int(info.channels))


@contextmanager
def streamed_audio_file(path: Path, sample_rate: int, subtype: str | None = None,
                        overwrite: bool = False) -> Iterator[Callable[[torch.Tensor], None]]:
    """Write mono audio block by block into a temp file beside ``path``; it takes ``path``'s place when the
    ``with`` block ends normally and is removed if it raises. Yields ``write(block)``, ``block`` any shape.

    Same guarantees as :func:`rvqcodec.data.audio_io.write_audio` (atomic, never replaces an existing file
    unless ``overwrite``), but the signal never has to be in memory at once.
    """
    file_format, subtype = audio_io.output_format(path, subtype)
    check_output_folder(path)
    clip = subtype not in audio_io.FLOAT_SUBTYPES
    with atomic_path(path, overwrite=overwrite, exists_message=already_exists_message(path)) as tmp, \
            soundfile.SoundFile(tmp, "w", samplerate=int(sample_rate), channels=1, subtype=subtype,
                                format=file_format) as handle:

        def write(block: torch.Tensor) -> None:
            samples = block.reshape(-1).numpy().astype(np.float32, copy=False)
            handle.write(np.clip(samples, -1.0, 1.0) if clip else samples)

        yield write


@dataclass
class DecompressReport:
    """What :func:`decompress_file` did."""

    source: Path
    output: Path
    header: RVQHeader
    sample_rate: int  # rate of the written file


def decompress_file(codec: Codec, source: str | os.PathLike, output: str | os.PathLike,
                    sample_rate: int | None = None, overwrite: bool = False, subtype: str | None = None,
                    chunking: ChunkConfig = ChunkConfig(), model_id: str | None = None,
                    protected: Sequence[str | os.PathLike] = ()) -> DecompressReport:
    """Decode a ``.rvq`` file into an audio file (format from the extension), streamed chunk by chunk.

    Args:
        sample_rate: write at this rate (streamed sinc resampling); ``None``: the codec rate.
        subtype: soundfile subtype, e.g. ``PCM_16``, ``PCM_24``, ``FLOAT``; ``None`` (default): ``PCM_16``, or
            the format's codec for lossy formats (``.ogg``, ``.opus``, ``.mp3``; see ``audio_io.output_format``).

    Raises:
        BitstreamError subclasses (damaged / foreign / newer file, other model), FileNotFoundError (missing
        input or output folder), PermissionError (unwritable output folder), FileExistsError (output exists
        and not ``overwrite``), InputError (output is an input or a folder, bad extension/subtype, impractical
        resampling ratio), ValueError (bad rate). Every output check happens before any decoding.
    """
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise FileNotFoundError(f"input not found: {source}" if not source.exists() else f"not a file: {source}")
    if sample_rate is not None and (isinstance(sample_rate, bool) or int(sample_rate) != sample_rate
                                    or sample_rate <= 0):
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {sample_rate!r}")
    _check_output(output, overwrite, [source, *protected])
    audio_io.output_format(output, subtype)
    header, codes = bitstream.read_rvq(source)
    check_codec_matches(header, codec, model_id)
    out_rate = header.sample_rate if sample_rate is None else int(sample_rate)
    resampler = None
    if out_rate != header.sample_rate:
        resampler = audio_io.StreamingResampler(header.sample_rate, out_rate)  # ValueError for impractical rates
    with streamed_audio_file(output, out_rate, subtype, overwrite) as write:
        for block in decode_chunks(codec, codes, header.num_samples, chunking):
            write(block if resampler is None else resampler.push(block.view(1, -1)))
        if resampler is not None:
            write(resampler.flush())
    return DecompressReport(source, output, header, out_rate)
