"""A codec and its ``.rvq`` streams: audio -> ``.rvq`` bytes or file -> audio, in bounded memory.

This module and :mod:`rvqcodec.bitstream` are the only code that knows the container. :mod:`rvqcodec.bitstream` is
the container alone (bytes <-> header and codes) and knows no model; :mod:`rvqcodec.model` is the model alone and
knows no container. This module puts them together, for the bytes API (:mod:`rvqcodec.api`), the file API
(:mod:`rvqcodec.codec_files`), ``rvqcodec roundtrip`` and ``info`` and the benchmarks:

* the header a codec writes (its rate, hop, bits per code and :attr:`Codec.model_id`, the stages, the length,
  and the input gain: a signal is encoded multiplied by ``gain_db``, from :func:`rvqcodec.level.gain_db_of`, and
  decoded divided by it);
* :func:`check_fits`: whether a codec may decode a stream (same model id, and a header that fits its config);
* :func:`resolve_n_q`: the number of RVQ stages a bitrate request means;
* encoding a signal given as consecutive blocks at ``codec.sample_rate`` (:func:`encode`, :func:`encode_file`,
  :func:`encode_stages`) and decoding a stream into blocks of audio (:func:`decode`, :func:`decode_file`), through
  the chunk engine (:mod:`rvqcodec.chunking`): only the codes of the whole signal are held, never the whole audio;
* what ``rvqcodec info`` shows of a file: :func:`looks_like_stream`, :func:`file_header`.

::

    data = streams.encode(codec, blocks, n_q)                            # the bytes of a .rvq file
    data = streams.encode(codec, blocks, n_q, gain_db=6.0)               # encoded 6 dB louder, decoded back
    header, n_bytes = streams.encode_file(codec, blocks, "a.rvq", n_q)   # written atomically
    by_n_q = streams.encode_stages(codec, blocks, [3, 6, 12])            # one encode, three streams
    header, audio = streams.decode(codec, data)        # checked now; audio: (t,) tensors, decoded as iterated
    header, audio = streams.decode_file(codec, "a.rvq")
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rvqcodec import bitstream
from rvqcodec.bitstream import ModelMismatchError, RVQHeader
from rvqcodec.level import amplitude
from rvqcodec.chunking import ChunkConfig, decode_chunks, encode_blocks

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec

Blocks = Iterable[torch.Tensor | np.ndarray]
"""Consecutive mono pieces of one signal at ``codec.sample_rate``, each ``(t,)`` or ``(1, t)`` float, any sizes."""


# ------------------------------------------------------------------------------------- codec and header


def _check_n_q(codec: Codec, n_q: int) -> int:
    """``n_q`` as an int if it is a number of stages ``codec`` has, else ValueError."""
    if isinstance(n_q, bool) or int(n_q) != n_q or not 1 <= n_q <= codec.max_n_q:
        raise ValueError(f"n_q must be an integer between 1 and {codec.max_n_q}, got {n_q!r}")
    return int(n_q)


def resolve_n_q(codec: Codec, bitrate: float | None = None, n_q: int | None = None) -> int:
    """Number of RVQ stages for a bitrate in kbps or an explicit ``n_q``; neither: all stages.

    Raises ValueError (listing the valid bitrates / range) for an unsupported value or a contradiction.
    """
    if n_q is not None:
        n_q = _check_n_q(codec, n_q)
    if bitrate is not None:
        from_bitrate = codec.n_q_for_bitrate(bitrate)
        if n_q is not None and n_q != from_bitrate:
            raise ValueError(f"--bitrate {bitrate:g} means n_q={from_bitrate}, which contradicts n_q={n_q}")
        return from_bitrate
    return codec.max_n_q if n_q is None else n_q


def _header(codec: Codec, n_q: int, num_samples: int, gain_db: float) -> RVQHeader:
    """The header ``codec`` writes for ``num_samples`` samples encoded with ``n_q`` stages after a gain."""
    return RVQHeader(sample_rate=codec.sample_rate, hop_length=codec.hop_length, n_q=n_q,
                     bits_per_code=codec.bits_per_code, num_samples=num_samples, model_id=codec.model_id,
                     gain_db=gain_db)


def _check_gain(gain_db: float) -> float:
    """``gain_db`` if the header can store it, else ValueError (before any work)."""
    if not bitstream.is_storable_gain(gain_db):
        raise ValueError(f"gain_db must be a multiple of {bitstream.GAIN_STEP_DB} dB in [-64, 63.5], got {gain_db!r}")
    return float(gain_db)


def _scaled(blocks: Blocks, gain_db: float) -> Blocks:
    """``blocks`` multiplied by the gain (themselves for 0 dB)."""
    if not gain_db:
        return blocks
    factor = amplitude(gain_db)
    return (block * factor for block in blocks)


def _gain_removed(audio: Iterator[torch.Tensor], gain_db: float) -> Iterator[torch.Tensor]:
    """Decoded blocks divided by the encoder's gain, kept in [-1, 1] (the decoder's range)."""
    factor = amplitude(-gain_db)
    return ((block * factor).clamp_(-1.0, 1.0) for block in audio)


def check_fits(header: RVQHeader, codec: Codec) -> None:
    """Raise :class:`ModelMismatchError` unless ``codec`` is the model that wrote ``header``'s stream."""
    bitstream.check_model(header, codec.model_id)
    # Same id implies the same config; these guard against a hand-made header with a copied id.
    if (header.sample_rate, header.hop_length, header.bits_per_code) != (
            codec.sample_rate, codec.hop_length, codec.bits_per_code) or header.n_q > codec.max_n_q:
        raise ModelMismatchError(
            f"stream ({header.sample_rate} Hz, hop {header.hop_length}, {header.bits_per_code}-bit codes, "
            f"{header.n_q} stages) does not fit the model ({codec.sample_rate} Hz, hop {codec.hop_length}, "
            f"{codec.bits_per_code}-bit codes, up to {codec.max_n_q} stages)")


# ------------------------------------------------------------------------------------------- encoding


def encode(codec: Codec, blocks: Blocks, n_q: int, chunking: ChunkConfig = ChunkConfig(),
           gain_db: float = 0.0) -> bytes:
    """A signal (consecutive blocks, see :data:`Blocks`) -> the bytes of a ``.rvq`` file with ``n_q`` stages.

    The signal is multiplied by ``gain_db`` (dB, a multiple of 0.5; :mod:`rvqcodec.level` says which) before
    encoding, and zero-padded to whole frames exactly as ``codec.encode`` does in a single pass; no blocks give the
    valid empty stream.

    Raises:
        ValueError: an ``n_q`` the codec does not have, a gain the header cannot hold (before any work).
        InputError: NaN/inf samples.
    """
    n_q, gain_db = _check_n_q(codec, n_q), _check_gain(gain_db)
    codes, num_samples = encode_blocks(codec, _scaled(blocks, gain_db), n_q, chunking)
    return bitstream.encode_bitstream(_header(codec, n_q, num_samples, gain_db), codes)


def encode_stages(codec: Codec, blocks: Blocks, n_qs: Sequence[int],
                  chunking: ChunkConfig = ChunkConfig(), gain_db: float = 0.0) -> dict[int, bytes]:
    """The ``.rvq`` bytes of one signal at each number of stages in ``n_qs``, from one encode.

    The signal is encoded once with the most stages asked for; the stream with ``n_q`` stages keeps the first
    ``n_q`` of those codes. Residual VQ is greedy (a stage never changes the ones before it), so each stream is
    byte for byte what :func:`encode` with that ``n_q`` gives. Raises as :func:`encode` does.
    """
    checked, gain_db = sorted({_check_n_q(codec, n_q) for n_q in n_qs}), _check_gain(gain_db)
    if not checked:
        return {}
    codes, num_samples = encode_blocks(codec, _scaled(blocks, gain_db), checked[-1], chunking)
    return {n_q: bitstream.encode_bitstream(_header(codec, n_q, num_samples, gain_db), codes[:n_q])
            for n_q in checked}


def encode_file(codec: Codec, blocks: Blocks, path: str | os.PathLike, n_q: int,
                chunking: ChunkConfig = ChunkConfig(), overwrite: bool = False,
                gain_db: float = 0.0) -> tuple[RVQHeader, int]:
    """:func:`encode` into a ``.rvq`` file, written atomically and flushed to disk
    (:func:`rvqcodec.bitstream.write_rvq`) -> ``(its header, its size in bytes)``.

    Raises as :func:`encode` does, and FileExistsError if ``path`` exists and not ``overwrite``.
    """
    n_q, gain_db = _check_n_q(codec, n_q), _check_gain(gain_db)
    codes, num_samples = encode_blocks(codec, _scaled(blocks, gain_db), n_q, chunking)
    header = _header(codec, n_q, num_samples, gain_db)
    return header, bitstream.write_rvq(path, header, codes, overwrite=overwrite)


# ------------------------------------------------------------------------------------------- decoding


def _decoded(codec: Codec, header: RVQHeader, codes: np.ndarray, chunking: ChunkConfig
             ) -> tuple[RVQHeader, Iterator[torch.Tensor]]:
    check_fits(header, codec)
    audio = decode_chunks(codec, codes, header.num_samples, chunking)
    return header, _gain_removed(audio, header.gain_db) if header.gain_db else audio


def decode(codec: Codec, data: bytes | memoryview, chunking: ChunkConfig = ChunkConfig()
           ) -> tuple[RVQHeader, Iterator[torch.Tensor]]:
    """The bytes of a ``.rvq`` file -> ``(header, audio)``: the stream is parsed and checked at once (a
    :class:`rvqcodec.bitstream.BitstreamError` for a damaged, foreign or newer stream, or one written by another
    model); ``audio`` decodes it chunk by chunk as it is iterated, yielding float32 CPU tensors ``(t,)`` at
    ``codec.sample_rate`` whose concatenation has ``header.num_samples`` samples, divided by the header's gain."""
    header, codes = bitstream.decode_bitstream(data)
    return _decoded(codec, header, codes, chunking)


def decode_file(codec: Codec, path: str | os.PathLike, chunking: ChunkConfig = ChunkConfig()
                ) -> tuple[RVQHeader, Iterator[torch.Tensor]]:
    """:func:`decode` of a ``.rvq`` file (read whole: only its codes are held, not the decoded audio)."""
    header, codes = bitstream.read_rvq(path)
    return _decoded(codec, header, codes, chunking)


# ---------------------------------------------------------------------------------------- inspecting


def looks_like_stream(path: str | os.PathLike) -> bool:
    """Whether the file starts with the ``.rvq`` magic bytes (checks nothing else)."""
    with open(path, "rb") as handle:
        return handle.read(len(bitstream.MAGIC)) == bitstream.MAGIC


def file_header(path: str | os.PathLike) -> RVQHeader:
    """The header of a ``.rvq`` file, after checking the whole file (checksums, length); BitstreamError if bad."""
    return bitstream.read_rvq(path)[0]
