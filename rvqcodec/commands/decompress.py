"""``rvqcodec decompress IN.rvq OUT.wav``: ``.rvq`` bitstreams -> audio files.

Writes at the codec's sample rate, or at ``--sample-rate`` (streamed sinc resampling). IN may be a file, a
folder (all ``.rvq`` files in it, recursively) or a quoted glob; for such batch input OUT is a folder and the
files are named like their inputs with ``.wav``. A stream written by another model, a truncated or
corrupted file, a non-``.rvq`` file or one from a newer rvqcodec each give their own one-line error.
Exit codes as for ``compress``: 0, 1 (some file of a batch failed), 2 (user mistake).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvqcodec.errors import UserError
from rvqcodec.commands.common import (
    InputFile,
    add_model_arguments,
    add_postfilter_argument,
    collect_inputs,
    load_model,
    plan_outputs,
    protected_paths,
    run_batch,
)

SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help=".rvq file, folder (searched recursively) or quoted glob pattern")
    parser.add_argument("output", metavar="OUT",
                        help="output audio file (.wav, .flac, .ogg, .opus, .mp3, ...); a folder for several inputs, "
                             "a folder or a glob")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="resample the decoded audio to this rate (default: the codec's rate, 16000 Hz)")
    parser.add_argument("--subtype", default=None, type=str.upper, choices=SUBTYPES,
                        help="sample format of a PCM file (.wav, .flac, ...; default: PCM_16); lossy formats "
                             "(.ogg, .opus, .mp3) use their own codec")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    add_postfilter_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rvqcodec.codec_files import decompress_file

    if args.sample_rate is not None and args.sample_rate <= 0:
        raise UserError(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    inputs, batch = collect_inputs(args.inputs, (".rvq",))
    outputs = plan_outputs(inputs, args.output, batch, ".wav")
    codec = load_model(args)
    protected = protected_paths(inputs)

    def work(item: InputFile, out: Path | None) -> str:
        report = decompress_file(codec, item.path, out, sample_rate=args.sample_rate, overwrite=args.force,
                                 subtype=args.subtype, protected=protected)
        return (f"{item.path} -> {out}: {report.header.duration_s:.2f} s at {report.sample_rate} Hz "
                f"({report.header.bitrate_kbps:g} kbps stream)")

    if batch:
        print(f"decompressing {len(inputs)} file(s) into {args.output}", file=sys.stderr)
    return run_batch("decompress", inputs, outputs, batch, work)
