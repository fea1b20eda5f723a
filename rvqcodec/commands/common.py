"""What the codec commands (``compress``, ``decompress``, ``roundtrip``, and ``eval`` for ``--threads``) share.

* the ``--model``, ``--device`` and ``--threads`` options and loading the model they name (:func:`load_model`),
  with the decoding commands' ``--postfilter``;
* ``--bitrate`` / ``--n-q`` -> RVQ stages (:func:`resolve_stages`);
* inputs: files, folders (searched recursively) and quoted glob patterns (:func:`collect_inputs`); outputs: one
  file, or a folder that mirrors the input layout (:func:`plan_outputs`), refused before any work if unwritable;
* the batch loop (:func:`run_batch`) and its exit codes: 0 when every file succeeded, 1 when some file of a batch
  failed (the rest are still processed), 2 for a user mistake (:class:`rvqcodec.errors.UserError`, printed as
  one line by ``rvqcodec.cli``; a single input that cannot be processed counts as one).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rvqcodec.errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64")
_GLOB_CHARS = set("*?[")


def add_threads_argument(parser: argparse.ArgumentParser, default: int | None = None, why: str | None = None) -> None:
    """``--threads N``: CPU threads for torch; ``default`` None is torch's choice, ``why`` says why another."""
    if default is None:
        help_text = ("CPU threads torch may use (default: torch's choice, one per core). Waiting threads sleep "
                     "(OMP_WAIT_POLICY=PASSIVE unless set), so the default stays within about 1.2x of one thread "
                     "on a busy machine and uses every core on an idle one")
    else:
        help_text = f"CPU threads torch may use (default: {default}: {why})"
    parser.add_argument("--threads", type=int, default=default, metavar="N", help=help_text)


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (UserError unless it is >= 1)."""
    if args.threads is None:
        return
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)


def add_perceptual_argument(parser: argparse.ArgumentParser) -> None:
    """``--perceptual`` / ``--no-perceptual``: listener-model scores beside PESQ (default: when installed)."""
    parser.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None,
                        help="also score with listener models: DistillMOS, DNSMOS P.808 and P.835 OVRL (of the "
                             "decoded audio and of the reference), ViSQOL v3 speech (intrusive); about 2.5 s per 10 s "
                             "of audio on a CPU. Default: on when the 'perceptual' extra is installed "
                             "(pip install \"rvqcodec[perceptual]\"), else skipped with a note")


def perceptual_scorer(args: argparse.Namespace):
    """The :class:`rvqcodec.perceptual.PerceptualScorer` that ``--perceptual`` asks for, or None: skipped with a
    one-line note when the extra is missing and the option was not given, UserError (via MissingExtraError) when it
    was."""
    from rvqcodec import perceptual

    if args.perceptual is False:
        return None
    if args.perceptual is None and not perceptual.available():
        print("note: listener-model scores (DistillMOS, DNSMOS, ViSQOL) skipped: pip install \"rvqcodec[perceptual]\""
              " to add them", file=sys.stderr)
        return None
    return perceptual.get_scorer()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--threads``, common to every codec command."""
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="codec checkpoint (.pt); default: the shipped model rvqcodec/pretrained/default.pt")
    parser.add_argument("--device", default="cpu", help="torch device to run the model on, e.g. cpu, cuda, cuda:1 "
                                                        "(default: cpu)")
    add_threads_argument(parser)


def add_postfilter_argument(parser: argparse.ArgumentParser) -> None:
    """``--postfilter S``: the decoder's formant postfilter strength (default: the model's own)."""
    parser.add_argument("--postfilter", type=float, default=None, metavar="S",
                        help="formant postfilter strength of the decoder, 0 (off) to 1: deepens the valleys of "
                             "the spectral envelope between formants, which the decoder fills (docs/training.md, the "
                             "formant postfilter); default: the model's own, recorded in its checkpoint (0.4 for the "
                             "shipped default model)")


def add_level_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-normalize``: encode the input at its own level (default: scaled to the model's, the gain stored;
    :mod:`rvqcodec.level`, not imported here: ``--help`` loads no torch)."""
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="encode each file at its own level; by default it is scaled to the level the model "
                             "was trained at (the file's RMS to -23 dBFS, its peak at most -1 dBFS) and the gain, "
                             "stored in the .rvq header, is divided out when decoding, so quiet and loud recordings "
                             "are coded as well as typical ones and decode at their own level")


def apply_postfilter(codec, args: argparse.Namespace) -> None:
    """Set ``codec``'s postfilter from ``--postfilter`` when given; one-line UserError when out of range."""
    if getattr(args, "postfilter", None) is None:
        return
    try:
        codec.postfilter = args.postfilter
    except ValueError as exc:
        raise UserError(f"--postfilter: {exc}") from None


