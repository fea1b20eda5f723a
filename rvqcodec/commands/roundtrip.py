"""``rvqcodec roundtrip IN --bitrate B``: compress, decompress and score in one go, per file and on average.

IN is a file, a folder (searched recursively for audio) or a quoted glob. Each file is streamed at the codec rate
(resampled, averaged to mono), compressed to a ``.rvq`` bitstream in memory, decoded chunk by chunk and scored
against the input with PESQ-WB/NB, STOI, SI-SDR and mel distance (``rvqcodec.scoring``; no delay search, the codec
is time-aligned by construction), and with the ``perceptual`` extra by DistillMOS, DNSMOS and ViSQOL. Memory is bounded whatever the length: the audio is never held whole, files
longer than 60 s are scored in equal segments of at most 60 s (the scores are length-weighted means; a note says
so). Any length is accepted, 0 samples included; a metric that is undefined for so short a signal is n/a.

The table names each file by its path under the input folder or glob root (two ``x.wav`` of different folders stay
apart) and gives the bitrate actually spent (file size including the 39-byte header, over the duration). Each
file's row is printed as soon as it is done, so Ctrl-C (or a failure) keeps the rows already printed; the mean
follows at the end (also after Ctrl-C, marked as interrupted): its kbps is the rate of the whole set, all bytes
over all audio (a short file's header weighs as much as its few bytes of audio, so a mean of per-file rates would
overstate it), its scores the means over the files that have them; a line under it says so (``kbps_is`` in the
JSON). A truncated file or a float file beyond full scale gets a one-line warning (``warnings`` in its JSON row),
digital silence and a reference recorded below 16 kHz a note on the scores they leave n/a. ``--json`` prints one JSON object at the end
(after Ctrl-C too, with ``"interrupted": true``) and each finished file as one line on stderr. ``--output-dir``
also keeps the ``.rvq`` and decoded ``.wav`` of every file. Exit codes: 0, 1 (some file failed), 2 (user
mistake), 130 (interrupted).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rvqcodec.commands.common import (
    AUDIO_SUFFIXES,
    InputFile,
    add_level_argument,
    add_model_arguments,
    add_perceptual_argument,
    add_postfilter_argument,
    collect_inputs,
    display_names,
    load_model,
    perceptual_scorer,
    plan_outputs,
    protected_paths,
    resolve_stages,
    run_batch,
)

_COLUMNS = (  # key, header, format
    ("seconds", "sec", ".2f"), ("kbps", "kbps", ".3f"), ("pesq_wb", "PESQ-WB", ".3f"),
    ("pesq_nb", "PESQ-NB", ".3f"), ("stoi", "STOI", ".4f"), ("si_sdr", "SI-SDR", ".2f"),
    ("mel_distance", "mel", ".4f"),
)
_PERCEPTUAL_COLUMNS = (("distillmos", "DistillMOS", ".3f"), ("dnsmos_p808", "DNSMOS", ".3f"),
                       ("visqol", "ViSQOL", ".3f"))
_NUMBER_WIDTH = 9  # wide enough for every column's numbers (e.g. "-123.45", "3600.00")
PROGRESS_MIN_SECONDS = 60.0  # a single file at least this long gets a progress bar


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
    add_perceptual_argument(parser)
    add_postfilter_argument(parser)
    add_level_argument(parser)
    add_model_arguments(parser)


def _counted(blocks: Iterable, on_samples: Callable[[int], None]) -> Iterator:
    """``blocks`` unchanged, calling ``on_samples(len)`` for each (progress)."""
    for block in blocks:
        on_samples(int(block.shape[-1]))
        yield block


def _written(blocks: Iterable, write: Callable) -> Iterator:
    """``blocks`` unchanged, each also passed to ``write`` (the decoded file)."""
    for block in blocks:
        write(block)
        yield block


def roundtrip_one(codec, path: Path, n_q: int, output: Path | None = None, overwrite: bool = False,
                  progress: bool = False, perceptual=None, normalize: bool | None = None) -> dict[str, Any]:
    """Compress + decompress + score one file in bounded memory -> its row (a JSON-safe dict but for NaN).

    With ``output`` (a ``.wav`` path) the bitstream is written to ``output.with_suffix(".rvq")`` and decoded from
    there, and the decoded audio, as it is decoded, to ``output`` (both atomically). ``normalize``: as
    :func:`rvqcodec.codec_files.compress_file` (the file is read once more, to measure its level; None:
    ``rvqcodec.level.NORMALIZE_BY_DEFAULT``). ``progress`` shows a bar over the audio.
    Row keys: ``file``, ``seconds``, ``bytes``, ``kbps`` (NaN for 0 samples), ``source_sample_rate``,
    ``source_channels``, ``segments``, ``silent_reference``, ``silent_degraded``, ``warnings`` (the lines of
    :func:`rvqcodec.data.audio_io.input_warnings`) and the metrics (NaN where undefined; no wideband PESQ for a file
    recorded below 16 kHz), with a ``perceptual`` scorer (:class:`rvqcodec.perceptual.PerceptualScorer`) the
    listener-model scores too.
    """
    from tqdm import tqdm

    from rvqcodec import level, streams
    from rvqcodec.data.audio_io import audio_info, input_warnings, streamed_audio_file
    from rvqcodec.scoring import file_blocks, metric_names, score_streams

    info = audio_info(path)
    warnings = input_warnings(path)
    sr = codec.sample_rate
    seconds_in = info.frames / info.samplerate
    with tqdm(total=round(2 * seconds_in, 1), unit="s", desc=path.name, leave=False, file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        def advance(samples: int) -> None:
            bar.update(samples / sr)

        if normalize is None:
            normalize = level.NORMALIZE_BY_DEFAULT
        gain_db = level.gain_db_of(file_blocks(path, sr)) if normalize else 0.0
        blocks: Iterable = _counted(file_blocks(path, sr), advance) if info.frames else ()
        if output is None:
            data = streams.encode(codec, blocks, n_q, gain_db=gain_db)
            n_bytes = len(data)
            header, audio = streams.decode(codec, data)
        else:  # the kept .rvq file is the one decoded
            rvq_path = output.with_suffix(".rvq")
            _, n_bytes = streams.encode_file(codec, blocks, rvq_path, n_q, overwrite=overwrite, gain_db=gain_db)
            header, audio = streams.decode_file(codec, rvq_path)
        num_samples = header.num_samples
        decoded: Iterable = _counted(audio, advance)
        with contextlib.ExitStack() as stack:
            if output is not None:
                decoded = _written(decoded, stack.enter_context(streamed_audio_file(output, sr, None, overwrite)))
            scores = score_streams(file_blocks(path, sr), decoded, sr, num_samples, perceptual=perceptual,
                                   reference_rate=min(int(info.samplerate), sr))
            for _ in decoded:  # let the decoded file be complete even if scoring stopped early
                pass
    seconds = num_samples / sr
    return {"file": str(path), "seconds": seconds, "bytes": n_bytes,
            "kbps": n_bytes * 8 / seconds / 1000 if num_samples else math.nan,
            "source_sample_rate": int(info.samplerate), "source_channels": int(info.channels),
            "segments": scores["segments"], "silent_reference": scores["silent_reference"],
            "silent_degraded": scores["silent_degraded"], "warnings": warnings,
            **{key: float(scores[key]) for key in metric_names(perceptual is not None)}}


MEAN_KBPS_IS = "total bytes x 8 / total seconds / 1000: the rate of the whole set (weighted by duration)"
MEAN_ROW_NOTE = "mean row: kbps = total bytes / total duration (the set's rate); scores = mean over the files scored"


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean row: ``kbps`` is the rate of the whole set (:data:`MEAN_KBPS_IS`; NaN without audio), the other
    columns are means over files, ignoring NaN (an undefined metric; NaN if no file has it). Also ``total_bytes``,
    ``total_seconds`` and ``kbps_is``."""
    from rvqcodec.scoring import metric_names

    out: dict[str, Any] = {"files": len(rows)}
    for key in ("seconds", *metric_names(bool(rows) and "visqol" in rows[0])):
        values = np.array([row[key] for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    total_bytes, total_seconds = sum(row["bytes"] for row in rows), float(sum(row["seconds"] for row in rows))
    out.update(kbps=total_bytes * 8 / total_seconds / 1000 if total_seconds > 0 else float("nan"),
               total_bytes=total_bytes, total_seconds=total_seconds, kbps_is=MEAN_KBPS_IS)
    return out


class TableWriter:
    """The text table, printed a line at a time: header first, a row per file as it finishes, the mean last (with
    a line saying what its kbps is).

    Column widths are fixed up front (file names are known before the work starts), so rows line up whatever
    order they finish in."""

    def __init__(self, names: list[str], perceptual: bool = False):
        total = len(names)
        self.columns = _COLUMNS + (_PERCEPTUAL_COLUMNS if perceptual else ())
        self.widths = [max(len("file"), len(f"mean ({total} of {total} files)"), *map(len, names))]
        self.widths += [max(_NUMBER_WIDTH, len(title)) for _, title, _ in self.columns]

    @staticmethod
    def _cell(value: Any, fmt: str) -> str:
        return "n/a" if isinstance(value, float) and not math.isfinite(value) else f"{value:{fmt}}"

    def _line(self, cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, self.widths))).rstrip()

    def header(self) -> str:
        line = self._line(["file"] + [title for _, title, _ in self.columns])
        return line + "\n" + "-" * len(line)

    def row(self, row: dict[str, Any], name: str) -> str:
        return self._line([name] + [self._cell(row[k], f) for k, _, f in self.columns])

    def footer(self, mean: dict[str, Any], total: int) -> str:
        files = mean["files"]
        label = f"mean ({files} file{'s' if files != 1 else ''})" if files == total else \
            f"mean ({files} of {total} files)"
        line = self._line([label] + [self._cell(mean[k], f) for k, _, f in self.columns])
        rule = "-" * len(self._line(["file"] + [t for _, t, _ in self.columns]))
        return f"{rule}\n{line}\n({MEAN_ROW_NOTE})"


