"""``rvqcodec ablation ABLATION.yaml [KEY=VALUE ...]``: run the gradient-estimator ablation and write its report;
``rvqcodec ablation --report-only RUN_DIR`` rebuilds the report from a run folder. See
:mod:`rvqcodec.training.ablation` for the file format, the run folder and the evaluation.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rvqcodec.errors import UserError
from rvqcodec.training.ablation.report import write_report
from rvqcodec.training.ablation.runner import run_ablation
from rvqcodec.training.ablation.spec import dump_spec, load_spec


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
    try:
        if args.report_only is not None:
            if args.config is not None or args.overrides:
                raise UserError("--report-only RUN_DIR takes no config file or overrides")
            path = write_report(Path(args.report_only))
            print(f"report: {path}")
            return 0
        if args.config is None:
            raise UserError("give an ablation file (e.g. recipes/ablation/estimators.yaml) or --report-only RUN_DIR")
        command = " ".join(["rvqcodec", "ablation", args.config, *args.overrides])
        spec = load_spec(args.config, args.overrides, command=command)
        if args.print_config:
            print(dump_spec(spec), end="")
            for arm in spec.selected_arms():
                for seed in spec.settings.seeds:
                    print(f"# run {spec.run_path(arm.name, seed)}")
            return 0
        path = run_ablation(spec, jobs=args.jobs, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"report: {path}")
    return 0
