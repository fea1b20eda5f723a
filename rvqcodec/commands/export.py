"""``rvqcodec export RUN_OR_CHECKPOINT [OUT]``: a trained run as a small inference checkpoint, or as the shipped model.

RUN_OR_CHECKPOINT is a run folder (its ``codec.pt``), a codec checkpoint or a training checkpoint
(``checkpoints/step_*.pt``). OUT defaults to ``export.pt`` beside the source. The file is float16 and inference-only
(a third of a training checkpoint's size; loads back in float32 and still fine-tunes), with the run's training
facts and the decoder's formant postfilter strength (``--postfilter``) in its meta (:mod:`rvqcodec.training.export`).
``--as-default`` writes the shipped default model (OUT, by default ``rvqcodec/pretrained/default.pt``) and its card
``default.json`` beside it; ``--as-streaming`` the shipped streaming model (``streaming.pt`` and ``streaming.json``;
a causal model only). Exit codes: 0, 2 (user mistake).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rvqcodec.commands.common import apply_postfilter
from rvqcodec.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                        help="run folder, codec.pt or training checkpoint (checkpoints/step_*.pt)")
    parser.add_argument("out", nargs="?", default=None, metavar="OUT",
                        help="output checkpoint (default: export.pt beside the source)")
    parser.add_argument("--as-default", action="store_true",
                        help="write the shipped default model (OUT, default rvqcodec/pretrained/default.pt) and its "
                             "card default.json beside it")
    parser.add_argument("--as-streaming", action="store_true",
                        help="write the shipped streaming model (OUT, default rvqcodec/pretrained/streaming.pt) and "
                             "its card streaming.json beside it; the model must be causal")
    parser.add_argument("--recipe", default=None, metavar="YAML", help="the recipe the run was trained with (named "
                                                                       "on the card)")
    parser.add_argument("--note", default="", help="a sentence added to the card's description (--as-default, --as-streaming)")
    parser.add_argument("--postfilter", type=float, default=None, metavar="S",
                        help="formant postfilter strength (0 to 1) the exported model decodes with by default, "
                             "recorded in its meta and card (default: the source's own; 0 for a training run)")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights (default: float16, half the size)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing OUT")


def run(args: argparse.Namespace) -> int:
    from rvqcodec.training.export import export_codec, export_shipped, read_trained_codec

    if args.recipe is not None and not Path(args.recipe).is_file():
        raise UserError(f"recipe not found: {args.recipe}")
    try:
        trained = read_trained_codec(args.source)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    apply_postfilter(trained.codec, args)
    if args.as_default and args.as_streaming:
        raise UserError("--as-default and --as-streaming exclude each other")
    if args.as_default or args.as_streaming:
        try:
            path, card = export_shipped(trained, args.recipe, args.note, out=args.out, streaming=args.as_streaming)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, model id {trained_id(path)}) and {card}")
        return 0
    out = Path(args.out) if args.out is not None else trained.source.parent / "export.pt"
    if out.resolve() == trained.source.resolve():
        raise UserError(f"refusing to write {out}: it is the source")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    path = export_codec(trained, out, args.recipe, float16=not args.float32)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, model id {trained_id(path)})")
    return 0


def trained_id(path: Path) -> str:
    """The model id recorded in an exported checkpoint (the id of the weights as written)."""
    from rvqcodec.model import Codec

    return Codec.read_checkpoint(path)["meta"]["model_id"]
