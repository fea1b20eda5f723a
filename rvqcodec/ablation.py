"""``rvqcodec ablation``: train the same codec several times, changing only the gradient estimator (and related
quantizer options), evaluate every run on held-out speech and write a report.

An ablation file (e.g. ``recipes/ablation/estimators.yaml``) has three sections::

    ablation:  {run_dir: runs/ablation-estimators, seeds: [0, 1], eval_max_seconds: 10.0, ...}
    training:  {model: {...}, data: {...}, optim: {...}, loss: {...}, train: {...}}   # a training recipe
    arms:
      - {name: ste_live, label: "STE, live residual", set: {model.estimator: ste}}
      - ...

Every run is ``training`` + the arm's ``set`` (dotted training keys) + ``train.seed = seed`` +
``train.run_dir = <run_dir>/runs/<arm>/seed<seed>``, trained by :class:`rvqcodec.train.Trainer`. Runs of the same
seed therefore share the initial weights, the data order, the quantizer-dropout draws and the forward pass; they
differ only in what their arm declares. ``key=value`` overrides on the command line go to ``training`` (same keys
as ``rvqcodec train``) or, with an ``ablation.`` prefix, to the ``ablation`` section; a key that an arm declares,
and ``train.seed`` / ``train.run_dir`` / ``train.resume`` (set per run), cannot be overridden.

**Run folder** (``ablation.run_dir``)::

    ablation.yaml                       the resolved ablation (settings, training recipe + overrides, arms)
    runs/<arm>/seed<seed>/              a Trainer run folder (config.yaml, log.jsonl, codec.pt, checkpoints/)
        snapshots/step_XXXXXXX.pt       codebooks + EMA usage after step 1, steps // 2 and the last step
        eval.json                       held-out evaluation of the final codec.pt
        status.json                     "complete" or "diverged" (+ step, skipped steps, wall-clock)
    report.md, plots/*.png              written by :mod:`rvqcodec.report`

A run whose ``status.json`` says it finished is never retrained: rerunning the same command only trains what is
missing (an interrupted run is restarted from scratch) and rewrites the report. ``--report-only RUN_DIR``
rebuilds the report from these files alone.

**Evaluation** (after training, on ``data.valid_subset``, never trained on): the first ``eval_max_files`` files
(sorted by path, gain-normalised as in training) cut to ``eval_max_seconds``. With all stages: per-stage
statistics of :class:`rvqcodec.quantize.stats.CodebookStats` accumulated over the whole set, mel distance,
multi-resolution STFT distance (auraloss), SI-SDR and PESQ-WB (mean over files); with the first ``n`` stages for
each ``n`` in ``eval_n_q``: PESQ-WB and mel distance.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rvqcodec.fileio import atomic_torch_save, atomic_write_json, atomic_write_text

SPEC_FILE = "ablation.yaml"
SPEC_FORMAT = "rvqcodec-ablation"
RUNS_DIR = "runs"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_FORMAT = "rvqcodec-codebook-snapshot"
STATUS_FILE = "status.json"
EVAL_FILE = "eval.json"
MANAGED_KEYS = ("train.seed", "train.run_dir", "train.resume")
"""Training keys the runner sets per run (never from the arms or the command line)."""
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ============================================================================================ the spec


@dataclass
class AblationSettings:
    """The ``ablation`` section: where runs go, which seeds and arms, and how they are evaluated."""

    run_dir: str = "runs/ablation"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    arms: list[str] | None = None  # names of the arms to run (None: every arm in the file)
    eval_max_files: int | None = None  # held-out files scored (None: all)
    eval_max_seconds: float | None = 10.0  # each file cut to this length (None: whole files)
    eval_n_q: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # stage counts for bitrate scalability
    eval_pesq: bool = True  # PESQ-WB (the slowest metric)

    def validate(self) -> None:
        def bad(key: str, message: str, value: Any) -> ValueError:
            return ValueError(f"ablation key 'ablation.{key}': {message}, got {value!r}")

        if not isinstance(self.run_dir, str) or not self.run_dir.strip():
            raise bad("run_dir", "must be a folder path", self.run_dir)
        if (not isinstance(self.seeds, list) or not self.seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)):
            raise bad("seeds", "must be a non-empty list of integers >= 0", self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise bad("seeds", "must not repeat a seed", self.seeds)
        if self.arms is not None and (not isinstance(self.arms, list) or not self.arms
                                      or not all(isinstance(a, str) for a in self.arms)):
            raise bad("arms", "must be null (all arms) or a non-empty list of arm names", self.arms)
        if self.eval_max_files is not None and (not _is_int(self.eval_max_files) or self.eval_max_files < 1):
            raise bad("eval_max_files", "must be an integer >= 1 or null (all files)", self.eval_max_files)
        if self.eval_max_seconds is not None and (not _is_number(self.eval_max_seconds) or self.eval_max_seconds <= 0):
            raise bad("eval_max_seconds", "must be a number > 0 or null (whole files)", self.eval_max_seconds)
        if (not isinstance(self.eval_n_q, list) or not self.eval_n_q
                or not all(_is_int(n) and n >= 1 for n in self.eval_n_q)):
            raise bad("eval_n_q", "must be a non-empty list of integers >= 1", self.eval_n_q)
        if not isinstance(self.eval_pesq, bool):
            raise bad("eval_pesq", "must be true or false", self.eval_pesq)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Arm:
    """One row of the ablation: a name (folder name), a label for the report, and the training keys it sets."""

    name: str
    label: str
    set: dict[str, Any]


@dataclass
class AblationSpec:
    """A resolved ablation: settings, the shared training recipe (+ command-line overrides) and the arms."""

    settings: AblationSettings
    training: dict[str, Any]
    training_overrides: list[str]
    arms: list[Arm]
    command: str = ""  # the command line that created the run folder (shown in the report)

    # ---------------------------------------------------------------------------------------- selection
    def selected_arms(self) -> list[Arm]:
        """The arms to run, in file order (``ablation.arms`` may pick a subset)."""
        if self.settings.arms is None:
            return list(self.arms)
        by_name = {arm.name: arm for arm in self.arms}
        return [by_name[name] for name in self.settings.arms]

    def varied_keys(self) -> list[str]:
        """Training keys set by at least one arm, in first-declared order."""
        keys: list[str] = []
        for arm in self.arms:
            for key in arm.set:
                if key not in keys:
                    keys.append(key)
        return keys

    # ---------------------------------------------------------------------------------------- runs
    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir)

    def run_path(self, arm: str, seed: int) -> Path:
        return self.run_dir / RUNS_DIR / arm / f"seed{seed}"

    def run_tree(self, arm: Arm, seed: int) -> dict[str, Any]:
        """The training mapping of one run (before the command-line overrides)."""
        tree = copy.deepcopy(self.training)
        for key, value in arm.set.items():
            _set_dotted(tree, key, copy.deepcopy(value))
        _set_dotted(tree, "train.seed", seed)
        _set_dotted(tree, "train.run_dir", str(self.run_path(arm.name, seed)))
        _set_dotted(tree, "train.resume", False)
        return tree

    def run_config(self, arm: Arm, seed: int):
        """The validated :class:`rvqcodec.config.TrainConfig` of one run."""
        from rvqcodec.config import config_from_dict

        try:
            return config_from_dict(self.run_tree(arm, seed), self.training_overrides)
        except ValueError as exc:
            raise ValueError(f"arm '{arm.name}': {exc}") from None

    # ---------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "command": self.command,
            "ablation": dataclasses.asdict(self.settings),
            "training": copy.deepcopy(self.training),
            "training_overrides": list(self.training_overrides),
            "arms": [{"name": a.name, "label": a.label, "set": copy.deepcopy(a.set)} for a in self.arms],
        }

    def identity(self) -> dict[str, Any]:
        """What must match for a run folder to be continued: everything but the command line and the spelling
        of the folder's path."""
        out = self.to_dict()
        out.pop("command")
        out["ablation"].pop("run_dir")
        return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"training key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _keys_overlap(a: str, b: str) -> bool:
    """True when one dotted key is the other or contains it (``model`` and ``model.n_q``)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _parse_arms(raw: Any) -> list[Arm]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("ablation file: 'arms' must be a non-empty list of {name, label, set} mappings")
    arms: list[Arm] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"ablation file: arm #{i + 1} must be a mapping with name, label and set, got {item!r}")
        unknown = sorted(set(item) - {"name", "label", "set"})
        if unknown:
            raise ValueError(f"ablation file: arm #{i + 1} has unknown key(s) {', '.join(unknown)} "
                             "(valid: name, label, set)")
        name = item.get("name")
        if not isinstance(name, str) or not _ARM_NAME.match(name):
            raise ValueError(f"ablation file: arm #{i + 1} needs a 'name' made of letters, digits, '_', '-', '.' "
                             f"(it names a folder), got {name!r}")
        if any(a.name == name for a in arms):
            raise ValueError(f"ablation file: two arms are named '{name}'")
        label = item.get("label", name)
        if not isinstance(label, str) or not label.strip() or "|" in label or "\n" in label:
            raise ValueError(f"ablation file: arm '{name}': 'label' must be one line of text without '|', "
                             f"got {label!r}")
        settings = item.get("set") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"ablation file: arm '{name}': 'set' must map dotted training keys to values "
                             f"(e.g. model.estimator: ste), got {settings!r}")
        for key in settings:
            if not isinstance(key, str) or "." not in key or any(not p for p in key.split(".")):
                raise ValueError(f"ablation file: arm '{name}': bad key {key!r} in 'set' "
                                 "(expected a dotted training key such as model.estimator)")
            if any(_keys_overlap(key, managed) for managed in MANAGED_KEYS):
                raise ValueError(f"ablation file: arm '{name}' sets '{key}', which the runner sets per run "
                                 "(use ablation.seeds / ablation.run_dir)")
        arms.append(Arm(name=name, label=label.strip(), set=dict(settings)))
    return arms


def _settings_from(raw: Any, overrides: dict[str, Any]) -> AblationSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"ablation file: 'ablation' must be a mapping of settings, got {raw!r}")
    merged = {**raw, **overrides}
    names = [f.name for f in dataclasses.fields(AblationSettings)]
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise ValueError(f"unknown ablation key(s) {', '.join('ablation.' + k for k in unknown)}; "
                         f"valid: {', '.join('ablation.' + n for n in names)}")
    if isinstance(merged.get("eval_max_seconds"), int) and not isinstance(merged.get("eval_max_seconds"), bool):
        merged["eval_max_seconds"] = float(merged["eval_max_seconds"])
    if isinstance(merged.get("seeds"), int) and not isinstance(merged.get("seeds"), bool):
        merged["seeds"] = [merged["seeds"]]
    if isinstance(merged.get("arms"), str):
        merged["arms"] = [a.strip() for a in merged["arms"].split(",") if a.strip()]
    settings = AblationSettings(**merged)
    settings.validate()
    return settings


def spec_from_dict(raw: Any, overrides: list[str] | None = None, command: str = "") -> AblationSpec:
    """Build and validate an :class:`AblationSpec` from a parsed ablation file plus ``key=value`` overrides.

    Every run's training config is built once here, so a bad key or value fails before anything is trained.
    Raises ``ValueError`` with a one-line message.
    """
    from rvqcodec.config import parse_override

    if not isinstance(raw, dict):
        raise ValueError("an ablation file must be a mapping with sections 'ablation', 'training' and 'arms'")
    unknown = sorted(set(raw) - {"ablation", "training", "arms"})
    if unknown:
        raise ValueError(f"ablation file: unknown section(s) {', '.join(map(str, unknown))}; "
                         "valid: ablation, training, arms")
    training = raw.get("training") or {}
    if not isinstance(training, dict):
        raise ValueError("ablation file: 'training' must be a training recipe mapping (model, data, optim, ...)")
    arms = _parse_arms(raw.get("arms"))

    ablation_overrides: dict[str, Any] = {}
    training_overrides: list[str] = []
    declared = [key for arm in arms for key in arm.set]
    for text in overrides or []:
        key, value = parse_override(text)
        if key.startswith("ablation."):
            name = key.removeprefix("ablation.")
            try:
                ablation_overrides[name] = yaml.safe_load(value) if value != "" else None
            except yaml.YAMLError:
                raise ValueError(f"bad value in override {text!r}") from None
            continue
        for managed in MANAGED_KEYS:
            if _keys_overlap(key, managed):
                raise ValueError(f"override '{key}': the runner sets {managed} per run "
                                 "(use ablation.seeds and ablation.run_dir)")
        clash = [d for d in declared if _keys_overlap(key, d)]
        if clash:
            raise ValueError(f"override '{key}': '{clash[0]}' is what the arms vary; change it in the arms of the "
                             "ablation file instead")
        training_overrides.append(text)

    settings = _settings_from(raw.get("ablation"), ablation_overrides)
    if settings.arms is not None:
        known = [a.name for a in arms]
        missing = [name for name in settings.arms if name not in known]
        if missing:
            raise ValueError(f"ablation.arms: unknown arm(s) {', '.join(missing)}; "
                             f"arms in the file: {', '.join(known)}")
        if len(set(settings.arms)) != len(settings.arms):
            raise ValueError(f"ablation.arms: an arm is listed twice: {settings.arms}")
    spec = AblationSpec(settings=settings, training=training, training_overrides=training_overrides, arms=arms,
                        command=command)
    for arm in spec.selected_arms():
        for seed in settings.seeds:
            _check_run_config(spec.run_config(arm, seed), arm.name)
    return spec


def _check_run_config(cfg, arm_name: str) -> None:
    """Model-level checks the Trainer would only make after setting up (bitrates, estimator names)."""
    from rvqcodec.config import codec_config_from_section
    from rvqcodec.quantize.estimators import ESTIMATORS

    codec_config = codec_config_from_section(cfg.model)
    if codec_config.estimator not in ESTIMATORS:
        raise ValueError(f"arm '{arm_name}': model.estimator must be one of {', '.join(ESTIMATORS)}, "
                         f"got {codec_config.estimator!r}")
    per_stage = math.ceil(math.log2(codec_config.codebook_size)) * codec_config.sample_rate / codec_config.hop_length
    valid = [n * per_stage / 1000.0 for n in range(1, codec_config.n_q + 1)]
    for kbps in cfg.train.valid_bitrates:
        if not any(math.isclose(kbps, v, abs_tol=1e-6) for v in valid):
            raise ValueError(f"arm '{arm_name}': train.valid_bitrates has {kbps:g} kbps, not a bitrate of this model; "
                             f"valid: {', '.join(f'{v:g}' for v in valid)}")


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, command: str = "") -> AblationSpec:
    """Read an ablation YAML file and apply overrides (see :func:`spec_from_dict`)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder; expected an ablation YAML file "
                                "(to rebuild a report from a run folder use --report-only)")
    if not path.is_file():
        raise FileNotFoundError(f"ablation file not found: {path}")
    from rvqcodec.config import read_yaml_file

    return spec_from_dict(read_yaml_file(path, "ablation file"), overrides, command)


