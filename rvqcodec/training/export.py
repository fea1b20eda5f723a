"""Exporting a trained codec: a run (folder, ``codec.pt`` or a training checkpoint) -> an inference checkpoint, and
optionally a shipped model (the default or the streaming one) with its card.

    rvqcodec export runs/s9                           # -> runs/s9/export.pt (float16, inference only)
    rvqcodec export runs/s9/checkpoints/step_0002000.pt /tmp/s9-2000.pt
    rvqcodec export runs/s9 --as-default --recipe recipes/librispeech/convnext-gan.yaml --note "..."

The source is read once. Its training facts (data, losses, discriminators, augmentation, steps, audio seen,
compute) come from the run's own resolved configuration: the ``config`` a training checkpoint carries, or the
``config.yaml`` a run writes beside its ``codec.pt``, read with the config loader. ``--as-default`` writes
``rvqcodec/pretrained/default.pt`` and its model card ``default.json`` (id, architecture, parameters and those
facts) from the same data, so the card, the checkpoint and ``rvqcodec info`` agree; the test suite checks that the
shipped checkpoint is the one the card names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvqcodec.model import Codec, CodecConfig
from rvqcodec.training.config import TrainConfig, config_from_dict, load_config
from rvqcodec.training.checkpoints import read_training_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = "config.yaml"


@dataclass
class TrainedCodec:
    """A codec read from a run, with what its run says about how it was trained."""

    codec: Codec
    lineage: dict[str, Any]
    config: TrainConfig | None  # the run's resolved training configuration, when it can be found
    source: Path


def read_trained_codec(source: str | os.PathLike) -> TrainedCodec:
    """The codec of ``source``: a run folder (its ``codec.pt``), a codec checkpoint or a training checkpoint
    (``checkpoints/step_*.pt``, ``best.pt``), each read once. ValueError / FileNotFoundError (one line) otherwise."""
    path = Path(source)
    if path.is_dir():
        if not (path / "codec.pt").is_file():
            raise FileNotFoundError(f"{path} holds no codec.pt (not a finished or checkpointed run folder)")
        path = path / "codec.pt"
    try:
        payload = Codec.read_checkpoint(path)
    except ValueError:
        try:
            payload = read_training_checkpoint(path)
        except ValueError:
            raise ValueError(f"{path} is neither a codec nor a training checkpoint") from None
        codec = Codec(CodecConfig.from_dict(payload["codec_config"]))
        codec.load_state_dict(payload["codec"])
        return TrainedCodec(codec.eval(), payload.get("lineage") or {}, config_from_dict(payload["config"]), path)
    codec = Codec.from_checkpoint_payload(payload, path)
    run_config = path.parent / RUN_CONFIG
    config = load_config(run_config) if run_config.is_file() else None
    return TrainedCodec(codec, payload["meta"].get("lineage") or {}, config, path)


def training_facts(trained: TrainedCodec, recipe: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card's training section: recipe, data, batch, losses, discriminators, augmentation, steps, audio
    seen and compute (from the run's configuration and lineage; what is unknown is left out)."""
    facts: dict[str, Any] = {}
    if recipe is not None:
        recipe = Path(recipe).resolve()
        facts["recipe"] = str(recipe.relative_to(REPO_ROOT)) if recipe.is_relative_to(REPO_ROOT) else str(recipe)
    cfg = trained.config
    if cfg is not None:
        d, lo = cfg.data, cfg.loss
        data = [f"{d.root}: {', '.join(d.train_subsets)}"] if d.train_subsets else []
        facts["training_data"] = data + list(d.extra_train_dirs) + list(getattr(d, "train_dirs", []) or [])
        facts["batch"] = f"{d.batch_size} x {d.segment_seconds} s crops"
        facts["losses"] = ", ".join(f"{name} {getattr(lo, name):g}" for name in
                                    ("mel", "complex", "mrstft", "l1", "commit", "adv", "fm") if getattr(lo, name))
        if lo.uses_discriminator:
            kinds = cfg.disc.fields.get("kinds") or "preset"
            facts["discriminators"] = f"{cfg.disc.preset} preset, kinds {', '.join(kinds)} ({lo.adv_kind})"
        if cfg.augment.prob > 0:
            speed = "speed changes, " if cfg.augment.speed > 0 else ""
            facts["augmentation"] = (f"{cfg.augment.prob:g} of the examples corrupted ({speed}noise, babble, coloured "
                                     f"noise, rooms, band limits, levels; rvqcodec.data.augment)")
    lineage = trained.lineage
    facts["steps"] = lineage.get("steps")
    facts["audio_hours_seen"] = round(float(lineage.get("audio_hours", 0.0)), 2)
    facts["training_minutes"] = {k: round(v, 1) for k, v in (lineage.get("minutes") or {}).items()}
    return facts


def export_codec(trained: TrainedCodec, out: str | os.PathLike, recipe: str | os.PathLike | None = None,
                 float16: bool = True) -> Path:
    """Write ``trained`` as an inference-only checkpoint (float16 by default: half the size) with its training
    facts and lineage in the meta; returns the path."""
    codec = trained.codec
    causal = "-causal" if codec.config.causal else ""
    name = f"rvqcodec-speech-{codec.config.sample_rate // 1000}k-{codec.config.architecture}{causal}"
    meta = {"name": name, **training_facts(trained, recipe), "lineage": trained.lineage}
    return codec.save(out, meta=meta, inference_only=True, float16=float16)


def export_shipped(trained: TrainedCodec, recipe: str | os.PathLike | None, note: str = "",
                   out: str | os.PathLike | None = None, streaming: bool = False) -> tuple[Path, Path]:
    """Write ``trained`` as a shipped model and rewrite its card beside it; returns (checkpoint, card). The default
    model (``out`` default ``rvqcodec/pretrained/default.pt``, card ``default.json``) or, with ``streaming``, the
    streaming model (``streaming.pt`` and ``streaming.json``; ValueError unless the model is causal)."""
    from rvqcodec.fileio import atomic_write_json
    from rvqcodec.pretrained import (DEFAULT_CARD_NAME, STREAMING_CARD_NAME, default_checkpoint_path,
                                     streaming_checkpoint_path)

    if streaming and not trained.codec.config.causal:
        raise ValueError("the streaming model must be causal (model.causal=true, e.g. the convnext-causal preset)")
    path = export_codec(trained, out or (streaming_checkpoint_path() if streaming else default_checkpoint_path()),
                        recipe)
    meta = Codec.read_checkpoint(path)["meta"]
    codec = trained.codec
    counts = codec.parameter_counts()
    facts = {k: v for k, v in meta.items() if k not in ("model_id", "name", "parameters", "torch_version", "lineage")}
    card = {
        "model_id": meta["model_id"],
        "name": meta["name"],
        "description": (f"{codec.config.architecture} codec, {counts['total'] / 1e6:.2f} M parameters, "
                        f"{codec.config.n_q} x {codec.config.codebook_size} codes at {codec.frame_rate:g} frames/s "
                        f"({codec.bitrates()[0]:g}-{codec.bitrates()[-1]:g} kbps); {facts.get('steps')} steps"
                        + (f" of {facts['recipe']}" if "recipe" in facts else "") + f". {note}").strip(),
        "parameters": counts,
        **facts,
    }
    return path, atomic_write_json(path.parent / (STREAMING_CARD_NAME if streaming else DEFAULT_CARD_NAME), card)
