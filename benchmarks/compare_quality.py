"""Two runs of ``benchmarks/quality.py`` on the same files, compared folder by folder.

    python benchmarks/compare_quality.py BEFORE.json AFTER.json                       # rvqcodec at every bitrate
    python benchmarks/compare_quality.py BEFORE.json AFTER.json --settings rvqcodec-6k --metrics visqol,pesq_wb
    python benchmarks/compare_quality.py <(git show b76c339:benchmarks/results/quality-noisy/quality.json) \\
        benchmarks/results/quality-noisy/quality.json

For each setting (a row of quality.py's table, e.g. ``rvqcodec-3k``) and each top-level folder of the data (the
conditions of the noisy dev set, the corpora of speech-ood; one group ``all`` for a flat folder), the mean of each
metric over the folder's files in BEFORE and in AFTER and their difference, then the mean of the folders' means
(quality.py's ``--macro-by-folder`` average). Only files scored in both runs count. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

DEFAULT_METRICS = ("pesq_wb", "distillmos", "dnsmos_p808", "visqol")


def per_folder(result: dict, settings: set[str] | None, metrics: list[str]) -> dict:
    """``{(setting, folder): {file: {metric: value}}}`` of a quality.py result (rvqcodec settings unless named)."""
    data = Path(result["config"]["data"])
    found: dict = defaultdict(dict)
    for record in result["per_file"]:
        wanted = record["setting"] in settings if settings else record["codec"] == "rvqcodec"
        if not wanted:
            continue
        parts = Path(record["file"]).relative_to(data).parts
        folder = parts[0] if len(parts) > 1 else "all"
        found[(record["setting"], folder)][record["file"]] = {m: record.get(m) for m in metrics}
    return found


def _mean(values: list) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def compare(before: dict, after: dict, settings: set[str] | None, metrics: list[str]) -> list[dict]:
    """One row per (setting, folder) and one ``macro`` row per setting: the means in both runs."""
    a, b = per_folder(before, settings, metrics), per_folder(after, settings, metrics)
    rows, by_setting = [], defaultdict(list)
    for key in sorted(set(a) & set(b)):
        files = sorted(set(a[key]) & set(b[key]))
        row = {"setting": key[0], "folder": key[1], "files": len(files)}
        for m in metrics:
            row[m] = (_mean([a[key][f][m] for f in files]), _mean([b[key][f][m] for f in files]))
        rows.append(row)
        by_setting[key[0]].append(row)
    for setting, folder_rows in sorted(by_setting.items()):
        if len(folder_rows) > 1:
            rows.append({"setting": setting, "folder": "macro", "files": sum(r["files"] for r in folder_rows),
                         **{m: tuple(_mean([r[m][i] for r in folder_rows]) for i in (0, 1)) for m in metrics}})
    return rows


def markdown(rows: list[dict], metrics: list[str]) -> str:
    lines = ["| setting | folder | files | " + " | ".join(f"{m} before / after (Δ)" for m in metrics) + " |",
             "|---|---|---:|" + "---|" * len(metrics)]
    for r in rows:
        cells = [f"{r[m][0]:.3f} / {r[m][1]:.3f} ({r[m][1] - r[m][0]:+.3f})" for m in metrics]
        lines.append(f"| {r['setting']} | {r['folder']} | {r['files']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="quality.json of the first run")
    p.add_argument("after", type=Path, help="quality.json of the second run (same data folder)")
    p.add_argument("--settings", default=None,
                   help="settings to compare, comma-separated (default: every rvqcodec one)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"metrics, comma-separated (default: {','.join(DEFAULT_METRICS)})")
    args = p.parse_args(argv)
    try:
        before, after = (json.loads(path.read_text()) for path in (args.before, args.after))
    except (OSError, ValueError) as exc:
        p.error(f"cannot read a quality.json: {exc}")
    if before["config"]["data"] != after["config"]["data"]:
        p.error(f"the runs scored different data: {before['config']['data']} and {after['config']['data']}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    settings = {s.strip() for s in args.settings.split(",")} if args.settings else None
    rows = compare(before, after, settings, metrics)
    if not rows:
        p.error("no setting scored in both runs")
    sys.stdout.write(markdown(rows, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
