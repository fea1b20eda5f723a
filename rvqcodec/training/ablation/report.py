"""The ablation report: ``report.md`` and ``plots/*.png`` built from an ablation run folder alone.

Everything comes from the files the runner saved (``ablation.yaml`` and, per run, ``status.json``,
``eval.json``, ``log.jsonl`` and ``snapshots/``), so :func:`write_report` can be called again at any time —
``rvqcodec ablation --report-only RUN_DIR`` — and gives a byte-identical ``report.md`` (no timestamps, no
absolute paths, fixed number formats and ordering) and plots drawn with a fixed style (matplotlib Agg, the
default style plus :data:`PLOT_STYLE`, no software/version metadata in the PNGs).

Across seeds every number is ``mean ± std`` (sample standard deviation, ddof = 1) over the seeds that finished
and gave a finite value; ``(n=…)`` marks a cell with fewer values than finished seeds, ``—`` one with none.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rvqcodec.fileio import atomic_path, atomic_write_text
from rvqcodec.training.ablation.results import EVAL_FILE, STATUS_FILE, read_json, read_snapshots
from rvqcodec.training.ablation.spec import AblationSpec, read_saved_spec

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
PLOT_DPI = 80
PLOT_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}
ARM_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
"""Colour of the i-th arm of the ablation file (stable whatever subset is run)."""
AXIS_PERCENTILES = (1.0, 99.0)
"""Axis range of the codebook plots (percentiles of a stage's projected codes); codes outside sit on the border."""
USAGE_LOG_RANGE = (-3.0, 1.0)
"""Colour range of the codebook plots: log10(EMA usage of a code / mean usage of the stage's codes)."""

# (key in the stage statistics, column title, scale, number format)
STAGE_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("utilization", "utilisation (%)", 1.0, ".1f"),
    ("perplexity_norm", "PPL / K", 1.0, ".3f"),
    ("rel_qe", "rel. QE", 1.0, ".3f"),
    ("scale_median", "median ‖q‖/‖e‖", 1.0, ".3f"),
    ("obtuse_frac", "obtuse (%)", 100.0, ".1f"),
)


# ============================================================================================ loading


@dataclass
class RunResult:
    """What one (arm, seed) run left on disk."""

    arm: str
    seed: int
    path: Path
    state: str  # "complete", "diverged" or "missing" (not run yet, or interrupted)
    status: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # see results.codebook_snapshot

    @property
    def finished(self) -> bool:
        return self.state == "complete" and self.eval is not None

    @property
    def nonfinite(self) -> bool:
        """Finished, but the evaluation produced non-finite audio or metrics."""
        if not self.finished:
            return False
        full = self.eval.get("full", {})
        return bool(self.eval.get("nonfinite_files")) or any(full.get(k) is None for k in ("mel", "si_sdr"))

    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("kind") == "train"]

    def seconds_per_step(self) -> float:
        """Median of the logged per-window ``time/step_seconds`` (robust to the windows holding k-means init,
        snapshots or validation)."""
        values = sorted(v for r in self.train_records() if _finite(v := r.get("time/step_seconds")))
        if not values:
            return math.nan
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def load_results(run_dir: Path) -> tuple[AblationSpec, dict[str, list[RunResult]]]:
    """The saved spec and, per selected arm (file order), one :class:`RunResult` per seed."""
    spec = read_saved_spec(run_dir)
    spec.settings.run_dir = str(run_dir)  # read the runs where they are now (the folder may have moved)
    results: dict[str, list[RunResult]] = {}
    for arm in spec.selected_arms():
        runs = []
        for seed in spec.settings.seeds:
            path = spec.run_path(arm.name, seed)
            status = read_json(path / STATUS_FILE)
            evaluation = read_json(path / EVAL_FILE)
            state = (status or {}).get("state", "missing")
            if state == "complete" and evaluation is None:
                state = "missing"
            if state not in ("complete", "diverged"):
                state = "missing"
            runs.append(RunResult(arm=arm.name, seed=seed, path=path, state=state, status=status,
                                  eval=evaluation if state == "complete" else None,
                                  log=_read_log(path / "log.jsonl"), snapshots=read_snapshots(path)))
        results[arm.name] = runs
    return spec, results


