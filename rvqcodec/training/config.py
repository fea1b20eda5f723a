"""Training configuration (recipes): dataclasses, YAML loading and ``key=value`` command-line overrides.

A recipe is a YAML file with up to seven sections::

    model:  {preset: tiny, n_q: 8}          # a CodecConfig preset plus any CodecConfig field
    disc:   {preset: tiny}                  # a DiscriminatorConfig preset plus any of its fields
    data:   {root: /path/containing/LibriSpeech, segment_seconds: 1.0, batch_size: 8}   # or {train_dirs: [my_wavs]}
    optim:  {lr: 3.0e-4}
    loss:   {mel: 15.0, disc_start_step: 2000}
    train:  {steps: 20000, run_dir: runs/tiny}
    augment: {prob: 0.5, noise_dirs: [../shared/data/noise]}   # noisy, reverberant, quiet input (off by default)

Every field has a working default, so a section (or the whole file) may be left out. Overrides given on the
command line use dotted keys (``data.root=/x``, ``model.n_q=8``, ``train.valid_bitrates=[1.5,6]``) and are
typed from the dataclass field types; an unknown key or a badly typed value raises a one-line ``ValueError``.

The ``model`` and ``disc`` sections are resolved against :class:`rvqcodec.model.CodecConfig` and
:class:`rvqcodec.model.discriminators.DiscriminatorConfig` (preset first, then the explicit fields) by
:func:`codec_config_from_section` / :func:`discriminator_config_from_section`, once per config:
``TrainConfig.codec_config`` / ``TrainConfig.disc_config`` hold the result. The resolved configuration written
next to a run lists every field, so it rebuilds the same networks even if a preset changes later.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rvqcodec.data.augment import AugmentConfig
from rvqcodec.dicts import plain
from rvqcodec.fileio import atomic_write_text

if TYPE_CHECKING:
    from rvqcodec.model.codec import CodecConfig
    from rvqcodec.model.discriminators import DiscriminatorConfig

MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")
SCHEDULER_CHOICES = ("constant", "cosine", "exponential")
ADV_KIND_CHOICES = ("hinge", "lsgan")


@dataclass
class DataConfig:
    """Where the speech is and how training batches are cut from it.

    Training audio is the union of the LibriSpeech subsets (``root`` + ``train_subsets``; ``[]``: none), the
    folders (``train_dirs``, ``extra_train_dirs``) and the list file (``train_list``); at least one must be given.
    Validation audio is ``valid_dirs`` if given, else the LibriSpeech ``valid_subset`` when LibriSpeech subsets are
    trained on, else a held-out split of the training files (``valid_fraction``; see
    :mod:`rvqcodec.training.data_files`). Relative paths are relative to the working folder.
    """

    root: str = "data"  # folder that contains LibriSpeech/ (relative to the working dir); recipes set their own;
    # read only when train_subsets is not empty
    train_subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])  # LibriSpeech subsets ([]: none)
    train_dirs: list[str] = field(default_factory=list)  # folders of audio, searched recursively: every file
    # soundfile reads (wav, flac, ogg, mp3, aiff, ...), any sample rate (resampled), hidden files and folders skipped
    extra_train_dirs: list[str] = field(default_factory=list)  # the same as train_dirs (the name the LibriSpeech
    # recipes use for folders added to their subsets)
    train_list: str | None = None  # a text file naming training audio files, one path per line (relative paths
    # are relative to the list file; blank lines and '#' lines skipped)
    valid_subset: str = "dev-clean"  # LibriSpeech validation subset, used when train_subsets is not empty and
    # valid_dirs is empty
    valid_dirs: list[str] = field(default_factory=list)  # folders of validation audio (searched as train_dirs);
    # none of their files may also be a training file
    valid_fraction: float = 0.05  # without valid_dirs or LibriSpeech subsets: the share of the training files held
    # out for validation, chosen by a hash of each file's path (the same split on every machine and run; at least
    # one file on each side)
    segment_seconds: float = 1.0  # random crop length of a training example
    batch_size: int = 8  # per device, per micro-batch
    num_workers: int = 0  # DataLoader worker processes
    preload: bool = False  # decode all training audio once and cut batches on the device (no DataLoader)
    max_valid_files: int = 8  # held-out files scored at each validation
    max_valid_seconds: float | None = 10.0  # validation files are cut to this length (None: whole file)


@dataclass
class OptimConfig:
    """AdamW for the generator (codec) and the discriminators, with warmup and a decay schedule."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warmup from 0 to lr
    scheduler: str = "cosine"  # constant | cosine (to min_lr_ratio * lr at train.steps) | exponential
    min_lr_ratio: float = 0.1  # floor of the cosine schedule, as a fraction of lr
    gamma: float = 0.999996  # per-step decay of the exponential schedule
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0 disables clipping
    disc_lr: float | None = None  # discriminator learning rate (None: same as lr)