def read_saved_spec(run_dir: str | os.PathLike) -> AblationSpec:
    """The :class:`AblationSpec` saved in an ablation run folder (no overrides, no re-validation of runs)."""
    run_dir = Path(run_dir)
    path = run_dir / SPEC_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"ablation run folder not found: {run_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an ablation run folder (no {SPEC_FILE})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise ValueError(f"{path} is damaged (not valid YAML)") from None
    if not isinstance(raw, dict) or raw.get("format") != SPEC_FORMAT:
        raise ValueError(f"{path} is not an rvqcodec ablation file (format tag {SPEC_FORMAT!r} missing)")
    try:
        settings = AblationSettings(**raw["ablation"])
        arms = _parse_arms(raw["arms"])
        return AblationSpec(settings=settings, training=raw["training"] or {},
                            training_overrides=list(raw.get("training_overrides") or []), arms=arms,
                            command=str(raw.get("command") or ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None


# ============================================================================================ files


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


def _dump_spec(spec: AblationSpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)


# ============================================================================================ snapshots


def snapshot_steps(steps: int) -> list[int]:
    """Steps after which the codebooks are saved: the start (after step 1, i.e. right after initialisation and
    the first update), the middle and the end of training (duplicates removed)."""
    return sorted({1, max(1, steps // 2), steps})


def codebook_snapshot(codec, step: int) -> dict[str, Any]:
    """Every stage's codebook state: ``embed`` (n_q, K, d) float32 code vectors (code space), ``cluster_size``
    (n_q, K) float32 EMA usage (frames per step), ``replaced_total`` (n_q,) int64 dead-code replacements so far,
    ``initialized`` (n_q,) bool."""
    import torch

    books = [layer.codebook for layer in codec.quantizer.layers]
    return {
        "format": SNAPSHOT_FORMAT,
        "step": int(step),
        "embed": torch.stack([b.embed.detach().float().cpu() for b in books]),
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


# ============================================================================================ evaluation


_EVAL_ITEMS: dict[tuple, list[tuple[str, Any]]] = {}


def evaluation_items(root: str, subset: str, sample_rate: int, max_files: int | None,
                     max_seconds: float | None) -> list[tuple[str, Any]]:
    """``[(utterance id, (1, T) float32 tensor), ...]``: held-out files sorted by path, gain-normalised as in
    training, cut to ``max_seconds``. Cached per process."""
    from rvqcodec.data.datasets import LibriSpeechDataset

    key = (str(root), subset, sample_rate, max_files, max_seconds)
    if key not in _EVAL_ITEMS:
        dataset = LibriSpeechDataset(root, [subset], segment_seconds=None, sample_rate=sample_rate)
        count = len(dataset) if max_files is None else min(len(dataset), max_files)
        limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
        items = []
        for i in range(count):
            wav = dataset[i].float().reshape(1, -1)
            items.append((Path(dataset.files[i]).stem, wav if limit is None else wav[:, :limit]))
        _EVAL_ITEMS[key] = items
    return _EVAL_ITEMS[key]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def evaluate_codec(codec, items: list[tuple[str, Any]], n_q_list: list[int], pesq: bool = True) -> dict[str, Any]:
    """Score ``codec`` (eval mode) on ``items`` (see :func:`evaluation_items`).

    Returns a JSON-ready dict::

        {"files", "seconds", "frames", "full_n_q", "n_q_list",
         "full": {"mel", "mrstft", "si_sdr", "pesq_wb"},            # mean over files, all stages
         "by_n_q": {"<n>": {"mel", "pesq_wb"}},                      # first n stages
         "stages": [CodebookStats summary of stage k over the whole set, ...],
         "latent_snr_db": 10·log10(E‖x‖² / E‖x − Σq‖²) after all stages,
         "nonfinite_files": files whose full-bitrate decode was not finite}

    Metrics: :func:`rvqcodec.metrics.mel_distance`, :func:`~rvqcodec.metrics.si_sdr`,
    :func:`~rvqcodec.metrics.pesq_wb` (NaN files are left out of the mean), multi-resolution STFT distance =
    :class:`rvqcodec.losses.MultiResolutionSTFTLoss` (spectral convergence + log-magnitude, auraloss).
    """
    import numpy as np
    import torch

    from rvqcodec.losses import MultiResolutionSTFTLoss
    from rvqcodec.metrics import mel_distance, pesq_wb, si_sdr

    codec.eval()
    device = next(codec.parameters()).device
    sr = codec.sample_rate
    full_n_q = codec.max_n_q
    n_q_list = sorted({int(n) for n in n_q_list if 1 <= int(n) <= full_n_q})
    mrstft = MultiResolutionSTFTLoss()
    quantizer = codec.quantizer
    full: dict[str, list[float]] = {"mel": [], "mrstft": [], "si_sdr": [], "pesq_wb": []}
    by_n_q: dict[int, dict[str, list[float]]] = {n: {"mel": [], "pesq_wb": []} for n in n_q_list}
    seconds, nonfinite = 0.0, 0
    was_recording = quantizer.record_eval_stats
    quantizer.record_eval_stats = True
    quantizer.reset_stats()
    try:
        with torch.no_grad():
            for _, wav in items:
                x = wav.unsqueeze(0).to(device)  # (1, 1, T)
                length = x.shape[-1]
                seconds += length / sr
                pad = (-length) % codec.hop_length
                latent = codec.encoder(torch.nn.functional.pad(x, (0, pad)))
                codes = quantizer(latent).codes  # all stages (eval mode); accumulates the per-stage statistics
                reference = wav[0].numpy().astype(np.float64)

                def decode(n: int) -> np.ndarray:
                    return codec.decode(codes[:, :n])[..., :length].float().cpu()[0, 0].numpy().astype(np.float64)

                estimate = decode(full_n_q)
                if not np.isfinite(estimate).all():
                    nonfinite += 1
                    for values in full.values():
                        values.append(math.nan)
                else:
                    full["mel"].append(mel_distance(reference, estimate, sr))
                    full["si_sdr"].append(si_sdr(reference, estimate))
                    full["pesq_wb"].append(pesq_wb(reference, estimate, sr) if pesq else math.nan)
                    try:
                        est_t = torch.from_numpy(estimate).float().view(1, 1, -1)
                        ref_t = torch.from_numpy(reference).float().view(1, 1, -1)
                        full["mrstft"].append(float(mrstft(est_t, ref_t)))
                    except ValueError:  # file shorter than half the largest FFT
                        full["mrstft"].append(math.nan)
                for n in n_q_list:
                    if n == full_n_q:  # same decode as above
                        by_n_q[n]["mel"].append(full["mel"][-1])
                        by_n_q[n]["pesq_wb"].append(full["pesq_wb"][-1])
                        continue
                    partial = decode(n)
                    ok = bool(np.isfinite(partial).all())
                    by_n_q[n]["mel"].append(mel_distance(reference, partial, sr) if ok else math.nan)
                    by_n_q[n]["pesq_wb"].append(pesq_wb(reference, partial, sr) if ok and pesq else math.nan)
        stages = quantizer.stage_stats(sync=False)
    finally:
        quantizer.record_eval_stats = was_recording
        quantizer.reset_stats()
    rel = [s["rel_qe"] for s in stages]
    if all(math.isfinite(r) for r in rel):
        energy_left = math.prod(rel)
        snr = -10.0 * math.log10(energy_left) if energy_left > 0 else math.inf
    else:
        snr = math.nan
    return {
        "files": len(items),
        "seconds": seconds,
        "frames": stages[0]["frames"] if stages else 0.0,
        "full_n_q": full_n_q,
        "n_q_list": n_q_list,
        "full": {k: _nanmean(v) for k, v in full.items()},
        "by_n_q": {str(n): {k: _nanmean(v) for k, v in d.items()} for n, d in by_n_q.items()},
        "stages": stages,
        "latent_snr_db": snr,
        "nonfinite_files": nonfinite,
    }


# ============================================================================================ one run


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


def run_is_complete(run_path: Path) -> bool:
    """True when the run finished (trained and evaluated) or was recorded as diverged."""
    status = read_json(run_path / STATUS_FILE)
    if status is None:
        return False
    if status.get("state") == "diverged":
        return True
    return status.get("state") == "complete" and read_json(run_path / EVAL_FILE) is not None


def train_and_evaluate(job: RunJob) -> dict[str, Any]:
    """Train one run through :class:`rvqcodec.train.Trainer` (saving codebook snapshots at
    :func:`snapshot_steps`), evaluate the final ``codec.pt`` and write ``eval.json`` and ``status.json``.

    Returns the status dict. Divergence (:class:`rvqcodec.train.TrainingDiverged`) is recorded, not raised.
    """
    import torch

    from rvqcodec.config import config_from_dict
    from rvqcodec.model import Codec
    from rvqcodec.train import Trainer, TrainingDiverged

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    cfg = config_from_dict(job.tree, job.overrides)
    run_path = Path(cfg.train.run_dir)
    trainer = Trainer(cfg, show_progress=job.show_progress)
    start = time.perf_counter()
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


# ============================================================================================ the runner


def finished_runs(run_dir: Path) -> list[Path]:
    """Run folders under ``run_dir/runs`` that hold a ``status.json`` (finished or diverged)."""
    return sorted(p.parent for p in (run_dir / RUNS_DIR).glob(f"*/*/{STATUS_FILE}"))


def prepare_run_dir(spec: AblationSpec) -> None:
    """Create the run folder and its ``ablation.yaml``, or check that an existing one holds the same ablation.

    A folder whose runs have not finished any run yet (e.g. the first run failed on a wrong ``data.root``) takes the
    new ablation; otherwise a different ablation is refused with a ``ValueError``."""
    path = spec.run_dir / SPEC_FILE
    if path.is_file():
        saved = read_saved_spec(spec.run_dir)
        if saved.identity() != spec.identity():
            if finished_runs(spec.run_dir):
                old, new = saved.identity(), spec.identity()
                differ = [k for k in new if old.get(k) != new.get(k)]
                raise ValueError(f"{spec.run_dir} holds a different ablation (differs in: {', '.join(differ)}); "
                                 "choose another ablation.run_dir or remove that folder")
            atomic_write_text(path, _dump_spec(spec), parents=True)
        return
    if spec.run_dir.exists() and any(spec.run_dir.iterdir()):
        raise ValueError(f"ablation.run_dir={spec.run_dir} exists and is not an ablation run folder; choose another")
    atomic_write_text(path, _dump_spec(spec), parents=True)


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
    from rvqcodec.report import write_report

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

    def report(i: int, status: dict[str, Any]) -> None:
        tag = f"[{i}/{len(todo)}] {status['arm']} seed {status['seed']}"
        if status["state"] == "complete":
            echo(f"{tag}: done ({status['train_seconds']:.0f} s training, {status['eval_seconds']:.0f} s evaluation)")
        elif status["state"] == "diverged":
            echo(f"{tag}: DIVERGED at step {status['step']}: {status['message']}")
        else:
            raise ValueError(f"{status['arm']} seed {status['seed']}: {status['message']}")

    if jobs == 1:
        for i, job in enumerate(todo, start=1):
            echo(f"[{i}/{len(todo)}] {job.arm} seed {job.seed}: training")
            report(i, train_and_evaluate(job))
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
                report(i, future.result())
    return write_report(spec.run_dir)


# ============================================================================================ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="ablation YAML file, e.g. recipes/ablation/estimators.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="training overrides (e.g. train.steps=100 model.n_q=4) or ablation settings with an "
                             "'ablation.' prefix (e.g. ablation.seeds=[0] ablation.arms=[ste_live,rotation_live])")
    parser.add_argument("--report-only", metavar="RUN_DIR",
                        help="rebuild report.md and plots/ from an ablation run folder, without training")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N runs at a time in separate processes (default 1: one after the other)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved ablation (settings, arms, runs) and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rvqcodec.errors import UserError

    try:
        if args.report_only is not None:
            if args.config is not None or args.overrides:
                raise UserError("--report-only RUN_DIR takes no config file or overrides")
            from rvqcodec.report import write_report

            path = write_report(Path(args.report_only))
            print(f"report: {path}")
            return 0
        if args.config is None:
            raise UserError("give an ablation file (e.g. recipes/ablation/estimators.yaml) or --report-only RUN_DIR")
        command = " ".join(["rvqcodec", "ablation", args.config, *args.overrides])
        spec = load_spec(args.config, args.overrides, command=command)
        if args.print_config:
            print(_dump_spec(spec), end="")
            for arm in spec.selected_arms():
                for seed in spec.settings.seeds:
                    print(f"# run {spec.run_path(arm.name, seed)}")
            return 0
        path = run_ablation(spec, jobs=args.jobs, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"report: {path}")
    return 0
