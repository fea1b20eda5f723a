"""The ablation file: its three sections (``ablation`` settings, the shared ``training`` recipe, the ``arms``)
read, checked and resolved into an :class:`AblationSpec`, and the resolved spec saved in / read back from a run
folder (``ablation.yaml``). Every run's training config is built here once, so a bad key fails before training.
See :mod:`rvqcodec.training.ablation` for the file format.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rvqcodec.training.config import config_from_dict, flat_dict, parse_override, read_yaml_file, set_dotted

SPEC_FILE = "ablation.yaml"
SPEC_FORMAT = "rvqcodec-ablation"
RUNS_DIR = "runs"
WARMUP_DIR = "warmup"
MANAGED_KEYS = ("train.seed", "train.run_dir", "train.resume")
"""Training keys the runner sets per run (never from the arms or the command line)."""
WARMUP_KEYS = ("train.init_from", "train.ae_warmup_steps")
"""Also set by the runner when ``ablation.ae_warmup_steps`` > 0."""

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
    ae_warmup_steps: int = 0  # > 0: an autoencoder (quantizer bypassed) is trained this many steps once per seed,
    # in <run_dir>/warmup/seed<k>, and every arm of that seed starts from its weights (train.init_from), its
    # codebooks k-means-initialised from their latents (train.kmeans_init_seconds). The warm-up does not depend on
    # the quantizer options the arms vary, so it is shared rather than repeated per arm.

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
        if not _is_int(self.ae_warmup_steps) or self.ae_warmup_steps < 0:
            raise bad("ae_warmup_steps", "must be an integer >= 0", self.ae_warmup_steps)


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

    def warmup_path(self, seed: int) -> Path:
        return self.run_dir / WARMUP_DIR / f"seed{seed}"

    def run_tree(self, arm: Arm, seed: int) -> dict[str, Any]:
        """The training mapping of one run (before the command-line overrides)."""
        tree = copy.deepcopy(self.training)
        for key, value in arm.set.items():
            set_dotted(tree, key, copy.deepcopy(value))
        set_dotted(tree, "train.seed", seed)
        set_dotted(tree, "train.run_dir", str(self.run_path(arm.name, seed)))
        set_dotted(tree, "train.resume", False)
        if self.settings.ae_warmup_steps > 0:
            set_dotted(tree, "train.init_from", str(self.warmup_path(seed) / "codec.pt"))
            set_dotted(tree, "train.ae_warmup_steps", 0)
        return tree

    def warmup_job(self, seed: int) -> tuple[dict[str, Any], list[str]]:
        """The training mapping and overrides of the shared autoencoder warm-up of ``seed``
        (``ablation.ae_warmup_steps`` > 0): the shared recipe and command-line overrides, then its own length,
        quantizer bypassed for all of it, no k-means."""
        tree = copy.deepcopy(self.training)
        steps = self.settings.ae_warmup_steps
        for key, value in (("train.seed", seed), ("train.run_dir", str(self.warmup_path(seed))),
                           ("train.resume", False), ("train.ae_warmup_steps", steps)):
            set_dotted(tree, key, value)
        own = [f"train.steps={steps}", "train.kmeans_init_seconds=0", f"train.ckpt_every={steps}",
               f"train.valid_every={steps}"]
        return tree, [*self.training_overrides, *own]

    def run_config(self, arm: Arm, seed: int):
        """The validated :class:`rvqcodec.training.config.TrainConfig` of one run."""
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
    if settings.ae_warmup_steps > 0:
        for key in WARMUP_KEYS:
            where = ([f"override '{t}'" for t in training_overrides if _keys_overlap(parse_override(t)[0], key)]
                     + [f"arm '{a.name}'" for a in arms if any(_keys_overlap(k, key) for k in a.set)]
                     + (["the training section"] if any(_keys_overlap(k, key) for k in flat_dict(training)) else []))
            if where:
                raise ValueError(f"{where[0]} sets {key}, which the runner sets per run when "
                                 "ablation.ae_warmup_steps > 0")
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
    if settings.ae_warmup_steps > 0:
        _check_warmup_shared(spec)
    return spec


def _check_warmup_shared(spec: AblationSpec) -> None:
    """With a shared warm-up every arm must be able to start from it: arms may differ from the warm-up's model
    only in fields that change how a model learns (:func:`rvqcodec.model.codec.incompatible_fields`)."""
    from rvqcodec.model.codec import incompatible_fields

    seed = spec.settings.seeds[0]
    base = config_from_dict(*spec.warmup_job(seed)).codec_config.to_dict()
    for arm in spec.selected_arms():
        differ = incompatible_fields(base, spec.run_config(arm, seed).codec_config.to_dict())
        if differ:
            raise ValueError(f"arm '{arm.name}' changes {', '.join(differ)}, so it cannot start from the shared "
                             "warm-up (ablation.ae_warmup_steps); arms may vary only how the quantizer learns")


def _check_run_config(cfg, arm_name: str) -> None:
    """Model-level checks the Trainer would only make after setting up (bitrates, estimator names)."""
    from rvqcodec.quantize.estimators import ESTIMATORS

    codec_config = cfg.codec_config
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


def dump_spec(spec: AblationSpec) -> str:
    """The resolved spec as the YAML text of ``ablation.yaml`` (also what ``--print-config`` prints)."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)
