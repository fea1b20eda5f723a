"""What ``--threads`` costs on an idle and on a busy machine: ``rvqcodec compress`` wall time per thread setting.

    python benchmarks/threads.py                      # all of dev-clean as one file, idle and with every core busy
    python benchmarks/threads.py --repeats 5 --out /tmp/threads

A command-line tool runs next to other work. PyTorch's CPU threads (OpenMP) spin while they wait for each other by
default, so on a machine whose cores are busy two threads can be many times slower than one. ``rvqcodec`` sets
``OMP_WAIT_POLICY=PASSIVE`` for its own process unless the variable is already set (``rvqcodec.cli``), so that
waiting threads sleep instead. This script measures each setting as a user runs it (a fresh ``rvqcodec compress``
process, model loading included) on the same long input (every dev-clean file joined, ~270 s of speech):

* ``--threads 1``; ``--threads N`` (N = the machine's cores); the default (torch's choice: one thread per core) as
  the CLI runs it, with passive waiting; and the default with ``OMP_WAIT_POLICY=ACTIVE`` (what the CLI did before);
* on the idle machine, and with every core busy (one spinning process per core, started by this script).

Reports the median of ``--repeats`` runs and each setting's time relative to ``--threads 1`` in the same
condition. Writes ``threads.json`` and ``threads.md`` into ``--out`` (default ``benchmarks/results/threads``).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402

BUSY_LOOP = "while True: pass"


def long_input(folder: Path, path: Path) -> float:
    """Every audio file under ``folder`` joined into one 16 kHz WAV at ``path``; returns its seconds."""
    import soundfile

    from rvqcodec.data.audio_io import read_audio

    parts = [read_audio(p, target_sr=16000).samples[0].numpy() for p in sorted(folder.rglob("*.flac"))]
    audio = np.concatenate(parts)
    soundfile.write(str(path), audio, 16000)
    return audio.size / 16000


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Setting name -> (extra CLI arguments, environment overrides)."""
    return {
        "--threads 1": (["--threads", "1"], {}),
        f"--threads {cores}": (["--threads", str(cores)], {}),
        "default (passive waiting, as the CLI runs)": ([], {}),
        "default, OMP_WAIT_POLICY=ACTIVE (before)": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
    }


def time_compress(source: Path, extra: list[str], env: dict[str, str], repeats: int, tmp: Path) -> list[float]:
    """Wall seconds of ``repeats`` fresh ``rvqcodec compress`` processes."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    environment.update(env)
    times = []
    for i in range(repeats):
        out = tmp / f"out{i}.rvq"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rvqcodec", "compress", str(source), str(out), "--bitrate", "6", *extra],
                       check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    result = {"cores": cores, "repeats": args.repeats, "python": platform.python_version(), "conditions": []}
    with tempfile.TemporaryDirectory(prefix="rvqthreads-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "long.wav"
        result["input_seconds"] = round(long_input(args.data, source), 1)
        for busy in (0, cores):
            load = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
            try:
                rows = {}
                for name, (extra, env) in settings(cores).items():
                    times = time_compress(source, extra, env, args.repeats, tmp)
                    rows[name] = {"median_seconds": statistics.median(times), "seconds": times}
                    print(f"{busy} busy cores, {name}: {statistics.median(times):.2f} s", file=sys.stderr)
            finally:
                for process in load:
                    process.kill()
                    process.wait()
            base = rows["--threads 1"]["median_seconds"]
            for row in rows.values():
                row["relative_to_one_thread"] = row["median_seconds"] / base
            result["conditions"].append({"busy_cores": busy, "settings": rows})
    return result


def markdown(result: dict) -> str:
    lines = ["# `--threads` on an idle and a busy machine", "",
             f"`python benchmarks/threads.py`: `rvqcodec compress` of {result['input_seconds']:g} s of speech (every "
             f"dev-clean file joined) at 6 kbps, a fresh process each time (model loading included), median of "
             f"{result['repeats']} runs; {result['cores']} cores; busy = one spinning process per core.", "",
             "| setting | " + " | ".join(f"{c['busy_cores']} busy cores: s (× 1 thread)" for c in result["conditions"])
             + " |", "|---|" + "---:|" * len(result["conditions"])]
    for name in result["conditions"][0]["settings"]:
        cells = [f"{c['settings'][name]['median_seconds']:.2f} ({c['settings'][name]['relative_to_one_thread']:.2f}×)"
                 for c in result["conditions"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean", help="speech folder (default: dev-clean)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "threads")
    args = p.parse_args(argv)
    result = run(args)
    atomic_write_json(args.out / "threads.json", result, parents=True)
    atomic_write_text(args.out / "threads.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
