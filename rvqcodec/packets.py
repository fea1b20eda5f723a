"""The packet stream of live coding: a small stream header, then one packet per frame (or a few), each with a sync
word, a sequence number, its length and a CRC, so that a reader of a byte pipe finds the packets again after
damage and knows what was lost.

The layout is specified in ``docs/streaming.md``; in short (integers little-endian)::

    stream header (25 bytes, once)
         0    4  magic b"RVQS"
         4    1  version (uint8, 1)
         5    4  sample rate in Hz (uint32)
         9    2  hop length in samples per frame (uint16)
        11    1  RVQ stages per frame n_q (uint8)
        12    1  bits per code (uint8)
        13    8  model id (``Codec.model_id``'s 16 hex characters as 8 bytes)
        21    4  CRC32 of bytes 0..20
    packet (8 + P bytes, repeated)
         0    2  sync word 0xA5 0x5A
         2    2  sequence number (uint16, +1 per packet, wrapping at 65536)
         4    1  frames in the packet (1..255; 0: end of stream)
         5    1  payload length P in bytes (uint8)
         6    P  payload: the frames' codes, frame-major, ``bits`` bits each, most significant bit first, the last
                 byte zero-padded (``P = ceil(frames · n_q · bits / 8)``); end of stream: the number of samples
                 the encoder was given (uint32), so the decoder can drop the last frame's zero padding
       6+P    2  CRC-16/CCITT (``binascii.crc_hqx``, initial value 0xFFFF) of bytes 0..5+P

This module is the format alone (bytes <-> header and codes; it knows no model): :class:`PacketWriter` makes the
bytes, :class:`PacketReader` parses any byte pieces back into :class:`Frames`, :class:`Lost` and :class:`End` events,
never raising for damaged packets. A bad stream header is an error (:class:`PacketStreamError`, one line), since
nothing after it can be read without it. The ``.rvq`` file container (:mod:`rvqcodec.bitstream`) is a different
format, for files.
"""
from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from rvqcodec.errors import InputError

MAGIC = b"RVQS"
VERSION = 1
SYNC = b"\xa5\x5a"
_HEADER_STRUCT = struct.Struct("<4sBIHBB8s")  # magic .. model id (21 bytes)
_CRC32 = struct.Struct("<I")
HEADER_SIZE = _HEADER_STRUCT.size + _CRC32.size  # 25
_PACKET_HEAD = struct.Struct("<2sHBB")  # sync, sequence, frames, payload length (6 bytes)
_CRC16 = struct.Struct("<H")
PACKET_OVERHEAD = _PACKET_HEAD.size + _CRC16.size  # 8 bytes per packet
MAX_PAYLOAD = 255
_END = struct.Struct("<I")
SEQUENCE_MODULO = 1 << 16


class PacketStreamError(InputError):
    """The stream header is missing, damaged or of another version (one-line message)."""


