"""The codec's Python API in memory: the shipped model, and audio arrays <-> the bytes of a ``.rvq`` file.

::

    from rvqcodec import api
    codec = api.from_pretrained()                    # or rvqcodec.pretrained.load_codec("runs/x/codec.pt")
    data = api.compress(codec, wav, 16000, bitrate=3)   # bytes: the .rvq format of docs/bitstream.md
    wav_hat, sr = api.decompress(codec, data)        # (1, T) float32 at codec.sample_rate

The model (:class:`rvqcodec.model.Codec`) knows nothing of bitstreams, chunking or where the shipped checkpoint
lives; this module puts them together: :func:`as_mono` accepts the array layouts people pass, and
:mod:`rvqcodec.streams` turns the signal into ``.rvq`` bytes and back (through the chunk engine, so long signals
work too). Files are :mod:`rvqcodec.codec_files`' job.
"""
from __future__ import annotations

import numpy as np
import torch

from rvqcodec import level, streams
from rvqcodec.chunking import ChunkConfig
from rvqcodec.data import audio_io
from rvqcodec.errors import InputError
from rvqcodec.model.codec import Codec
from rvqcodec.pretrained import load_codec


def from_pretrained(device: str | torch.device = "cpu") -> Codec:
    """The default speech model shipped inside the package (``rvqcodec/pretrained/default.pt``), in eval mode on
    ``device``; FileNotFoundError if it is not installed (see :func:`rvqcodec.pretrained.load_codec`)."""
    return load_codec(None, device=device)


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
             n_q: int | None = None, chunking: ChunkConfig = ChunkConfig(),
             normalize: bool = level.NORMALIZE_BY_DEFAULT) -> bytes:
    """Audio -> the bytes of a ``.rvq`` file.

    Args:
        codec: the model.
        wav: ``(T,)`` mono, ``(channels, T)`` or ``(T, channels)`` (averaged to mono; see :func:`as_mono`), float
            in ``[-1, 1]`` (or int16/int32 PCM), numpy or torch.
        sr: sample rate of ``wav`` in Hz (resampled to ``codec.sample_rate`` if different).
        bitrate: kbps, one of ``codec.bitrates()``; or give ``n_q``; neither: all stages.
        n_q: number of RVQ stages.
        normalize: encode the signal moved to the level the model was trained at, the gain in the stream
            (:mod:`rvqcodec.level`; decoding divides it out); False: as it is (gain 0 dB).

    Raises:
        ValueError: unsupported bitrate (listing the valid ones), bad sample rate.
        InputError (a ValueError): an ambiguous shape or unsupported dtype, NaN/inf samples.
    """
    n_q = streams.resolve_n_q(codec, bitrate, n_q)
    if isinstance(sr, bool) or int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer number of Hz, got {sr!r}")
    mono = as_mono(wav)
    if mono.numel() and int(sr) != codec.sample_rate:
        mono = audio_io.resample(mono, int(sr), codec.sample_rate)
    gain_db = level.gain_db_of([mono]) if normalize else 0.0
    return streams.encode(codec, [mono], n_q, chunking, gain_db=gain_db)


def decompress(codec: Codec, data: bytes, chunking: ChunkConfig = ChunkConfig()) -> tuple[torch.Tensor, int]:
    """The bytes of a ``.rvq`` file -> ``(wav (1, T) float32 in [-1, 1], codec.sample_rate)``.

    Raises a :class:`rvqcodec.bitstream.BitstreamError` subclass for a damaged, foreign or newer stream,
    or one written by another model.
    """
    header, audio = streams.decode(codec, data, chunking)
    pieces = list(audio)
    wav = torch.cat(pieces) if pieces else torch.zeros(0)
    return wav.view(1, -1), header.sample_rate
