"""Copy a size-capped, speaker-diverse subset of the training speech (plus all of dev-clean) into one folder that
can travel to a lent GPU machine, whose copy of the working tree is capped at 64 MiB in all.

    python recipes/librispeech/device/stage_data.py --out .gpudata --budget-mb 40

Layout written (what ``gpu_continue.sh`` passes as ``data.root`` / ``data.extra_train_dirs``)::

    OUT/LibriSpeech/dev-clean/...          all of dev-clean (validation only, never trained on)
    OUT/LibriSpeech/train-clean-100/...    the chosen train-clean-100 files (+ their .trans.txt)
    OUT/extra/<source>/...                 the chosen files of each speech-extra source
    OUT/MANIFEST.txt                       the training files, minutes and megabytes copied

Which training files: all of them in a fixed pseudo-random order (SHA-256 of the path relative to its corpus),
taken while the total stays under ``--budget-mb``, so every corpus and speaker keeps about the same share and
the same command always picks the same files. An existing OUT is refused unless ``--force``.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import soundfile

AUDIO_SUFFIXES = (".flac", ".wav")


def training_files(speech_dev: Path, speech_extra: Path) -> list[tuple[Path, Path]]:
    """``(source file, destination relative to OUT)`` for every training file, in the fixed pseudo-random order."""
    pairs = []
    train = speech_dev / "LibriSpeech" / "train-clean-100"
    for path in train.rglob("*"):
        if path.suffix in AUDIO_SUFFIXES:
            pairs.append((path, Path("LibriSpeech/train-clean-100") / path.relative_to(train)))
    for path in speech_extra.rglob("*"):
        if path.suffix in AUDIO_SUFFIXES:
            pairs.append((path, Path("extra") / path.relative_to(speech_extra)))
    return sorted(pairs, key=lambda pair: hashlib.sha256(str(pair[1]).encode()).hexdigest())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speech-dev", type=Path, default=Path("../shared/data/speech-dev"),
                   help="folder containing LibriSpeech/train-clean-100 and LibriSpeech/dev-clean")
    p.add_argument("--speech-extra", type=Path, default=Path("../shared/data/speech-extra"),
                   help="more training speech (any folder tree of .flac/.wav)")
    p.add_argument("--out", type=Path, default=Path(".gpudata"), help="folder to create (default .gpudata)")
    p.add_argument("--budget-mb", type=float, default=40.0, help="cap on the training files' size in MB (default 40)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    dev = args.speech_dev / "LibriSpeech" / "dev-clean"
    if not dev.is_dir() or not args.speech_extra.is_dir():
        print(f"error: need {dev} and {args.speech_extra}", file=sys.stderr)
        return 2
    if args.out.exists():
        if not args.force:
            print(f"error: {args.out} exists (use --force to replace it)", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    shutil.copytree(dev, args.out / "LibriSpeech" / "dev-clean")
    budget, used, seconds, chosen = args.budget_mb * 1e6, 0, 0.0, []
    for source, relative in training_files(args.speech_dev, args.speech_extra):
        size = source.stat().st_size
        if used + size > budget:
            continue
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        transcript = next(source.parent.glob("*.trans.txt"), None)
        if transcript is not None and not (target.parent / transcript.name).exists():
            shutil.copy2(transcript, target.parent / transcript.name)
        used += size
        seconds += soundfile.info(source).duration
        chosen.append(str(relative))
    lines = [f"# {len(chosen)} training files, {seconds / 60:.1f} min, {used / 1e6:.1f} MB "
             f"(budget {args.budget_mb:g} MB); dev-clean copied whole for validation", *sorted(chosen)]
    (args.out / "MANIFEST.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(lines[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
