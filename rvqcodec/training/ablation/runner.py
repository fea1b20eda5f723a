"""Running an ablation: every selected (arm, seed) that has not finished is trained by the Trainer (with codebook
snapshots), evaluated and recorded, one after the other or ``--jobs`` at a time, then the report is written.
A run folder only ever holds one ablation (:func:`prepare_run_dir`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rvqcodec.fileio import atomic_write_text
from rvqcodec.training.ablation.evaluate import evaluate_codec, evaluation_items
from rvqcodec.training.ablation.report import write_report
from rvqcodec.training.ablation.results import (
    EVAL_FILE,
    SNAPSHOT_DIR,
    STATUS_FILE,
    finished_runs,
    read_json,
    run_is_complete,
    save_snapshot,
    snapshot_steps,
    write_json,
)
from rvqcodec.training.ablation.spec import (
    RUNS_DIR,
    SPEC_FILE,
    WARMUP_DIR,
    AblationSpec,
    dump_spec,
    read_saved_spec,
)


@dataclass
class RunJob:
    """Everything one worker needs to train and evaluate one (arm, seed) run (picklable)."""

    arm: str
    seed: int
    tree: dict[str, Any]
    overrides: list[str]
    eval_max_files: int | None
    eval_max_seconds: float | None
    eval_n_q: list[int]
    eval_pesq: bool
    show_progress: bool = False
    threads: int | None = None  # torch intra-op threads in a worker process (None: leave as is)
    warmup: bool = False  # the shared autoencoder warm-up of this seed: trained, not evaluated


def train_and_evaluate(job: RunJob) -> dict[str, Any]:
    """Train one run through :class:`rvqcodec.training.trainer.Trainer` (saving codebook snapshots at
    :func:`~rvqcodec.training.ablation.results.snapshot_steps`), evaluate the final ``codec.pt`` and write
    ``eval.json`` and ``status.json``.

    Returns the status dict. Divergence (:class:`rvqcodec.training.step.TrainingDiverged`) is recorded, not
    raised.
    """
    import torch

    from rvqcodec.model import Codec
    from rvqcodec.training.config import config_from_dict
    from rvqcodec.training.step import TrainingDiverged
    from rvqcodec.training.trainer import Trainer

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    cfg = config_from_dict(job.tree, job.overrides)
    run_path = Path(cfg.train.run_dir)
    trainer = Trainer(cfg, show_progress=job.show_progress)
    start = time.perf_counter()
    if job.warmup:  # the shared autoencoder: a plain run, its codec.pt is what the arms start from
        trainer.fit()
        status = {"state": "complete", "arm": WARMUP_DIR, "seed": job.seed, "step": trainer.step,
                  "train_seconds": time.perf_counter() - start}
        write_json(run_path / STATUS_FILE, status)
        return status
    try:
        for step in snapshot_steps(cfg.train.steps):
            trainer.fit(stop_after_step=step)
            save_snapshot(trainer.codec_module, step, run_path / SNAPSHOT_DIR)
    except TrainingDiverged as exc:
        status = {"state": "diverged", "arm": job.arm, "seed": job.seed, "step": trainer.step,
                  "skipped_steps": trainer.bad_total, "train_seconds": time.perf_counter() - start,
                  "message": str(exc)}
        write_json(run_path / STATUS_FILE, status)
        return status
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    device = trainer.accelerator.device
    del trainer
    codec = Codec.load(run_path / "codec.pt", map_location=device)
    items = evaluation_items(cfg.data.root, cfg.data.valid_subset, codec.sample_rate, job.eval_max_files,
                             job.eval_max_seconds)
    result = evaluate_codec(codec, items, job.eval_n_q, pesq=job.eval_pesq)
    result["step"] = cfg.train.steps
    write_json(run_path / EVAL_FILE, result)
    log = [json.loads(line) for line in (run_path / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    skipped = max((r.get("skipped/total") or 0.0 for r in log if r.get("kind") == "train"), default=0.0)
    status = {"state": "complete", "arm": job.arm, "seed": job.seed, "step": cfg.train.steps,
              "skipped_steps": int(skipped), "train_seconds": train_seconds,
              "eval_seconds": time.perf_counter() - start}
    write_json(run_path / STATUS_FILE, status)
    return status


def _worker(job: RunJob) -> dict[str, Any]:
    """Process-pool entry point: one run, with a one-line error instead of a traceback for user mistakes."""
    try:
        return train_and_evaluate(job)
    except (ValueError, FileNotFoundError) as exc:
        return {"state": "error", "arm": job.arm, "seed": job.seed, "message": str(exc)}


def prepare_run_dir(spec: AblationSpec) -> None:
    """Create the run folder and its ``ablation.yaml``, or check that an existing one holds the same ablation.

    A folder whose runs have not finished any run yet (e.g. the first run failed on a wrong ``data.root``) takes the
    new ablation, and so does one whose ablation only gains arms or seeds (in the file or in the selection; every
    saved arm kept as it was: its finished runs stay valid, only the new runs train); otherwise a different ablation
    is refused with a ``ValueError``."""
    path = spec.run_dir / SPEC_FILE
    if path.is_file():
        old, new = read_saved_spec(spec.run_dir).identity(), spec.identity()
        if old != new:
            if finished_runs(spec.run_dir) and not _only_grows(old, new):
                differ = [k for k in new if old.get(k) != new.get(k)]
                raise ValueError(f"{spec.run_dir} holds a different ablation (differs in: {', '.join(differ)}); "
                                 "choose another ablation.run_dir or remove that folder")
            atomic_write_text(path, dump_spec(spec), parents=True)
        return
    if spec.run_dir.exists() and any(spec.run_dir.iterdir()):
        raise ValueError(f"ablation.run_dir={spec.run_dir} exists and is not an ablation run folder; choose another")
    atomic_write_text(path, dump_spec(spec), parents=True)


def _only_grows(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when identity ``new`` is ``old`` grown by arms or seeds: everything else equal, every saved arm's
    definition unchanged, the saved selection of arms (``ablation.arms``; null: all of the file's) and of seeds
    kept in the new one (``AblationSpec.identity`` dicts). The finished runs of the saved ablation are then runs of
    the new one."""
    def rest(identity: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in identity["ablation"].items() if k not in ("arms", "seeds")}
        return {**identity, "ablation": settings, "arms": None}

    def selected(identity: dict[str, Any]) -> set[str]:
        chosen = identity["ablation"]["arms"]
        return {arm["name"] for arm in identity["arms"]} if chosen is None else set(chosen)

    definitions = {arm["name"]: arm for arm in new["arms"]}
    return (rest(old) == rest(new) and all(definitions.get(arm["name"]) == arm for arm in old["arms"])
            and selected(old) <= selected(new) and set(old["ablation"]["seeds"]) <= set(new["ablation"]["seeds"]))