RECONSTRUCTION_WEIGHTS = {"mel": "mel_weight", "mrstft": "mrstft_weight", "complex": "complex_weight",
                          "l1": "l1_weight"}
"""The ``loss`` section's reconstruction weights -> the :class:`rvqcodec.losses.ReconstructionLossConfig` field each
one sets (their defaults are that class's)."""


def _reconstruction_default(name: str) -> float:
    from rvqcodec.losses import ReconstructionLossConfig

    return {f.name: f.default for f in dataclasses.fields(ReconstructionLossConfig)}[RECONSTRUCTION_WEIGHTS[name]]


@dataclass
class LossConfig:
    """Weights of the generator loss terms and the adversarial setup."""

    mel: float = _reconstruction_default("mel")  # multi-scale mel L1
    mrstft: float = _reconstruction_default("mrstft")  # multi-resolution STFT (auraloss)
    complex: float = _reconstruction_default("complex")  # power-law-compressed complex STFT MSE (ESC; phase-aware)
    l1: float = _reconstruction_default("l1")  # waveform L1
    commit: float = 1.0  # multiplies the quantizer's commitment loss
    codebook: float = 1.0  # multiplies the quantizer's codebook loss (0 for EMA codebooks anyway)
    adv: float = 1.0  # generator adversarial loss
    fm: float = 2.0  # feature matching
    disc_start_step: int = 0  # adversarial + feature-matching terms and discriminator updates start here
    disc_warmup_steps: int = 0  # the first steps from disc_start_step train only the discriminators (the
    # generator decodes without learning): a fine-tune's discriminators first learn to see the codec's artefacts
    disc_segment_seconds: float | None = None  # the discriminators see a random crop of this length of each
    # real/generated pair (the same samples of both; None: the whole training segment): their cost scales with it
    adv_kind: str = "hinge"  # hinge | lsgan

    @property
    def uses_discriminator(self) -> bool:
        return self.adv > 0 or self.fm > 0

    def reconstruction(self, sample_rate: int):
        """The :class:`rvqcodec.losses.ReconstructionLossConfig` of these weights at ``sample_rate``."""
        from rvqcodec.losses import ReconstructionLossConfig

        return ReconstructionLossConfig(sample_rate=sample_rate,
                                        **{field: getattr(self, name) for name, field in RECONSTRUCTION_WEIGHTS.items()})


@dataclass
class TrainSection:
    """Length of the run, precision, bookkeeping."""

    steps: int = 1000  # optimiser steps (each = grad_accum micro-batches)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    seed: int = 0
    log_every: int = 10
    valid_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3  # step checkpoints kept (best.pt is kept in addition)
    run_dir: str = "runs/default"
    resume: bool = False  # continue from the latest checkpoint in run_dir
    init_from: str | None = None  # a codec (codec.pt) or training checkpoint whose weights and codebooks a new
    # run starts from (fine-tuning, e.g. adding the discriminators); the model config must match; optimisers start
    # fresh; a training checkpoint's discriminators are loaded too when this run has the same ones
    valid_bitrates: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0])  # kbps
    valid_pesq: bool = True  # PESQ-WB at validation (slowest metric; off for quick CPU runs)
    n_samples: int = 2  # validation files written as example audio
    max_bad_steps: int = 10  # stop after this many consecutive non-finite losses / gradients
    cpu: bool = False  # force CPU even if an accelerator is present
    tensorboard: bool = True  # Accelerate's TensorBoard tracker (skipped if tensorboard is not installed)
    kmeans_init_seconds: float = 120.0  # audio used to k-means-initialise the codebooks (0: lazily, from a batch)
    ae_warmup_steps: int = 0  # first steps train a plain autoencoder (quantizer bypassed); then the codebooks
    # are k-means-initialised from the trained encoder's latents and quantization starts
    stop_at_step: int | None = None  # stop after this step as train.max_minutes would (the schedule still spans
    # train.steps): a run banked at a chosen step, continued later with train.resume=true
    max_minutes: float | None = None  # wall-clock budget of this fit() call: after the first step past it, log,
    # validate, checkpoint and stop (the learning-rate schedule still spans train.steps)


