"""``rvqcodec train CONFIG [KEY=VALUE ...]``: train a codec from a recipe (YAML) with ``key=value`` overrides.

The same command runs as a module, which is how Accelerate starts one process per device:
``python -m rvqcodec.training CONFIG ...`` or ``accelerate launch [--multi_gpu] -m rvqcodec.training CONFIG ...``
(:mod:`rvqcodec.training.__main__` calls :func:`main`). The loop itself is :mod:`rvqcodec.training.trainer`.
Exit codes: 0 done, 2 user mistake (a bad config key or value, missing data, a diverged run), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvqcodec.errors import UserError
from rvqcodec.training.config import config_to_yaml, load_config
from rvqcodec.training.step import TrainingDiverged
from rvqcodec.training.trainer import Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Config sections: model, disc, data, optim, loss, train (see rvqcodec/training/config.py and "
        "recipes/librispeech/README.md). Continue a run: train.resume=true. Several GPUs: "
        "accelerate launch --multi_gpu --num_processes N -m rvqcodec.training CONFIG [KEY=VALUE ...].")
    parser.add_argument("config", help="recipe YAML file, e.g. recipes/librispeech/tiny.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. data.root=/data train.steps=100 model.n_q=8")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    try:
        summary = trainer.fit()
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None
    if trainer.is_main:
        best = summary["best_valid_mel"]
        print(f"done: {summary['step']} steps in {cfg.train.run_dir} (best valid mel {best:.4f}, "
              f"{summary['skipped']} skipped steps); codec: {Path(cfg.train.run_dir) / 'codec.pt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rvqcodec.training`` and ``accelerate launch -m rvqcodec.training``."""
    parser = argparse.ArgumentParser(prog="rvqcodec.training", description="train a codec from a recipe config")
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # flags may sit between the KEY=VALUE overrides
    try:
        return run(args)
    except UserError as exc:
        print(f"rvqcodec train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rvqcodec train: interrupted", file=sys.stderr)
        return 130