def _clear_unfinished(run_path: Path, runs_root: Path) -> None:
    """Remove what an interrupted run left (only inside ``runs_root``), so that it restarts from scratch."""
    if not run_path.exists():
        return
    resolved, root = run_path.resolve(), runs_root.resolve()
    if root not in resolved.parents:
        raise ValueError(f"refusing to clear {run_path}: not inside {runs_root}")
    shutil.rmtree(run_path)


def run_ablation(spec: AblationSpec, jobs: int = 1, show_progress: bool = True,
                 echo: Callable[[str], None] | None = None) -> Path:
    """Train and evaluate every selected (arm, seed) run that has not finished yet, then write the report.

    ``jobs > 1`` runs that many runs at a time in separate processes, each with ``cpu_count // jobs`` torch
    threads (results are identical to a sequential run up to floating-point summation order). Returns the path
    of ``report.md``.
    """
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("rvqcodec ablation runs its arms itself; start it with plain python, not accelerate launch "
                         "(use --jobs N to train N runs at a time)")
    prepare_run_dir(spec)
    runs_root = spec.run_dir / RUNS_DIR
    todo: list[RunJob] = []
    arms = spec.selected_arms()
    for arm in arms:
        for seed in spec.settings.seeds:
            run_path = spec.run_path(arm.name, seed)
            if run_is_complete(run_path):
                continue
            _clear_unfinished(run_path, runs_root)
            s = spec.settings
            todo.append(RunJob(arm=arm.name, seed=seed, tree=spec.run_tree(arm, seed),
                               overrides=list(spec.training_overrides), eval_max_files=s.eval_max_files,
                               eval_max_seconds=s.eval_max_seconds, eval_n_q=list(s.eval_n_q),
                               eval_pesq=s.eval_pesq, show_progress=show_progress and jobs == 1))
    total = len(arms) * len(spec.settings.seeds)
    echo(f"ablation: {total} runs ({len(arms)} arms x {len(spec.settings.seeds)} seeds) in {spec.run_dir}; "
         f"{total - len(todo)} already done, {len(todo)} to train")
    warmups = []
    if spec.settings.ae_warmup_steps > 0:
        for seed in sorted({job.seed for job in todo}):
            path = spec.warmup_path(seed)
            status = read_json(path / STATUS_FILE)
            if status is not None and status.get("state") == "complete" and (path / "codec.pt").is_file():
                continue
            _clear_unfinished(path, spec.run_dir / WARMUP_DIR)
            tree, overrides = spec.warmup_job(seed)
            warmups.append(RunJob(arm=WARMUP_DIR, seed=seed, tree=tree, overrides=overrides, eval_max_files=None,
                                  eval_max_seconds=None, eval_n_q=[], eval_pesq=False,
                                  show_progress=show_progress and jobs == 1, warmup=True))
        if warmups:
            echo(f"shared autoencoder warm-up ({spec.settings.ae_warmup_steps} steps) for seed(s) "
                 f"{', '.join(str(job.seed) for job in warmups)}")

    def report(i: int, count: int, status: dict[str, Any]) -> None:
        tag = f"[{i}/{count}] {status['arm']} seed {status['seed']}"
        if status["state"] == "complete" and "eval_seconds" not in status:
            echo(f"{tag}: done ({status['train_seconds']:.0f} s training)")
        elif status["state"] == "complete":
            echo(f"{tag}: done ({status['train_seconds']:.0f} s training, {status['eval_seconds']:.0f} s evaluation)")
        elif status["state"] == "diverged":
            echo(f"{tag}: DIVERGED at step {status['step']}: {status['message']}")
        else:
            raise ValueError(f"{status['arm']} seed {status['seed']}: {status['message']}")

    for batch in (warmups, todo):  # the warm-ups first: the arms start from them
        _run_jobs(batch, jobs, report, echo)
    return write_report(spec.run_dir)


def _run_jobs(todo: list[RunJob], jobs: int, report: Callable[[int, int, dict[str, Any]], None],
              echo: Callable[[str], None]) -> None:
    """Run ``todo`` one after the other, or ``jobs`` at a time in separate processes."""
    if jobs == 1:
        for i, job in enumerate(todo, start=1):
            echo(f"[{i}/{len(todo)}] {job.arm} seed {job.seed}: training")
            report(i, len(todo), train_and_evaluate(job))
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        for job in todo:
            job.threads = threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, job): job for job in todo}
            for job in todo:
                echo(f"queued {job.arm} seed {job.seed}")
            for i, future in enumerate(as_completed(futures), start=1):
                report(i, len(todo), future.result())
