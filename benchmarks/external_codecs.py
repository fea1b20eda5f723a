"""Classical reference codecs for the benchmarks: Opus, AMR-WB and Codec2, run through their own tools.

Each codec encodes a mono 16 kHz signal to a real bitstream file, decodes it back, and reports the decoded
audio, the bytes that count towards its bitrate and the wall time of both steps. A codec whose tools are not
installed is *unavailable* (:meth:`ExternalCodec.unavailable_reason` says why and how to install it); the
benchmarks skip it with that note instead of failing.

What is counted as the bitstream (``payload_bytes``), always divided by the duration of the *input* signal:

* **Opus** (``ffmpeg -c:a libopus``, voip, hard CBR, 20 ms frames, in an Ogg file): the Opus packets only,
  i.e. every Ogg packet after the two header packets (``OpusHead``, ``OpusTags``); the Ogg page headers
  (~1 %-3 % at these rates) and the header packets are left out. The whole ``.opus`` file size is kept in
  ``file_bytes``.
* **AMR-WB** (VisualOn ``vo-amrwbenc``, DTX off, RFC 4867 storage format ``.awb``): the speech bits of every
  frame, padded to whole bytes (e.g. 132 bits -> 17 bytes per 20 ms at 6.6 kbps, so 6.8 kbps measured);
  the per-frame ToC byte and the ``#!AMR-WB`` magic are left out (they are in ``file_bytes``). Encoded with
  ffmpeg's ``libvo_amrwbenc`` when that ffmpeg has it, else with ``libvo-amrwbenc.so.0`` through ctypes
  (Debian's ffmpeg ships the AMR-WB *decoder* only); decoded with ffmpeg's native ``amrwb`` decoder.
* **Codec2** (``c2enc``/``c2dec`` from the ``codec2`` package, 8 kHz internally): the whole headerless
  ``.c2`` bit file (frames padded to whole bytes: 700C sends 28 bits per 40 ms in 4 bytes, 0.8 kbps).
  Input is resampled 16 -> 8 kHz and the output 8 -> 16 kHz with :func:`rvqcodec.data.audio_io.resample`.

Timings include the start of each tool's process (a few ms to tens of ms): negligible for minute-long
inputs, large for a few seconds of audio.

Install (Debian/Ubuntu, as root): ``apt-get install -y ffmpeg codec2 libvo-amrwbenc0``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from rvqcodec.data.audio_io import resample

SAMPLE_RATE = 16000  # every codec here takes and returns 16 kHz mono float32
INSTALL_HINT = "apt-get install -y ffmpeg codec2 libvo-amrwbenc0"

OPUS_KBPS = (6, 8, 12, 16)
AMRWB_MODES = {6.6: 0, 8.85: 1, 12.65: 2}  # nominal kbps -> AMR-WB mode index
AMRWB_FRAME_BITS = (132, 177, 253, 285, 317, 365, 397, 461, 477, 40)  # per frame type 0-8, 9 = SID
AMRWB_MAGIC = b"#!AMR-WB\n"
AMRWB_FRAME_SAMPLES = 320  # 20 ms at 16 kHz
CODEC2_MODES = {"3200": 3.2, "1600": 1.6, "700C": 0.7}  # mode -> nominal kbps
CODEC2_SAMPLE_RATE = 8000


class ToolError(RuntimeError):
    """An installed external tool failed on an input (its stderr is in the message)."""


@dataclass(frozen=True)
class Tools:
    """Where the external programs are: a name looked up on ``PATH`` or a path to the executable.

    ``amrwbenc_library``: the VisualOn AMR-WB encoder shared library (``None``: search for
    ``libvo-amrwbenc``); used only when ffmpeg has no ``libvo_amrwbenc`` encoder.
    """

    ffmpeg: str = "ffmpeg"
    c2enc: str = "c2enc"
    c2dec: str = "c2dec"
    amrwbenc_library: str | None = None


@dataclass(frozen=True)
class CodecSetting:
    """One operating point of an external codec.

    Attributes:
        codec: codec family (``"opus"``, ``"amr-wb"``, ``"codec2"``).
        name: unique label, e.g. ``"opus-6k"``.
        nominal_kbps: the rate the encoder is asked for.
        description: encoder and options, for the tables.
        parameter: what is passed to the tool (bitrate in bit/s, mode name or index).
    """

    codec: str
    name: str
    nominal_kbps: float
    description: str
    parameter: str


@dataclass
class CodedAudio:
    """One encode + decode of a signal.

    Attributes:
        audio: decoded signal ``(T',)`` float32 at 16 kHz (``T'`` may differ from the input length; the
            codec's delay is removed when it is scored: :func:`rvqcodec.scoring.evaluate_pair` aligns it with
            :func:`rvqcodec.metrics.find_delay`).
        payload_bytes: bytes counted towards the bitrate (see the module docstring per codec).
        file_bytes: size of the whole encoded file (container included).
        encode_seconds, decode_seconds: wall time of the encoder and the decoder (process start included).
    """

    audio: np.ndarray
    payload_bytes: int
    file_bytes: int
    encode_seconds: float
    decode_seconds: float


def _resolve(program: str) -> str | None:
    """Absolute path of an executable given by name (searched on PATH) or path; None if not found."""
    return shutil.which(program)


def _run(cmd: list[str]) -> float:
    """Run a command, return its wall time in seconds; ToolError with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise ToolError(f"{Path(cmd[0]).name} failed (exit {done.returncode}): {message[-1] if message else ''}")
    return elapsed


