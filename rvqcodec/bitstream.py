"""The ``.rvq`` container: a small fixed header, bit-packed RVQ codes and CRC32 checksums.

The byte layout is specified in ``docs/bitstream.md``; in short (all integers little-endian)::

    offset size  field
         0    4  magic  b"RVQC"
         4    1  format version (uint8, currently 2)
         5    4  sample rate in Hz (uint32)
         9    4  hop length in samples per frame (uint32)   -> frame rate = sample_rate / hop_length
        13    1  number of RVQ stages n_q (uint8)
        14    1  bits per code (uint8, = ceil(log2 codebook_size))
        15    8  number of audio samples (uint64)
        23    8  model identifier (the 16 hex characters of ``Codec.model_id`` as 8 raw bytes)
        31    1  gain (int8, in steps of 0.5 dB): the decoder divides the decoded audio by it (version 2)
        32    4  CRC32 of bytes 0..31 (the header)
        36    P  payload: ceil(n_q * n_frames * bits / 8) bytes, n_frames = ceil(num_samples / hop_length)
      36+P    4  CRC32 of bytes 0..36+P-1 (header, header CRC and payload)

so a file is exactly ``40 + ceil(n_q * bits * ceil(num_samples / hop) / 8)`` bytes: the nominal bitrate
times the duration rounded up to whole frames, plus 40 bytes. Version 1 (rvqcodec before the gain) is the same
without the gain byte (a 35-byte header, 39 bytes in all, gain 0 dB); it is still read.

Codes are stored frame-major (frame 0 stages 0..n_q-1, frame 1 stages 0..n_q-1, ...), each as ``bits``
bits, most significant bit first, concatenated without gaps; the last byte is padded with zero bits.
Packing and unpacking are vectorised with numpy and work on bounded-size chunks.

Every failure raises a subclass of :class:`BitstreamError` (itself a ``ValueError``) with a one-line
message: :class:`NotRVQFileError`, :class:`UnsupportedVersionError`, :class:`TruncatedBitstreamError`,
:class:`CorruptedBitstreamError` and :class:`ModelMismatchError`.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvqcodec.errors import InputError
from rvqcodec.fileio import already_exists_message, atomic_write_bytes

MAGIC = b"RVQC"
FORMAT_VERSION = 2
_HEADER_STRUCTS = {1: struct.Struct("<4sBIIBBQ8s"),  # magic .. model id (31 bytes)
                   2: struct.Struct("<4sBIIBBQ8sb")}  # and the gain (32 bytes)
_CRC_STRUCT = struct.Struct("<I")
TRAILER_SIZE = _CRC_STRUCT.size  # 4: CRC of everything before it
GAIN_STEP_DB = 0.5
"""Unit of the header's gain byte."""


def header_size(version: int = FORMAT_VERSION) -> int:
    """Bytes of a version's header fields and header CRC (35 for version 1, 36 for version 2)."""
    return _HEADER_STRUCTS[version].size + _CRC_STRUCT.size


HEADER_SIZE = header_size()  # 36
OVERHEAD_BYTES = HEADER_SIZE + TRAILER_SIZE  # 40
MAX_BITS_PER_CODE = 32
# Codes packed per numpy pass; a multiple of 8 so every chunk ends on a byte boundary whatever ``bits`` is.
_PACK_CHUNK_CODES = 1 << 18


class BitstreamError(InputError):
    """Base class of every ``.rvq`` reading/writing error (one-line message, never garbage audio); a ValueError."""


class NotRVQFileError(BitstreamError):
    """The data does not start with the ``.rvq`` magic bytes."""


class UnsupportedVersionError(BitstreamError):
    """The file uses a format version this reader does not know (typically: written by a newer rvqcodec)."""


class TruncatedBitstreamError(BitstreamError):
    """The file is shorter than its header says it should be."""


class CorruptedBitstreamError(BitstreamError):
    """A checksum does not match, the header holds impossible values, or there are trailing bytes."""


class ModelMismatchError(BitstreamError):
    """The file was encoded with a different model than the one asked to decode it."""


