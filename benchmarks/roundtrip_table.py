"""Score a codec checkpoint with `rvqcodec roundtrip` at every bitrate and print a markdown table.

    python benchmarks/roundtrip_table.py                                  # shipped model, dev-clean, all bitrates
    python benchmarks/roundtrip_table.py --bitrates 1.5 3 6 --out results/   # a subset; JSON per bitrate kept

Each bitrate is one `rvqcodec roundtrip FOLDER --bitrate B --json` run (compress to .rvq, decompress, score
PESQ-WB/NB, STOI, SI-SDR, mel distance against the input); measured kbps comes from the .rvq file sizes.
JSON results already in --out are reused, so several processes can split the bitrates and a final call merges.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

from common import SPEECH_ROOT  # benchmarks/ is sys.path[0] when run as a script
from rvqcodec.cli import main as cli_main

DEFAULT_FOLDER = SPEECH_ROOT / "dev-clean"


def run_bitrate(folder: Path, kbps: float, model: str | None) -> dict:
    argv = ["roundtrip", os.path.relpath(folder), "--bitrate", f"{kbps:g}", "--json"] + (["--model", model] if model else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    if code not in (0, 1):
        raise SystemExit(f"roundtrip at {kbps:g} kbps failed with exit code {code}")
    return json.loads(out.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help="speech folder (default: dev-clean)")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--bitrates", type=float, nargs="+", default=[0.5 * k for k in range(1, 17)])
    parser.add_argument("--out", type=Path, default=None, help="folder for one JSON file per bitrate")
    args = parser.parse_args(argv)
    rows = []
    for kbps in args.bitrates:
        cached = args.out / f"roundtrip_{kbps:g}kbps.json" if args.out else None
        if cached is not None and cached.is_file():
            result = json.loads(cached.read_text())
        else:
            result = run_bitrate(args.folder, kbps, args.model)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(result, indent=1))
        rows.append(result)
    first = rows[0]
    total = sum(f["seconds"] for f in first["files"])
    print(f"model {first['model_id']}, {first['mean']['files']} files, {total:.1f} s of audio")
    print("| kbps | stages | measured kbps | PESQ-WB | PESQ-NB | STOI | SI-SDR (dB) | mel distance |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["mean"]
        print(f"| {r['bitrate_kbps']:g} | {r['n_q']} | {m['kbps']:.3f} | {m['pesq_wb']:.2f} | {m['pesq_nb']:.2f} | "
              f"{m['stoi']:.3f} | {m['si_sdr']:.1f} | {m['mel_distance']:.3f} |")


if __name__ == "__main__":
    main()
