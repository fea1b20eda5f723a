"""A causal codec and its packet streams, for live use: audio pieces -> packet bytes, packet bytes -> audio, with
loss concealment.

This module puts :mod:`rvqcodec.realtime` (the frame-by-frame codec) and :mod:`rvqcodec.packets` (the format)
together, as :mod:`rvqcodec.streams` does for ``.rvq`` files::

    sender = PacketEncoder(codec, n_q=12)          # frames_per_packet=1: a packet every 20 ms
    link.send(sender.push(piece))                   # bytes (the stream header first), b"" until a packet is ready
    link.send(sender.flush())                       # the last frame and the end-of-stream packet

    receiver = PacketDecoder(codec)
    play(receiver.push(received_bytes))             # float32 samples, as soon as they are final
    play(receiver.flush())                          # the input ended

**Concealment.** A lost packet (a sequence gap, a damaged packet skipped for its CRC, a truncated last packet) is
decoded as its frames' worth of audio: the last intact frame's codes repeated through the decoder, its output faded
linearly to silence over :attr:`PacketDecoder.fade_frames` frames (and silence beyond); the next intact frame fades
back in over one frame. The decoder's state runs on, so the sample count and timing stay those of the sender. Before
any intact frame, a lost frame is silence. Nothing in the bytes makes :meth:`PacketDecoder.push` raise, except a
missing or damaged stream header, or a stream of another model (:class:`rvqcodec.packets.PacketStreamError`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rvqcodec.packets import End, Frames, Lost, PacketReader, PacketStreamError, PacketWriter, StreamHeader
from rvqcodec.realtime import StreamDecoder, StreamEncoder, check_streamable

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec


def stream_header(codec: Codec, n_q: int) -> StreamHeader:
    """The stream header ``codec`` writes for ``n_q`` stages."""
    return StreamHeader(sample_rate=codec.sample_rate, hop_length=codec.hop_length, n_q=n_q,
                        bits_per_code=codec.bits_per_code, model_id=codec.model_id)


def check_fits(header: StreamHeader, codec: Codec) -> None:
    """:class:`PacketStreamError` (one line) unless ``codec`` is the model that wrote the stream."""
    if header.model_id != codec.model_id:
        raise PacketStreamError(f"the stream was encoded with model {header.model_id}, not with this model "
                                f"({codec.model_id}); pass the encoder's model with --model")
    if (header.sample_rate, header.hop_length, header.bits_per_code) != (
            codec.sample_rate, codec.hop_length, codec.bits_per_code) or header.n_q > codec.max_n_q:
        raise PacketStreamError(f"the stream's header does not fit model {codec.model_id} ({header})")


class PacketEncoder:
    """Audio pieces -> packet stream bytes (module docstring).

    Args:
        codec: a causal frame-rate model.
        n_q: RVQ stages per frame.
        frames_per_packet: frames sent together (1: a packet per 20 ms frame; more saves the 8 bytes of each
            packet's overhead at ``frames_per_packet - 1`` frames of extra latency).
    """

    def __init__(self, codec: Codec, n_q: int, frames_per_packet: int = 1):
        self.encoder = StreamEncoder(codec, n_q)
        self.header = stream_header(codec, self.encoder.n_q)
        if not 1 <= frames_per_packet <= self.header.max_frames_per_packet:
            raise ValueError(f"frames per packet must be between 1 and {self.header.max_frames_per_packet} at "
                             f"{self.encoder.n_q} stages, got {frames_per_packet}")
        self.frames_per_packet = int(frames_per_packet)
        self.writer = PacketWriter(self.header)
        self._pending = np.zeros((self.encoder.n_q, 0), dtype=np.int64)
        self._started = False

    def push(self, samples: np.ndarray) -> bytes:
        """``(t,)`` float samples at the codec's rate -> the bytes now ready (the stream header on the first call,
        then every complete packet)."""
        return self._send(self.encoder.push(samples), final=False)

    def flush(self) -> bytes:
        """End of the audio: the last (zero-padded) frame, any frames still held for a packet, the end packet."""
        return self._send(self.encoder.flush(), final=True) + self.writer.end(self.encoder.samples_in)

    def _send(self, codes: np.ndarray, final: bool) -> bytes:
        out = b""
        if not self._started:
            out, self._started = self.writer.header(), True
        self._pending = np.concatenate([self._pending, codes], axis=1)
        ready = self._pending.shape[1] if final else self._pending.shape[1] // self.frames_per_packet * \
            self.frames_per_packet
        for start in range(0, ready, self.frames_per_packet):
            out += self.writer.frames(self._pending[:, start:min(start + self.frames_per_packet, ready)])
        self._pending = self._pending[:, ready:]
        return out


@dataclass
class DecoderReport:
    """What a :class:`PacketDecoder` did: frames decoded from intact packets and concealed, and whether the stream
    ended with its end packet (else it was cut short)."""

    frames_decoded: int = 0
    frames_concealed: int = 0
    complete: bool = False


class PacketDecoder:
    """Packet stream bytes -> audio, concealing what was lost (module docstring).

    ``fade_frames``: frames over which a loss fades to silence (4: 80 ms).
    """

    def __init__(self, codec: Codec, fade_frames: int = 4):
        check_streamable(codec)
        self.codec = codec
        self.fade_frames = max(1, int(fade_frames))
        self.reader = PacketReader()
        self.decoder = StreamDecoder(codec)
        self.report = DecoderReport()
        self._last_codes: np.ndarray | None = None  # (n_q, 1) of the last intact frame
        self._lost_run = 0  # consecutive frames concealed so far
        self._gain = 1.0  # output gain at the end of the last returned piece
        self._num_samples: int | None = None

    @property
    def header(self) -> StreamHeader | None:
        return self.reader.header

    def push(self, data: bytes) -> np.ndarray:
        """Bytes of the stream, any piece -> float32 samples now final (possibly none)."""
        had_header = self.reader.header is not None
        events = self.reader.feed(data)
        if not had_header and self.reader.header is not None:
            check_fits(self.reader.header, self.codec)
        return self._play(events)

    def flush(self) -> np.ndarray:
        """The input ended: a truncated last packet is concealed, the decoder's tail returned, and (after an end
        packet) the last frame's zero padding dropped, so the output has the sender's sample count."""
        out = self._play(self.reader.finish())
        tail = self._scaled(self.decoder.flush(), self._gain)
        if self._num_samples is not None:
            excess = self.decoder.samples_out - self._num_samples
            if 0 < excess <= tail.size:
                tail = tail[:tail.size - excess]
        return np.concatenate([out, tail])

    def _play(self, events: list) -> np.ndarray:
        pieces = []
        for event in events:
            if isinstance(event, Frames):
                codes = event.codes
                if codes.size and codes.max() >= self.codec.config.codebook_size:  # intact, but not this codebook's
                    pieces.append(self._conceal(codes.shape[1]))
                    continue
                pieces.append(self._scaled(self.decoder.push(codes), 1.0))
                self._last_codes, self._lost_run = codes[:, -1:], 0
                self.report.frames_decoded += codes.shape[1]
            elif isinstance(event, Lost):
                pieces.append(self._conceal(event.frames))
            elif isinstance(event, End):
                self._num_samples = event.num_samples
                self.report.complete = True
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _conceal(self, frames: int) -> np.ndarray:
        pieces = []
        codes = self._last_codes
        if codes is None:  # nothing intact yet: any codes, silenced
            codes = np.zeros((self.reader.header.n_q, 1), dtype=np.int64)
            self._lost_run = self.fade_frames
        for _ in range(frames):
            self._lost_run += 1
            target = max(0.0, 1.0 - self._lost_run / self.fade_frames)
            pieces.append(self._scaled(self.decoder.push(codes), target))
        self.report.frames_concealed += frames
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _scaled(self, audio: np.ndarray, target: float) -> np.ndarray:
        """``audio`` times a gain ramp from the current gain to ``target`` (no click where a loss starts or ends)."""
        start, self._gain = self._gain, target
        if start == target == 1.0 or audio.size == 0:
            if audio.size == 0:
                self._gain = start
            return audio
        ramp = np.linspace(start, target, audio.size, endpoint=True, dtype=np.float32)
        return audio * ramp