@functools.lru_cache(maxsize=None)
def ffmpeg_codecs(ffmpeg: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """``(encoders, decoders)`` names of an ffmpeg executable, or None if it is missing or does not run."""
    path = _resolve(ffmpeg)
    if path is None:
        return None
    names = []
    for flag in ("-encoders", "-decoders"):
        try:
            listing = subprocess.run([path, "-hide_banner", flag], stdin=subprocess.DEVNULL,
                                     capture_output=True, timeout=30, check=True).stdout.decode(errors="replace")
        except (OSError, subprocess.SubprocessError):
            return None
        found = set()
        for line in listing.splitlines():
            parts = line.split()  # " A....D libopus   libopus Opus (codec opus)"
            if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS" and parts[1] != "=":
                found.add(parts[1])
        names.append(frozenset(found))
    return names[0], names[1]


def ffmpeg_version(ffmpeg: str) -> str | None:
    """First line of ``ffmpeg -version`` (None if ffmpeg is missing)."""
    path = _resolve(ffmpeg)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "-version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if lines else None


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(sr)


def _check_signal(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"external codecs take {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected a non-empty mono signal (T,), got shape {audio.shape}")
    return audio


# ------------------------------------------------------------------------------------------ containers


def ogg_packet_sizes(data: bytes) -> list[int]:
    """Sizes in bytes of the packets of an Ogg stream (one logical stream), in order.

    Each page: 27-byte header (``OggS`` ... segment count at byte 26), a lacing table of that many bytes,
    then the segments; a packet ends at a lacing value below 255.

    Raises:
        ValueError: not an Ogg stream, or truncated.
    """
    sizes, pos, current = [], 0, 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS" or pos + 27 > len(data):
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = data[pos + 26]
        lacing = data[pos + 27:pos + 27 + n_segments]
        if len(lacing) != n_segments:
            raise ValueError("truncated Ogg page")
        for value in lacing:
            current += value
            if value < 255:
                sizes.append(current)
                current = 0
        pos += 27 + n_segments + sum(lacing)
    if pos != len(data):
        raise ValueError("truncated Ogg page body")
    return sizes


def opus_payload_bytes(ogg: bytes) -> int:
    """Bytes of the Opus packets in an Ogg Opus file: every packet after OpusHead and OpusTags."""
    sizes = ogg_packet_sizes(ogg)
    if len(sizes) < 2 or not ogg.startswith(b"OggS"):
        raise ValueError("not an Ogg Opus stream (fewer than two header packets)")
    return sum(sizes[2:])


def amrwb_frames(data: bytes) -> list[int]:
    """Frame types of an AMR-WB storage file (``#!AMR-WB\\n`` then ToC byte + speech bytes per frame).

    Raises:
        ValueError: bad magic, unknown frame type, or truncated frame.
    """
    if not data.startswith(AMRWB_MAGIC):
        raise ValueError("not an AMR-WB storage file (missing #!AMR-WB magic)")
    pos, types = len(AMRWB_MAGIC), []
    while pos < len(data):
        frame_type = (data[pos] >> 3) & 0x0F
        if frame_type < len(AMRWB_FRAME_BITS):
            size = math.ceil(AMRWB_FRAME_BITS[frame_type] / 8)
        elif frame_type in (14, 15):  # speech lost / no data
            size = 0
        else:
            raise ValueError(f"unknown AMR-WB frame type {frame_type} at byte {pos}")
        if pos + 1 + size > len(data):
            raise ValueError("truncated AMR-WB frame")
        types.append(frame_type)
        pos += 1 + size
    return types


def amrwb_payload_bytes(data: bytes) -> int:
    """Speech bytes of an AMR-WB storage file: file minus magic minus one ToC byte per frame."""
    types = amrwb_frames(data)
    return len(data) - len(AMRWB_MAGIC) - len(types)


# -------------------------------------------------------------------------------------------- codecs


class ExternalCodec(ABC):
    """A classical codec driven through external tools (see the module docstring)."""

    name: str = ""

    def __init__(self, tools: Tools = Tools()):
        self.tools = tools

    @abstractmethod
    def settings(self) -> list[CodecSetting]:
        """The operating points benchmarked, lowest rate first."""

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the tools are installed, else a one-line note saying what is missing and how to install."""

    @abstractmethod
    def run(self, audio: np.ndarray, sample_rate: int, setting: CodecSetting, workdir: Path) -> CodedAudio:
        """Encode ``audio`` ``(T,)`` float at 16 kHz with ``setting`` into files under ``workdir``, decode it.

        Raises:
            ValueError: wrong rate or shape. ToolError: the tool failed.
        """

    def _ffmpeg_path(self) -> str:
        path = _resolve(self.tools.ffmpeg)
        if path is None:
            raise ToolError(f"ffmpeg not found: {self.tools.ffmpeg}")
        return path


def _ffmpeg_base(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1"]


class Opus(ExternalCodec):
    """libopus through ffmpeg: ``-application voip -vbr off -frame_duration 20``, Ogg container."""

    name = "opus"

    def __init__(self, tools: Tools = Tools(), kbps: tuple[float, ...] = OPUS_KBPS):
        super().__init__(tools)
        self.kbps = tuple(kbps)

    def settings(self) -> list[CodecSetting]:
        return [CodecSetting("opus", f"opus-{k:g}k", float(k), "libopus, voip, CBR, 20 ms", str(int(k * 1000)))
                for k in self.kbps]

    def unavailable_reason(self) -> str | None:
        codecs = ffmpeg_codecs(self.tools.ffmpeg)
        if codecs is None:
            return f"Opus skipped: ffmpeg not found ({self.tools.ffmpeg}); install: apt-get install -y ffmpeg"
        if "libopus" not in codecs[0]:
            return "Opus skipped: this ffmpeg has no libopus encoder; install Debian's ffmpeg (apt-get install -y ffmpeg)"
        return None

    def run(self, audio: np.ndarray, sample_rate: int, setting: CodecSetting, workdir: Path) -> CodedAudio:
        audio = _check_signal(audio, sample_rate)
        ffmpeg = self._ffmpeg_path()
        src, coded, decoded = workdir / "opus_in.wav", workdir / "coded.opus", workdir / "opus_out.wav"
        _write_wav(src, audio, sample_rate)
        encode_s = _run(_ffmpeg_base(ffmpeg) + ["-i", str(src), "-c:a", "libopus", "-b:a", setting.parameter,
                                                "-vbr", "off", "-application", "voip", "-frame_duration", "20",
                                                str(coded)])
        decoder = ["-c:a", "libopus"] if "libopus" in ffmpeg_codecs(self.tools.ffmpeg)[1] else []
        decode_s = _run(_ffmpeg_base(ffmpeg) + decoder + ["-i", str(coded), "-ar", str(SAMPLE_RATE), "-ac", "1",
                                                          "-c:a", "pcm_f32le", str(decoded)])
        data = coded.read_bytes()
        out, _ = _read_mono(decoded)
        return CodedAudio(out, opus_payload_bytes(data), len(data), encode_s, decode_s)


class _VoAmrWbEncoder:
    """The VisualOn AMR-WB encoder library (``enc_if.h``: ``E_IF_init``, ``E_IF_encode``, ``E_IF_exit``)."""

    def __init__(self, library: str):
        lib = ctypes.CDLL(library)
        lib.E_IF_init.restype = ctypes.c_void_p
        lib.E_IF_init.argtypes = []
        lib.E_IF_encode.restype = ctypes.c_int
        lib.E_IF_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                    ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
        lib.E_IF_exit.restype = None
        lib.E_IF_exit.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def encode(self, pcm16: np.ndarray, mode: int) -> bytes:
        """``pcm16`` int16 at 16 kHz (zero-padded to whole 20 ms frames) -> storage-format bytes, DTX off."""
        n_frames = -(-pcm16.size // AMRWB_FRAME_SAMPLES)
        frames = np.zeros(n_frames * AMRWB_FRAME_SAMPLES, dtype=np.int16)
        frames[:pcm16.size] = pcm16
        out = (ctypes.c_ubyte * 64)()
        chunks = [AMRWB_MAGIC]
        state = self.lib.E_IF_init()
        if not state:
            raise ToolError("E_IF_init failed")
        try:
            for i in range(n_frames):
                frame = np.ascontiguousarray(frames[i * AMRWB_FRAME_SAMPLES:(i + 1) * AMRWB_FRAME_SAMPLES])
                n = self.lib.E_IF_encode(state, mode, frame.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), out, 0)
                if n <= 0:
                    raise ToolError(f"E_IF_encode failed on frame {i}")
                chunks.append(bytes(out[:n]))
        finally:
            self.lib.E_IF_exit(state)
        return b"".join(chunks)


def _find_amrwbenc_library(explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit if Path(explicit).is_file() else None
    return ctypes.util.find_library("vo-amrwbenc")


class AmrWb(ExternalCodec):
    """AMR-WB (G.722.2), DTX off: encoded by vo-amrwbenc (ffmpeg or ctypes), decoded by ffmpeg's amrwb."""

    name = "amr-wb"

    def __init__(self, tools: Tools = Tools(), kbps: tuple[float, ...] = tuple(AMRWB_MODES)):
        super().__init__(tools)
        unknown = [k for k in kbps if k not in AMRWB_MODES]
        if unknown:
            raise ValueError(f"AMR-WB rates benchmarked here: {', '.join(map(str, AMRWB_MODES))}; got {unknown}")
        self.kbps = tuple(kbps)

    def settings(self) -> list[CodecSetting]:
        return [CodecSetting("amr-wb", f"amr-wb-{k:g}k", k, f"vo-amrwbenc mode {AMRWB_MODES[k]}, DTX off",
                             str(AMRWB_MODES[k])) for k in self.kbps]

    def encoder_backend(self) -> str | None:
        """``"ffmpeg"`` (libvo_amrwbenc inside ffmpeg), ``"ctypes"`` (the shared library) or None."""
        codecs = ffmpeg_codecs(self.tools.ffmpeg)
        if codecs is not None and "libvo_amrwbenc" in codecs[0]:
            return "ffmpeg"
        return "ctypes" if _find_amrwbenc_library(self.tools.amrwbenc_library) else None

    def unavailable_reason(self) -> str | None:
        codecs = ffmpeg_codecs(self.tools.ffmpeg)
        if codecs is None:
            return (f"AMR-WB skipped: ffmpeg not found ({self.tools.ffmpeg}), needed to decode; "
                    "install: apt-get install -y ffmpeg libvo-amrwbenc0")
        if "amrwb" not in codecs[1] and "libopencore_amrwb" not in codecs[1]:
            return "AMR-WB skipped: this ffmpeg has no AMR-WB decoder"
        if self.encoder_backend() is None:
            return ("AMR-WB skipped: no encoder (this ffmpeg lacks libvo_amrwbenc, as Debian's does, and "
                    "libvo-amrwbenc.so.0 was not found); install: apt-get install -y libvo-amrwbenc0")
        return None

    def run(self, audio: np.ndarray, sample_rate: int, setting: CodecSetting, workdir: Path) -> CodedAudio:
        audio = _check_signal(audio, sample_rate)
        ffmpeg = self._ffmpeg_path()
        coded, decoded = workdir / "coded.awb", workdir / "amrwb_out.wav"
        backend = self.encoder_backend()
        if backend == "ffmpeg":
            src = workdir / "amrwb_in.wav"
            _write_wav(src, audio, sample_rate)
            bitrate = str(int(round(setting.nominal_kbps * 1000)))
            encode_s = _run(_ffmpeg_base(ffmpeg) + ["-i", str(src), "-c:a", "libvo_amrwbenc", "-b:a", bitrate,
                                                    "-dtx", "0", "-f", "amr", str(coded)])
        elif backend == "ctypes":
            pcm16 = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
            start = time.perf_counter()
            data = _VoAmrWbEncoder(_find_amrwbenc_library(self.tools.amrwbenc_library)).encode(
                pcm16, int(setting.parameter))
            encode_s = time.perf_counter() - start
            coded.write_bytes(data)
        else:
            raise ToolError(self.unavailable_reason() or "AMR-WB encoder missing")
        decode_s = _run(_ffmpeg_base(ffmpeg) + ["-i", str(coded), "-ar", str(SAMPLE_RATE), "-ac", "1",
                                                "-c:a", "pcm_f32le", str(decoded)])
        data = coded.read_bytes()
        out, _ = _read_mono(decoded)
        return CodedAudio(out, amrwb_payload_bytes(data), len(data), encode_s, decode_s)


class Codec2(ExternalCodec):
    """Codec2 (``c2enc``/``c2dec``), headerless bit files, 8 kHz internally."""

    name = "codec2"

    def __init__(self, tools: Tools = Tools(), modes: tuple[str, ...] = tuple(CODEC2_MODES)):
        super().__init__(tools)
        unknown = [m for m in modes if m not in CODEC2_MODES]
        if unknown:
            raise ValueError(f"Codec2 modes benchmarked here: {', '.join(CODEC2_MODES)}; got {unknown}")
        self.modes = tuple(modes)

    def settings(self) -> list[CodecSetting]:
        return [CodecSetting("codec2", f"codec2-{m}", CODEC2_MODES[m], f"c2enc mode {m} (8 kHz)", m)
                for m in self.modes]

    def unavailable_reason(self) -> str | None:
        missing = [p for p in (self.tools.c2enc, self.tools.c2dec) if _resolve(p) is None]
        if missing:
            return f"Codec2 skipped: {' and '.join(missing)} not found; install: apt-get install -y codec2"
        return None

    def run(self, audio: np.ndarray, sample_rate: int, setting: CodecSetting, workdir: Path) -> CodedAudio:
        audio = _check_signal(audio, sample_rate)
        c2enc, c2dec = _resolve(self.tools.c2enc), _resolve(self.tools.c2dec)
        if c2enc is None or c2dec is None:
            raise ToolError(self.unavailable_reason() or "codec2 tools missing")
        narrow = resample(torch.from_numpy(audio), SAMPLE_RATE, CODEC2_SAMPLE_RATE).numpy()
        raw_in, coded, raw_out = workdir / "c2_in.raw", workdir / "coded.c2", workdir / "c2_out.raw"
        raw_in.write_bytes(np.round(np.clip(narrow, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        encode_s = _run([c2enc, setting.parameter, str(raw_in), str(coded)])
        decode_s = _run([c2dec, setting.parameter, str(coded), str(raw_out)])
        decoded = np.frombuffer(raw_out.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0
        out = resample(torch.from_numpy(decoded), CODEC2_SAMPLE_RATE, SAMPLE_RATE).numpy()
        size = coded.stat().st_size
        return CodedAudio(out, size, size, encode_s, decode_s)


EXTERNAL_CODECS = {"opus": Opus, "amr-wb": AmrWb, "codec2": Codec2}


def external_codecs(names: list[str] | tuple[str, ...], tools: Tools = Tools()) -> tuple[list[ExternalCodec], list[str]]:
    """The available codecs among ``names`` (keys of :data:`EXTERNAL_CODECS`) and a note per skipped one.

    Raises:
        ValueError: an unknown codec name.
    """
    unknown = [n for n in names if n not in EXTERNAL_CODECS]
    if unknown:
        raise ValueError(f"unknown external codec(s) {', '.join(unknown)}; choose from {', '.join(EXTERNAL_CODECS)}")
    available, notes = [], []
    for name in names:
        codec = EXTERNAL_CODECS[name](tools)
        reason = codec.unavailable_reason()
        if reason is None:
            available.append(codec)
        else:
            notes.append(reason)
    return available, notes