def load_model(args: argparse.Namespace):
    """The codec named by ``--model`` (or the shipped default) on ``--device``, after applying ``--threads``, with
    ``--postfilter`` if the command has it; one-line UserError if the device is not available or the checkpoint
    cannot be loaded."""
    from rvqcodec.pretrained import load_codec

    apply_threads(args)
    try:
        codec = load_codec(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as exc:  # missing file, not a checkpoint, unavailable device
        raise UserError(str(exc)) from None
    apply_postfilter(codec, args)
    return codec


def resolve_stages(codec, bitrate: float | None, n_q: int | None) -> int:
    """``--bitrate`` / ``--n-q`` -> number of stages, once per command (every file uses it); UserError listing the
    valid bitrates otherwise."""
    from rvqcodec.streams import resolve_n_q

    try:
        return resolve_n_q(codec, bitrate=bitrate, n_q=n_q)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass(frozen=True)
class InputFile:
    """One input of a command: the file and its path relative to the folder/glob root it was found under."""

    path: Path
    relative: Path


def collect_inputs(specs: Sequence[str], suffixes: Sequence[str]) -> tuple[list[InputFile], bool]:
    """Expand files, folders (recursive, files with one of ``suffixes``) and glob patterns.

    Returns ``(inputs, batch)``; ``batch`` is True unless ``specs`` is a single existing file.
    Raises UserError for a missing path, an empty folder or a pattern that matches nothing.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    found: list[InputFile] = []
    batch = len(specs) > 1
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            found.append(InputFile(path, Path(path.name)))
        elif path.is_dir():
            batch = True
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                           and not p.name.startswith("."))
            if not files:
                raise UserError(f"no {'/'.join(suffixes)} files found in folder {path}")
            found += [InputFile(p, p.relative_to(path)) for p in files]
        elif _GLOB_CHARS & set(spec):
            batch = True
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise UserError(f"no files match {spec!r}")
            root = _glob_root(spec)
            found += [InputFile(m, _relative_or_name(m, root)) for m in files]
        elif path.exists():
            raise UserError(f"input is not a regular file: {path}")
        else:
            raise UserError(f"input not found: {path}")
    unique: dict[str, InputFile] = {}
    for item in found:
        unique.setdefault(os.path.realpath(item.path), item)
    return list(unique.values()), batch


def display_names(inputs: Sequence[InputFile]) -> dict[InputFile, str]:
    """How a table names each input: its path relative to the folder or glob root it was found under (``a/x.wav``,
    ``b/x.wav``), or, where two inputs would get the same name (``x.wav`` of two folders given separately), the
    path as given."""
    relative = [item.relative.as_posix() for item in inputs]
    counts = Counter(relative)
    return {item: name if counts[name] == 1 else str(item.path) for item, name in zip(inputs, relative)}


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_or_name(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path(path.name)


def plan_outputs(inputs: Sequence[InputFile], output: str, batch: bool, suffix: str) -> list[Path]:
    """Output path per input: in batch mode ``OUTPUT/<relative path with suffix>`` (OUTPUT is a folder, created
    if needed, as are its subfolders when files are written); for one input OUTPUT itself (its folder must
    exist), or ``OUTPUT/<name with suffix>`` if OUTPUT is a folder (or ends with a path separator)."""
    out = Path(output)
    if batch or out.is_dir() or output.endswith(os.sep):
        if out.exists() and not out.is_dir():
            raise UserError(f"output {out} must be a folder for several inputs, but it is a file")
        _check_can_create(out)
        return [out / item.relative.with_suffix(suffix) for item in inputs]
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist: {out.parent}")
    _check_can_create(out.parent)
    return [out]


def _check_can_create(folder: Path) -> None:
    """UserError before any work unless files can be written in ``folder`` (or, if it does not exist yet, in its
    nearest existing parent, where it will be created)."""
    from rvqcodec.fileio import check_writable_folder

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        check_writable_folder(existing / "probe")
    except OSError as exc:
        raise UserError(str(exc)) from None


def run_batch(command: str, inputs: Sequence[InputFile], outputs: Sequence[Path | None], batch: bool,
              work: Callable[[InputFile, Path | None], str | None]) -> int:
    """Run ``work(input, output)`` for every input with a progress bar (batch mode only).

    A failing file is reported on one line: an :class:`rvqcodec.errors.InputError` (unreadable audio, damaged
    ``.rvq``, NaN samples, an output that is an input, ...), an ``OSError`` (existing output, missing or
    unwritable folder, full disk) or a missing optional dependency. In batch mode the rest go on and the return
    value is 1; for a single input it raises UserError (exit 2). Any other exception is a bug and propagates
    with its traceback. ``work`` returns a line to print (or None). Outputs that two inputs would share are
    refused for the second one. Ctrl-C stops the batch (KeyboardInterrupt propagates, the bar is closed).
    """
    from tqdm import tqdm

    from rvqcodec.errors import InputError
    from rvqcodec.extras import MissingExtraError

    failures = 0
    claimed: dict[str, Path] = {}
    progress = tqdm(list(zip(inputs, outputs)), unit="file", disable=not batch, file=sys.stderr,
                    dynamic_ncols=True)
    try:
        for item, out in progress:
            try:
                if out is not None:
                    key = os.path.realpath(out)
                    if key in claimed:
                        raise FileExistsError(f"output {out} would also be written for {claimed[key]}; "
                                              "rename one input")
                    claimed[key] = item.path
                    out.parent.mkdir(parents=True, exist_ok=True)
                line = work(item, out)
            except BrokenPipeError:
                raise  # the reader of our output went away: not this file's fault (rvqcodec.cli stops quietly)
            except MissingExtraError as exc:
                raise UserError(str(exc)) from None  # the same for every file: stop at once
            except (InputError, OSError) as exc:
                message = _one_line(exc)
                if str(item.path) not in message:
                    message = f"{item.path}: {message}"
                if not batch:
                    raise UserError(message) from None
                failures += 1
                progress.write(f"rvqcodec {command}: error: {message}", file=sys.stderr)
            else:
                if line:
                    progress.write(line, file=sys.stdout)
                    sys.stdout.flush()
    finally:
        progress.close()
    if batch:
        done = len(inputs) - failures
        summary = f"rvqcodec {command}: {done} of {len(inputs)} file(s) done"
        print(summary + (f", {failures} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message; for an OSError from the system (``[Errno N] ...``) its reason
    and file name."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def protected_paths(inputs: Sequence[InputFile]) -> list[Path]:
    """Every input path: never to be written."""
    return [item.path for item in inputs]