@dataclass(frozen=True)
class StreamHeader:
    """What a packet stream says about its codes, once at its start."""

    sample_rate: int
    hop_length: int
    n_q: int
    bits_per_code: int
    model_id: str  # 16 lowercase hex characters

    def __post_init__(self) -> None:
        if not (1 <= self.sample_rate < 1 << 32 and 1 <= self.hop_length < 1 << 16 and 1 <= self.n_q < 256
                and 1 <= self.bits_per_code <= 32):
            raise ValueError(f"stream header values out of range: {self}")
        if len(self.model_id) != 16 or any(c not in "0123456789abcdef" for c in self.model_id):
            raise ValueError(f"model id must be 16 lowercase hex characters, got {self.model_id!r}")

    @property
    def frame_bytes(self) -> int:
        """Payload bits of one frame, in bytes (rounded up)."""
        return -(-self.n_q * self.bits_per_code // 8)

    @property
    def max_frames_per_packet(self) -> int:
        """The most frames a packet's payload (at most 255 bytes) can hold."""
        return min(255, MAX_PAYLOAD * 8 // (self.n_q * self.bits_per_code))

    def payload_size(self, frames: int) -> int:
        """Payload bytes of a packet of ``frames`` frames."""
        return -(-frames * self.n_q * self.bits_per_code // 8)

    def to_bytes(self) -> bytes:
        fields = _HEADER_STRUCT.pack(MAGIC, VERSION, self.sample_rate, self.hop_length, self.n_q, self.bits_per_code,
                                     bytes.fromhex(self.model_id))
        return fields + _CRC32.pack(zlib.crc32(fields))

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamHeader:
        """Parse the first :data:`HEADER_SIZE` bytes of a stream; :class:`PacketStreamError` if they are not a
        valid header."""
        data = bytes(data)
        if not data:
            raise PacketStreamError("empty input: no rvqcodec packet stream")
        if data[:4] != MAGIC[:len(data[:4])]:
            raise PacketStreamError("not an rvqcodec packet stream (no RVQS header; .rvq files are decoded with "
                                    "rvqcodec decompress)")
        if len(data) < HEADER_SIZE:
            raise PacketStreamError(f"the stream ends inside its {HEADER_SIZE}-byte header ({len(data)} bytes)")
        fields, (crc,) = data[:_HEADER_STRUCT.size], _CRC32.unpack_from(data, _HEADER_STRUCT.size)
        magic, version, sample_rate, hop, n_q, bits, model_id = _HEADER_STRUCT.unpack(fields)
        if zlib.crc32(fields) != crc:
            raise PacketStreamError("the packet stream's header is damaged (CRC mismatch)")
        if version != VERSION:
            raise PacketStreamError(f"packet stream version {version} is not supported (this rvqcodec reads "
                                    f"version {VERSION}; a newer rvqcodec wrote it)")
        try:
            return cls(sample_rate, hop, n_q, bits, model_id.hex())
        except ValueError as exc:
            raise PacketStreamError(f"the packet stream's header is damaged ({exc})") from None


def pack_frames(codes: np.ndarray, bits: int) -> bytes:
    """``(n_q, frames)`` codes -> payload bytes: frame-major, ``bits`` bits per code, MSB first, zero-padded."""
    values = np.ascontiguousarray(np.asarray(codes, dtype=np.int64).T).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits})")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_frames(payload: bytes, n_q: int, frames: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_frames` -> ``(n_q, frames)`` int64."""
    count = n_q * frames
    flat = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:count * bits].reshape(count, bits)
    values = flat.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return values.reshape(frames, n_q).T.copy()


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


class PacketWriter:
    """Bytes of one packet stream: :meth:`header` first, then :meth:`frames` for each group of frames and
    :meth:`end` once."""

    def __init__(self, header: StreamHeader):
        self.stream_header = header
        self.sequence = 0

    def header(self) -> bytes:
        return self.stream_header.to_bytes()

    def frames(self, codes: np.ndarray) -> bytes:
        """``(n_q, frames)`` codes -> one packet per at most :attr:`StreamHeader.max_frames_per_packet` frames
        (``b""`` for 0 frames)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.stream_header.n_q:
            raise ValueError(f"expected codes of shape ({self.stream_header.n_q}, frames), got {codes.shape}")
        step = self.stream_header.max_frames_per_packet
        return b"".join(self._packet(min(step, codes.shape[1] - start),
                                     pack_frames(codes[:, start:start + step], self.stream_header.bits_per_code))
                        for start in range(0, codes.shape[1], step))

    def end(self, num_samples: int) -> bytes:
        """The end-of-stream packet: the number of samples the encoder was given (capped at 2³² - 1)."""
        return self._packet(0, _END.pack(min(int(num_samples), (1 << 32) - 1)))

    def _packet(self, frames: int, payload: bytes) -> bytes:
        head = _PACKET_HEAD.pack(SYNC, self.sequence, frames, len(payload))
        self.sequence = (self.sequence + 1) % SEQUENCE_MODULO
        return head + payload + _CRC16.pack(_crc16(head + payload))


@dataclass(frozen=True)
class Frames:
    """Codes that arrived intact: ``(n_q, frames)`` int64."""

    codes: np.ndarray


@dataclass(frozen=True)
class Lost:
    """``frames`` frames that did not arrive (a sequence gap times the frames per packet last seen)."""

    frames: int


@dataclass(frozen=True)
class End:
    """The end-of-stream packet: ``num_samples`` samples were encoded."""

    num_samples: int


Event = Frames | Lost | End


@dataclass
class ReaderStats:
    """What a :class:`PacketReader` saw: packets read intact, packets missing (sequence gaps), intact packets behind
    the sequence (repeated or late: dropped), bytes skipped while looking for a packet (damage), and bytes of an
    unfinished packet at the end of the stream (truncation)."""

    packets: int = 0
    lost_packets: int = 0
    late_packets: int = 0
    skipped_bytes: int = 0
    truncated_bytes: int = 0


class PacketReader:
    """Parses a packet stream fed as byte pieces of any size into events, in order.

    ``feed(data)`` returns the events now complete; ``finish()`` those at the end of the input (a truncated last
    packet counts as one lost packet). Damage never raises: bytes that do not start a valid packet (sync word,
    plausible length, matching CRC) are skipped until one does, and a jump in sequence numbers reports the missing
    frames (:class:`Lost`, at most ``max_lost_frames`` at once: a larger jump is more likely damage that passed the
    CRC than minutes of loss). Only a bad stream header raises :class:`PacketStreamError`.
    """

    def __init__(self, max_lost_frames: int = 250):
        self.header: StreamHeader | None = None
        self.stats = ReaderStats()
        self.ended = False
        self._buffer = bytearray()
        self._expected = 0  # next sequence number
        self._frames_per_packet = 1  # of the last intact codes packet, to size a gap
        self.max_lost_frames = max_lost_frames

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        if self.header is None:
            if len(self._buffer) < HEADER_SIZE:
                if self._buffer[:4] != MAGIC[:len(self._buffer[:4])]:
                    StreamHeader.from_bytes(self._buffer)  # raises: not a packet stream
                return []
            self.header = StreamHeader.from_bytes(self._buffer[:HEADER_SIZE])
            del self._buffer[:HEADER_SIZE]
            self._expected = 0
        events: list[Event] = []
        while not self.ended:
            position = self._buffer.find(SYNC)
            if position < 0:  # keep a last byte that may be the first half of a sync word
                keep = 1 if self._buffer[-1:] == SYNC[:1] else 0
                self.stats.skipped_bytes += len(self._buffer) - keep
                del self._buffer[:len(self._buffer) - keep]
                break
            if position:
                self.stats.skipped_bytes += position
                del self._buffer[:position]
            if len(self._buffer) < _PACKET_HEAD.size:
                break
            _, sequence, frames, size = _PACKET_HEAD.unpack_from(self._buffer)
            expected_size = _END.size if frames == 0 else self.header.payload_size(frames)
            if size != expected_size:  # not a packet: a sync word inside damaged bytes or a payload
                self._skip_one()
                continue
            end = _PACKET_HEAD.size + size + _CRC16.size
            if len(self._buffer) < end:
                break
            packet = bytes(self._buffer[:end])
            if _CRC16.unpack_from(packet, end - _CRC16.size)[0] != _crc16(packet[:end - _CRC16.size]):
                self._skip_one()
                continue
            del self._buffer[:end]
            events += self._accept(sequence, frames, packet[_PACKET_HEAD.size:end - _CRC16.size])
        return events

    def finish(self) -> list[Event]:
        """The input ended: bytes of an unfinished packet are a lost packet (truncation)."""
        if self.header is None:
            StreamHeader.from_bytes(self._buffer)  # raises: empty, or cut inside the header
        events: list[Event] = []
        if self._buffer and not self.ended:
            self.stats.truncated_bytes += len(self._buffer)
            if len(self._buffer) >= _PACKET_HEAD.size and self._buffer[:2] == SYNC:
                self.stats.lost_packets += 1
                events.append(Lost(min(self._frames_per_packet, self.max_lost_frames)))
        self._buffer.clear()
        return events

    def _skip_one(self) -> None:
        self.stats.skipped_bytes += 1
        del self._buffer[:1]

    def _accept(self, sequence: int, frames: int, payload: bytes) -> list[Event]:
        events: list[Event] = []
        missing = (sequence - self._expected) % SEQUENCE_MODULO
        if missing >= SEQUENCE_MODULO // 2:  # behind the expected number: a repeated or late packet
            self.stats.late_packets += 1
            return events
        if missing:
            self.stats.lost_packets += missing
            events.append(Lost(min(missing * self._frames_per_packet, self.max_lost_frames)))
        self._expected = (sequence + 1) % SEQUENCE_MODULO
        self.stats.packets += 1
        if frames == 0:
            self.ended = True
            events.append(End(_END.unpack(payload)[0]))
            return events
        self._frames_per_packet = frames
        header = self.header
        codes = unpack_frames(payload, header.n_q, frames, header.bits_per_code)
        events.append(Frames(codes))
        return events
