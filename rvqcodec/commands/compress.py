"""``rvqcodec compress IN OUT.rvq --bitrate 3``: audio files -> ``.rvq`` bitstreams.

IN is a file, a folder (searched recursively for audio files) or a quoted glob pattern (several may be
given); for such batch input OUT is an output folder that mirrors the input layout. Any sample rate is
resampled to the codec's, multi-channel audio is averaged to mono (with a notice); a float file beyond full scale
is scaled to peak at full scale and a truncated file encoded as far as it goes, each with a one-line warning
(:func:`rvqcodec.data.audio_io.input_warnings`). Long files are
processed in bounded memory (see :mod:`rvqcodec.codec_files`). Exit codes: 0, 1 (some file of a batch failed),
2 (user mistake); see :mod:`rvqcodec.commands.common`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvqcodec.commands.common import (
    AUDIO_SUFFIXES,
    InputFile,
    add_level_argument,
    add_model_arguments,
    collect_inputs,
    load_model,
    plan_outputs,
    protected_paths,
    resolve_stages,
    run_batch,
)
from rvqcodec.errors import UserError
from rvqcodec.lengths import CHUNK_SECONDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="audio file, folder (searched recursively) or quoted glob pattern, e.g. 'talks/*.flac'")
    parser.add_argument("output", metavar="OUT",
                        help="output .rvq file; an output folder when several inputs, a folder or a glob are given")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("-b", "--bitrate", type=float, default=None,
                      help="target bitrate in kbps, a multiple of 0.5 up to 8 for the default model "
                           "(default: the model's highest)")
    rate.add_argument("--n-q", type=int, default=None, help="number of RVQ stages instead of --bitrate")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    add_level_argument(parser)
    add_model_arguments(parser)
    parser.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                        help=f"long files are encoded in chunks of this many seconds (default: {CHUNK_SECONDS:g})")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rvqcodec.chunking import ChunkConfig
    from rvqcodec.codec_files import compress_file

    inputs, batch = collect_inputs(args.inputs, AUDIO_SUFFIXES)
    outputs = plan_outputs(inputs, args.output, batch, ".rvq")
    try:
        chunking = ChunkConfig(chunk_seconds=args.chunk_seconds)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    codec = load_model(args)
    n_q = resolve_stages(codec, args.bitrate, args.n_q)
    protected = protected_paths(inputs)
    if not batch:
        print(f"compressing at {codec.bitrate(n_q):g} kbps ({n_q} stages, model {codec.model_id})", file=sys.stderr)

    def work(item: InputFile, out: Path | None) -> str:
        report = compress_file(codec, item.path, out, n_q, overwrite=args.force, chunking=chunking,
                               protected=protected, normalize=args.normalize)
        for warning in report.warnings:
            tqdm.write(f"warning: {item.path}: {warning}", file=sys.stderr)
        if report.downmixed:
            tqdm.write(f"note: {item.path}: {report.source_channels} channels downmixed to mono", file=sys.stderr)
        resampled = f", resampled {report.source_sample_rate} -> {report.header.sample_rate} Hz" \
            if report.resampled else ""
        gain = f", level {report.header.gain_db:+g} dB" if report.header.gain_db else ""
        return (f"{item.path} -> {out}: {report.header.duration_s:.2f} s, {report.n_bytes} bytes, "
                f"{report.header.bitrate_kbps:g} kbps{resampled}{gain}")

    if batch:
        print(f"compressing {len(inputs)} file(s) at {codec.bitrate(n_q):g} kbps ({n_q} stages) into "
              f"{args.output}", file=sys.stderr)
    return run_batch("compress", inputs, outputs, batch, work)