def _progress_line(row: dict[str, Any]) -> str:
    """One stderr line per finished file in ``--json`` mode."""
    def num(key: str, fmt: str) -> str:
        return "n/a" if not math.isfinite(row[key]) else f"{row[key]:{fmt}}"

    return (f"{row['file']}: {row['seconds']:.2f} s, {num('kbps', '.3f')} kbps, PESQ-WB {num('pesq_wb', '.3f')}, "
            f"STOI {num('stoi', '.4f')}, mel {num('mel_distance', '.4f')}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rvqcodec.errors import InputError
    from rvqcodec.extras import require
    from rvqcodec.fileio import already_exists_message, json_safe, same_file
    from rvqcodec.scoring import narrowband_note, segments_note, short_signal_note, silence_note

    for module in ("pesq", "pystoi"):  # before any work: scoring needs the eval extra
        require(module, "to score the roundtrip")
    inputs, batch = collect_inputs(args.inputs, AUDIO_SUFFIXES)
    outputs: list[Path | None] = [None] * len(inputs)
    if args.output_dir is not None:
        outputs = plan_outputs(inputs, args.output_dir.rstrip("/") + "/", True, ".wav")
    codec = load_model(args)
    n_q = resolve_stages(codec, args.bitrate, args.n_q)
    scorer = perceptual_scorer(args)
    model_id = codec.model_id
    protected = protected_paths(inputs)
    rows: list[dict[str, Any]] = []
    names = display_names(inputs)
    table = TableWriter([names[item] for item in inputs], perceptual=scorer is not None)
    print(f"roundtrip of {len(inputs)} file(s) at {codec.bitrate(n_q):g} kbps ({n_q} stages, model {model_id})",
          file=sys.stderr)

    def work(item: InputFile, out: Path | None) -> str | None:
        from rvqcodec.data.audio_io import audio_info

        if out is not None:  # refuse early, before the work
            for path in (out, out.with_suffix(".rvq")):
                if any(same_file(path, p) for p in protected):
                    raise InputError(f"refusing to write {path}: it is an input file")
                if path.exists() and not args.force:
                    raise FileExistsError(already_exists_message(path))
        info = audio_info(item.path)
        if info.channels > 1:
            tqdm.write(f"note: {item.path}: {info.channels} channels downmixed to mono", file=sys.stderr)
        long_file = info.frames / info.samplerate >= PROGRESS_MIN_SECONDS
        row = roundtrip_one(codec, item.path, n_q, out, overwrite=args.force, progress=long_file and not batch,
                            perceptual=scorer, normalize=args.normalize)
        rows.append(row)
        for warning in row["warnings"]:
            tqdm.write(f"warning: {item.path}: {warning}", file=sys.stderr)
        n = round(row["seconds"] * codec.sample_rate)
        for note in (short_signal_note(n, codec.sample_rate), silence_note(row),
                     narrowband_note(min(row["source_sample_rate"], codec.sample_rate)),
                     segments_note({"segments": row["segments"], "num_samples": n, "sample_rate": codec.sample_rate})):
            if note:
                tqdm.write(f"note: {item.path}: {note}", file=sys.stderr)
        if args.json:
            tqdm.write(_progress_line(row), file=sys.stderr)
            return None
        return table.row(row, names[item])

    if not args.json:
        print(table.header(), flush=True)
    interrupted = False
    try:
        status = run_batch("roundtrip", inputs, outputs, batch, work)
    except KeyboardInterrupt:
        interrupted, status = True, 130
    if rows or interrupted:
        mean = mean_row(rows)
        if args.json:
            payload = {"model_id": model_id, "n_q": n_q, "bitrate_kbps": codec.bitrate(n_q),
                       "sample_rate": codec.sample_rate, "files": rows, "mean": mean,
                       "failed": len(inputs) - len(rows) if not interrupted else None,
                       "interrupted": interrupted}
            print(json.dumps(json_safe(payload), indent=2, allow_nan=False), flush=True)
        else:
            print(table.footer(mean, len(inputs)), flush=True)
    if interrupted:
        raise KeyboardInterrupt
    return status
