"""The ``rvqcodec`` command line: dispatches ``rvqcodec COMMAND`` to its module and turns user mistakes into one line.

Each subcommand lives in its own module of :mod:`rvqcodec.commands` that exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported lazily (by name, from :data:`SUBCOMMANDS`) so ``rvqcodec --help`` stays
fast and ``rvqcodec compress`` never imports the training code. A user mistake raises
:class:`rvqcodec.errors.UserError` (or ``FileNotFoundError``/``ValueError`` from argument checking) and is printed
as one line, never a traceback; so is a missing optional dependency (``rvqcodec.extras``: the message names the
pip extra to install).

Output piped into a reader that stops early (``rvqcodec info | head -1``): the first write after the reader is gone
raises ``BrokenPipeError``; the command stops there, quietly, and exits with :data:`EXIT_BROKEN_PIPE` (141 = 128 +
SIGPIPE, the status a shell reports for ``yes | head -1``'s ``yes``, so ``set -o pipefail`` scripts see the output
was cut short). It is an exception, not the default SIGPIPE action, so ``finally`` blocks still run and no
temporary file is left behind; stdout is pointed at ``/dev/null`` so that the interpreter's final flush stays
quiet too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from rvqcodec.errors import UserError
from rvqcodec.extras import MissingExtraError, missing_extra_for

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compress": ("rvqcodec.commands.compress", "encode audio files into .rvq bitstreams at a chosen bitrate"),
    "decompress": ("rvqcodec.commands.decompress", "decode .rvq bitstreams back into wav files"),
    "eval": ("rvqcodec.commands.evaluate", "score a degraded file against a reference (PESQ, STOI, SI-SDR, mel)"),
    "roundtrip": ("rvqcodec.commands.roundtrip", "compress + decompress + eval in one go, over a file or folder"),
    "train": ("rvqcodec.commands.train", "train a codec from a recipe config (runs under Accelerate)"),
    "ablation": ("rvqcodec.commands.ablation", "run the gradient-estimator ablation and write its report"),
    "info": ("rvqcodec.commands.info", "print a checkpoint's configuration, size and bitrates"),
    "export": ("rvqcodec.commands.export", "export a trained run as an inference checkpoint (or as the shipped model)"),
    "stream": ("rvqcodec.commands.stream", "live coding with a causal model: pipe encode/decode, loopback latency"),
}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


def build_parser(load_subcommands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rvqcodec",
        description="rvqcodec: a neural speech codec with rotation-trick residual vector quantization. "
        "16 kHz speech at 0.5-8 kbps (0.5 kbps per RVQ stage).",
        epilog="Run 'rvqcodec COMMAND --help' for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load_subcommands:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


OMP_WAIT_POLICY = "PASSIVE"
"""The OpenMP wait policy of an ``rvqcodec`` process unless ``OMP_WAIT_POLICY`` is already set: PyTorch's CPU
threads sleep while they wait instead of spinning, so that the default thread count stays close to one thread's
speed on a busy machine (spinning threads made the default 2.5-3x slower than ``--threads 1`` there, passive ones
1.2x; ``benchmarks/threads.py``). It takes effect only when set before torch is first imported, which the command
modules do after this."""


def main(argv: list[str] | None = None) -> int:
    """Run ``rvqcodec ARGV`` and return its exit code (module docstring; 141 when stdout's reader went away)."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    try:
        code = _main(argv)
        sys.stdout.flush()  # a buffered pipe is written here, not at exit, where the error could not be caught
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that nothing more (the interpreter's flush at exit included) is written to a
    pipe whose reader is gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured in tests): nothing to redirect
        pass


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the module of the command actually used (keeps --help and startup fast).
    parser = build_parser(load_subcommands=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help") and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}")
        parser.parse_args(argv)  # prints help / errors
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as exc:
        return _missing_dependency(name, exc)
    sub_parser = argparse.ArgumentParser(prog=f"rvqcodec {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    # a command with sub-commands of its own (NESTED_COMMANDS) cannot be parsed intermixed
    parse = sub_parser.parse_args if getattr(module, "NESTED_COMMANDS", False) else sub_parser.parse_intermixed_args
    args = parse(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"rvqcodec {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rvqcodec {name}: interrupted", file=sys.stderr)
        return 130
    except MissingExtraError as exc:
        print(f"rvqcodec {name}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency imported without rvqcodec.extras.require
        return _missing_dependency(name, exc)


def _missing_dependency(command: str, exc: ModuleNotFoundError) -> int:
    """One line naming the pip extra for a missing optional dependency (exit 2); other import errors propagate."""
    message = missing_extra_for(exc)
    if message is None:
        raise exc
    print(f"rvqcodec {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
