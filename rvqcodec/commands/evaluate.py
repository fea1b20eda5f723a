"""``rvqcodec eval REF DEG``: score a degraded (e.g. decoded) file against its reference.

Both files are read with soundfile and averaged to mono (with a notice on stderr). DEG is resampled to REF's
rate, or both to ``--sample-rate`` when given. Unless ``--no-align``, the global delay of DEG (up to
``--max-shift-ms``) is removed by cross-correlation, then both are cropped to their common length. Prints a
table, or one JSON object with ``--json`` (NaN/inf written as ``null``). Exit codes: 0 scored, 2 user mistake
(missing/unreadable file, bad option).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from rvqcodec.cli import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="reference (original) audio file")
    parser.add_argument("degraded", metavar="DEG", help="degraded / decoded audio file to score")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="do not remove the delay of DEG before scoring (still crops to the common length)")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="score at this rate, resampling both files (default: REF's rate)")
    parser.add_argument("--max-shift-ms", type=float, default=100.0, metavar="MS",
                        help="largest delay searched for when aligning, milliseconds (default: 100)")


def _read(path: str, role: str, target_sr: int | None):
    from rvqcodec.data.audio_io import AudioReadError, read_audio

    try:
        audio = read_audio(path, target_sr=target_sr, mono=True)
    except AudioReadError as exc:
        raise UserError(f"{role}: {exc}") from None
    if audio.was_downmixed:
        print(f"note: {role} {path} has {audio.source_channels} channels; averaged to mono", file=sys.stderr)
    if audio.was_resampled:
        print(f"note: {role} {path} resampled from {audio.source_sample_rate} Hz to {audio.sample_rate} Hz",
              file=sys.stderr)
    return audio


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format_table(result: dict, ref_path: str, deg_path: str) -> str:
    def number(key: str, fmt: str, unit: str = "") -> str:
        value = result[key]
        if isinstance(value, float) and math.isnan(value):
            return "n/a (signal too short or silent)"
        if isinstance(value, float) and math.isinf(value):
            return f"{'+' if value > 0 else '-'}inf{unit} (identical signals)"
        return f"{value:{fmt}}{unit}"

    sr = result["sample_rate"]
    rows = [
        ("reference", ref_path),
        ("degraded", deg_path),
        ("scored", f"{result['num_samples'] / sr:.2f} s at {sr} Hz"),
        ("delay", f"{result['delay_samples']:+d} samples ({result['delay_seconds'] * 1000:+.2f} ms)"
         + ("" if result["aligned"] else ", not aligned")),
        ("PESQ-WB", number("pesq_wb", ".3f")),
        ("PESQ-NB", number("pesq_nb", ".3f")),
        ("STOI", number("stoi", ".4f")),
        ("SI-SDR", number("si_sdr", ".2f", " dB")),
        ("mel distance", number("mel_distance", ".4f")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise UserError(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    if not (args.max_shift_ms >= 0 and math.isfinite(args.max_shift_ms)):
        raise UserError(f"--max-shift-ms must be a non-negative number, got {args.max_shift_ms}")
    from rvqcodec.metrics import evaluate_pair

    reference = _read(args.reference, "REF", args.sample_rate)
    degraded = _read(args.degraded, "DEG", reference.sample_rate)
    result = evaluate_pair(reference.samples[0], degraded.samples[0], reference.sample_rate,
                           align=args.align, max_shift_seconds=args.max_shift_ms / 1000.0)
    result["aligned"] = bool(args.align)
    if args.json:
        payload = {"reference": str(args.reference), "degraded": str(args.degraded),
                   **{key: _json_value(value) for key, value in result.items()}}
        print(json.dumps(payload, allow_nan=False))
    else:
        print(_format_table(result, args.reference, args.degraded))
    return 0
