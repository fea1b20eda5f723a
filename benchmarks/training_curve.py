"""Quality against training compute: PESQ-WB (and mel distance) of every validation in a run's ``log.jsonl``,
plotted against the audio seen in training.

    python benchmarks/training_curve.py runs/convnext --out benchmarks/results/training-curve
    python benchmarks/training_curve.py runs/a runs/b --label "CPU run" --label "GPU fine-tune" --out /tmp/c
    python benchmarks/training_curve.py benchmarks/results/training-curve/convnext-steps-1-10000.jsonl runs/b ...

Each run folder holds ``log.jsonl`` and ``config.yaml`` (written by ``rvqcodec train``); a ``.jsonl`` file given
instead is read as such a log (e.g. a run's validation records kept after the run folder is gone; it needs
``lineage/audio_hours`` in its records, or a ``config.yaml`` beside it). The x axis is hours of
training audio seen (crops × crop length, all processes): ``lineage/audio_hours`` of each validation record
when the log has it, else ``step × batch_size × grad_accum × segment_seconds`` from ``config.yaml`` (one
process). A resumed run continues the same log, so its curve continues too. Several runs given in order (a
fine-tune started from another run's weights) are drawn one after the other on the same axis, each offset by
the audio the previous ones saw.

Writes ``training_curve.png`` (PESQ-WB at each validation bitrate, and mel distance, against audio hours) and
``training_curve.md`` (the table of validation points) into ``--out``. The validation files are the run's own
(``data.max_valid_files`` dev-clean files cut to ``data.max_valid_seconds``), fewer than the full dev-clean
benchmark: read the curve for its trend, the benchmark tables for the final numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import yaml

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import save_png, shown_path  # noqa: E402
from rvqcodec.fileio import atomic_write_text  # noqa: E402

SERIES_KEY = re.compile(r"^valid/(ae|[0-9.]+kbps)/(pesq_wb|mel|si_sdr)$")
"""A validation metric: ``valid/<bitrate>kbps/<metric>``, or ``valid/ae/<metric>`` during the autoencoder
warm-up (quantizer bypassed)."""


def series_name(tag: str) -> str:
    return "unquantized (warm-up)" if tag == "ae" else tag.replace("kbps", " kbps")


def _series_order(tag: str) -> float:
    return math.inf if tag == "ae" else float(tag.removesuffix("kbps"))


def read_validations(run: Path) -> list[dict]:
    """The validation records of a run (its folder, or its log file), each with ``audio_hours`` (see the module
    docstring) added.

    Raises:
        FileNotFoundError: no ``log.jsonl`` in the folder ``run``, or ``run`` does not exist.
    """
    log = run if run.suffix == ".jsonl" else run / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run} (is it a run folder written by rvqcodec train?)"
                                if log != run else f"no such log file: {run}")
    per_step = None
    config = log.parent / "config.yaml"
    if config.is_file():
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
        per_step = (cfg["data"]["batch_size"] * cfg["train"].get("grad_accum", 1) * cfg["data"]["segment_seconds"]
                    / 3600.0)
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        if record.get("kind") != "valid":
            continue
        hours = record.get("lineage/audio_hours")
        if hours is None:
            if per_step is None:
                raise FileNotFoundError(f"{log} has no lineage/audio_hours and {config} is missing")
            hours = record["step"] * per_step
        records.append({**record, "audio_hours": float(hours)})
    return records


def curves(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{metric: {series: [(audio_hours, value), ...]}}`` for ``pesq_wb``, ``mel`` and ``si_sdr``; a series is
    a bitrate tag (``"6kbps"``) or ``"ae"``."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for record in records:
        for key, value in record.items():
            match = SERIES_KEY.match(key)
            if match and value is not None and math.isfinite(value):
                out.setdefault(match.group(2), {}).setdefault(match.group(1), []).append(
                    (record["audio_hours"], float(value)))
    return out


def markdown_table(runs: list[tuple[str, list[dict]]]) -> str:
    tags = sorted({m.group(1) for _, records in runs for r in records for k in r if (m := SERIES_KEY.match(k))},
                  key=_series_order)
    header = ["run", "step", "audio hours", "device minutes"] + [f"PESQ-WB {series_name(t)}" for t in tags] + [
        f"mel {series_name(t)}" for t in tags]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, records in runs:
        for r in records:
            cells = [label, str(r["step"]), f"{r['audio_hours']:.2f}",
                     "" if r.get("lineage/minutes") is None else f"{r['lineage/minutes']:.0f}"]
            for metric, spec in (("pesq_wb", ".2f"), ("mel", ".3f")):
                for tag in tags:
                    value = r.get(f"valid/{tag}/{metric}")
                    cells.append("" if value is None or not math.isfinite(value) else format(value, spec))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LEGEND_ROW_CHARACTERS = 180
"""About how many characters of 8-point legend text fit across the 11-inch figure; the legend takes as many
columns (at most 4) as its longest label allows, so long run labels are not cut off at the figure's edges."""