# ============================================================================================ numbers


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """``(mean, sample std (ddof=1; NaN for one value), n)`` over the finite values (NaN mean when none)."""
    finite = [float(v) for v in values if _finite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(finite) / n
    if n == 1:
        return mean, math.nan, 1
    var = math.fsum((v - mean) ** 2 for v in finite) / (n - 1)
    return mean, math.sqrt(var), n


def _number(value: float, fmt: str) -> str:
    text = format(value, fmt)
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.000"


def format_stat(values: Sequence[float | None], fmt: str, expected: int, scale: float = 1.0) -> str:
    """``"m ± s"`` (``"m"`` for one value, ``"—"`` for none) with the format spec ``fmt`` (e.g. ``".3f"``),
    plus ``" (n=k)"`` when k < ``expected`` values were finite."""
    mean, std, n = mean_std([v * scale if _finite(v) else None for v in values])
    if n == 0:
        return "—"
    text = _number(mean, fmt) if n == 1 else f"{_number(mean, fmt)} ± {_number(std, fmt)}"
    return text + (f" (n={n})" if n < expected else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(("---" if i < align_right_from else "---:") for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _resolved_value(runs: list[RunResult], key: str) -> str:
    """The value of a dotted training key in the saved ``config.yaml`` of the arm's first run that has one."""
    import yaml

    for run in runs:
        path = run.path / "config.yaml"
        if not path.is_file():
            continue
        node: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = "?"
                break
            node = node[part]
        return _value(node)
    return "?"


def _shared_config(results: dict[str, list[RunResult]]) -> dict[str, Any] | None:
    import yaml

    for runs in results.values():
        for run in runs:
            path = run.path / "config.yaml"
            if path.is_file():
                return yaml.safe_load(path.read_text(encoding="utf-8"))
    return None


def _stage_values(runs: list[RunResult], stage: int, key: str) -> list[float | None]:
    out = []
    for run in runs:
        if run.finished and stage < len(run.eval.get("stages", [])):
            out.append(run.eval["stages"][stage].get(key))
    return out


def _distinct_codes(run: RunResult, stage: int) -> float | None:
    """Number of distinct code vectors of a stage at the end of training (duplicates: codes that never split)."""
    import numpy as np

    if not run.snapshots or stage >= run.snapshots[-1]["embed"].shape[0]:
        return None
    return float(len(np.unique(run.snapshots[-1]["embed"][stage].numpy(), axis=0)))


def _replacements_per_kstep(run: RunResult, stage: int) -> float | None:
    """Dead codes re-seeded per 1000 steps between the first snapshot (after step 1, which holds the
    initialisation's replacements) and the last one."""
    snaps = run.snapshots
    if len(snaps) < 2 or stage >= snaps[-1]["replaced_total"].shape[0]:
        return None
    first, last = snaps[0], snaps[-1]
    steps = int(last["step"]) - int(first["step"])
    if steps <= 0:
        return None
    return float(last["replaced_total"][stage] - first["replaced_total"][stage]) / steps * 1000.0


# ============================================================================================ plots


def _save_figure(fig, path: Path) -> Path:
    """Save a figure as PNG atomically, without software/version metadata."""
    with atomic_path(path, parents=True) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return path


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _styled(draw: Callable[[], Path]) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.style

    with matplotlib.style.context(["default", PLOT_STYLE]):
        return draw()


def _arm_color(spec: AblationSpec, arm: str) -> str:
    index = [a.name for a in spec.arms].index(arm)
    return ARM_COLORS[index % len(ARM_COLORS)]


def _curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of a logged training value, per logged step (steps where no seed has it are left out)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for record in run.train_records():
            value = record.get(key)
            if _finite(value):
                by_step.setdefault(int(record["step"]), []).append(float(value))
    steps = sorted(by_step)
    return steps, [math.fsum(by_step[s]) / len(by_step[s]) for s in steps]


def _n_q(results: dict[str, list[RunResult]]) -> int:
    n = 0
    for runs in results.values():
        for run in runs:
            if run.finished:
                n = max(n, len(run.eval.get("stages", [])))
            for snap in run.snapshots[-1:]:
                n = max(n, int(snap["embed"].shape[0]))
    return n


def plot_utilization_bars(spec: AblationSpec, results: dict[str, list[RunResult]], n_q: int, path: Path) -> Path:
    """Grouped bars: eval-set utilisation (%) of every stage, one bar per arm (mean, error bar = std)."""

    def draw() -> Path:
        arms = list(results)
        fig = _new_figure(max(6.0, 0.9 * n_q + 2.5), 3.6)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            means, stds = [], []
            for k in range(n_q):
                mean, std, n = mean_std(_stage_values(results[arm], k, "utilization"))
                means.append(mean if n else 0.0)
                stds.append(std if n > 1 else 0.0)
            xs = [k + 1 + (i - (len(arms) - 1) / 2) * width for k in range(n_q)]
            ax.bar(xs, means, width=width, yerr=stds, capsize=1.5, color=_arm_color(spec, arm), label=arm,
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks(range(1, n_q + 1))
        ax.set_xlabel("RVQ stage")
        ax.set_ylabel("codebook utilisation on the eval set (%)")
        ax.set_ylim(0, 105)
        ax.legend(ncol=min(4, max(1, len(arms))), loc="upper right")
        return _save_figure(fig, path)

    return _styled(draw)


def plot_stage_curves(spec: AblationSpec, results: dict[str, list[RunResult]], n_q: int, stat: str, ylabel: str,
                      log_y: bool, path: Path) -> Path:
    """One panel per stage: the logged training-window statistic ``vq/s{k}/{stat}`` over steps, a line per arm."""

    def draw() -> Path:
        cols = min(4, max(1, n_q))
        rows = math.ceil(n_q / cols)
        fig = _new_figure(3.0 * cols, 2.3 * rows + 0.4)
        axes = [fig.add_subplot(rows, cols, k + 1) for k in range(n_q)]
        for k, ax in enumerate(axes):
            for arm, runs in results.items():
                steps, values = _curve(runs, f"vq/s{k + 1}/{stat}")
                if steps:
                    ax.plot(steps, values, color=_arm_color(spec, arm), label=arm)
            if log_y and any(line.get_ydata().size for line in ax.get_lines()):
                ax.set_yscale("log")
            ax.set_title(f"stage {k + 1}")
            ax.set_xlabel("step")
            if k % cols == 0:
                ax.set_ylabel(ylabel)
        handles, labels = axes[0].get_legend_handles_labels() if axes else ([], [])
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
        return _save_figure(fig, path)

    return _styled(draw)


LOSS_PANELS = (("loss/recon", "reconstruction loss (weighted sum)"), ("loss/mel", "multi-scale mel L1"),
               ("loss/mrstft", "MR-STFT"), ("loss/commit", "commitment"))


def plot_losses(spec: AblationSpec, results: dict[str, list[RunResult]], path: Path) -> Path:
    """Training loss curves (mean over seeds of each logging window), a line per arm."""

    def draw() -> Path:
        fig = _new_figure(12.0, 3.2)
        axes = [fig.add_subplot(1, len(LOSS_PANELS), i + 1) for i in range(len(LOSS_PANELS))]
        for ax, (key, title) in zip(axes, LOSS_PANELS):
            for arm, runs in results.items():
                steps, values = _curve(runs, key)
                if steps:
                    ax.plot(steps, values, color=_arm_color(spec, arm), label=arm)
            ax.set_title(title)
            ax.set_xlabel("step")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
        return _save_figure(fig, path)

    return _styled(draw)


def plot_scalability(spec: AblationSpec, results: dict[str, list[RunResult]], n_q_list: list[int],
                     path: Path) -> Path:
    """PESQ-WB and mel distance against the number of stages decoded, a line (± std band) per arm."""

    def draw() -> Path:
        fig = _new_figure(9.0, 3.4)
        panels = (("pesq_wb", "PESQ-WB (higher is better)"), ("mel", "mel distance (lower is better)"))
        axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
        for ax, (key, title) in zip(axes, panels):
            for arm, runs in results.items():
                xs, ms, lo, hi = [], [], [], []
                for n in n_q_list:
                    values = [r.eval["by_n_q"].get(str(n), {}).get(key) for r in runs if r.finished]
                    mean, std, count = mean_std(values)
                    if count:
                        std = std if count > 1 else 0.0
                        xs.append(n), ms.append(mean), lo.append(mean - std), hi.append(mean + std)
                if xs:
                    color = _arm_color(spec, arm)
                    ax.plot(xs, ms, marker="o", markersize=3, color=color, label=arm)
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(n_q_list, [str(n) for n in n_q_list])
            ax.minorticks_off()
            ax.set_xlabel("stages decoded (n_q)")
            ax.set_title(title)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
        return _save_figure(fig, path)

    return _styled(draw)


def pca_2d(points: Any) -> tuple[Any, Any]:
    """``(mean (d,), basis (2, d))`` of the top-2 principal directions of ``points`` (N, d), float64.

    Each direction's sign is fixed (its largest-magnitude coordinate is positive) so the projection is
    deterministic; with d < 2 or rank < 2 the missing directions are zero vectors.
    """
    import numpy as np

    x = np.asarray(points, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = np.zeros((2, x.shape[1]))
    rows = min(2, vt.shape[0])
    basis[:rows] = vt[:rows]
    for i in range(2):
        j = int(np.argmax(np.abs(basis[i])))
        if basis[i, j] < 0:
            basis[i] = -basis[i]
    return mean, basis


def plot_codebook_evolution(spec: AblationSpec, arm: str, run: RunResult, path: Path) -> Path | None:
    """Rows = stages, columns = snapshots (start / middle / end): each stage's codes projected on the top-2
    principal directions of that stage's codes over all snapshots (shared axes along a row, spanning the
    :data:`AXIS_PERCENTILES` of the points; outliers are clipped onto the border), coloured by
    log10(EMA usage / mean usage)."""
    import numpy as np

    snaps = run.snapshots
    if not snaps:
        return None
    names = _snapshot_names(len(snaps))

    def draw() -> Path:
        from matplotlib.colors import Normalize

        n_q = int(snaps[0]["embed"].shape[0])
        cols = len(snaps)
        fig = _new_figure(2.5 * cols + 0.8, 2.1 * n_q + 0.5)
        norm = Normalize(*USAGE_LOG_RANGE)
        scatter = None
        for k in range(n_q):
            books = [s["embed"][k].double().numpy() for s in snaps]
            mean, basis = pca_2d(np.concatenate(books, axis=0))
            projected = [(b - mean) @ basis.T for b in books]
            allp = np.concatenate(projected, axis=0)
            # robust limits shared along the row; codes outside are drawn on the border (clipped)
            lo, hi = np.percentile(allp, AXIS_PERCENTILES[0], axis=0), np.percentile(allp, AXIS_PERCENTILES[1], axis=0)
            pad = 0.1 * np.maximum(hi - lo, 1e-12)
            lo, hi = lo - pad, hi + pad
            for c, (snap, xy) in enumerate(zip(snaps, projected)):
                ax = fig.add_subplot(n_q, cols, k * cols + c + 1)
                usage = snap["cluster_size"][k].double().numpy()
                rel = usage / max(float(usage.mean()), 1e-30)
                color = np.log10(np.clip(rel, 10.0 ** USAGE_LOG_RANGE[0], None))
                order = np.argsort(color, kind="stable")  # most used codes drawn last (on top)
                shown = np.clip(xy, lo, hi)[order]
                scatter = ax.scatter(shown[:, 0], shown[:, 1], c=color[order], s=4, cmap="viridis", norm=norm,
                                     linewidths=0)
                ax.set_xlim(lo[0], hi[0])
                ax.set_ylim(lo[1], hi[1])
                distinct = len(np.unique(snap["embed"][k].numpy(), axis=0))
                ax.text(0.02, 0.02, f"distinct codes: {distinct}", transform=ax.transAxes, fontsize=7,
                        va="bottom", ha="left", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none",
                                                      "pad": 1.0})
                ax.set_xticks([]), ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"{names[c]} (step {int(snap['step'])})")
                if c == 0:
                    ax.set_ylabel(f"stage {k + 1}")
        fig.suptitle(f"{arm}, seed {run.seed}: codebooks on their top-2 principal directions "
                     "(outliers clipped to the border)")
        fig.colorbar(scatter, ax=fig.axes, shrink=0.3, location="right",
                     label="log10(EMA usage / mean usage)")
        return _save_figure(fig, path)

    return _styled(draw)


def _snapshot_names(count: int) -> list[str]:
    return {1: ["end"], 2: ["start", "end"]}.get(count, ["start", *["middle"] * (count - 2), "end"])


# ============================================================================================ the report


def _intro(spec: AblationSpec, results: dict[str, list[RunResult]]) -> list[str]:
    cfg = _shared_config(results) or {}
    model, data, train, loss = (cfg.get(k, {}) for k in ("model", "data", "train", "loss"))
    n_seeds = len(spec.settings.seeds)
    out = ["# Gradient-estimator ablation", ""]
    out.append("Generated by `rvqcodec ablation` from the run folders next to this file; rebuild it with "
               "`rvqcodec ablation --report-only <this folder>`.")
    out.append("")
    if spec.command:
        out.append(f"- command: `{spec.command}`")
    out.append(f"- seeds: {', '.join(str(s) for s in spec.settings.seeds)}; "
               f"{len(results)} arms; every arm of a seed shares initial weights, data order, quantizer-dropout "
               "draws and forward pass")
    if model:
        k = model.get("codebook_size")
        bits = math.ceil(math.log2(k)) if isinstance(k, int) and k > 1 else "?"
        out.append(f"- model: preset `{model.get('preset')}`, latent {model.get('latent_dim')}, "
                   f"n_q = {model.get('n_q')} stages × K = {k} codes ({bits} bits/code), quantizer dropout "
                   f"{_value(model.get('quantizer_dropout'))}, EMA decay {_value(model.get('ema_decay'))}")
    if train:
        out.append(f"- training: {train.get('steps')} steps of {data.get('batch_size')} × "
                   f"{_value(data.get('segment_seconds'))} s crops from "
                   f"{', '.join([*data.get('train_subsets', []), *data.get('extra_train_dirs', [])])}; "
                   f"loss weights mel {_value(loss.get('mel'))}, MR-STFT {_value(loss.get('mrstft'))}, "
                   f"compressed complex STFT {_value(loss.get('complex'))}, "
                   f"commit {_value(loss.get('commit'))}, adversarial {_value(loss.get('adv'))}, "
                   f"feature matching {_value(loss.get('fm'))}")
    warmup = spec.settings.ae_warmup_steps
    warm_seconds = [(read_json(spec.warmup_path(seed) / STATUS_FILE) or {}).get("train_seconds")
                    for seed in spec.settings.seeds] if warmup else []
    if warmup:
        out.append(f"- shared autoencoder warm-up: {warmup} steps per seed with the quantizer bypassed (the same "
                   "recipe; nothing the arms vary acts in it), in `warmup/seed<k>`; every arm of a seed starts from "
                   "its weights (the arms with k-means init: codebooks fitted to its latents); wall-clock "
                   + ", ".join(f"{v:.0f} s" if _finite(v) else "—" for v in warm_seconds))
    arm_seconds = [(r.status or {}).get("train_seconds") for runs in results.values() for r in runs]
    spent = sum(v for v in arm_seconds + warm_seconds if _finite(v))
    if spent:
        out.append(f"- compute: {spent / 60:.1f} minutes of training wall-clock in all (warm-ups and arms, "
                   "evaluation not included)")
    evaluated = [r.eval for runs in results.values() for r in runs if r.finished]
    if evaluated:
        first = evaluated[0]
        out.append(f"- evaluation: {first['files']} files of {data.get('valid_subset', 'the held-out subset')} "
                   f"({first['seconds']:.1f} s, {int(first['frames'])} frames per stage), each cut to "
                   f"{_value(spec.settings.eval_max_seconds)} s; statistics over the whole set")
    finished = sum(r.finished for runs in results.values() for r in runs)
    diverged = sum(r.state == "diverged" for runs in results.values() for r in runs)
    missing = sum(r.state == "missing" for runs in results.values() for r in runs)
    out.append(f"- runs: {finished} finished, {diverged} diverged, {missing} not run (of {len(results) * n_seeds})")
    out.append("- cells: mean ± sample std over the finished seeds; `(n=k)`: only k finite values; `—`: none")
    out.append("")
    return out


def _arms_section(spec: AblationSpec, results: dict[str, list[RunResult]]) -> list[str]:
    keys = spec.varied_keys()
    header = ["arm", "label", *keys, "finished", "diverged / NaN"]
    rows = []
    for arm in spec.selected_arms():
        runs = results[arm.name]
        bad = sum(r.state == "diverged" or r.nonfinite for r in runs)
        rows.append([f"`{arm.name}`", arm.label, *(_resolved_value(runs, k) for k in keys),
                     f"{sum(r.finished for r in runs)}/{len(runs)}", f"{bad}/{len(runs)}"])
    return ["## Arms", "", "Only the keys below differ between arms (values from each run's saved `config.yaml`).",
            "", _table(header, rows, align_right_from=len(header) - 2), ""]


def _reconstruction_section(spec: AblationSpec, results: dict[str, list[RunResult]], n_q: int) -> list[str]:
    n_seeds = len(spec.settings.seeds)
    header = ["arm", "mel distance ↓", "MR-STFT ↓", "SI-SDR (dB) ↑", "PESQ-WB ↑", "latent SNR (dB) ↑",
              "s / step", "skipped steps", "diverged / NaN seeds"]
    rows = []
    for arm, runs in results.items():
        done = [r for r in runs if r.finished]
        full = lambda key: [r.eval["full"].get(key) for r in done]  # noqa: E731
        rows.append([
            f"`{arm}`",
            format_stat(full("mel"), ".3f", len(done)),
            format_stat(full("mrstft"), ".3f", len(done)),
            format_stat(full("si_sdr"), ".2f", len(done)),
            format_stat(full("pesq_wb"), ".2f", len(done)),
            format_stat([r.eval.get("latent_snr_db") for r in done], ".2f", len(done)),
            format_stat([r.seconds_per_step() for r in runs if r.state != "missing"], ".3f",
                        sum(r.state != "missing" for r in runs)),
            str(sum(int((r.status or {}).get("skipped_steps") or 0) for r in runs if r.state != "missing")),
            f"{sum(r.state == 'diverged' or r.nonfinite for r in runs)}/{n_seeds}",
        ])
    return [f"## Reconstruction at full bitrate (n_q = {n_q})", "",
            "Mean over the evaluation files of each seed, then mean ± std over seeds. `s / step`: median logged "
            "wall-clock per training step (same machine and load for all arms only if run together).", "",
            _table(header, rows), ""]


def _scalability_section(spec: AblationSpec, results: dict[str, list[RunResult]], n_q_list: list[int],
                         kbps_per_stage: float | None) -> list[str]:
    def col(n: int) -> str:
        return f"n_q = {n}" + (f" ({n * kbps_per_stage:g} kbps)" if kbps_per_stage else "")

    out = ["## Bitrate scalability", "",
           "The first n_q stages of each code sequence decoded (quantizer dropout trains every prefix).", ""]
    for key, title, fmt in (("pesq_wb", "PESQ-WB ↑", ".2f"), ("mel", "mel distance ↓", ".3f")):
        rows = []
        for arm, runs in results.items():
            done = [r for r in runs if r.finished]
            rows.append([f"`{arm}`", *(format_stat([r.eval["by_n_q"].get(str(n), {}).get(key) for r in done],
                                                   fmt, len(done)) for n in n_q_list)])
        out += [f"### {title}", "", _table(["arm", *(col(n) for n in n_q_list)], rows), ""]
    return out


def _overview_section(results: dict[str, list[RunResult]], n_q: int) -> list[str]:
    out = ["## Codebook statistics by stage (evaluation set)", ""]
    for key, title, scale, fmt in STAGE_COLUMNS[:3]:
        rows = []
        for arm, runs in results.items():
            done = sum(r.finished for r in runs)
            rows.append([f"`{arm}`", *(format_stat(_stage_values(runs, k, key), fmt, done, scale)
                                       for k in range(n_q))])
        out += [f"### {title}", "", _table(["arm", *(f"s{k + 1}" for k in range(n_q))], rows), ""]
    return out


def _per_arm_section(spec: AblationSpec, results: dict[str, list[RunResult]], n_q: int) -> list[str]:
    out = ["## Per-arm tables", "",
           "Per stage over the evaluation set. Distinct codes: different code vectors in the final codebook "
           "(identical codes, e.g. from k-means on fewer frames than codes, count once). Replacements: dead codes "
           "re-seeded per 1000 training steps after step 1 (the codebook's counter in the first and last snapshots; "
           "replacements during initialisation are left out).", ""]
    header = ["stage", *(title for _, title, _, _ in STAGE_COLUMNS), "distinct codes (end)",
              "replacements / 1k steps"]
    for arm in spec.selected_arms():
        runs = results[arm.name]
        done = [r for r in runs if r.finished]
        rows = []
        for k in range(n_q):
            cells = [format_stat(_stage_values(runs, k, key), fmt, len(done), scale)
                     for key, _, scale, fmt in STAGE_COLUMNS]
            cells.append(format_stat([_distinct_codes(r, k) for r in done], ".0f", len(done)))
            cells.append(format_stat([_replacements_per_kstep(r, k) for r in done], ".1f", len(done)))
            rows.append([f"s{k + 1}", *cells])
        out += [f"### `{arm.name}`: {arm.label}", "", _table(header, rows), ""]
    return out


DEFINITIONS = """## Definitions

Per stage k over the evaluation frames (n_j = frames assigned to code j, N = Σ n_j, K codes):
utilisation = 100 · |{j : n_j ≥ 1}| / K; PPL / K = exp(−Σ p_j log p_j) / K with p_j = n_j / N;
rel. QE = E‖r_k − q_k‖² / E‖r_k‖² (residual energy left by the stage, scale-free);
median ‖q‖/‖e‖ = median of λ, the rotation trick's gradient scale (code space; the statistics histogram spans
1e-4…1e4, so 0.0001 means λ ≤ 1e-4, e.g. all-zero codes); obtuse = share of frames with
cos(e, q) < 0. Latent SNR = 10 log10(E‖x‖² / E‖x − Σ_k q_k‖²) = −10 log10 Π_k rel. QE_k.
Mel distance: mean |log10 mel| difference (`rvqcodec.metrics.mel_distance`); MR-STFT: auraloss multi-resolution
STFT loss (spectral convergence + log magnitude, FFT 2048…128); SI-SDR in dB; PESQ-WB (P.862.2).
A seed counts as diverged when training stopped on non-finite losses, as NaN when its final codec decoded
non-finite audio or metrics.
"""


def render_report(spec: AblationSpec, results: dict[str, list[RunResult]], plots: dict[str, str]) -> str:
    """The Markdown text of the report (``plots``: title -> path relative to the report)."""
    n_q = _n_q(results)
    n_q_list = _eval_n_q(spec, results)
    cfg = _shared_config(results) or {}
    model = cfg.get("model", {})
    kbps = None
    try:
        hop = math.prod(model["strides"])
        kbps = math.ceil(math.log2(model["codebook_size"])) * model["sample_rate"] / hop / 1000.0
    except (KeyError, TypeError, ValueError):
        pass
    lines = _intro(spec, results)
    lines += _arms_section(spec, results)
    lines += _reconstruction_section(spec, results, n_q)
    lines += _scalability_section(spec, results, n_q_list, kbps)
    lines += _overview_section(results, n_q)
    lines += _per_arm_section(spec, results, n_q)
    lines += ["## Plots", ""]
    for title, rel in plots.items():
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += [DEFINITIONS]
    return "\n".join(lines).rstrip("\n") + "\n"


def _eval_n_q(spec: AblationSpec, results: dict[str, list[RunResult]]) -> list[int]:
    for runs in results.values():
        for run in runs:
            if run.finished:
                return [int(n) for n in run.eval.get("n_q_list", [])]
    return sorted(int(n) for n in spec.settings.eval_n_q)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for an ablation run folder from its saved files; returns the
    report path. Raises ``FileNotFoundError`` / ``ValueError`` for a folder that is not an ablation run."""
    run_dir = Path(run_dir)
    spec, results = load_results(run_dir)
    n_q = _n_q(results)
    plots_dir = run_dir / PLOTS_DIR
    plots: dict[str, str] = {}

    def add(title: str, path: Path | None) -> None:
        if path is not None:
            plots[title] = path.relative_to(run_dir).as_posix()

    if n_q:
        add("Per-stage codebook utilisation (evaluation set)",
            plot_utilization_bars(spec, results, n_q, plots_dir / "utilization_by_stage.png"))
        add("Codebook utilisation during training (per logging window)",
            plot_stage_curves(spec, results, n_q, "utilization", "utilisation (%)", False,
                              plots_dir / "training_utilization.png"))
        add("Relative quantisation error during training",
            plot_stage_curves(spec, results, n_q, "rel_qe", "rel. QE", True, plots_dir / "training_rel_qe.png"))
    add("Training losses", plot_losses(spec, results, plots_dir / "training_losses.png"))
    if any(r.finished for runs in results.values() for r in runs):
        add("Bitrate scalability", plot_scalability(spec, results, _eval_n_q(spec, results),
                                                    plots_dir / "scalability.png"))
    for arm, runs in results.items():
        run = next((r for r in runs if r.snapshots), None)
        if run is not None:
            add(f"Codebook evolution: {arm} (seed {run.seed})",
                plot_codebook_evolution(spec, arm, run, plots_dir / f"codebooks_{arm}.png"))
    return atomic_write_text(run_dir / REPORT_FILE, render_report(spec, results, plots), parents=True)
