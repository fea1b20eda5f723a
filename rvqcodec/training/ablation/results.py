"""The files one ablation run leaves beside its Trainer run folder, written and read back: ``status.json``
(complete / diverged), ``eval.json`` (the held-out evaluation) and ``snapshots/`` (codebooks during training).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rvqcodec.fileio import atomic_torch_save, atomic_write_json
from rvqcodec.training.ablation.spec import RUNS_DIR

STATUS_FILE = "status.json"
EVAL_FILE = "eval.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_FORMAT = "rvqcodec-codebook-snapshot"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """``status.json`` / ``eval.json``: strict JSON (NaN / inf -> null), sorted keys, written atomically."""
    return atomic_write_json(path, payload, indent=1, sort_keys=True, parents=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is missing or unreadable (an interrupted run)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def snapshot_steps(steps: int) -> list[int]:
    """Steps after which the codebooks are saved: the start (after step 1, i.e. right after initialisation and
    the first update), the middle and the end of training (duplicates removed)."""
    return sorted({1, max(1, steps // 2), steps})


def codebook_snapshot(codec, step: int) -> dict[str, Any]:
    """Every stage's codebook state: ``embed`` (n_q, K, d) float32 code vectors (code space; for a ``"transform"``
    codebook the codes it quantizes to, ``vectors()``, not its base), ``cluster_size``
    (n_q, K) float32 EMA usage (frames per step), ``replaced_total`` (n_q,) int64 dead-code replacements so far,
    ``initialized`` (n_q,) bool."""
    import torch

    books = [layer.codebook for layer in codec.quantizer.layers]
    return {
        "format": SNAPSHOT_FORMAT,
        "step": int(step),
        "embed": torch.stack([b.vectors().detach().float().cpu() for b in books]),
        "cluster_size": torch.stack([b.cluster_size.detach().float().cpu() for b in books]),
        "replaced_total": torch.stack([b.replaced_total.detach().long().cpu() for b in books]),
        "initialized": torch.stack([b.initialized.detach().bool().cpu() for b in books]),
    }


def save_snapshot(codec, step: int, folder: Path) -> Path:
    """Write :func:`codebook_snapshot` to ``folder/step_XXXXXXX.pt`` (atomically; the folder is created)."""
    return atomic_torch_save(codebook_snapshot(codec, step), folder / f"step_{step:07d}.pt", parents=True)


def read_snapshots(run_path: Path) -> list[dict[str, Any]]:
    """The codebook snapshots of a run, by step (unreadable files are skipped)."""
    import torch

    out = []
    for path in sorted((run_path / SNAPSHOT_DIR).glob("step_*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a file cut short by an interruption
            continue
        if isinstance(payload, dict) and payload.get("format") == SNAPSHOT_FORMAT:
            out.append(payload)
    return sorted(out, key=lambda p: p["step"])


def run_is_complete(run_path: Path) -> bool:
    """True when the run finished (trained and evaluated) or was recorded as diverged."""
    status = read_json(run_path / STATUS_FILE)
    if status is None:
        return False
    if status.get("state") == "diverged":
        return True
    return status.get("state") == "complete" and read_json(run_path / EVAL_FILE) is not None


def finished_runs(run_dir: Path) -> list[Path]:
    """Run folders under ``run_dir/runs`` that hold a ``status.json`` (finished or diverged)."""
    return sorted(p.parent for p in (run_dir / RUNS_DIR).glob(f"*/*/{STATUS_FILE}"))