@dataclass
class PresetSection:
    """A preset name plus explicit fields of the preset's dataclass (which win over the preset).

    Used for ``model`` (:class:`rvqcodec.model.CodecConfig`) and ``disc``
    (:class:`rvqcodec.model.discriminators.DiscriminatorConfig`); ``preset: null`` starts from the dataclass defaults.
    """

    preset: str | None = "tiny"
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    model: PresetSection = field(default_factory=PresetSection)
    disc: PresetSection = field(default_factory=PresetSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSection = field(default_factory=TrainSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @functools.cached_property
    def codec_config(self) -> CodecConfig:
        """The codec this recipe trains: the ``model`` section resolved once (preset, then the explicit fields).
        Every user of a training config (trainer, checkpoints, ablation, benchmarks) reads it here."""
        return codec_config_from_section(self.model)

    @functools.cached_property
    def disc_config(self) -> DiscriminatorConfig:
        """The discriminators: the ``disc`` section resolved once (used only when the losses need them)."""
        return discriminator_config_from_section(self.disc)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
    "train": TrainSection,
}


# --------------------------------------------------------------------------------------------- typing


_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} {_PLURAL.get(args[0], 'values')}"
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


class _BadValue(Exception):
    pass


def _coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert ``value`` to the type hint ``tp`` or raise _BadValue. Command-line values arrive as strings."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return yaml.safe_load(value) if from_cli else value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_cli and str(value).strip().lower() in ("null", "none", "~", ""))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, from_cli)
            except _BadValue:
                continue
        raise _BadValue
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if from_cli and isinstance(value, str):
            if value.strip().startswith("["):  # YAML flow list: items arrive typed
                try:
                    items, items_from_cli = yaml.safe_load(value), False
                except yaml.YAMLError:
                    raise _BadValue from None
                if not isinstance(items, list):
                    raise _BadValue
            else:  # comma-separated text: items stay text until typed
                items, items_from_cli = [v.strip() for v in value.split(",") if v.strip()], True
        else:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]  # a single value where a list is expected
            if not isinstance(value, (list, tuple)):
                raise _BadValue
            items, items_from_cli = list(value), False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _BadValue
            return tuple(_coerce(v, a, items_from_cli) for v, a in zip(items, args))
        item_type = args[0] if args else Any
        out = [_coerce(v, item_type, items_from_cli) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _BadValue
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _BadValue
    if tp is int:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                try:
                    as_float = float(text)
                except ValueError:
                    raise _BadValue from None
                if as_float.is_integer():
                    return int(as_float)
        raise _BadValue
    if tp is float:
        if isinstance(value, bool):
            raise _BadValue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _BadValue
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _BadValue
        return value  # nested dataclasses are built by _build_dataclass
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _BadValue
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_message(key: str, section: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    hint = f" (did you mean '{section}.{close[0]}'?)" if close and section else (f" (did you mean '{close[0]}'?)" if close else "")
    where = f"section '{section}'" if section else "the config"
    return f"unknown config key '{key}'{hint}; valid keys in {where}: {', '.join(valid)}"


def _build_dataclass(cls: type, values: dict[str, Any], prefix: str, cli_keys: set[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, typing every value; ``cli_keys`` holds keys given as text."""
    if not isinstance(values, dict):
        raise ValueError(f"config section '{prefix.rstrip('.')}' must be a mapping of key: value, got {values!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ValueError(_unknown_key_message(full, prefix.rstrip("."), names))
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[key] = _build_dataclass(tp, value, full + ".", cli_keys)
            continue
        try:
            kwargs[key] = _coerce(value, tp, full in cli_keys)
        except _BadValue:
            raise ValueError(f"config key '{full}': expected {_type_name(tp)}, got {value!r}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        where = f"config section '{prefix.rstrip('.')}'" if prefix else "config"
        raise ValueError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, str]:
    """``"data.root=/x"`` -> ``("data.root", "/x")``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"bad override {text!r}: expected key=value with a dotted key, e.g. train.steps=100")
    return key, value.strip()


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree["a"]["b"]["c"] = value`` for ``key = "a.b.c"``, creating missing sections; ValueError naming the
    key if a prefix of it is a value, not a section (used by overrides and by the ablation's arms)."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            parent = ".".join(parts[: i + 1])
            raise ValueError(f"config key '{parent}': is a value, not a section (bad key '{key}')")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------- preset sections


def _preset_classes() -> dict[str, type]:
    from rvqcodec.model.codec import CodecConfig
    from rvqcodec.model.discriminators import DiscriminatorConfig

    return {"model": CodecConfig, "disc": DiscriminatorConfig}


PRESET_SECTIONS = ("model", "disc")


def _resolve_preset_section(name: str, section: PresetSection, cli_keys: set[str]):
    cls = _preset_classes()[name]
    if section.preset is not None:
        try:
            base = cls.preset(section.preset)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"config key '{name}.preset': {exc}") from None
    else:
        base = cls()
    merged = _merge(dataclasses.asdict(base), section.fields)
    return _build_dataclass(cls, merged, f"{name}.", cli_keys)


def codec_config_from_section(section: PresetSection):
    """Resolve the ``model`` section into a ``CodecConfig``: the preset (if any), then the explicit fields."""
    return _resolve_preset_section("model", section, set())


def discriminator_config_from_section(section: PresetSection):
    """Resolve the ``disc`` section into a ``DiscriminatorConfig``: the preset (if any), then the fields."""
    return _resolve_preset_section("disc", section, set())


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------- validation


def _check(cond: bool, key: str, message: str, value: Any) -> None:
    if not cond:
        raise ValueError(f"config key '{key}': {message}, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Range and choice checks; raises a one-line ValueError naming the key."""
    d, o, lo, t = cfg.data, cfg.optim, cfg.loss, cfg.train
    try:
        cfg.augment.check()
    except ValueError as exc:
        raise ValueError(f"config {exc}") from None
    _check(bool(d.train_subsets or d.train_dirs or d.extra_train_dirs or d.train_list), "data.train_dirs",
           "no training audio: give folders of audio (data.train_dirs=[my_wavs]), a list file (data.train_list) "
           "or LibriSpeech subsets (data.root, data.train_subsets)", d.train_dirs)
    for key in ("train_subsets", "train_dirs", "extra_train_dirs", "valid_dirs"):
        _check(all(str(v).strip() for v in getattr(d, key)), f"data.{key}", "must not hold an empty name",
               getattr(d, key))
    _check(d.train_list is None or bool(d.train_list.strip()), "data.train_list", "must be a file path or null",
           d.train_list)
    if d.train_subsets:
        _check(bool(d.root), "data.root", "must name the folder that contains LibriSpeech/ (data.train_subsets is "
               "set; data.train_subsets=[] trains on data.train_dirs / data.train_list only)", d.root)
        if not d.valid_dirs:
            _check(bool(d.valid_subset), "data.valid_subset",
                   "must name the LibriSpeech subset to validate on (or give data.valid_dirs)", d.valid_subset)
            _check(d.valid_subset not in d.train_subsets, "data.valid_subset", "must not be one of data.train_subsets",
                   d.valid_subset)
    _check(0 < d.valid_fraction < 1, "data.valid_fraction", "must be between 0 and 1 (exclusive)", d.valid_fraction)
    _check(d.segment_seconds > 0, "data.segment_seconds", "must be > 0", d.segment_seconds)
    _check(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    _check(d.max_valid_files >= 0, "data.max_valid_files", "must be >= 0", d.max_valid_files)
    _check(d.max_valid_seconds is None or d.max_valid_seconds > 0, "data.max_valid_seconds", "must be > 0 or null", d.max_valid_seconds)
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(o.disc_lr is None or o.disc_lr > 0, "optim.disc_lr", "must be > 0 or null", o.disc_lr)
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "must be two numbers in [0, 1)", o.betas)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", o.warmup_steps)
    _check(o.scheduler in SCHEDULER_CHOICES, "optim.scheduler", f"must be one of {', '.join(SCHEDULER_CHOICES)}", o.scheduler)
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", o.min_lr_ratio)
    _check(0 < o.gamma <= 1, "optim.gamma", "must be in (0, 1]", o.gamma)
    _check(o.grad_clip is None or o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 or null", o.grad_clip)
    for name in ("mel", "mrstft", "complex", "l1", "commit", "codebook", "adv", "fm"):
        _check(getattr(lo, name) >= 0, f"loss.{name}", "must be >= 0", getattr(lo, name))
    _check(lo.mel + lo.mrstft + lo.complex + lo.l1 > 0, "loss.mel",
           "at least one reconstruction weight (mel, mrstft, complex, l1) must be > 0", lo.mel)
    _check(lo.disc_start_step >= 0, "loss.disc_start_step", "must be >= 0", lo.disc_start_step)
    _check(lo.disc_warmup_steps >= 0, "loss.disc_warmup_steps", "must be >= 0", lo.disc_warmup_steps)
    _check(lo.disc_segment_seconds is None or lo.disc_segment_seconds > 0, "loss.disc_segment_seconds",
           "must be > 0 or null", lo.disc_segment_seconds)
    _check(lo.adv_kind in ADV_KIND_CHOICES, "loss.adv_kind", f"must be one of {', '.join(ADV_KIND_CHOICES)}", lo.adv_kind)
    _check(t.steps >= 1, "train.steps", "must be >= 1", t.steps)
    _check(t.grad_accum >= 1, "train.grad_accum", "must be >= 1", t.grad_accum)
    _check(t.mixed_precision in MIXED_PRECISION_CHOICES, "train.mixed_precision", f"must be one of {', '.join(MIXED_PRECISION_CHOICES)}", t.mixed_precision)
    for name in ("log_every", "valid_every", "ckpt_every", "keep_last", "max_bad_steps"):
        _check(getattr(t, name) >= 1, f"train.{name}", "must be >= 1", getattr(t, name))
    _check(t.n_samples >= 0, "train.n_samples", "must be >= 0", t.n_samples)
    _check(t.ae_warmup_steps >= 0, "train.ae_warmup_steps", "must be >= 0", t.ae_warmup_steps)
    _check(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", "must be > 0 or null", t.max_minutes)
    _check(t.stop_at_step is None or 1 <= t.stop_at_step <= t.steps, "train.stop_at_step",
           "must be null or a step from 1 to train.steps", t.stop_at_step)
    _check(bool(t.run_dir), "train.run_dir", "must be a folder path", t.run_dir)
    _check(all(b > 0 for b in t.valid_bitrates), "train.valid_bitrates", "must be positive kbps values", t.valid_bitrates)


# --------------------------------------------------------------------------------------------- load / dump


def config_from_dict(raw: dict[str, Any] | None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a validated TrainConfig from a YAML-style mapping plus ``key=value`` overrides."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"a training config must be a mapping of sections (model, disc, data, optim, loss, train), got {type(raw).__name__}")
    tree = _deep_copy(raw)
    cli_keys: set[str] = set()
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
        cli_keys.add(key)

    valid_sections = [*PRESET_SECTIONS, *SECTIONS]
    for name in tree:
        if name not in valid_sections:
            raise ValueError(_unknown_key_message(str(name), "", valid_sections))
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = tree.get(name) or {}
        kwargs[name] = _build_dataclass(cls, section, f"{name}.", cli_keys)
    for name in PRESET_SECTIONS:
        kwargs[name] = _preset_section_from_tree(name, tree.get(name) or {}, cli_keys)
    cfg = TrainConfig(**kwargs)
    validate(cfg)
    return cfg


def _preset_section_from_tree(name: str, raw: Any, cli_keys: set[str]) -> PresetSection:
    if not isinstance(raw, dict):
        raise ValueError(f"config section '{name}' must be a mapping of key: value, got {raw!r}")
    raw = dict(raw)
    preset = raw.pop("preset", PresetSection.preset)
    if f"{name}.preset" in cli_keys and isinstance(preset, str) and preset.strip().lower() in ("null", "none", "~", ""):
        preset = None
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"config key '{name}.preset': expected a preset name, got {preset!r}")
    section = PresetSection(preset=preset, fields=raw)
    # Type every field now (and keep the typed values) so a bad key or value fails before training starts.
    resolved = dataclasses.asdict(_resolve_preset_section(name, section, cli_keys))
    section.fields = {k: resolved[k] for k in raw}
    return section


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = read_yaml_file(path, "config file")
    return config_from_dict(raw, overrides)


def read_yaml_file(path: Path, what: str) -> Any:
    """The parsed content of the YAML file ``path``; ``ValueError("<what> <path> is not valid YAML: <first line
    of the parser's message>")`` if it does not parse."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{what} {path} is not valid YAML: {first}") from None


def config_to_dict(cfg: TrainConfig, resolve_model: bool = True) -> dict[str, Any]:
    """Plain nested dict (YAML-ready). With ``resolve_model`` the ``model`` and ``disc`` sections list every
    field of their dataclass (preset applied), so the file rebuilds the same networks later."""
    out: dict[str, Any] = {}
    for name in PRESET_SECTIONS:
        section: PresetSection = getattr(cfg, name)
        if resolve_model:
            resolved = cfg.codec_config if name == "model" else cfg.disc_config
            out[name] = {"preset": section.preset, **dataclasses.asdict(resolved)}
        else:
            out[name] = {"preset": section.preset, **_deep_copy(section.fields)}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    return plain(out)


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (sections as blocks, lists inline), as written to ``config.yaml``."""
    return yaml.dump(config_to_dict(cfg), Dumper=_ConfigDumper, sort_keys=False)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temp file in the same folder + os.replace)."""
    return atomic_write_text(path, config_to_yaml(cfg), parents=True)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as block mappings, lists inline (``betas: [0.8, 0.99]``)."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def flat_dict(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for tracker hyper-parameter tables)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree
