"""``rvqcodec roundtrip IN --bitrate B``: compress, decompress and score in one go, per file and on average.

IN is a file, a folder (searched recursively for audio) or a quoted glob. Each file is read at the codec rate
(resampled, averaged to mono), compressed to a ``.rvq`` bitstream in memory, decoded, and scored against the
input with PESQ-WB/NB, STOI, SI-SDR and mel distance (``rvqcodec.metrics.evaluate_pair``; no delay search,
the codec is time-aligned by construction). The table gives the bitrate actually spent (file size including
the 39-byte header, over the duration). ``--json`` prints the same as one JSON object; ``--output-dir`` also
keeps the ``.rvq`` and decoded ``.wav`` of every file. Exit codes: 0, 1 (some file failed), 2 (user mistake).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rvqcodec.commands.compress import (
    AUDIO_SUFFIXES,
    InputFile,
    add_model_arguments,
    collect_inputs,
    load_model,
    plan_outputs,
    protected_paths,
    resolve_stages,
    run_batch,
)

METRICS = ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "mel_distance")
_COLUMNS = (  # key, header, format
    ("seconds", "sec", ".2f"), ("kbps", "kbps", ".3f"), ("pesq_wb", "PESQ-WB", ".3f"),
    ("pesq_nb", "PESQ-NB", ".3f"), ("stoi", "STOI", ".4f"), ("si_sdr", "SI-SDR", ".2f"),
    ("mel_distance", "mel", ".4f"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN",
                        help="audio file, folder (searched recursively) or quoted glob pattern")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("-b", "--bitrate", type=float, default=None,
                      help="bitrate in kbps (default: the model's highest)")
    rate.add_argument("--n-q", type=int, default=None, help="number of RVQ stages instead of --bitrate")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--output-dir", metavar="DIR", default=None,
                        help="also keep each file's .rvq and decoded .wav in this folder")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing files in --output-dir")
    add_model_arguments(parser)


def roundtrip_one(codec, path: Path, n_q: int) -> tuple[dict[str, Any], bytes, Any]:
    """Compress + decompress + score one file -> (row, bitstream bytes, decoded (1, T) tensor)."""
    from rvqcodec.data.audio_io import read_audio
    from rvqcodec.metrics import evaluate_pair
    from rvqcodec.streaming import compress, decompress

    audio = read_audio(path, target_sr=codec.sample_rate, mono=True)
    reference = audio.samples[0]
    if audio.was_downmixed:
        from tqdm import tqdm

        tqdm.write(f"note: {path}: {audio.source_channels} channels downmixed to mono", file=sys.stderr)
    data = compress(codec, reference, codec.sample_rate, n_q=n_q)
    decoded, sr = decompress(codec, data)
    scores = evaluate_pair(reference, decoded[0], sr, align=False)
    seconds = reference.numel() / sr
    row = {"file": str(path), "seconds": seconds, "bytes": len(data), "kbps": len(data) * 8 / seconds / 1000,
           "source_sample_rate": audio.source_sample_rate, "source_channels": audio.source_channels,
           **{key: float(scores[key]) for key in METRICS}}
    return row, data, decoded


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every numeric column over files, ignoring NaN (undefined metric); NaN if none is defined."""
    out: dict[str, Any] = {"files": len(rows)}
    for key in ("seconds", "kbps", *METRICS):
        values = np.array([row[key] for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


def format_table(rows: list[dict[str, Any]], mean: dict[str, Any]) -> str:
    def cell(value: Any, fmt: str) -> str:
        return "n/a" if isinstance(value, float) and not math.isfinite(value) else f"{value:{fmt}}"

    body = [[Path(row["file"]).name] + [cell(row[k], f) for k, _, f in _COLUMNS] for row in rows]
    label = f"mean ({mean['files']} file{'s' if mean['files'] != 1 else ''})"
    body.append([label] + [cell(mean[k], f) for k, _, f in _COLUMNS])
    header = ["file"] + [title for _, title, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])


def run(args: argparse.Namespace) -> int:
    from rvqcodec.bitstream import write_bytes_atomic
    from rvqcodec.data.audio_io import write_audio
    from rvqcodec.fileio import json_safe, same_file

    inputs, batch = collect_inputs(args.inputs, AUDIO_SUFFIXES)
    outputs: list[Path | None] = [None] * len(inputs)
    if args.output_dir is not None:
        outputs = plan_outputs(inputs, args.output_dir.rstrip("/") + "/", True, ".wav")
    codec = load_model(args)
    n_q = resolve_stages(codec, args.bitrate, args.n_q)
    model_id = codec.model_id
    protected = protected_paths(inputs)
    rows: list[dict[str, Any]] = []
    print(f"roundtrip of {len(inputs)} file(s) at {codec.bitrate(n_q):g} kbps ({n_q} stages, model {model_id})",
          file=sys.stderr)

    def work(item: InputFile, out: Path | None) -> None:
        if out is not None:  # refuse early, before the work
            for path in (out, out.with_suffix(".rvq")):
                if any(same_file(path, p) for p in protected):
                    raise ValueError(f"refusing to write {path}: it is an input file")
                if path.exists() and not args.force:
                    raise FileExistsError(f"{path} already exists (use --force to overwrite)")
        row, data, decoded = roundtrip_one(codec, item.path, n_q)
        if out is not None:
            write_bytes_atomic(out.with_suffix(".rvq"), data, overwrite=args.force)
            write_audio(out, decoded, codec.sample_rate, overwrite=args.force, protected=protected)
        rows.append(row)

    status = run_batch("roundtrip", inputs, outputs, batch, work)
    if not rows:
        return status
    mean = mean_row(rows)
    if args.json:
        payload = {"model_id": model_id, "n_q": n_q, "bitrate_kbps": codec.bitrate(n_q),
                   "sample_rate": codec.sample_rate, "files": rows, "mean": mean,
                   "failed": len(inputs) - len(rows)}
        print(json.dumps(json_safe(payload), indent=2, allow_nan=False))
    else:
        print(format_table(rows, mean))
    return status
