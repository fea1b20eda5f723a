"""Quality against training compute, from the full benchmark: PESQ-WB on all of dev-clean at 1.5 / 3 / 6 / 8 kbps of
every stage of a model's lineage, against the hours of training audio it had seen, with the quality issue's targets
and what each doubling of the audio bought.

    python benchmarks/compute_scaling.py benchmarks/results/compute-scaling/stages.json --out benchmarks/results/compute-scaling
    python benchmarks/compute_scaling.py STAGES.json --add runs/s8/quality/quality.json --model runs/s8/default.pt \\
        --label "stage 8" --out DIR          # append a stage (scored with benchmarks/quality.py), then redraw

``STAGES.json`` is a list of stages in training order, each ``{"label", "model_id", "steps", "audio_hours",
"cpu_minutes", "pesq_wb": {"1.5": ..., "3": ..., "6": ..., "8": ...}}`` (PESQ-WB means over the benchmark's files
per nominal kbps), and ``"recipe_changed": true`` on a stage that changed the recipe rather than only training
longer (the rate "since the last recipe change" is then what compute alone bought). ``--add`` reads those numbers
from a ``quality.json`` of ``benchmarks/quality.py`` and the lineage (steps, audio hours, CPU minutes) from the
model it scored, refusing a model whose id differs from the one the benchmark names, and writes the list back
(atomically). Unlike ``training_curve.py`` (every 6-file validation of a run), each point here is the full
benchmark, so the trend is not hidden by validation noise.

Writes ``compute_scaling.png`` (PESQ-WB per bitrate against audio hours on a log-2 axis, targets dashed) and
``compute_scaling.md``: the stages, the PESQ-WB gained per doubling of audio between consecutive stages, since the
last change of recipe and over the whole lineage, and how many more doublings each unmet target would take if such a
measured rate held. That last column extrapolates measured rates; the rates have changed from stage to stage
(recipe changes bought more than steps alone), so read it as a range, not a forecast.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import save_png, shown_path  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402

BITRATES = ("1.5", "3", "6", "8")
"""Nominal kbps of the columns, as keys of ``pesq_wb``."""
TARGETS = {"1.5": 2.0, "3": 2.4, "6": 2.9}
"""The quality issue's PESQ-WB targets on dev-clean."""
FIELDS = ("label", "model_id", "steps", "audio_hours", "cpu_minutes", "pesq_wb")


def read_stages(path: Path) -> list[dict]:
    """The stages of ``path``, checked by :func:`check_stages`."""
    return check_stages(json.loads(path.read_text(encoding="utf-8")), path)


def check_stages(stages: list[dict], source: Path) -> list[dict]:
    """``stages`` if well-formed and in training order; else ValueError naming ``source`` and the first stage or
    field that is wrong."""
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{source}: expected a non-empty list of stages")
    for index, stage in enumerate(stages, start=1):
        missing = [f for f in FIELDS if f not in stage]
        if missing:
            raise ValueError(f"{source}: stage {index} lacks {', '.join(missing)}")
        if not set(BITRATES) <= set(stage["pesq_wb"]):
            raise ValueError(f"{source}: stage {index} needs PESQ-WB at {' / '.join(BITRATES)} kbps")
        if index > 1 and not stage["audio_hours"] > stages[index - 2]["audio_hours"]:
            raise ValueError(f"{source}: stage {index} has seen no more audio than the stage before it")
    return stages


def stage_from_benchmark(quality_json: Path, model: Path, label: str) -> dict:
    """A stage: PESQ-WB per nominal kbps from ``quality_json`` (``benchmarks/quality.py``), lineage from ``model``."""
    from rvqcodec.model import Codec

    quality = json.loads(quality_json.read_text(encoding="utf-8"))
    scored_id = quality["config"]["model"]["model_id"]
    meta = Codec.read_checkpoint(model)["meta"]
    if meta.get("model_id") != scored_id:
        raise ValueError(f"{quality_json} scored model {scored_id}, but {model} is {meta.get('model_id')}")
    lineage = meta.get("lineage") or {}
    if not lineage.get("audio_hours"):
        raise ValueError(f"{model} carries no lineage (steps, audio hours): export it from a training run")
    pesq = {}
    for row in quality["results"]:
        kbps = f"{row['nominal_kbps']:g}"
        if row["codec"] == "rvqcodec" and kbps in BITRATES:
            pesq[kbps] = round(row["pesq_wb"], 4)
    missing = [kbps for kbps in BITRATES if kbps not in pesq]
    if missing:
        raise ValueError(f"{quality_json} has no rvqcodec row at {', '.join(missing)} kbps")
    return {"label": label, "model_id": scored_id, "steps": int(lineage["steps"]),
            "audio_hours": round(float(lineage["audio_hours"]), 2),
            "cpu_minutes": round(float(lineage.get("minutes", {}).get("cpu", 0.0))), "pesq_wb": pesq}


def doublings(first: dict, last: dict) -> float:
    """How many times the audio seen doubled from stage ``first`` to stage ``last``."""
    return math.log2(last["audio_hours"] / first["audio_hours"])


