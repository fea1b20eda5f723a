"""Compressing audio files into ``.rvq`` files and decoding them back into audio files, in bounded memory.

The input is streamed block by block (:func:`rvqcodec.data.audio_io.iter_audio_blocks`, resampled to the codec
rate and averaged to mono) into :func:`rvqcodec.streams.encode_file` (the chunk engine, the ``.rvq`` file written
atomically); decoding streams the audio of :func:`rvqcodec.streams.decode_file` into the output file
(:func:`rvqcodec.data.audio_io.streamed_audio_file`). Every output check (an input file, a folder, an existing
file without ``overwrite``, an unwritable folder) happens before any work.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rvqcodec import level, streams
from rvqcodec.bitstream import RVQHeader
from rvqcodec.chunking import ChunkConfig
from rvqcodec.data import audio_io
from rvqcodec.errors import InputError
from rvqcodec.fileio import already_exists_message, check_writable_folder, same_file

if TYPE_CHECKING:  # pragma: no cover
    from rvqcodec.model.codec import Codec


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
    warnings: tuple[str, ...] = ()  # what the input held that reading worked around (audio_io.input_warnings)

    @property
    def downmixed(self) -> bool:
        return self.source_channels > 1

    @property
    def resampled(self) -> bool:
        return self.source_sample_rate != self.header.sample_rate


def compress_file(codec: Codec, source: str | os.PathLike, output: str | os.PathLike, n_q: int,
                  overwrite: bool = False, chunking: ChunkConfig = ChunkConfig(),
                  protected: Sequence[str | os.PathLike] = (),
                  normalize: bool = level.NORMALIZE_BY_DEFAULT) -> CompressReport:
    """Compress an audio file (any format/rate/channels soundfile reads) into a ``.rvq`` file, in bounded memory.

    The input is read block by block, resampled to the codec rate and averaged to mono, twice with ``normalize``
    (first to measure its level, :mod:`rvqcodec.level`, then to encode it at the gain that normalizes it); a float
    file beyond full scale is scaled to peak at full scale and a truncated file is encoded as far as it goes (both
    listed in ``CompressReport.warnings``). An audio file with zero samples gives a valid empty stream. The output
    is written atomically and never over ``source`` or a ``protected`` path.

    Raises:
        AudioReadError: unreadable / non-audio input. FileExistsError: output exists and not ``overwrite``.
        PermissionError: the output folder is not writable (checked before encoding).
        InputError: output is an input or a folder, NaN/inf samples. ValueError: an ``n_q`` the codec does not
            have (checked by :func:`rvqcodec.streams.encode_file` before any encoding; the commands resolve
            ``--bitrate`` / ``--n-q`` once, with :func:`rvqcodec.streams.resolve_n_q`, before any file).
    """
    source, output = Path(source), Path(output)
    info = audio_io.audio_info(source)
    _check_output(output, overwrite, [source, *protected])
    warnings = tuple(audio_io.input_warnings(source))
    block_frames = max(1, round(chunking.read_block_seconds * info.samplerate))

    def blocks() -> Iterable:
        if not info.frames:  # an audio file with no samples: the empty stream
            return ()
        return audio_io.iter_audio_blocks(source, block_frames, target_sr=codec.sample_rate, mono=True,
                                          fit_full_scale=True)

    gain_db = level.gain_db_of(blocks()) if normalize else 0.0
    header, n_bytes = streams.encode_file(codec, blocks(), output, n_q, chunking, overwrite=overwrite,
                                          gain_db=gain_db)
    return CompressReport(source, output, header, n_bytes, int(info.samplerate), int(info.channels), warnings)


@dataclass
class DecompressReport:
    """What :func:`decompress_file` did."""

    source: Path
    output: Path
    header: RVQHeader
    sample_rate: int  # rate of the written file


def decompress_file(codec: Codec, source: str | os.PathLike, output: str | os.PathLike,
                    sample_rate: int | None = None, overwrite: bool = False, subtype: str | None = None,
                    chunking: ChunkConfig = ChunkConfig(),
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
    header, audio = streams.decode_file(codec, source, chunking)
    out_rate = header.sample_rate if sample_rate is None else int(sample_rate)
    resampler = None
    if out_rate != header.sample_rate:
        resampler = audio_io.StreamingResampler(header.sample_rate, out_rate)  # ValueError for impractical rates
    with audio_io.streamed_audio_file(output, out_rate, subtype, overwrite) as write:
        for block in audio:
            write(block if resampler is None else resampler.push(block.view(1, -1)))
        if resampler is not None:
            write(resampler.flush())
    return DecompressReport(source, output, header, out_rate)
