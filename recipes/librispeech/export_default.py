"""Export a trained codec as the shipped default model: ``rvqcodec/pretrained/default.pt`` and its model card
``default.json``.

    python recipes/librispeech/export_default.py runs/convnext/codec.pt --recipe recipes/librispeech/convnext.yaml

The checkpoint is written inference-only in float16 (half the size; ``Codec.save(float16=True)``), with the run's
lineage and training facts in its meta; the loss weights in them are those of the run that wrote the checkpoint
(its ``config.yaml``, beside it; else the recipe's). ``default.json`` (the model card: id, architecture,
parameters, training data, steps, audio seen, compute) is rewritten from the same facts, so the card, the
checkpoint and ``rvqcodec info`` agree. The test suite checks that the shipped checkpoint is the one the card names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from rvqcodec.fileio import atomic_write_json
from rvqcodec.model import Codec
from rvqcodec.pretrained import DEFAULT_CARD_NAME, default_checkpoint_path

REPO_ROOT = Path(__file__).resolve().parents[2]


def training_facts(recipe: Path, meta: dict, run_config: Path | None = None) -> dict:
    """The model card's training section from the recipe file and the checkpoint's meta (lineage). The loss
    weights come from ``run_config`` (the resolved ``config.yaml`` a run writes beside its ``codec.pt``) when
    given: the losses of the last stage of training, with its command-line overrides, not the recipe's."""
    cfg = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    data, loss = cfg.get("data", {}), cfg.get("loss", {})
    if run_config is not None:
        loss = yaml.safe_load(run_config.read_text(encoding="utf-8")).get("loss", loss)
    lineage = meta.get("lineage") or {}
    weights = ", ".join(f"{name} {loss[name]:g}" for name in ("mel", "complex", "mrstft", "l1", "commit", "adv", "fm")
                        if loss.get(name))
    return {
        "recipe": str(recipe.resolve().relative_to(REPO_ROOT)),
        "training_data": [f"{data.get('root')}: {', '.join(data.get('train_subsets', []))}",
                          *data.get("extra_train_dirs", [])],
        "batch": f"{data.get('batch_size')} x {data.get('segment_seconds')} s crops",
        "losses": weights,
        "steps": lineage.get("steps"),
        "audio_hours_seen": round(float(lineage.get("audio_hours", 0.0)), 2),
        "training_minutes": {k: round(v, 1) for k, v in (lineage.get("minutes") or {}).items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="export a trained codec as rvqcodec's shipped default model")
    parser.add_argument("checkpoint", type=Path, help="codec checkpoint of the run (e.g. runs/convnext/codec.pt)")
    parser.add_argument("--recipe", type=Path, required=True, help="the recipe the run was trained with")
    parser.add_argument("--note", default="", help="one sentence added to the card's description")
    parser.add_argument("--out", type=Path, default=default_checkpoint_path(),
                        help="where to write the checkpoint (default: the shipped default.pt); the card goes beside it")
    args = parser.parse_args(argv)
    try:
        payload = Codec.read_checkpoint(args.checkpoint)
        codec = Codec.load(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        print(f"export_default: error: {exc}", file=sys.stderr)
        return 2
    if not args.recipe.is_file():
        print(f"export_default: error: recipe not found: {args.recipe}", file=sys.stderr)
        return 2
    run_config = args.checkpoint.parent / "config.yaml"
    facts = training_facts(args.recipe, payload["meta"], run_config if run_config.is_file() else None)
    config = codec.config
    name = f"rvqcodec-speech-{config.sample_rate // 1000}k-{config.architecture}"
    meta = {"name": name, **facts, "lineage": payload["meta"].get("lineage")}
    path = codec.save(args.out, meta=meta, inference_only=True, float16=True)
    model_id = Codec.read_checkpoint(path)["meta"]["model_id"]
    counts = codec.parameter_counts()
    card = {
        "model_id": model_id,
        "name": name,
        "description": (f"{config.architecture} codec, {counts['total'] / 1e6:.2f} M parameters, "
                        f"{config.n_q} x {config.codebook_size} codes at {codec.frame_rate:g} frames/s "
                        f"({codec.bitrates()[0]:g}-{codec.bitrates()[-1]:g} kbps); {facts['steps']} steps of "
                        f"{facts['recipe']}. {args.note}".strip()),
        "parameters": counts,
        **facts,
    }
    card_path = atomic_write_json(path.parent / DEFAULT_CARD_NAME, card)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, model id {model_id}) and {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
