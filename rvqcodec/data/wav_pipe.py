"""WAV and raw PCM on pipes: reading a WAV header and its samples as they arrive (a header whose sizes are unknown,
as ffmpeg, sox and arecord write to a pipe, included), writing such a header, and converting PCM bytes <-> float.

soundfile needs a seekable file; a pipe is not one, so the live commands (``rvqcodec stream``) read and write the
few WAV fields themselves::

    fmt = read_wav_header(sys.stdin.buffer)          # WavFormat: rate, channels, sample encoding
    samples = fmt.decode(data)                        # bytes (whole frames) -> (frames, channels) float32
    sys.stdout.buffer.write(wav_stream_header(16000)) # mono 16-bit, sizes 0xFFFFFFFF (unknown length)
    sys.stdout.buffer.write(to_pcm16(audio))          # float samples -> 16-bit little-endian bytes

A data chunk size of 0 or 0xFFFFFFFF means "until the end of the input"; any other size is honoured (a file read
through a pipe may have chunks after its data).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from rvqcodec.errors import InputError

UNKNOWN_SIZE = 0xFFFFFFFF
_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


class WavPipeError(InputError):
    """The input is not a WAV stream rvqcodec can read (one-line message)."""


@dataclass(frozen=True)
class WavFormat:
    """A WAV stream's sample encoding: ``float_samples`` (IEEE float) or signed integer PCM (8-bit: unsigned) of
    ``bits`` bits, ``channels`` interleaved; ``data_bytes``: the data chunk's size, None when unknown (read to the
    end)."""

    sample_rate: int
    channels: int
    bits: int
    float_samples: bool = False
    data_bytes: int | None = None

    @property
    def block_align(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.channels * self.bits // 8

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of bytes -> ``(frames, channels)`` float32 in [-1, 1]."""
        if self.float_samples:
            samples = np.frombuffer(data, dtype="<f4" if self.bits == 32 else "<f8").astype(np.float32)
        elif self.bits == 8:
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.bits == 24:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            values = (raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)) << 8 >> 8  # sign-extend
            samples = values.astype(np.float32) / float(1 << 23)
        else:
            samples = np.frombuffer(data, dtype=f"<i{self.bits // 8}").astype(np.float32) / float(1 << (self.bits - 1))
        return samples.reshape(-1, self.channels)


RAW_PCM16_BYTES = 2
"""Bytes per sample of ``--raw`` input and output: 16-bit little-endian mono."""


def raw_format(sample_rate: int) -> WavFormat:
    """The format of ``--raw`` PCM: 16-bit little-endian mono at ``sample_rate``."""
    return WavFormat(sample_rate=sample_rate, channels=1, bits=16)


def _read_exactly(stream: BinaryIO, size: int, what: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise WavPipeError(f"the input ends inside the WAV header ({what})" if data or what != "RIFF header"
                               else "empty input: no WAV header (for raw 16-bit PCM use --raw)")
        data += chunk
    return data


def read_wav_header(stream: BinaryIO) -> WavFormat:
    """Read a WAV header from ``stream`` up to the first sample of its data chunk (nothing more).

    Raises:
        WavPipeError: not RIFF/WAVE, no ``fmt`` chunk before the data, or an encoding other than 8/16/24/32-bit
            integer or 32/64-bit float PCM.
    """
    riff = _read_exactly(stream, 12, "RIFF header")
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise WavPipeError("the input is not a WAV stream (no RIFF/WAVE header; for raw 16-bit PCM use --raw)")
    fmt = None
    while True:
        chunk_id, size = struct.unpack("<4sI", _read_exactly(stream, 8, "chunk header"))
        if chunk_id == b"data":
            if fmt is None:
                raise WavPipeError("the WAV stream has its data before its fmt chunk")
            data_bytes = None if size in (0, UNKNOWN_SIZE) else size
            return WavFormat(**{**fmt, "data_bytes": data_bytes})
        body = _read_exactly(stream, size + (size & 1), f"{chunk_id!r} chunk")
        if chunk_id == b"fmt ":
            if size < 16:
                raise WavPipeError("the WAV stream's fmt chunk is damaged")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and size >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID starts with the format tag
            is_float = tag == _FLOAT
            if not ((tag == _PCM and bits in (8, 16, 24, 32)) or (is_float and bits in (32, 64))):
                raise WavPipeError(f"unsupported WAV encoding (format tag {tag:#06x}, {bits} bits): use 8/16/24/32-"
                                   "bit PCM or 32/64-bit float")
            if channels < 1 or rate < 1:
                raise WavPipeError(f"the WAV stream's fmt chunk is damaged ({channels} channels, {rate} Hz)")
            fmt = dict(sample_rate=rate, channels=channels, bits=bits, float_samples=is_float)


def wav_stream_header(sample_rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header of unknown length (RIFF and data sizes 0xFFFFFFFF, as ffmpeg writes to a pipe)."""
    block_align = channels * 2
    fmt = struct.pack("<HHIIHH", _PCM, channels, sample_rate, sample_rate * block_align, block_align, 16)
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) -> 16-bit little-endian PCM bytes (scaled by 32767, rounded)."""
    values = np.rint(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0)
    return values.astype("<i2").tobytes()