def plot(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """One colour per series (bitrate), one marker per run, so a continued run continues its lines; the legend
    goes under the axes, clear of the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tags = sorted({tag for _, records in runs for m in curves(records).values() for tag in m}, key=_series_order)
    colours = {tag: f"C{i}" for i, tag in enumerate(tags)}
    markers = "osD^vPX*"
    fig, (ax_pesq, ax_mel) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=100)
    for index, (_, records) in enumerate(runs):
        for metric, ax in (("pesq_wb", ax_pesq), ("mel", ax_mel)):
            for tag, points in curves(records).get(metric, {}).items():
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=colours[tag], marker=markers[index % len(markers)], markersize=3.5)
    ax_pesq.set(xlabel="training audio seen (hours)", ylabel="PESQ-WB", title="PESQ-WB on dev-clean (validation)")
    ax_mel.set(xlabel="training audio seen (hours)", ylabel="mel distance", title="mel distance (lower is better)")
    for ax in (ax_pesq, ax_mel):
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[tag], label=series_name(tag)) for tag in tags]
    if len(runs) > 1:
        handles += [Line2D([], [], color="0.3", linestyle="none", marker=markers[i % len(markers)], label=label)
                    for i, (label, _) in enumerate(runs)]
    longest = max(len(h.get_label()) for h in handles)
    ncol = max(1, min(len(handles), 4, LEGEND_ROW_CHARACTERS // (longest + 6)))  # +6: the line or marker
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // ncol), 1, 1))
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plot PESQ-WB and mel distance of a training run's validations "
                                                 "against the training audio seen")
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders (log.jsonl + config.yaml) or log .jsonl files, in order")
    parser.add_argument("--label", action="append", default=None, help="a label per run (default: folder name)")
    parser.add_argument("--out", type=Path, required=True, help="folder for training_curve.png and .md")
    args = parser.parse_args(argv)
    labels = args.label or [run.name.removesuffix(".jsonl") for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"give one --label per run ({len(args.runs)} runs, {len(labels)} labels)")
    runs, offset = [], 0.0
    try:
        for label, run in zip(labels, args.runs):
            records = read_validations(run)
            if offset and records and "lineage/audio_hours" not in records[0]:
                records = [{**r, "audio_hours": r["audio_hours"] + offset} for r in records]
            runs.append((label, records))
            offset = max([offset] + [r["audio_hours"] for r in records])
    except FileNotFoundError as exc:
        print(f"training_curve: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "training_curve.png")
    atomic_write_text(args.out / "training_curve.md", "# PESQ-WB and mel distance against training audio\n\n"
                      + "Runs: " + ", ".join(f"{label} (`{shown_path(run)}`)" for label, run in zip(labels, args.runs))
                      + "\n\n" + markdown_table(runs))
    print(f"wrote {shown_path(args.out / 'training_curve.png')} and {shown_path(args.out / 'training_curve.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
