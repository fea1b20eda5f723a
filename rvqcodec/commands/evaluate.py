"""``rvqcodec eval REF DEG``: score a degraded (e.g. decoded) file against its reference.

Both files are streamed with soundfile and averaged to mono (with a notice on stderr). DEG is resampled to REF's
rate, or both to ``--sample-rate`` when given. Unless ``--no-align``, the delay of DEG (up to ``--max-shift-ms``)
is found on the first 30 s and removed (:func:`rvqcodec.metrics.find_delay`: a significant waveform
cross-correlation peak, else an envelope match, else none; the table says which), then both are cropped to their
common length. With the ``perceptual`` extra (or ``--perceptual``) the listener models DistillMOS, DNSMOS and
ViSQOL are scored too (:mod:`rvqcodec.perceptual`). Files longer than 60 s are scored in equal segments of at most 60 s (length-weighted means; a note
says so), in bounded memory. Any length is accepted, 0 samples included; metrics undefined for so short a signal,
for digital silence or (wideband PESQ) for a reference recorded below 16 kHz are n/a, with a one-line note saying
why. A truncated file or a float file beyond full scale (scaled to peak at full scale) gets a one-line warning
(:func:`rvqcodec.data.audio_io.input_warnings`; also under ``"warnings"`` in the JSON). Prints a table, or one JSON
object with ``--json`` (NaN/inf written as ``null``). Exit codes: 0 scored, 2 user mistake (missing/unreadable
file, bad option, missing ``eval`` extra).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from rvqcodec.errors import UserError
from rvqcodec.commands.common import add_perceptual_argument, add_threads_argument, apply_threads, perceptual_scorer
from rvqcodec.lengths import MAX_SHIFT_SECONDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", metavar="REF", help="reference (original) audio file")
    parser.add_argument("degraded", metavar="DEG", help="degraded / decoded audio file to score")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="do not remove the delay of DEG before scoring (still crops to the common length)")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="score at this rate, resampling both files (default: REF's rate)")
    parser.add_argument("--max-shift-ms", type=float, default=MAX_SHIFT_SECONDS * 1000, metavar="MS",
                        help=f"largest delay searched for when aligning, milliseconds "
                             f"(default: {MAX_SHIFT_SECONDS * 1000:g})")
    add_perceptual_argument(parser)
    add_threads_argument(parser)


def _notes(path: str, role: str, target_sr: int | None) -> tuple[int, list[str]]:
    """Print the downmix/resampling notices and the warnings (truncated, beyond full scale) for one input; return
    its sample rate and the warnings. UserError if unreadable."""
    from rvqcodec.data.audio_io import AudioReadError, audio_info, input_warnings

    try:
        info = audio_info(path)
        warnings = input_warnings(path)
    except AudioReadError as exc:
        raise UserError(f"{role}: {exc}") from None
    for warning in warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    if info.channels > 1:
        print(f"note: {role} {path} has {info.channels} channels; averaged to mono", file=sys.stderr)
    if target_sr is not None and target_sr != info.samplerate:
        print(f"note: {role} {path} resampled from {info.samplerate} Hz to {target_sr} Hz", file=sys.stderr)
    return int(info.samplerate), warnings


def _format_table(result: dict, ref_path: str, deg_path: str, narrowband: bool = False) -> str:
    def number(key: str, fmt: str, unit: str = "") -> str:
        value = result[key]
        if isinstance(value, float) and math.isnan(value):
            if key == "pesq_wb" and narrowband:
                return "n/a (reference below 16 kHz)"
            if result.get("silent_reference"):
                return "n/a (reference is digital silence)"
            return "n/a (signal too short or silent)"
        if isinstance(value, float) and math.isinf(value):
            if value > 0:
                return f"+inf{unit} (identical signals)"
            return f"-inf{unit} (nothing of the reference in the degraded signal, e.g. silence)"
        return f"{value:{fmt}}{unit}"

    sr = result["sample_rate"]
    segments = f", {result['segments']} segments" if result["segments"] > 1 else ""
    method = {"waveform": "waveform cross-correlation peak", "envelope": "envelope match (no waveform peak)",
              "none": "no significant correlation: not aligned", "off": "not aligned (--no-align)"}
    rows = [
        ("reference", ref_path),
        ("degraded", deg_path),
        ("scored", f"{result['num_samples'] / sr:.2f} s at {sr} Hz{segments}"),
        ("delay", f"{result['delay_samples']:+d} samples ({result['delay_seconds'] * 1000:+.2f} ms), "
         + method[result["delay_method"]]),
        ("PESQ-WB", number("pesq_wb", ".3f")),
        ("PESQ-NB", number("pesq_nb", ".3f")),
        ("STOI", number("stoi", ".4f")),
        ("SI-SDR", number("si_sdr", ".2f", " dB")),
        ("mel distance", number("mel_distance", ".4f")),
    ]
    if "visqol" in result:
        from rvqcodec.perceptual import LABELS

        rows += [(LABELS[key], number(key, ".3f")) for key in ("distillmos", "dnsmos_p808", "dnsmos_ovrl", "visqol")]
        rows += [(f"{LABELS[key]} of REF", number(f"reference_{key}", ".3f"))
                 for key in ("distillmos", "dnsmos_p808", "dnsmos_ovrl")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    from rvqcodec.data.audio_io import AudioReadError
    from rvqcodec.errors import InputError
    from rvqcodec.extras import require
    from rvqcodec.fileio import json_safe
    from rvqcodec.scoring import evaluate_files, narrowband_note, segments_note, short_signal_note, silence_note

    if args.sample_rate is not None and args.sample_rate <= 0:
        raise UserError(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    if not (args.max_shift_ms >= 0 and math.isfinite(args.max_shift_ms)):
        raise UserError(f"--max-shift-ms must be a non-negative number, got {args.max_shift_ms}")
    apply_threads(args)
    for module in ("pesq", "pystoi"):
        require(module, "to score audio")
    scorer = perceptual_scorer(args)
    ref_rate, ref_warnings = _notes(args.reference, "REF", args.sample_rate)
    rate = args.sample_rate or ref_rate
    _, deg_warnings = _notes(args.degraded, "DEG", rate)
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:  # long files: a bar over the segments
        nonlocal bar
        if bar is None and total > 1:
            bar = tqdm(total=total, unit="segment", desc="scoring", leave=False, file=sys.stderr, dynamic_ncols=True)
        if bar is not None:
            bar.update(1)

    try:
        result = evaluate_files(args.reference, args.degraded, sample_rate=rate, align=args.align,
                                max_shift_seconds=args.max_shift_ms / 1000.0, on_segment=progress,
                                perceptual=scorer)
    except AudioReadError as exc:
        raise UserError(str(exc)) from None
    except InputError as exc:  # NaN samples, an impractical resampling ratio
        raise UserError(f"{args.reference} vs {args.degraded}: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    result["aligned"] = bool(args.align)
    narrowband = narrowband_note(min(ref_rate, rate))
    for note in (short_signal_note(result["num_samples"], rate), silence_note(result), narrowband,
                 segments_note(result)):
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        payload = {"reference": str(args.reference), "degraded": str(args.degraded), **result,
                   "warnings": {"reference": ref_warnings, "degraded": deg_warnings}}
        print(json.dumps(json_safe(payload), allow_nan=False))
    else:
        print(_format_table(result, args.reference, args.degraded, narrowband=narrowband is not None))
    return 0