def per_doubling(first: dict, last: dict, kbps: str) -> float:
    """PESQ-WB gained per doubling of the audio seen from ``first`` to ``last``."""
    return (last["pesq_wb"][kbps] - first["pesq_wb"][kbps]) / doublings(first, last)


def markdown(stages: list[dict]) -> str:
    head = "| stage | model | steps | audio seen (h) | CPU-minutes | " + " | ".join(
        f"PESQ-WB {k} kbps" for k in BITRATES) + " |"
    lines = ["# PESQ-WB on dev-clean against training compute", "",
             "Each row is the full benchmark (`python benchmarks/quality.py`, all dev-clean files) of the model at "
             "the end of a stage.", "", head, "|" + "---|" * (5 + len(BITRATES))]
    for s in stages:
        lines.append(f"| {s['label']} | `{s['model_id']}` | {s['steps']} | {s['audio_hours']:.1f} | "
                     f"{s['cpu_minutes']} | " + " | ".join(f"{s['pesq_wb'][k]:.2f}" for k in BITRATES) + " |")
    lines.append("| target | | | | | " + " | ".join(f"{TARGETS[k]:.1f}" if k in TARGETS else "" for k in BITRATES)
                 + " |")
    lines += ["", "PESQ-WB gained per doubling of the training audio seen:", "",
              "| from → to | doublings | " + " | ".join(f"{k} kbps" for k in BITRATES) + " |",
              "|" + "---|" * (2 + len(BITRATES))]
    spans = [(stages[i - 1], stages[i]) for i in range(1, len(stages))]
    summary = []
    changed = [i for i, stage in enumerate(stages) if stage.get("recipe_changed")]
    if changed and changed[-1] < len(stages) - 1:  # only more compute since the last change of recipe
        summary.append((f"the same recipe since {stages[changed[-1]]['label']}", stages[changed[-1]], stages[-1]))
    if len(stages) > 1:
        summary.append(("the whole lineage", stages[0], stages[-1]))
    for first, last in spans + [(a, b) for _, a, b in summary]:
        lines.append(f"| {first['label']} → {last['label']} | {doublings(first, last):.2f} | "
                     + " | ".join(f"{per_doubling(first, last, k):+.2f}" for k in BITRATES) + " |")
    unmet = [k for k in TARGETS if stages[-1]["pesq_wb"][k] < TARGETS[k]]
    if unmet and summary:
        lines += ["", f"Unmet targets after {stages[-1]['label']}, and the further doublings of audio each would take "
                  "if a measured rate held (an extrapolation of measured rates, not a measurement):", "",
                  "| bitrate | now | target | " + " | ".join(f"at the rate of {name}" for name, _, _ in summary) + " |",
                  "|" + "---|" * (3 + len(summary))]
        for k in unmet:
            cells = []
            for _, first, last in summary:
                rate = per_doubling(first, last, k)
                need = (TARGETS[k] - stages[-1]["pesq_wb"][k]) / rate if rate > 0 else math.inf
                cells.append("never (no gain)" if math.isinf(need) else
                             f"{need:.1f} (~{stages[-1]['audio_hours'] * (2 ** need - 1):.0f} h more audio)")
            lines.append(f"| {k} kbps | {stages[-1]['pesq_wb'][k]:.2f} | {TARGETS[k]:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(stages: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    hours = [s["audio_hours"] for s in stages]
    for index, kbps in enumerate(BITRATES):
        colour = f"C{index}"
        ax.plot(hours, [s["pesq_wb"][kbps] for s in stages], color=colour, marker="o", label=f"{kbps} kbps")
        if kbps in TARGETS:
            ax.axhline(TARGETS[kbps], color=colour, linestyle="--", linewidth=1, alpha=0.7)
    ax.set_xscale("log", base=2)
    low, high = min(hours), max(hours)
    ticks = [t for t in (10, 25, 50, 100, 200, 400, 800, 1600, 3200) if low / 1.5 <= t <= high * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="training audio seen (hours, log scale)", ylabel="PESQ-WB (all dev-clean files)",
           title="full benchmark at the end of each stage; dashed: targets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plot the full benchmark's PESQ-WB of each stage of a model's "
                                                 "lineage against the training audio it had seen")
    parser.add_argument("stages", type=Path, help="JSON list of stages (see the module docstring)")
    parser.add_argument("--add", type=Path, help="a quality.json of benchmarks/quality.py: append its model as a stage")
    parser.add_argument("--model", type=Path, help="with --add: the model it scored (for the lineage)")
    parser.add_argument("--label", help="with --add: the new stage's label")
    parser.add_argument("--out", type=Path, required=True, help="folder for compute_scaling.png and .md")
    args = parser.parse_args(argv)
    if args.add and not (args.model and args.label):
        parser.error("--add needs --model and --label")
    try:
        stages = read_stages(args.stages)
        if args.add:
            stages = check_stages(stages + [stage_from_benchmark(args.add, args.model, args.label)], args.stages)
            atomic_write_json(args.stages, stages)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compute_scaling: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plot(stages, args.out / "compute_scaling.png")
    atomic_write_text(args.out / "compute_scaling.md", markdown(stages))
    print(f"wrote {shown_path(args.out / 'compute_scaling.png')} and {shown_path(args.out / 'compute_scaling.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