@dataclass(frozen=True)
class RVQHeader:
    """What a ``.rvq`` file says about its content.

    Attributes:
        sample_rate: codec sample rate in Hz (the decoded audio's rate).
        hop_length: samples per frame; frame rate = ``sample_rate / hop_length`` frames/s.
        n_q: number of RVQ stages stored per frame.
        bits_per_code: bits used per code (``ceil(log2(codebook_size))``).
        num_samples: length of the original audio at ``sample_rate`` (the decoder trims to it).
        model_id: identifier of the model that wrote the codes, 16 lowercase hex characters.
        gain_db: the gain the encoder applied before encoding (:mod:`rvqcodec.level`), a multiple of
            :data:`GAIN_STEP_DB` in [-64, 63.5]; the decoder divides it out. 0 in a version 1 file.
        format_version: the container version the stream is (or is to be) written in: 1 or 2.
    """

    sample_rate: int
    hop_length: int
    n_q: int
    bits_per_code: int
    num_samples: int
    model_id: str
    gain_db: float = 0.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.sample_rate < 2**32:
            problems.append(f"sample_rate {self.sample_rate}")
        if not 1 <= self.hop_length < 2**32:
            problems.append(f"hop_length {self.hop_length}")
        if not 1 <= self.n_q <= 255:
            problems.append(f"n_q {self.n_q} (must be 1..255)")
        if not 1 <= self.bits_per_code <= MAX_BITS_PER_CODE:
            problems.append(f"bits_per_code {self.bits_per_code} (must be 1..{MAX_BITS_PER_CODE})")
        if not 0 <= self.num_samples < 2**64:
            problems.append(f"num_samples {self.num_samples}")
        if not _is_model_id(self.model_id):
            problems.append(f"model_id {self.model_id!r} (must be 16 hex characters)")
        if self.format_version not in _HEADER_STRUCTS:
            problems.append(f"format_version {self.format_version}")
        if not is_storable_gain(self.gain_db):
            problems.append(f"gain_db {self.gain_db} (must be a multiple of {GAIN_STEP_DB} in [-64, 63.5])")
        elif self.gain_db and self.format_version < 2:
            problems.append(f"gain_db {self.gain_db} in a version {self.format_version} header (which has none)")
        if problems:
            raise ValueError("invalid .rvq header: " + ", ".join(problems))

    @property
    def num_frames(self) -> int:
        """Frames of codes: ``ceil(num_samples / hop_length)`` (0 for empty audio)."""
        return -(-self.num_samples // self.hop_length)

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def bitrate_kbps(self) -> float:
        """Nominal bitrate of the payload: ``n_q * bits_per_code * frame_rate / 1000``."""
        return self.n_q * self.bits_per_code * self.frame_rate / 1000.0

    @property
    def duration_s(self) -> float:
        """Duration of the original audio in seconds."""
        return self.num_samples / self.sample_rate

    @property
    def payload_bytes(self) -> int:
        return payload_size(self.n_q, self.num_frames, self.bits_per_code)

    @property
    def file_bytes(self) -> int:
        """Exact size of the whole ``.rvq`` file."""
        return header_size(self.format_version) + self.payload_bytes + TRAILER_SIZE


def is_storable_gain(gain_db: object) -> bool:
    """Whether the header's gain byte can hold ``gain_db``: a multiple of :data:`GAIN_STEP_DB` in [-64, 63.5]."""
    if isinstance(gain_db, bool) or not isinstance(gain_db, (int, float)) or not math.isfinite(gain_db):
        return False
    steps = gain_db / GAIN_STEP_DB
    return steps == round(steps) and -128 <= steps <= 127


def _is_model_id(model_id: object) -> bool:
    if not isinstance(model_id, str) or len(model_id) != 16:
        return False
    try:
        bytes.fromhex(model_id)
    except ValueError:
        return False
    return True


def payload_size(n_q: int, num_frames: int, bits_per_code: int) -> int:
    """Payload bytes for ``n_q * num_frames`` codes of ``bits_per_code`` bits: ``ceil(n_q*F*bits / 8)``."""
    return -(-(n_q * num_frames * bits_per_code) // 8)


def file_size(n_q: int, num_samples: int, hop_length: int, bits_per_code: int) -> int:
    """Exact ``.rvq`` file size in bytes: ``40 + ceil(n_q * bits * ceil(num_samples / hop) / 8)``."""
    return OVERHEAD_BYTES + payload_size(n_q, -(-num_samples // hop_length), bits_per_code)


# --------------------------------------------------------------------------------------------- packing


def pack_codes(codes: np.ndarray, bits_per_code: int) -> bytes:
    """Bit-pack codes ``(n_q, frames)`` (non-negative ints ``< 2**bits``) frame-major, MSB first.

    Returns ``payload_size(n_q, frames, bits)`` bytes. Vectorised: each chunk of codes is turned into a
    ``(N, 32)`` bit matrix (``np.unpackbits`` of the big-endian uint32 values), the low ``bits`` columns are
    kept and ``np.packbits`` joins them.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape (n_q, frames), got {codes.shape}")
    if not 1 <= bits_per_code <= MAX_BITS_PER_CODE:
        raise ValueError(f"bits_per_code must be in 1..{MAX_BITS_PER_CODE}, got {bits_per_code}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    flat = np.ascontiguousarray(codes.T).reshape(-1)  # frame-major: (frames * n_q,)
    if flat.size:
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= 1 << bits_per_code:
            raise ValueError(f"codes must lie in [0, {(1 << bits_per_code) - 1}] for {bits_per_code} bits, "
                             f"got values in [{low}, {high}]")
    parts = []
    for start in range(0, flat.size, _PACK_CHUNK_CODES):
        chunk = flat[start:start + _PACK_CHUNK_CODES].astype(">u4")
        bit_matrix = np.unpackbits(chunk.view(np.uint8).reshape(-1, 4), axis=1)  # (N, 32), MSB first
        parts.append(np.packbits(bit_matrix[:, 32 - bits_per_code:]).tobytes())
    return b"".join(parts)


def unpack_codes(payload: bytes | memoryview, n_q: int, num_frames: int, bits_per_code: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: bytes -> codes ``(n_q, num_frames)`` int64."""
    if not 1 <= bits_per_code <= MAX_BITS_PER_CODE:
        raise ValueError(f"bits_per_code must be in 1..{MAX_BITS_PER_CODE}, got {bits_per_code}")
    expected = payload_size(n_q, num_frames, bits_per_code)
    if len(payload) != expected:
        raise ValueError(f"payload has {len(payload)} bytes, expected {expected}")
    n_codes = n_q * num_frames
    raw = np.frombuffer(payload, dtype=np.uint8)
    flat = np.empty(n_codes, dtype=np.int64)
    chunk_bytes = _PACK_CHUNK_CODES * bits_per_code // 8  # exact: _PACK_CHUNK_CODES is a multiple of 8
    for index, start in enumerate(range(0, n_codes, _PACK_CHUNK_CODES)):
        count = min(_PACK_CHUNK_CODES, n_codes - start)
        bits = np.unpackbits(raw[index * chunk_bytes:(index + 1) * chunk_bytes], count=count * bits_per_code)
        bit_matrix = np.zeros((count, 32), dtype=np.uint8)
        bit_matrix[:, 32 - bits_per_code:] = bits.reshape(count, bits_per_code)
        flat[start:start + count] = np.packbits(bit_matrix, axis=1).view(">u4").reshape(-1)
    return flat.reshape(num_frames, n_q).T.copy()


# ----------------------------------------------------------------------------------- whole container


def encode_bitstream(header: RVQHeader, codes: np.ndarray) -> bytes:
    """Serialise ``header`` and codes ``(header.n_q, header.num_frames)`` into the bytes of a ``.rvq`` file."""
    codes = np.asarray(codes)
    if codes.shape != (header.n_q, header.num_frames):
        raise ValueError(f"codes have shape {codes.shape}, the header needs ({header.n_q}, {header.num_frames})")
    values = [MAGIC, header.format_version, header.sample_rate, header.hop_length, header.n_q,
              header.bits_per_code, header.num_samples, bytes.fromhex(header.model_id)]
    if header.format_version >= 2:
        values.append(round(header.gain_db / GAIN_STEP_DB))
    fields = _HEADER_STRUCTS[header.format_version].pack(*values)
    head = fields + _CRC_STRUCT.pack(zlib.crc32(fields))
    payload = pack_codes(codes, header.bits_per_code)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + _CRC_STRUCT.pack(crc)


def _shorter_than_header(size: int) -> TruncatedBitstreamError:
    """The error for a file too short to hold its header. It states :data:`OVERHEAD_BYTES` (40), the size the README
    and docs/bitstream.md give for the header with its checksums (the 36 bytes of :data:`HEADER_SIZE` plus the
    trailing CRC), so the message and the documentation say the same number."""
    return TruncatedBitstreamError(f"truncated .rvq file: {size} of at least {OVERHEAD_BYTES} bytes (every .rvq file "
                                   "has a header and checksums of that size)")


def read_header(data: bytes | memoryview) -> RVQHeader:
    """Parse and check the header at the start of ``data`` (magic, version, header CRC, field values).

    Raises NotRVQFileError, UnsupportedVersionError, TruncatedBitstreamError or CorruptedBitstreamError.
    """
    data = memoryview(data)
    size = len(data)
    if size == 0:
        raise TruncatedBitstreamError("empty file (0 bytes): not a complete .rvq file")
    if bytes(data[:min(size, len(MAGIC))]) != MAGIC[:min(size, len(MAGIC))]:
        raise NotRVQFileError(f"not an .rvq file (starts with {bytes(data[:len(MAGIC)])!r}, expected {MAGIC!r})")
    if size <= len(MAGIC):
        raise _shorter_than_header(size)
    version = data[len(MAGIC)]
    if version not in _HEADER_STRUCTS:
        newer = " (written by a newer rvqcodec; upgrade to read it)" if version > FORMAT_VERSION else ""
        raise UnsupportedVersionError(f"unsupported .rvq format version {version}{newer}; "
                                      f"this rvqcodec reads versions 1 to {FORMAT_VERSION}")
    layout = _HEADER_STRUCTS[version]
    if size < layout.size + _CRC_STRUCT.size:
        raise _shorter_than_header(size)
    fields = bytes(data[:layout.size])
    (stored_crc,) = _CRC_STRUCT.unpack_from(data, layout.size)
    if zlib.crc32(fields) != stored_crc:
        raise CorruptedBitstreamError("corrupted .rvq file: header checksum (CRC32) mismatch")
    _, _, sample_rate, hop, n_q, bits, num_samples, model_bytes, *gain = layout.unpack(fields)
    try:
        return RVQHeader(sample_rate, hop, n_q, bits, num_samples, model_bytes.hex(),
                         gain_db=gain[0] * GAIN_STEP_DB if gain else 0.0, format_version=version)
    except ValueError as exc:
        raise CorruptedBitstreamError(f"corrupted .rvq file: {exc}") from None


def decode_bitstream(data: bytes | memoryview) -> tuple[RVQHeader, np.ndarray]:
    """Parse the bytes of a ``.rvq`` file -> ``(header, codes (n_q, num_frames) int64)``.

    Checks, in order: magic, version, header CRC, total length (truncation / trailing bytes), payload CRC.
    """
    data = memoryview(data)
    header = read_header(data)
    expected = header.file_bytes
    if len(data) < expected:
        raise TruncatedBitstreamError(f"truncated .rvq file: {len(data)} of {expected} bytes "
                                      f"({header.num_frames} frames x {header.n_q} stages)")
    if len(data) > expected:
        raise CorruptedBitstreamError(f"corrupted .rvq file: {len(data) - expected} unexpected trailing "
                                      f"bytes after the {expected} the header accounts for")
    body_end = expected - TRAILER_SIZE
    (stored_crc,) = _CRC_STRUCT.unpack_from(data, body_end)
    if zlib.crc32(data[:body_end]) != stored_crc:
        raise CorruptedBitstreamError("corrupted .rvq file: payload checksum (CRC32) mismatch")
    payload = data[header_size(header.format_version):body_end]
    codes = unpack_codes(payload, header.n_q, header.num_frames, header.bits_per_code)
    if codes.size and int(codes.max()) >= 1 << header.bits_per_code:  # pragma: no cover - unpacking bounds it
        raise CorruptedBitstreamError("corrupted .rvq file: code out of range")
    return header, codes


def check_model(header: RVQHeader, model_id: str) -> None:
    """Raise ModelMismatchError unless the file was written by the model identified by ``model_id``."""
    if header.model_id != model_id:
        raise ModelMismatchError(f"encoded with model {header.model_id} but the decoding model is {model_id}; "
                                 "decode with the model that compressed it (--model)")


# ------------------------------------------------------------------------------------------------ files


def write_rvq(path: str | os.PathLike, header: RVQHeader, codes: np.ndarray, overwrite: bool = False) -> int:
    """Write a ``.rvq`` file atomically and flushed to disk (:func:`rvqcodec.fileio.atomic_write_bytes`). Returns
    its size.

    Raises FileExistsError if ``path`` exists and ``overwrite`` is False, FileNotFoundError if its folder is missing.
    """
    data = encode_bitstream(header, codes)
    atomic_write_bytes(path, data, overwrite=overwrite, exists_message=already_exists_message(path), fsync=True)
    return len(data)


def read_rvq(path: str | os.PathLike) -> tuple[RVQHeader, np.ndarray]:
    """Read and check a ``.rvq`` file -> ``(header, codes (n_q, frames) int64)``; BitstreamError if bad."""
    return decode_bitstream(Path(path).read_bytes())
